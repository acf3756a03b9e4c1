//! Finding the external tools the interop tests compare with.

use std::path::{Path, PathBuf};

/// The first existing file among `$env`, `name` on `PATH`, then `extra`.
pub fn find_tool(env: &str, name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.extend_from_slice(extra);
    candidates.into_iter().find(|p| p.is_file())
}

/// sev-snp-measure: `$SEV_SNP_MEASURE`, `PATH`, the workspace's `target/ci/snpm/bin` (where
/// `.ci/run` installs it) or `/opt/snpm/bin`; else `None` after a loud SKIPPED line.
pub fn sev_snp_measure() -> Option<PathBuf> {
    let found = find_tool(
        "SEV_SNP_MEASURE",
        "sev-snp-measure",
        &[
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci/snpm/bin/sev-snp-measure"),
            PathBuf::from("/opt/snpm/bin/sev-snp-measure"),
        ],
    );
    if found.is_none() {
        eprintln!(
            "SKIPPED: sev-snp-measure not found ($SEV_SNP_MEASURE, PATH, target/ci/snpm/bin, \
             /opt/snpm/bin; .ci/run installs it into target/ci/snpm); the comparison did not run"
        );
    }
    found
}
