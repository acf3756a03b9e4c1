//! Builds the guest OS (a separate bare-metal cargo project in `guest-os/`) and copies its
//! ELF file to OUT_DIR, where the crate embeds it.

use std::{
    env, fs,
    path::{Path, PathBuf},
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
    bare_build::watch(
        &root,
        &os,
        &[
            "guest-abi",
            "guest-rt",
            "guest-workloads",
            "loader",
            "vc-handler",
            "helper",
            "helper-abi",
        ],
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("firmware/mem").display()
    );

    let elf = bare_build::build(&root, &os, "guest-os", "the guest OS")?;
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?).join("guest-os.elf");
    fs::copy(&elf, &out)
        .map_err(|e| format!("copying {} to {}: {e}", elf.display(), out.display()))?;
    Ok(())
}
