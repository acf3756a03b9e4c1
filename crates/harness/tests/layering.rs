//! The architecture test: the crates' dependency edges, read from `cargo metadata`, keep the
//! layering of docs/architecture.md (§2, Crate map). A forbidden edge fails it, whoever adds
//! it; the rule tables below are the place to change when the architecture does.
//!
//! Three workspaces are read: the host workspace (the root `Cargo.toml`), the firmware's
//! own (`firmware/Cargo.toml`, bare metal, built apart) and the guest OS's
//! (`guest-os/Cargo.toml`, likewise), which may link what the firmware may.

use serde_json::Value;
use std::{collections::BTreeSet, path::Path, process::Command};

/// Host crates and the workspace crates each must never depend on (any dependency kind).
const FORBIDDEN: &[(&str, &[&str])] = &[
    // The SEV platform is below the VMM: the VMM hands it memory and KVM handles.
    (
        "sev-platform",
        &["vmm", "migration", "qmp", "harness", "sevmirror"],
    ),
    // The stream, engine and transport know the VM only through their traits.
    (
        "migration",
        &["vmm", "sev-platform", "qmp", "harness", "sevmirror"],
    ),
    // The control protocol knows nothing of the VMM; the binary adapts one to the other.
    (
        "qmp",
        &["vmm", "sev-platform", "migration", "harness", "sevmirror"],
    ),
    // The VMM's controller has its own command types, not QMP's.
    ("vmm", &["qmp", "harness", "sevmirror"]),
];

/// The binary: nothing depends on it (the harness runs it as a child process).
const BINARY: &str = "sevmirror";

/// Everything the firmware may link, directly or through the workspace crates it uses: its
/// own no_std crates, the no_std ABI and helper crates it shares with the host, and no_std
/// crypto and support crates. No host crate (VMM, SEV platform, migration, QMP, harness,
/// binary, firmware-image) may ever appear here. To let the firmware use a new no_std
/// crate (e.g. x25519-dalek, or a new path crate such as crates/gcm or crates/loader), add
/// its package name to this one list.
const FIRMWARE_MAY_USE: &[&str] = &[
    // The firmware's own.
    "sevmirror-firmware",
    "sevmirror-firmware-mem",
    "guest-rt",
    "guest-workloads",
    // Shared no_std crates of this workspace.
    "fwtable",
    "guest-abi",
    "helper-abi",
    "mirror-helper",
    "os-loader",
    "record-gcm",
    "vc-handler",
    // no_std crypto.
    "aes-gcm",
    "curve25519-dalek",
    "hkdf",
    "hmac",
    "sha2",
    "subtle",
    "x25519-dalek",
    // no_std support.
    "thiserror",
    "zeroize",
];

/// A declared dependency.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Edge {
    from: String,
    to: String,
    /// "normal", "dev" or "build".
    kind: String,
    /// A path dependency (a crate of this repository).
    local: bool,
    optional: bool,
}

/// `cargo metadata --no-deps` of `manifest` (declared dependencies only; no resolution,
/// no network).
fn metadata(manifest: &Path) -> Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata {}: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("crates/harness is two levels below the repository root")
}

/// Every dependency every package of `metadata` declares.
fn edges(metadata: &Value) -> Vec<Edge> {
    let mut out = Vec::new();
    for p in metadata["packages"].as_array().into_iter().flatten() {
        let from = p["name"].as_str().unwrap_or_default();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            out.push(Edge {
                from: from.to_string(),
                to: d["name"].as_str().unwrap_or_default().to_string(),
                kind: d["kind"].as_str().unwrap_or("normal").to_string(),
                local: d["path"].is_string(),
                optional: d["optional"].as_bool().unwrap_or(false),
            });
        }
    }
    out
}

/// The edges of the host workspace that break a rule.
fn workspace_violations(edges: &[Edge]) -> Vec<String> {
    let mut bad = Vec::new();
    for e in edges.iter().filter(|e| e.local) {
        if e.to == BINARY {
            bad.push(format!(
                "{} -> {} ({}): nothing may depend on the binary",
                e.from, e.to, e.kind
            ));
        }
        for (from, forbidden) in FORBIDDEN {
            if e.from == *from && forbidden.contains(&e.to.as_str()) {
                bad.push(format!(
                    "{} -> {} ({}): {} must not depend on {}",
                    e.from, e.to, e.kind, from, e.to
                ));
            }
        }
    }
    bad
}

/// The firmware's dependencies (its own, and those of the local crates it uses, followed
/// through `workspace` edges) that are not in [`FIRMWARE_MAY_USE`]. Dev-dependencies and
/// optional ones (the firmware disables default features) are not linked into it.
fn firmware_violations(firmware: &[Edge], workspace: &[Edge]) -> Vec<String> {
    let linked = |e: &&Edge| e.kind != "dev" && !e.optional;
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, String)> = firmware
        .iter()
        .filter(linked)
        .map(|e| (e.to.clone(), format!("{} -> {}", e.from, e.to)))
        .collect();
    while let Some((name, via)) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if !FIRMWARE_MAY_USE.contains(&name.as_str()) {
            bad.push(format!(
                "{via}: the firmware may not use {name} (not in FIRMWARE_MAY_USE)"
            ));
            continue;
        }
        for e in firmware
            .iter()
            .chain(workspace)
            .filter(linked)
            .filter(|e| e.from == name && e.local)
        {
            todo.push((e.to.clone(), format!("{via} -> {}", e.to)));
        }
        // A local crate's registry dependencies are linked too.
        for e in workspace
            .iter()
            .filter(linked)
            .filter(|e| e.from == name && !e.local)
        {
            todo.push((e.to.clone(), format!("{via} -> {}", e.to)));
        }
    }
    bad
}

#[test]
fn the_host_crates_keep_their_layers() {
    let ws = edges(&metadata(&repo_root().join("Cargo.toml")));
    let names: BTreeSet<&str> = ws.iter().map(|e| e.from.as_str()).collect();
    for crate_name in ["sev-platform", "migration", "qmp", "vmm", "harness", BINARY] {
        assert!(
            names.contains(crate_name),
            "{crate_name} is not in the workspace"
        );
    }
    let bad = workspace_violations(&ws);
    assert!(
        bad.is_empty(),
        "forbidden dependencies:\n  {}",
        bad.join("\n  ")
    );
}

/// The host workspace's edges and those of the crates the firmware and the guest OS share,
/// which are nobody's workspace members (bare metal, linted on their own).
fn host_and_guest_edges(root: &Path) -> Vec<Edge> {
    let mut all = edges(&metadata(&root.join("Cargo.toml")));
    for shared in [
        "crates/guest-rt/Cargo.toml",
        "crates/guest-workloads/Cargo.toml",
    ] {
        all.extend(edges(&metadata(&root.join(shared))));
    }
    all
}

#[test]
fn the_firmware_links_only_what_it_may() {
    let root = repo_root();
    let fw = edges(&metadata(&root.join("firmware/Cargo.toml")));
    assert!(
        fw.iter().any(|e| e.from == "sevmirror-firmware"),
        "the firmware manifest declares no dependencies?"
    );
    let ws = host_and_guest_edges(root);
    let bad = firmware_violations(&fw, &ws);
    assert!(
        bad.is_empty(),
        "the firmware links host crates:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn the_guest_os_links_only_what_the_firmware_may() {
    let root = repo_root();
    let os = edges(&metadata(&root.join("guest-os/Cargo.toml")));
    assert!(
        os.iter().any(|e| e.from == "sevmirror-guest-os"),
        "the guest OS manifest declares no dependencies?"
    );
    let ws = host_and_guest_edges(root);
    let bad = firmware_violations(&os, &ws);
    assert!(
        bad.is_empty(),
        "the guest OS links host crates:\n  {}",
        bad.join("\n  ")
    );
}

/// The checks themselves, on made-up metadata: each kind of forbidden edge is caught.
#[test]
fn forbidden_edges_are_caught() {
    let edge = |from: &str, to: &str, kind: &str, local: bool| Edge {
        from: from.into(),
        to: to.into(),
        kind: kind.into(),
        local,
        optional: false,
    };
    let ws = vec![
        edge("qmp", "vmm", "normal", true),
        edge("sev-platform", "migration", "dev", true),
        edge("migration", "vmm", "build", true),
        edge("harness", "sevmirror", "normal", true),
        edge("mirror-helper", "vmm", "normal", true),
        edge("mirror-helper", "aes-gcm", "normal", false),
        edge("vmm", "sev-platform", "normal", true),
        // A registry crate that shares a name is not ours.
        edge("qmp", "vmm", "normal", false),
    ];
    let bad = workspace_violations(&ws);
    assert_eq!(bad.len(), 4, "{bad:#?}");
    assert!(bad[0].starts_with("qmp -> vmm"), "{bad:?}");
    assert!(
        bad[3].contains("nothing may depend on the binary"),
        "{bad:?}"
    );

    let fw = vec![
        edge("sevmirror-firmware", "mirror-helper", "normal", true),
        edge("sevmirror-firmware", "sha2", "normal", false),
        edge("sevmirror-firmware", "serde_json", "dev", false),
    ];
    let bad = firmware_violations(&fw, &ws);
    assert_eq!(
        bad,
        ["sevmirror-firmware -> mirror-helper -> vmm: the firmware may not use vmm (not in FIRMWARE_MAY_USE)"]
    );
    let fw = vec![edge("sevmirror-firmware", "qmp", "normal", true)];
    assert_eq!(firmware_violations(&fw, &[]).len(), 1);
}
