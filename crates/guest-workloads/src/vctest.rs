//! `vctest`: the SEV-ES #VC handler and GHCB client against the real VMM.
//!
//! The CPU never raises #VC on the development machines, so this workload enters the
//! handler with synthetic exception frames, one per instruction kind, and checks what it
//! wrote back against the same information fetched another way (CPUID by the GHCB MSR
//! protocol, SEV_STATUS at CPL0, fw_cfg's signature, the console output the test reads).
//! It also raises #VCs through the real path — rt.s's vector-29 stub, the CPL3 handler
//! and the VC_RETURN service — with the RAISE_VC test service, drives the GHCB client's
//! own calls (the MSR protocol, the services exit) and malformed requests the VMM must
//! refuse. One line per failed case, then `vctest: PASS` or `vctest: FAIL`.

use guest_abi::{
    ghcb::{
        reason, service::Call, EventInjection, ExitCode, Field, Ghcb, GhcbError, PROTOCOL_VERSION,
    },
    layout::{self, SERVICES_GPA},
    services::{self as regs, exit_code, hcall},
};
use guest_rt::{
    cpu::{self, VcInstruction},
    ghcb, println, services, vc,
};
use vc_handler::{
    client::{self, GhcbClient, Vmgexit},
    frame::VcFrame,
    handler::VcError,
};

const MSR_SEV_STATUS: u32 = 0xc001_0131;
const RIP: u64 = 0x7000_0000;

struct Run {
    cases: u32,
    failed: u32,
}

impl Run {
    fn check(&mut self, name: &str, ok: bool) {
        self.cases += 1;
        if !ok {
            self.failed += 1;
            println!("vctest: case {name} FAILED");
        }
    }
}

fn frame(exit: ExitCode) -> VcFrame {
    VcFrame {
        vector: 29,
        error_code: exit.0,
        rip: RIP,
        cs: u64::from(layout::selector::USER_CODE64),
        ..VcFrame::default()
    }
}

/// Runs one synthetic #VC, with the instruction bytes at the frame's RIP (a copy on the
/// stack) as the real entry would see them.
fn vc_at(
    ghcb: &mut GhcbClient<ghcb::CpuGhcb>,
    f: &mut VcFrame,
    insn: &[u8],
) -> Result<(), VcError> {
    let mut code = [0x90u8; 16];
    code[..insn.len()].copy_from_slice(insn);
    let saved = f.rip;
    f.rip = code.as_ptr() as u64;
    let r = vc::handle_at_rip(f, ghcb);
    // Report RIP relative to the synthetic address.
    f.rip = saved + (f.rip - code.as_ptr() as u64);
    r
}

/// Runs the cases; exits the VM with PASS or FAIL.
pub fn run(es: bool) -> ! {
    if !es {
        println!("vctest: SKIP: not an SEV-ES guest");
        services::exit(exit_code::PASS);
    }
    let mut g = ghcb::client();
    let mut run = Run {
        cases: 0,
        failed: 0,
    };

    // CPUID: the #VC answer equals the MSR protocol's (the VMM's table either way), upper
    // halves cleared.
    for leaf in [0u32, 1, 0x8000_001f] {
        let Ok(want) = client::msr_cpuid(g.transport(), leaf) else {
            run.check("msr-protocol cpuid", false);
            continue;
        };
        let mut f = frame(ExitCode::CPUID);
        f.rax = 0xffff_ffff_0000_0000 | u64::from(leaf);
        f.rcx = 0xffff_ffff_0000_0000;
        let ok = vc_at(&mut g, &mut f, &[0x0f, 0xa2]).is_ok()
            && [f.rax, f.rbx, f.rcx, f.rdx] == want.map(u64::from)
            && f.rip == RIP + 2;
        run.check("cpuid", ok);
    }

    // RDMSR of SEV_STATUS equals the CPL0 read and says SEV-ES.
    let mut f = frame(ExitCode::MSR);
    f.rcx = u64::from(MSR_SEV_STATUS);
    let ok = vc_at(&mut g, &mut f, &[0x0f, 0x32]).is_ok()
        && f.rdx << 32 | f.rax == cpu::rdmsr(MSR_SEV_STATUS)
        && f.rax & 3 == 3;
    run.check("rdmsr", ok);
    // WRMSR the VMM refuses (STAR lives in the VMSA, not in KVM's MSR emulation): the
    // guest must raise #GP; the frame stays as it was.
    let mut f = frame(ExitCode::MSR);
    f.rcx = 0xc000_0081;
    let before = f;
    let r = vc_at(&mut g, &mut f, &[0x0f, 0x30]);
    run.check(
        "wrmsr refused",
        r == Err(VcError::Ghcb(GhcbError::Exception(EventInjection::GP))) && f == before,
    );

    // Port I/O: fw_cfg's signature through `out dx, ax` and `in al, dx`.
    let mut f = frame(ExitCode::IOIO);
    f.rdx = 0xffff_0000 | u64::from(guest_abi::fwcfg::PORT_SELECTOR);
    f.rax = u64::from(guest_abi::fwcfg::KEY_SIGNATURE);
    let mut ok = vc_at(&mut g, &mut f, &[0x66, 0xef]).is_ok();
    let mut sig = [0u8; 4];
    for b in &mut sig {
        let mut f = frame(ExitCode::IOIO);
        f.rdx = u64::from(guest_abi::fwcfg::PORT_DATA);
        f.rax = 0x1122_3344_5566_7700;
        ok &= vc_at(&mut g, &mut f, &[0xec]).is_ok() && f.rax >> 8 == 0x11_2233_4455_6677;
        *b = f.rax as u8;
    }
    run.check("in/out", ok && sig == guest_abi::fwcfg::SIGNATURE);
    // `out 0x80, al`: the immediate-port form (port 0x80 is ignored by the VMM).
    let mut f = frame(ExitCode::IOIO);
    run.check(
        "out imm8",
        vc_at(&mut g, &mut f, &[0xe6, 0x80]).is_ok() && f.rip == RIP + 2,
    );
    // INS is refused before any exit.
    let mut f = frame(ExitCode::IOIO);
    run.check(
        "rep insb refused",
        vc_at(&mut g, &mut f, &[0xf3, 0x6c]) == Err(VcError::StringIo),
    );

    // MMIO writes to the services page: console bytes the test reads back.
    let mut f = frame(ExitCode::NPF);
    f.rax = SERVICES_GPA + regs::CONSOLE;
    f.rcx = u64::from_le_bytes(*b"vctest: ");
    let mut ok = vc_at(&mut g, &mut f, &[0x48, 0x89, 0x08]).is_ok(); // mov [rax], rcx
    let mut f = frame(ExitCode::NPF);
    f.r8 = SERVICES_GPA;
    f.rsi = u64::from(u32::from_le_bytes(*b"mmio"));
    ok &= vc_at(&mut g, &mut f, &[0x41, 0x89, 0x30]).is_ok(); // mov [r8], esi
                                                              // mov word ptr [rip+0x40], 0x202c: ", " through a RIP-relative store.
    let mut f = frame(ExitCode::NPF);
    f.rip = SERVICES_GPA + regs::CONSOLE - 0x40 - 9;
    let insn = [0x66, 0xc7, 0x05, 0x40, 0x00, 0x00, 0x00, 0x2c, 0x20];
    ok &= vc::handle(&mut f, &insn, &mut g).is_ok();
    let mut f = frame(ExitCode::NPF);
    f.rbx = SERVICES_GPA;
    f.rax = 0x4b4f; // "OK"
    ok &= vc_at(&mut g, &mut f, &[0x88, 0x03]).is_ok(); // mov [rbx], al
    ok &= vc_at(&mut g, &mut f, &[0x88, 0x23]).is_ok(); // mov [rbx], ah
    ok &= vc_at(&mut g, &mut f, &[0xc6, 0x03, b'\n']).is_ok(); // mov byte [rbx], '\n'
    run.check("mmio write", ok);

    // MMIO reads: the pending request (none) and an undefined register (all ones).
    let mut f = frame(ExitCode::NPF);
    f.r8 = SERVICES_GPA;
    f.r11 = u64::MAX;
    // mov r11, qword ptr [r8+disp32] (a disp8 of 0x88 would be negative)
    let mut insn = [0x4d, 0x8b, 0x98, 0, 0, 0, 0];
    insn[3..].copy_from_slice(&(regs::REQUEST as u32).to_le_bytes());
    let ok = vc_at(&mut g, &mut f, &insn).is_ok() && f.r11 == 0;
    run.check("mmio read", ok);
    let mut f = frame(ExitCode::NPF);
    f.rdx = SERVICES_GPA;
    // movzx ecx, word ptr [rdx+0x800]
    let ok = vc_at(&mut g, &mut f, &[0x0f, 0xb7, 0x8a, 0x00, 0x08, 0x00, 0x00]).is_ok()
        && f.rcx == 0xffff;
    run.check("mmio movzx", ok);
    // MMIO to private RAM is refused before any exit.
    let mut f = frame(ExitCode::NPF);
    f.rax = layout::SEV_SECRET_BASE;
    run.check(
        "mmio to private memory refused",
        matches!(
            vc_at(&mut g, &mut f, &[0x89, 0x08]),
            Err(VcError::MmioRefused { .. })
        ),
    );

    // VMMCALL: KVM_HC_MAP_GPA_RANGE (the fw_cfg page is already shared), a malformed one,
    // an unknown hypercall.
    let vmmcall = |g: &mut GhcbClient<ghcb::CpuGhcb>, args: [u64; 4]| {
        let mut f = frame(ExitCode::VMMCALL);
        (f.rax, f.rbx, f.rcx, f.rdx) = (args[0], args[1], args[2], args[3]);
        vc_at(g, &mut f, &[0x0f, 0x01, 0xd9]).map(|()| f.rax)
    };
    let shared = hcall::MAP_GPA_RANGE_PAGE_SZ_4K;
    run.check(
        "vmmcall map-gpa-range",
        vmmcall(
            &mut g,
            [
                hcall::MAP_GPA_RANGE,
                guest_rt::layout::FWCFG_DMA_PAGE,
                1,
                shared,
            ],
        ) == Ok(0),
    );
    run.check(
        "vmmcall einval",
        vmmcall(&mut g, [hcall::MAP_GPA_RANGE, 0x1001, 1, shared]) == Ok((-22i64) as u64),
    );
    run.check(
        "vmmcall enosys",
        vmmcall(&mut g, [99, 0, 0, 0]) == Ok((-1000i64) as u64),
    );

    // A #VC the CPU would not raise for this instruction.
    let mut f = frame(ExitCode::CPUID);
    run.check(
        "mismatch refused",
        vc_at(&mut g, &mut f, &[0xec]) == Err(VcError::Mismatch { exit: 0x72 }),
    );

    // The services exit: a console line and a pending-request read.
    let ok = g
        .console(b"vctest: console through the GHCB services exit\n")
        .is_ok()
        && g.service(Call::TakeRequest, 0, [0; 3]) == Ok(0);
    run.check("services exit", ok);

    // Malformed requests: the VMM answers with the reason, and serves nothing.
    let mut page = Ghcb::zeroed();
    page.begin(PROTOCOL_VERSION);
    page.set(Field::SwExitCode, ExitCode::CPUID.0);
    page.set(Field::SwExitInfo1, 0);
    page.set(Field::SwExitInfo2, 0);
    page.set(Field::Rax, 1);
    g.transport().vmgexit(&mut page);
    run.check(
        "missing input",
        page.check_response(ExitCode::CPUID, 0) == Err(GhcbError::Malformed(reason::MISSING_INPUT)),
    );
    page.begin(PROTOCOL_VERSION);
    page.set(Field::SwExitCode, 0x6e); // RDTSC: not served
    page.set(Field::SwExitInfo1, 0);
    page.set(Field::SwExitInfo2, 0);
    g.transport().vmgexit(&mut page);
    run.check(
        "unknown exit code",
        page.check_response(ExitCode(0x6e), 0) == Err(GhcbError::Malformed(reason::INVALID_EVENT)),
    );

    // A shared buffer length past the GHCB's (the scratch area would leave the page).
    page.begin(PROTOCOL_VERSION);
    page.set(Field::SwExitCode, ExitCode::MMIO_WRITE.0);
    page.set(Field::SwExitInfo1, SERVICES_GPA + regs::CONSOLE);
    page.set(Field::SwExitInfo2, 4096);
    page.set(
        Field::SwScratch,
        Ghcb::shared_buffer_gpa(guest_rt::layout::ghcb_gpa(0)),
    );
    g.transport().vmgexit(&mut page);
    run.check(
        "scratch area out of range",
        page.check_response(ExitCode::MMIO_WRITE, SERVICES_GPA + regs::CONSOLE)
            == Err(GhcbError::Malformed(reason::INVALID_SCRATCH_AREA)),
    );

    raised(&mut run);

    // Cost of one request (a figure for the log, not a check).
    let khz = guest_rt::globals::get()
        .tsc_khz
        .load(core::sync::atomic::Ordering::Relaxed)
        .max(1);
    let t0 = cpu::rdtsc();
    for _ in 0..200 {
        let _ = g.cpuid(1, 0, 1);
    }
    let t1 = cpu::rdtsc();
    println!(
        "vctest: CPUID through the GHCB {} ns",
        (t1 - t0) * 1_000_000 / khz / 200
    );

    if run.failed == 0 {
        println!("vctest: PASS: {} cases", run.cases);
        services::exit(exit_code::PASS)
    }
    println!("vctest: FAIL: {} of {} cases", run.failed, run.cases);
    services::exit(exit_code::FAIL)
}

/// #VCs raised through the real path (RAISE_VC: boot.s's stub, this CPU's frame slot, the
/// CPL3 handler, VC_RETURN), one per instruction kind, checked against the same answer
/// fetched directly through the GHCB.
fn raised(run: &mut Run) {
    let mut g = ghcb::client();
    let want = g.cpuid(0x8000_001f, 0, 1).map(|r| r.map(u64::from));
    let got = cpu::raise_vc(VcInstruction::Cpuid, ExitCode::CPUID.0, 0x8000_001f, 0, 0);
    run.check("raised cpuid", want == Ok(got));

    let status = cpu::rdmsr(MSR_SEV_STATUS);
    let [rax, _, _, rdx] = cpu::raise_vc(
        VcInstruction::Rdmsr,
        ExitCode::MSR.0,
        0,
        u64::from(MSR_SEV_STATUS),
        0,
    );
    run.check("raised rdmsr", rdx << 32 | rax == status && status & 3 == 3);

    // fw_cfg's signature: select it with `out dx, ax`, read its first byte with `in al, dx`.
    cpu::raise_vc(
        VcInstruction::OutDxAx,
        ExitCode::IOIO.0,
        u64::from(guest_abi::fwcfg::KEY_SIGNATURE),
        0,
        u64::from(guest_abi::fwcfg::PORT_SELECTOR),
    );
    let [al, ..] = cpu::raise_vc(
        VcInstruction::InDxAl,
        ExitCode::IOIO.0,
        0x1234_5678_9abc_de00,
        0,
        u64::from(guest_abi::fwcfg::PORT_DATA),
    );
    run.check(
        "raised in/out",
        al == 0x1234_5678_9abc_de00 | u64::from(guest_abi::fwcfg::SIGNATURE[0]),
    );

    let [rax, ..] = cpu::raise_vc(VcInstruction::Vmmcall, ExitCode::VMMCALL.0, 99, 0, 0);
    run.check("raised vmmcall", rax == (-1000i64) as u64);

    // Console bytes through MMIO writes the handler serves (the KVM test reads them).
    cpu::raise_vc(
        VcInstruction::MmioWrite,
        ExitCode::NPF.0,
        SERVICES_GPA + regs::CONSOLE,
        u64::from_le_bytes(*b"vctest: "),
        0,
    );
    cpu::raise_vc(
        VcInstruction::MmioWrite,
        ExitCode::NPF.0,
        SERVICES_GPA + regs::CONSOLE,
        u64::from_le_bytes(*b"raised!\n"),
        0,
    );
    // The test reads "vctest: raised!" in the console.
}
