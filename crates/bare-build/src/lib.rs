//! For the build scripts of `firmware-image` and `os-image`: each bare-metal image is its
//! own cargo project (bare-metal flags in its `.cargo/config.toml`, a linker script), built
//! by a nested `cargo build` that must not inherit the outer build's flags, wrappers (such
//! as clippy-driver) or target settings.

#![forbid(unsafe_code)]

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The files of a bare-metal project whose change means a rebuild.
const PROJECT_FILES: &[&str] = &[
    "src",
    "Cargo.toml",
    "Cargo.lock",
    "link.ld",
    "build.rs",
    ".cargo",
];

/// Tells cargo to run the build script again when `project` changes, or one of the
/// repository's `crates` (by directory name under `root/crates`) that it links, or the
/// target directory.
pub fn watch(root: &Path, project: &Path, crates: &[&str]) {
    for path in PROJECT_FILES {
        println!("cargo:rerun-if-changed={}", project.join(path).display());
    }
    for krate in crates {
        let dir = root.join("crates").join(krate);
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
}

/// Builds `project` (release) with a clean environment into `<target>/<name>` and returns
/// the path of its binary `name`; `what` names it in errors ("the firmware").
pub fn build(root: &Path, project: &Path, name: &str, what: &str) -> Result<PathBuf, String> {
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => root.join("target").join(name),
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
        .current_dir(project)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("running cargo for {what}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build in {} failed ({status})",
            project.display()
        ));
    }
    Ok(target_dir.join(format!("x86_64-unknown-linux-gnu/release/{name}")))
}
