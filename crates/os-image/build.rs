//! Builds the guest OS (a separate bare-metal cargo project in `guest-os/`) and copies its
//! ELF file to OUT_DIR, where the crate embeds it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: building the guest OS image failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the workspace root")?
        .to_path_buf();
    let os = root.join("guest-os");
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "link.ld",
        "build.rs",
        ".cargo",
    ] {
        println!("cargo:rerun-if-changed={}", os.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("firmware/mem").display()
    );
    for krate in [
        "guest-abi",
        "guest-rt",
        "guest-workloads",
        "loader",
        "vc-handler",
        "helper",
        "helper-abi",
    ] {
        let dir = root.join("crates").join(krate);
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let elf = build_os(&root, &os)?;
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?).join("guest-os.elf");
    fs::copy(&elf, &out)
        .map_err(|e| format!("copying {} to {}: {e}", elf.display(), out.display()))?;
    Ok(())
}

/// Runs the OS's own cargo build with a clean environment (the outer build's flags,
/// wrappers such as clippy-driver, and target settings must not leak into it).
fn build_os(root: &Path, os: &Path) -> Result<PathBuf, String> {
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("guest-os"),
        None => root.join("target").join("guest-os"),
    };
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env_clear();
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_NET_OFFLINE",
    ] {
        if let Some(v) = env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let status = cmd
        .current_dir(os)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("running cargo for the guest OS: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build in {} failed ({status})", os.display()));
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/guest-os"))
}
