// sevmirror guest OS: its CPL0 entry (ELF hand-off protocol, crates/loader `load`).
//
// The firmware jumps here at CPL0 in 64-bit mode, interrupts off, on its hand-off GDT and
// its identity map, with RSI = the zero page: the boot CPU once, and every AP it starts
// for the OS (each AP comes up through the firmware's AP path and is handed over here the
// same way). Nothing of the firmware's is used past the first instructions: the boot CPU
// builds the OS's own identity map, GDT and IDT in the OS's area (guest-rt layout), and
// every CPU loads them and joins guest-rt's per-CPU set-up (rt.s sevm_entry64), which
// IRETQs to sevm_rust_entry(cpu) at CPL3. CPL0 is emulated on the development machines,
// so this stays a few thousand plain integer instructions. Names in braces: see entry.rs.

.section .text.entry, "ax"
.code64
.global os_entry
os_entry:
    cli
    cld
    // The boot CPU comes first; APs only once it has started them.
    mov ebx, {BOOT_INFO}
    cmp qword ptr [rbx + {BI_BSP_DONE}], 0
    jne os_ap_entry
    mov [rbx + {BI_ZERO_PAGE}], rsi
    mov rax, cr4
    mov [rbx + {BI_CR4}], rax
    // The OS's own stack from here on (CPU 0's kernel stack; rt.s sets it again).
    mov esp, {KSTACKS} + {KSTACK_SIZE}

    // SEV_STATUS, the way the firmware reads it (no #VC under SEV-ES), with a #GP gate
    // for a CPU without the MSR: the handler leaves 0 and goes on after the RDMSR. The
    // OS's IDT page is the gate's table for this read alone.
    mov edi, {IDT}
    lea rax, [rip + os_gp_early]
    mov [rdi + 13 * 16], ax
    mov word ptr [rdi + 13 * 16 + 2], {SEL_BOOT_CS}
    mov word ptr [rdi + 13 * 16 + 4], 0x8e00
    shr rax, 16
    mov [rdi + 13 * 16 + 6], ax
    shr rax, 16
    mov [rdi + 13 * 16 + 8], eax
    lidt [rip + os_idtr_early]
    xor eax, eax
    xor edx, edx
    mov ecx, 0xc0010131
    rdmsr
os_sev_status_read:
    shl rdx, 32
    or rax, rdx
    mov [rbx], rax

    // The identity map: PML4[0] -> PDPT, PDPT[0..4] -> four page directories, 0..4 GiB in
    // 2 MiB pages, present, writable, user (A and D clear: KVM's dirty log sees only real
    // writes). RAM above 4 GiB is mapped from CPL3 (guest-rt paging). The loader zeroed
    // the area.
    mov edi, {PML4}
    mov dword ptr [rdi], {PDPT} + 7
    mov edi, {PDPT}
    mov eax, {PD_BASE} + 7
    mov ecx, 4
1:  mov [rdi], eax
    add eax, 0x1000
    add edi, 8
    loop 1b
    mov edi, {PD_BASE}
    mov eax, 0x87
    mov ecx, 2048
2:  mov [rdi], eax
    mov dword ptr [rdi + 4], 0
    add eax, 0x200000
    add edi, 8
    loop 2b

    // The GDT's fixed entries (guest-abi selectors); rt.s adds each CPU's TSS.
    lea rsi, [rip + os_gdt_fixed]
    mov edi, {GDT}
    mov ecx, 6
    rep movsq

    // The IDT: exceptions 0..31 to rt.s's stubs (NMI, #DF, #MC on IST1), the timer and
    // spurious vectors, and #VC to its own stub.
    mov edi, {IDT}
    lea rbx, [rip + sevm_exc_stubs]
    xor ecx, ecx
3:  mov rax, rbx
    xor edx, edx
    cmp ecx, 2
    je 4f
    cmp ecx, 8
    je 4f
    cmp ecx, 18
    je 4f
    jmp 5f
4:  mov edx, 1
5:  call os_gate
    add rbx, 16
    add edi, 16
    inc ecx
    cmp ecx, 32
    jb 3b
    .macro os_gate64 vector, handler
    mov edi, {IDT} + 16 * \vector
    lea rax, [rip + \handler]
    xor edx, edx
    call os_gate
    .endm
    os_gate64 {TIMER_VECTOR}, sevm_timer_irq
    os_gate64 {TIMER_VECTOR_ES}, sevm_timer_irq_es
    os_gate64 0xff, sevm_spurious_irq
    os_gate64 29, sevm_vc_stub

    mov ebx, {BOOT_INFO}
    mov qword ptr [rbx + {BI_BSP_DONE}], 1
    jmp os_cpu_entry

// An AP the firmware handed over: the boot CPU built everything already.
os_ap_entry:

// Every CPU: the OS's page tables and GDT (CS reloaded by a far return: KVM's emulator
// has no IRET outside real mode but far returns), then rt.s's per-CPU set-up.
os_cpu_entry:
    mov eax, {PML4}
    mov cr3, rax
    lgdt [rip + sevm_ram_gdtr]
    lea rax, [rip + 6f]
    push {SEL_KCODE64}
    push rax
    retfq
6:  jmp sevm_entry64

// SEV-ES migration target: the firmware claimed this CPU's saved-state slot (rdi), which
// the OS saved (guest-abi vcpu_save::KERNEL_RESUME), and jumps here at CPL0 on its own
// tables with r15 = the CPU. The OS's page tables and GDT, then rt.s's per-CPU set-up
// with r13 = 2, which goes on to the CPL3 restore of the claimed slot.
.global sevm_kernel_resume
sevm_kernel_resume:
    cli
    cld
    mov eax, {PML4}
    mov cr3, rax
    lgdt [rip + sevm_ram_gdtr]
    lea rax, [rip + 7f]
    push {SEL_KCODE64}
    push rax
    retfq
7:  mov r13d, 2
    jmp sevm_entry64_resume

// Writes a 64-bit interrupt gate at rdi: handler rax, IST edx (0 or 1), DPL 0, kernel code
// selector. Clobbers rax. (Stack: the firmware's kernel stack, a few words.)
os_gate:
    mov [rdi], ax
    mov word ptr [rdi + 2], {SEL_KCODE64}
    mov [rdi + 4], dl
    mov byte ptr [rdi + 5], 0x8e
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    ret

// The #GP of the SEV_STATUS read without SEV: drop the frame (error code, RIP, CS,
// RFLAGS, RSP, SS), read 0, go on. Interrupts are off and the stack is the one of the
// read, so this is what IRETQ would do, minus the RIP.
os_gp_early:
    add rsp, 48
    xor eax, eax
    xor edx, edx
    jmp os_sev_status_read

// The OS's own service calls (rt.s sends the numbers it does not know here): none.
.global sevm_svc_image
sevm_svc_image:
    mov rax, -1
    jmp sevm_svc_return

.section .rodata.entry, "a"
.balign 8
os_gdt_fixed:
    .quad 0
    .quad 0x00af9b000000ffff    // 0x08: 64-bit code
    .quad 0x00cf93000000ffff    // 0x10: data
    .quad 0x00cff3000000ffff    // 0x18: user data
    .quad 0x00affb000000ffff    // 0x20: 64-bit user code
    .quad 0x00cf9b000000ffff    // 0x28: 32-bit code
.balign 8
os_idtr_early:
    .word 14 * 16 - 1
    .quad {IDT}
