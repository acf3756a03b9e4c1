// sevmirror firmware: everything that runs at guest CPL0.
//
// Guest CPL0 is run by KVM's instruction emulator on the development machines (kvm_pvm,
// ~1.6 M instructions/s, and it lacks SSE arithmetic: `xorps` is an emulation failure), so
// this file is the whole of CPL0: mode switches, page tables, descriptor tables, the
// exception handlers and the service calls CPL3 makes with `ud2`. Rust never runs at CPL0.
// Only plain integer instructions are used here. Intel syntax; the names in braces are
// constants from guest-abi (see boot.rs).

// CR4.OSXSAVE and XCR0 for the register state the helper's AES-GCM kernels use (x87,
// SSE, AVX, AVX-512 opmask/ZMM), as far as this vCPU's CPUID (the VMM's table, at CPL0)
// offers it; the kernels check CPUID.OSXSAVE and XGETBV at CPL3 before using ymm/zmm.
// Without XSAVE in CPUID nothing changes (setting OSXSAVE would #GP). XSETBV at CPL0
// works under kvm_pvm's emulator (XGETBV does not, so nothing here reads XCR0).
// Clobbers eax, ebx, ecx, edx.
.macro sevm_xstate
    mov eax, 1
    cpuid
    test ecx, 1 << 26
    jz .Lsevm_xstate_done\@
    mov eax, cr4
    or eax, 0x40000
    mov cr4, eax
    mov eax, 0xd
    xor ecx, ecx
    cpuid
    mov edx, eax
    mov eax, 3
    test edx, 4
    jz .Lsevm_xstate_set\@
    or eax, 4
    and edx, 0xe0
    cmp edx, 0xe0
    jne .Lsevm_xstate_set\@
    or eax, 0xe0
.Lsevm_xstate_set\@:
    xor ecx, ecx
    xor edx, edx
    xsetbv
.Lsevm_xstate_done\@:
.endm

// Under SEV-ES the CPU raises #VC for CPUID, IN/OUT, MMIO and most MSRs, and this CPL0 code
// has no #VC handler: it asks through the GHCB MSR protocol instead (AMD 56421 §2.3.1), as
// OVMF's and Linux's early SEV-ES code does. The boot CPU learns whether SEV-ES is on from
// SEV_STATUS, which it reads first (boot-info page); every CPU tests that byte.

// One register (0 EAX .. 3 EDX) of CPUID `leaf`, subleaf 0, through the GHCB MSR protocol:
// the request in the GHCB MSR, VMGEXIT (the services page's register stands in for it on
// these machines), the response from the MSR; the value in eax. Anything but a CPUID
// response jumps to `fail`. Works in 32- and 64-bit mode. Clobbers eax, ecx, edx, edi.
.macro sevm_msr_cpuid leaf, reg, fail
    mov ecx, 0xc0010130
    mov eax, (\reg << 30) | 4
    mov edx, \leaf
    wrmsr
    mov edi, {SERVICES}
    mov dword ptr [edi + {VMGEXIT}], 0
    rdmsr
    and eax, 0xfff
    cmp eax, 5
    jne \fail
    mov eax, edx
.endm

// Asks the host to stop the guest (GHCB MSR protocol termination, reason set 0, reason 0)
// and parks: what an SEV-ES CPU does when the MSR protocol fails it.
.macro sevm_es_stop
    mov ecx, 0xc0010130
    mov eax, 0x100
    xor edx, edx
    wrmsr
    mov edi, {SERVICES}
    mov dword ptr [edi + {VMGEXIT}], 0
.Lsevm_es_stop\@:
    cli
    hlt
    jmp .Lsevm_es_stop\@
.endm

// sevm_xstate under SEV-ES: the same XCR0, with CPUID through the MSR protocol. With
// `store` set the XCR0 it sets goes to the boot-info page (the #VC handler sends it with
// CPUID leaf 0xD); the helper entry leaves guest memory alone. Clobbers eax, ebx, ecx,
// edx, edi.
.macro sevm_xstate_es fail, store=1
    sevm_msr_cpuid 1, 2, \fail
    test eax, 1 << 26
    jz .Lsevm_xstate_es_done\@
    mov ebx, cr4
    or ebx, 0x40000
    mov cr4, ebx
    sevm_msr_cpuid 0xd, 0, \fail
    mov ebx, eax
    mov eax, 3
    test ebx, 4
    jz .Lsevm_xstate_es_set\@
    or eax, 4
    and ebx, 0xe0
    cmp ebx, 0xe0
    jne .Lsevm_xstate_es_set\@
    or eax, 0xe0
.Lsevm_xstate_es_set\@:
    .if \store
    mov edi, {BOOT_INFO}
    mov [edi + {BI_XCR0}], eax
    .endif
    xor ecx, ecx
    xor edx, edx
    xsetbv
.Lsevm_xstate_es_done\@:
.endm

// ---------------------------------------------------------------------------------------
// 32-bit code: BSP set-up and the switch to long mode (BSP and APs).
// ---------------------------------------------------------------------------------------
.section .text.boot32, "ax"
.code32

.global sevm_bsp_entry32
sevm_bsp_entry32:
    mov ax, {SEL_KDATA}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax

    // SEV_STATUS into the boot-info page, before anything SEV-ES forbids. A guest without
    // SEV has no such MSR and takes #GP: a 32-bit IDT whose only gate, #GP, skips the
    // RDMSR leaves 0 then. (Under SEV-ES the MSR is read without a #VC.)
    mov esp, {KSTACKS} + {KSTACK_SIZE}
    mov edi, {IDT}
    xor eax, eax
    mov ecx, 28
    rep stosd
    mov eax, offset sevm_gp32
    and eax, 0xffff
    or eax, {SEL_KCODE32} << 16
    mov [{IDT} + 13 * 8], eax
    mov eax, offset sevm_gp32
    and eax, 0xffff0000
    or eax, 0x8e00
    mov [{IDT} + 13 * 8 + 4], eax
    lidt [sevm_idt32r]
    xor eax, eax
    xor edx, edx
    mov ecx, 0xc0010131
    rdmsr
sevm_sev_status_read:
    // No IDT again until the 64-bit one: the #GP gate was for this read only.
    lidt [sevm_no_idtr]
    mov [{BOOT_INFO}], eax
    mov [{BOOT_INFO} + 4], edx
    mov dword ptr [{BOOT_INFO} + {BI_XCR0}], 0
    mov dword ptr [{BOOT_INFO} + {BI_XCR0} + 4], 0
    // Early banner on the 16550 (port I/O is fine at CPL0, except under SEV-ES).
    test eax, 2
    jnz 3f
    mov esi, offset sevm_banner
    mov dx, 0x3f8
2:  mov al, [esi]
    test al, al
    jz 3f
    out dx, al
    inc esi
    jmp 2b
3:
    // Zero the PML4 and PDPT (2 pages) and the IDT page.
    mov edi, {PML4}
    xor eax, eax
    mov ecx, 2048
    rep stosd
    mov edi, {IDT}
    mov ecx, 1024
    rep stosd

    // PML4[0] -> PDPT; PDPT[0..4] -> the four page directories of the low 4 GiB.
    mov dword ptr [{PML4}], {PDPT} + 7
    mov edi, {PDPT}
    mov eax, {PD_BASE} + 7
    mov ecx, 4
4:  mov [edi], eax
    add eax, 0x1000
    add edi, 8
    loop 4b

    // Identity-map 0..4 GiB with 2 MiB pages: present, writable, user, large.
    // A and D stay clear so KVM's dirty log sees only real writes.
    mov edi, {PD_BASE}
    mov eax, 0x87
    mov ecx, 2048
5:  mov [edi], eax
    mov dword ptr [edi + 4], 0
    add eax, 0x200000
    add edi, 8
    loop 5b

    // RAM GDT: the ROM GDT's fixed entries; TSS descriptors are added per CPU.
    mov esi, offset sevm_rom_gdt
    mov edi, {GDT}
    mov ecx, 12
    rep movsd

    // IDT: exceptions 0..31 go to their stubs; NMI, #DF and #MC use IST1.
    mov edi, {IDT}
    mov ebx, offset sevm_exc_stubs
    xor ecx, ecx
6:  mov eax, ebx
    and eax, 0xffff
    or eax, {SEL_KCODE64} << 16
    mov [edi], eax
    mov eax, ebx
    and eax, 0xffff0000
    or eax, 0x8e00
    cmp ecx, 2
    je 7f
    cmp ecx, 8
    je 7f
    cmp ecx, 18
    je 7f
    jmp 8f
7:  or eax, 1
8:  mov [edi + 4], eax
    mov dword ptr [edi + 8], 0
    mov dword ptr [edi + 12], 0
    add ebx, 16
    add edi, 16
    inc ecx
    cmp ecx, 32
    jb 6b
    // The timer interrupt used by SLEEP_UNTIL, and the APIC's spurious vector. (No stack
    // yet, so no call: the gate writer is a macro.)
    .macro gate32 vector, handler
    mov edi, {IDT} + 16 * \vector
    mov eax, offset \handler
    and eax, 0xffff
    or eax, {SEL_KCODE64} << 16
    mov [edi], eax
    mov eax, offset \handler
    and eax, 0xffff0000
    or eax, 0x8e00
    mov [edi + 4], eax
    mov dword ptr [edi + 8], 0
    mov dword ptr [edi + 12], 0
    .endm
    gate32 {TIMER_VECTOR}, sevm_timer_irq
    gate32 {TIMER_VECTOR_ES}, sevm_timer_irq_es
    gate32 0xff, sevm_spurious_irq
    // #VC (SEV-ES) goes to its own stub, which reflects it to the CPL3 handler.
    gate32 29, sevm_vc_stub
    jmp sevm_enter_long_mode

// The #GP of the SEV_STATUS read of a guest without SEV: read 0 and go on after the
// RDMSR. A jump, not IRET: KVM's instruction emulator (all of CPL0 on these machines)
// has no protected-mode IRET.
sevm_gp32:
    add esp, 16
    xor eax, eax
    xor edx, edx
    jmp sevm_sev_status_read

sevm_es_stop32:
    sevm_es_stop

// APs arrive here from the real-mode trampoline, on the ROM GDT.
.global sevm_ap_entry32
sevm_ap_entry32:
    mov ax, {SEL_KDATA}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax

sevm_enter_long_mode:
    // CR4: PAE | OSFXSR | OSXMMEXCPT (SSE for the CPL3 code).
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    test byte ptr [{BOOT_INFO}], 2
    jnz 1f
    sevm_xstate
    jmp 2f
1:  sevm_xstate_es sevm_es_stop32
2:  mov eax, {PML4}
    mov cr3, eax
    // EFER.LME
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    // CR0: PG | WP | NE | ET | MP | PE, EM clear.
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80010033
    mov cr0, eax
    .byte 0xea
    .long sevm_entry64
    .word {SEL_KCODE64}

// The migration helper's measured entry point. A mirror vCPU starts here in 32-bit flat
// protected mode, paging off (what a VMM can set up without the guest's secrets; under
// SEV-ES its measured VMSA holds exactly this, from the helper descriptor). No register
// carries anything in: the host sets every register of a plain-SEV vCPU, so the entry
// takes its slot (stack, mailbox and lane id at once) from the counter in the helper's
// private anchor page with `lock xadd`, before it touches any stack. A value is never
// handed out twice, so two vCPUs (at once, or a later mirror) never share a stack or a
// nonce prefix. Everything else comes from the anchor that helper_init wrote at boot.
//
// SEV_STATUS (read first; no #VC under SEV-ES) decides how the entry reaches the host.
// Plain SEV: an entry past the last slot rings the doorbell with NO_SLOT and parks, one
// that finds no anchor rings NO_ANCHOR and parks (the host may start it again by setting
// its registers). SEV-ES: the VMSA exists from the launch on, before helper_init ran, and
// can never be reset, so an entry that finds no anchor asks to be held (AP reset hold,
// GHCB MSR protocol) and looks again when the VMM runs it next; past the last slot, or if
// the protocol fails, it asks for termination with sevmirror's reason set. CPUID for the
// XCR0 set-up goes through the MSR protocol too, and nothing is written to guest memory.
// Registers: esi = SEV_STATUS, ebp = the slot.
.global sevm_helper_entry32
sevm_helper_entry32:
    cli
    lgdt [sevm_ap16_gdtr]
    mov ax, {SEL_KDATA}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov ecx, 0xc0010131
    rdmsr
    mov esi, eax
1:  mov ebx, {HELPER_ANCHOR}
    cmp dword ptr [ebx], {ANCHOR_MAGIC_LO}
    jne 8f
    cmp dword ptr [ebx + 4], {ANCHOR_MAGIC_HI}
    jne 8f
    mov ebp, 1
    lock xadd dword ptr [ebx + {ANCHOR_NEXT_SLOT}], ebp
    cmp dword ptr [ebx + {ANCHOR_VCPUS} + 4], 0
    jne 7f
    cmp ebp, dword ptr [ebx + {ANCHOR_VCPUS}]
    jae 7f
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    test esi, 2
    jnz 2f
    sevm_xstate
    jmp 3f
2:  sevm_xstate_es sevm_helper_protocol32, 0
3:  mov ebx, {HELPER_ANCHOR}
    mov eax, [ebx + {ANCHOR_CR3}]
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80010033
    mov cr0, eax
    .byte 0xea
    .long sevm_helper_entry64
    .word {SEL_KCODE64}
7:  test esi, 2
    jnz 5f
    mov dword ptr [{SERVICES} + {DOORBELL}], {DOORBELL_NO_SLOT}
    jmp 9f
5:  mov eax, {HELPER_TERMINATE_NO_SLOT}
    jmp sevm_helper_terminate32
8:  test esi, 2
    jnz 6f
    mov dword ptr [{SERVICES} + {DOORBELL}], {DOORBELL_NO_ANCHOR}
9:  cli
    hlt
    jmp 9b
    // SEV-ES, no anchor yet: AP reset hold until the VMM releases this vCPU (a response
    // with a non-zero result), then look for the anchor again.
6:  mov ecx, 0xc0010130
    mov eax, 6
    xor edx, edx
    wrmsr
    mov dword ptr [{SERVICES} + {VMGEXIT}], 0
    rdmsr
    mov ecx, eax
    and ecx, 0xfff
    cmp ecx, 7
    jne sevm_helper_protocol32
    and eax, 0xfffff000
    or eax, edx
    jz 6b
    jmp 1b

// SEV-ES helper entry: the MSR protocol failed; ask for termination.
sevm_helper_protocol32:
    mov eax, {HELPER_TERMINATE_PROTOCOL}
// SEV-ES helper entry: termination request with eax = the request's low word (sevmirror's
// reason set and a reason), then park.
sevm_helper_terminate32:
    mov ecx, 0xc0010130
    xor edx, edx
    wrmsr
    mov dword ptr [{SERVICES} + {VMGEXIT}], 0
4:  cli
    hlt
    jmp 4b

// ---------------------------------------------------------------------------------------
// 64-bit CPL0 parts of the firmware alone (the shared runtime, guest-rt rt.s, has the rest:
// per-CPU set-up, exception stubs and the service calls).
// ---------------------------------------------------------------------------------------
.section .text.boot64, "ax"
.code64

// The firmware's own service calls: rt.s's dispatcher sends the numbers it does not know
// here (rax = the number; the #UD frame is on the stack as there).
.global sevm_svc_image
sevm_svc_image:
    cmp rax, {SVC_INCOMING_HOLD}
    je sevm_svc_incoming_hold
    cmp rax, {SVC_HANDOFF}
    je sevm_svc_handoff
    mov rax, -1
    jmp sevm_svc_return

// SEV-ES migration target, boot CPU: hold (AP reset hold, GHCB MSR protocol) until the VMM
// has received the guest, touching no memory (its stacks, tables and this CPU's slot are
// overwritten meanwhile), then start over as a CPU does: sevm_entry64 finds the saved
// state in the slot and resumes it.
sevm_svc_incoming_hold:
    cli
1:  mov ecx, 0xc0010130
    mov eax, 6
    xor edx, edx
    wrmsr
    mov edi, {SERVICES}
    mov dword ptr [rdi + {VMGEXIT}], 0
    rdmsr
    mov ecx, eax
    and ecx, 0xfff
    cmp ecx, 7
    jne sevm_es_stop64
    and eax, 0xfffff000
    or eax, edx
    jz 1b
    mov r13d, 1
    jmp sevm_entry64_resume


// The helper's 64-bit set-up: its own stacks, GDT, TSS and IDT from the anchor, then
// IRETQ to sevm_helper_rust_entry(slot, context, sev_status) at CPL3. EBP holds the slot
// the 32-bit entry took from the anchor's counter (never a value the host chose), ESI
// the SEV_STATUS it read.
sevm_helper_entry64:
    mov ax, {SEL_KDATA}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov ebx, {HELPER_ANCHOR}
    mov r15d, ebp
    mov r13d, esi
    cmp r15, [rbx + {ANCHOR_VCPUS}]
    jae sevm_park
    mov rax, r15
    shl rax, {KSTACK_SHIFT}
    add rax, [rbx + {ANCHOR_KSTACKS}]
    lea rsp, [rax + {KSTACK_SIZE}]
    lgdt [rbx + {ANCHOR_GDTR}]
    // The slot is this vCPU's alone, so its TSS is fresh (never marked busy before).
    mov eax, r15d
    shl eax, 4
    add eax, {SEL_TSS0}
    ltr ax
    lidt [rbx + {ANCHOR_IDTR}]
    mov rax, r15
    shl rax, {USTACK_SHIFT}
    add rax, [rbx + {ANCHOR_USTACKS}]
    add rax, {USTACK_SIZE} - 8
    push {SEL_UDATA}
    push rax
    push 2
    push {SEL_UCODE64}
    lea rax, [rip + sevm_helper_rust_entry]
    push rax
    mov rdi, r15
    mov rsi, [rbx + {ANCHOR_CONTEXT}]
    mov rdx, r13
    iretq

// Direct boot: hand off to the kernel the firmware loaded (guest-abi svc::HANDOFF), rdi =
// its 64-bit entry point, rsi = its zero page. Interrupts stay off. The hand-off GDT gives
// Linux's __BOOT_CS (0x10) and __BOOT_DS (0x18) as its 64-bit boot protocol asks: data
// segments loaded here, CS by a far return, then a near return into the kernel with every
// general register zero but RSI. The stack stays this CPU's kernel stack (firmware RAM,
// reserved in the kernel's E820 map). KVM's instruction emulator, which runs CPL0 code on
// the development machines, implements far returns in long mode (IRET only in real mode).
sevm_svc_handoff:
    cli
    lgdt [rip + sevm_handoff_gdtr]
    mov eax, 0x18
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rax, [rip + 2f]
    push 0x10
    push rax
    retfq
2:  push rdi
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    ret


.section .rodata.boot, "a"
// The boot CPU's first IDT, 32-bit gates 0..13: only #GP present (SEV_STATUS read).
.balign 8
sevm_idt32r:
    .word 14 * 8 - 1
    .long {IDT}
.balign 8
sevm_no_idtr:
    .word 0
    .long 0
sevm_banner:
    .asciz "sevmirror firmware: reset\r\n"
// The hand-off GDT (sevm_svc_handoff): null, null, a flat 64-bit code descriptor at 0x10
// and a flat data descriptor at 0x18, DPL 0, accessed bits set so that loading them never
// writes this read-only copy.
.balign 16
sevm_handoff_gdt:
    .quad 0
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
.balign 8
sevm_handoff_gdtr:
    .word 4 * 8 - 1
    .quad sevm_handoff_gdt

// ---------------------------------------------------------------------------------------
// The last 4 KiB of the image: boot GDT, 16-bit entry code, GUID table space, reset vector.
// ---------------------------------------------------------------------------------------
.section .romtop, "ax"
.code16
sevm_romtop:

.balign 8
sevm_rom_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    // 0x08: 64-bit code (accessed bit preset: the GDT is ROM)
    .quad 0x00cf93000000ffff    // 0x10: data
    .quad 0x00cff3000000ffff    // 0x18: user data
    .quad 0x00affb000000ffff    // 0x20: 64-bit user code
    .quad 0x00cf9b000000ffff    // 0x28: 32-bit code
sevm_rom_gdt_end:

// Application processors start here in real mode: from RAM after INIT-SIPI-SIPI (the BSP
// copies [sevm_ap16, sevm_ap16_end) to the trampoline page), or from ROM under SEV-ES
// (the GUID table's reset block points here). Position independent. The `call` below
// needs a stack: at reset SS:SP is 0:0, so it would write the word at 0xfffe, guest RAM
// that may hold the guest's data by then (an SEV-ES migration target starts its APs after
// the guest's pages arrived); the top of the reserved trampoline page takes it instead.
.balign 16
.global sevm_ap16
sevm_ap16:
    cli
    cld
    .byte 0x31, 0xc0                            // xor ax, ax
    .byte 0x8e, 0xd0                            // mov ss, ax
    .byte 0xbc                                  // mov sp, AP_TRAMPOLINE + 4 KiB
    .word {AP_STACK_TOP}
    .byte 0xe8, 0x00, 0x00                      // call 1f
1:  .byte 0x5b                                  // pop bx
    .byte 0x66, 0x2e, 0x0f, 0x01, 0x97          // o32 lgdt cs:[bx + disp16]
    .word sevm_ap16_gdtr - 1b
    .byte 0x0f, 0x20, 0xc0                      // mov eax, cr0
    .byte 0x0c, 0x01                            // or al, 1
    .byte 0x0f, 0x22, 0xc0                      // mov cr0, eax
    .byte 0x66, 0x2e, 0xff, 0xaf                // o32 jmp far cs:[bx + disp16]
    .word sevm_ap16_target - 1b
.balign 4
sevm_ap16_gdtr:
    .word sevm_rom_gdt_end - sevm_rom_gdt - 1
    .long sevm_rom_gdt
sevm_ap16_target:
    .long sevm_ap_entry32
    .word {SEL_KCODE32}
.global sevm_ap16_end
sevm_ap16_end:

// The BSP starts at the reset vector in real mode with CS base 0xFFFF0000.
.balign 16
sevm_reset16:
    cli
    cld
    .byte 0x66, 0x2e, 0x0f, 0x01, 0x16          // o32 lgdt cs:[disp16]
    .word 0xf000 + (sevm_ap16_gdtr - sevm_romtop)
    .byte 0x0f, 0x20, 0xc0                      // mov eax, cr0
    .byte 0x0c, 0x01                            // or al, 1
    .byte 0x0f, 0x22, 0xc0                      // mov cr0, eax
    .byte 0x66, 0xea                            // o32 jmp far SEL_KCODE32:sevm_bsp_entry32
    .long sevm_bsp_entry32
    .word {SEL_KCODE32}

// The SEV metadata ("ASEV") header and the footer GUID table are written here by the
// image builder (crates/firmware-image), which finds the space through these symbols.
.org 0x200
.global sevm_asev_space
sevm_asev_space:
.org 0x300
.global sevm_table_space
sevm_table_space:
.org 0xfe0
.global sevm_table_space_end
sevm_table_space_end:
.org 0xff0
.global reset_vector
reset_vector:
    .byte 0xe9                                  // jmp near sevm_reset16
    .word sevm_reset16 - (. + 2)
.org 0x1000

.code64
.text
