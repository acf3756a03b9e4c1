// sevmirror guest runtime: the 64-bit CPL0 code the firmware and the guest OS share.
//
// Guest CPL0 is run by KVM's instruction emulator on the development machines (kvm_pvm,
// ~1.6 M instructions/s, without SSE arithmetic), so this is the whole of the shared CPL0:
// the per-CPU set-up (stacks, TSS, GDT, IDT, then IRETQ to `sevm_rust_entry(cpu)` at
// CPL3), the exception stubs, the service calls CPL3 makes with `ud2` (guest-abi `svc`),
// the SEV-ES #VC reflection and the fault reports. Each image links it with its own
// addresses (guest-rt `layout`: the firmware's working area, or the OS's own memory) and
// supplies what is its alone: `sevm_rust_entry`, and `sevm_svc_image` for the service
// numbers this file does not know (it returns through `sevm_svc_return`). Only plain
// integer instructions are used here. Intel syntax; the names in braces are constants
// (see rt.rs).

// One register (0 EAX .. 3 EDX) of CPUID `leaf`, subleaf 0, through the GHCB MSR protocol
// (SEV-ES: a CPUID at CPL0 would raise #VC): the request in the GHCB MSR, VMGEXIT (the
// services page's register stands in for it on these machines), the response from the
// MSR; the value in eax. Anything but a CPUID response jumps to `fail`. Clobbers eax,
// ecx, edx, edi.
.macro rt_msr_cpuid leaf, reg, fail
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
.macro rt_es_stop
    mov ecx, 0xc0010130
    mov eax, 0x100
    xor edx, edx
    wrmsr
    mov edi, {SERVICES}
    mov dword ptr [edi + {VMGEXIT}], 0
.Lrt_es_stop\@:
    cli
    hlt
    jmp .Lrt_es_stop\@
.endm

.section .text.boot64, "ax"
.code64

// The first 64-bit instruction of every CPU. R13 is 0 here and 1 when the boot CPU of an
// SEV-ES migration target comes from its incoming hold (sevm_entry64_resume), which must
// resume a saved state or park: never boot over the guest that arrived. R13 is 2 when a
// kernel with tables of its own (the guest OS) comes back from its KERNEL_RESUME entry
// with the slot the firmware claimed for it (sevm_resume): straight to its restore.
.global sevm_entry64
sevm_entry64:
    xor r13d, r13d
.global sevm_entry64_resume
sevm_entry64_resume:
    mov ax, {SEL_KDATA}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax

    // CPU index = initial APIC ID (the VMM numbers vCPUs 0..n); under SEV-ES through the
    // GHCB MSR protocol.
    test byte ptr [{BOOT_INFO}], 2
    jnz 1f
    mov eax, 1
    cpuid
    jmp 2f
1:  rt_msr_cpuid 1, 1, sevm_es_stop64
    mov ebx, eax
2:  shr ebx, 24
    cmp ebx, {MAX_VCPUS}
    jae sevm_park
    mov r15d, ebx

    // Kernel stack: the upper half is for CPL3 -> CPL0 entries, the lower half for IST1.
    mov rax, r15
    shl rax, {KSTACK_SHIFT}
    lea rsp, [rax + {KSTACKS} + {KSTACK_SIZE}]
    lea r14, [rax + {KSTACKS} + {KSTACK_SIZE} / 2]

    // TSS: zero it, then rsp0, ist1 and an I/O map base past the limit (no I/O bitmap).
    mov rdi, r15
    shl rdi, {TSS_SHIFT}
    add rdi, {TSS_BASE}
    mov rsi, rdi
    xor eax, eax
    mov ecx, 26
2:  mov [rsi], eax
    add rsi, 4
    loop 2b
    mov [rdi + 4], rsp
    mov [rdi + 36], r14
    mov word ptr [rdi + 102], 104

    // TSS descriptor in the RAM GDT at TSS0 + 16 * cpu (base below 4 GiB).
    mov rbx, r15
    shl rbx, 4
    add rbx, {GDT} + {SEL_TSS0}
    mov rax, rdi
    and eax, 0xffff
    shl rax, 16
    or rax, 0x67
    mov rdx, rdi
    shr rdx, 16
    and edx, 0xff
    shl rdx, 32
    or rax, rdx
    mov edx, 0x89
    shl rdx, 40
    or rax, rdx
    mov rdx, rdi
    shr rdx, 24
    and edx, 0xff
    shl rdx, 56
    or rax, rdx
    mov [rbx], rax
    mov qword ptr [rbx + 8], 0

    lgdt [rip + sevm_ram_gdtr]
    mov rax, rbx
    sub rax, {GDT}
    ltr ax
    lidt [rip + sevm_idtr]

    // SEV-ES: a CPU whose slot holds a saved state (a migration target, after the guest's
    // pages arrived) resumes that state instead of booting.
    test byte ptr [{BOOT_INFO}], 2
    jz 3f
    mov rdi, r15
    shl rdi, {VCPU_SAVE_SHIFT}
    add rdi, {VCPU_SAVE_BASE}
    cmp r13d, 2
    je sevm_resume_claimed
    movabs rax, {SAVE_SAVED}
    cmp [rdi + {SAVE_STATE}], rax
    je sevm_resume
    test r13d, r13d
    jnz sevm_park
3:
    // IRETQ to sevm_rust_entry(cpu) at CPL3 with interrupts off. The user stack pointer
    // is 8 below a 16-byte boundary, as after a call.
    mov rax, r15
    shl rax, {USTACK_SHIFT}
    lea rax, [rax + {USTACKS} + {USTACK_SIZE} - 8]
    push {SEL_UDATA}
    push rax
    push 2
    push {SEL_UCODE64}
    lea rax, [rip + sevm_rust_entry]
    push rax
    mov rdi, r15
    iretq

.global sevm_park
sevm_park:
    cli
    hlt
    jmp sevm_park

// Resume the saved state in slot rdi (r15 = this CPU, the per-CPU set-up done): claim the
// slot (SAVED -> RESUMING, so no second vCPU restores it; the loser parks), check it is
// this CPU's, and IRETQ to the CPL3 restore code (es_state.rs, sevm_resume_user) with
// rdi = the slot, on a stack below the saved one's red zone (the restore sets its own).
// A slot whose KERNEL_RESUME word is set was saved by a kernel with a CPL0 context of its
// own (the guest OS): the claimed slot goes there instead, at CPL0 with rdi = the slot and
// r15 = this CPU, and the kernel loads its page tables and descriptor tables and enters
// its own per-CPU set-up with r13 = 2 (sevm_entry64_resume), which comes back to
// sevm_resume_claimed in the kernel's copy of this code.
.global sevm_resume
sevm_resume:
    movabs rcx, {SAVE_RESUMING}
    lock cmpxchg [rdi + {SAVE_STATE}], rcx
    jne sevm_park
    cmp [rdi + {SAVE_CPU}], r15
    jne sevm_park
    mov rax, [rdi + {SAVE_KERNEL_RESUME}]
    test rax, rax
    jz sevm_resume_claimed
    jmp rax
.global sevm_resume_claimed
sevm_resume_claimed:
    cmp [rdi + {SAVE_CPU}], r15
    jne sevm_park
    mov rax, [rdi + {SAVE_RSP}]
    sub rax, 256
    and rax, -16
    push {SEL_UDATA}
    push rax
    push 2
    push {SEL_UCODE64}
    lea rax, [rip + sevm_resume_user]
    push rax
    iretq


.global sevm_es_stop64
sevm_es_stop64:
    rt_es_stop

// Exception stubs, 16 bytes apart: push a zero error code where the CPU pushes none,
// push the vector, join the common path.
.balign 16
.global sevm_exc_stubs
sevm_exc_stubs:
.irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    push 0
    .endif
    push \vec
    jmp sevm_exc_common
.endr

// Stack: vector, error, rip, cs, rflags, rsp, ss.
sevm_exc_common:
    cmp qword ptr [rsp], 6
    jne sevm_fault
    test byte ptr [rsp + 24], 3
    jz sevm_fault
    push rcx
    mov rcx, [rsp + 24]
    cmp dword ptr [rcx], {SVC_CALL_BYTES}
    pop rcx
    jne sevm_fault

    // A service call from CPL3: rax = service, rdi/rsi/rdx = arguments, result in rax.
    // Like a function call, it may clobber rcx, rdx, rsi, rdi, r8-r11 (r8 is also the
    // fourth argument).
    cmp rax, {SVC_OUT}
    je sevm_svc_out
    cmp rax, {SVC_IN}
    je sevm_svc_in
    cmp rax, {SVC_WRMSR}
    je sevm_svc_wrmsr
    cmp rax, {SVC_RDMSR}
    je sevm_svc_rdmsr
    cmp rax, {SVC_HALT}
    je sevm_park
    cmp rax, {SVC_VMMCALL}
    je sevm_svc_vmmcall
    cmp rax, {SVC_SLEEP_UNTIL}
    je sevm_svc_sleep
    cmp rax, {SVC_CPUID}
    je sevm_svc_cpuid
    cmp rax, {SVC_STI_HLT}
    je sevm_svc_sti_hlt
    cmp rax, {SVC_VC_RETURN}
    je sevm_svc_vc_return
    cmp rax, {SVC_RAISE_VC}
    je sevm_svc_raise_vc
    jmp sevm_svc_image
.global sevm_svc_return
sevm_svc_return:
    add qword ptr [rsp + 16], 4
    add rsp, 16
    iretq

sevm_svc_out:
    mov rax, rdx
    mov edx, edi
    cmp esi, 1
    je 2f
    cmp esi, 2
    je 3f
    out dx, eax
    jmp 4f
2:  out dx, al
    jmp 4f
3:  out dx, ax
4:  xor eax, eax
    jmp sevm_svc_return

sevm_svc_in:
    mov edx, edi
    xor eax, eax
    cmp esi, 1
    je 2f
    cmp esi, 2
    je 3f
    in eax, dx
    jmp sevm_svc_return
2:  in al, dx
    jmp sevm_svc_return
3:  in ax, dx
    jmp sevm_svc_return

sevm_svc_wrmsr:
    mov ecx, edi
    mov rax, rsi
    mov rdx, rsi
    shr rdx, 32
    wrmsr
    xor eax, eax
    jmp sevm_svc_return

sevm_svc_rdmsr:
    mov ecx, edi
    rdmsr
    shl rdx, 32
    or rax, rdx
    jmp sevm_svc_return

// Sleep until TSC >= rdi: x2APIC on, LVT timer in TSC-deadline mode on TIMER_VECTOR,
// arm IA32_TSC_DEADLINE, then sti; hlt (the interrupt shadow of sti makes this race-free).
sevm_svc_sleep:
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00
    wrmsr
    // Spurious-vector register: APIC software-enabled, spurious vector 0xff.
    mov ecx, 0x80f
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
    mov ecx, 0x832
    mov eax, 0x40000 | {TIMER_VECTOR}
    xor edx, edx
    wrmsr
    mov ecx, 0x6e0
    mov rax, rdi
    mov rdx, rdi
    shr rdx, 32
    wrmsr
    sti
    hlt
    cli
    xor eax, eax
    jmp sevm_svc_return

// A spurious APIC interrupt: nothing to acknowledge.
.global sevm_spurious_irq
sevm_spurious_irq:
    iretq

// SEV-ES: wait for an interrupt. The CPL3 caller armed the timer through the GHCB and sends
// the EOI through it when this returns.
sevm_svc_sti_hlt:
    sti
    hlt
    cli
    xor eax, eax
    jmp sevm_svc_return

// The SEV-ES timer interrupt: no EOI here (an x2APIC MSR write raises #VC at CPL0).
.global sevm_timer_irq_es
sevm_timer_irq_es:
    iretq

// #VC (vector 29, SEV-ES). The CPU pushed SS, RSP, RFLAGS, CS, RIP and the error code (the
// exit code). Rust never runs at CPL0 here, so a #VC from CPL3 is reflected to the CPL3
// handler (sevm_vc_rust_entry): the frame (the vector and the GPRs pushed below the CPU's
// part: vc-handler's VcFrame) is copied to this CPU's frame slot, and IRETQ enters the
// handler on the interrupted stack below its red zone. The handler returns through the
// VC_RETURN service. A #VC at CPL0, or one while this CPU's handler runs, is fatal.
.global sevm_vc_stub
sevm_vc_stub:
    cld
    test byte ptr [rsp + 16], 3
    jz 9f
    push 29
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    // This CPU's slot, from its kernel stack (CPU n's is the n-th KSTACK_SIZE block).
    mov rbx, rsp
    sub rbx, {KSTACKS}
    shr rbx, {KSTACK_SHIFT}
    shl rbx, {VC_STRIDE_SHIFT}
    add rbx, {VC_FRAMES}
    cmp qword ptr [rbx + {VC_BUSY}], 0
    jne 8f
    mov qword ptr [rbx + {VC_BUSY}], 1
    mov rdi, rbx
    mov rsi, rsp
    mov ecx, {VC_FRAME_SIZE} / 8
    rep movsq
    mov rax, [rsp + {VC_FRAME_RSP}]
    sub rax, 128
    and rax, -16
    sub rax, 8
    add rsp, {VC_FRAME_SIZE}
    push {SEL_UDATA}
    push rax
    push 2
    push {SEL_UCODE64}
    lea rax, [rip + sevm_vc_rust_entry]
    push rax
    mov rdi, rbx
    iretq
8:  add rsp, {VC_FRAME_VECTOR}
    jmp sevm_fault
9:  push 29
    jmp sevm_fault

// Return from the #VC handler: the registers from this CPU's frame slot, then IRETQ to the
// frame's RIP and RSP, only ever at CPL3 and with only the arithmetic flags and DF of the
// frame (interrupts stay off). The #UD frame of this call is reused for the IRETQ.
sevm_svc_vc_return:
    mov rbx, rsp
    sub rbx, {KSTACKS}
    shr rbx, {KSTACK_SHIFT}
    shl rbx, {VC_STRIDE_SHIFT}
    add rbx, {VC_FRAMES}
    cmp qword ptr [rbx + {VC_BUSY}], 0
    je sevm_fault
    mov rax, [rbx + {VC_FRAME_RIP}]
    mov [rsp + 16], rax
    mov qword ptr [rsp + 24], {SEL_UCODE64}
    mov rax, [rbx + {VC_FRAME_RFLAGS}]
    and eax, 0xcd5
    or eax, 2
    mov [rsp + 32], rax
    mov rax, [rbx + {VC_FRAME_RSP}]
    mov [rsp + 40], rax
    mov qword ptr [rsp + 48], {SEL_UDATA}
    mov r15, [rbx + 0x00]
    mov r14, [rbx + 0x08]
    mov r13, [rbx + 0x10]
    mov r12, [rbx + 0x18]
    mov r11, [rbx + 0x20]
    mov r10, [rbx + 0x28]
    mov r9, [rbx + 0x30]
    mov r8, [rbx + 0x38]
    mov rdi, [rbx + 0x40]
    mov rsi, [rbx + 0x48]
    mov rbp, [rbx + 0x50]
    mov rdx, [rbx + 0x60]
    mov rcx, [rbx + 0x68]
    mov rax, [rbx + 0x70]
    mov qword ptr [rbx + {VC_BUSY}], 0
    mov rbx, [rbx + 0x58]
    add rsp, 16
    iretq

// Test service: this #UD frame becomes the frame the CPU pushes for a #VC with error code
// rdi at the instruction at rsi, with rax = r8; then the #VC path runs as for a real one.
sevm_svc_raise_vc:
    add rsp, 8
    mov [rsp], rdi
    mov [rsp + 8], rsi
    mov rax, r8
    jmp sevm_vc_stub

// The timer interrupt: acknowledge it (x2APIC EOI) and return to the sleeper.
.global sevm_timer_irq
sevm_timer_irq:
    push rax
    push rcx
    push rdx
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq

sevm_svc_cpuid:
    push rbx
    mov eax, edi
    mov ecx, esi
    cpuid
    shl rbx, 32
    or rax, rbx
    shl rdx, 32
    or rdx, rcx
    pop rbx
    jmp sevm_svc_return

sevm_svc_vmmcall:
    push rbx
    mov rax, rdi
    mov rbx, rsi
    mov rcx, rdx
    mov rdx, r8
    vmmcall
    pop rbx
    jmp sevm_svc_return

// A fatal exception: report it through the services page (the VMM stops the VM) and park.
// Under SEV-ES through this CPU's GHCB (sevmirror's fault service; MMIO would raise #VC).
.global sevm_fault
sevm_fault:
    test byte ptr [{BOOT_INFO}], 2
    jnz sevm_fault_es
    mov ebx, {SERVICES}
    mov rax, [rsp + 16]
    mov [rbx + {FAULT_RIP}], rax
    mov rax, [rsp + 8]
    mov [rbx + {FAULT_ERROR}], rax
    mov rax, cr2
    mov [rbx + {FAULT_ADDR}], rax
    mov rax, [rsp + 24]
    and eax, 3
    shl eax, 8
    or rax, [rsp]
    mov [rbx + {FAULT}], rax
    jmp sevm_park

// Stack: vector, error, rip, cs, ...; this CPU's GHCB from its kernel stack (the IST half
// is in the same block). A fresh request: save area cleared, then the exit and its fields
// (guest-abi ghcb and ghcb::service::Call::Fault) marked valid.
sevm_fault_es:
    mov rbx, rsp
    sub rbx, {KSTACKS}
    shr rbx, {KSTACK_SHIFT}
    shl rbx, 12
    add rbx, {GHCB_BASE}
    mov rdi, rbx
    xor eax, eax
    mov ecx, {GHCB_SAVE_END} / 8
    rep stosq
    mov rax, [rsp + 16]
    mov [rbx + {GHCB_RBX}], rax
    mov rax, [rsp + 8]
    mov [rbx + {GHCB_RCX}], rax
    mov rax, cr2
    mov [rbx + {GHCB_RDX}], rax
    mov rax, [rsp + 24]
    and eax, 3
    shl eax, 8
    or rax, [rsp]
    mov [rbx + {GHCB_INFO2}], rax
    mov qword ptr [rbx + {GHCB_INFO1}], {CALL_FAULT}
    mov eax, {EXIT_SERVICE}
    mov [rbx + {GHCB_EXIT_CODE}], rax
    movabs rax, {FAULT_VALID_HI}
    mov [rbx + {GHCB_VALID} + 8], rax
    mov word ptr [rbx + {GHCB_VERSION}], {GHCB_PROTOCOL}
    mov dword ptr [rbx + {GHCB_USAGE}], 0
    mov ecx, 0xc0010130
    mov eax, ebx
    xor edx, edx
    wrmsr
    mov edi, {SERVICES}
    mov dword ptr [rdi + {VMGEXIT}], 0
    jmp sevm_park

.section .rodata.rt, "a"
.balign 8
.global sevm_ram_gdtr
sevm_ram_gdtr:
    .word {GDT_LIMIT}
    .quad {GDT}
.balign 8
.global sevm_idtr
sevm_idtr:
    .word 256 * 16 - 1
    .quad {IDT}
