//! `ifsock doctor` lists the capabilities ifsock uses, held or not, and what a missing one costs:
//! run under `capsh --drop=cap_sys_ptrace`, it says CAP_SYS_PTRACE is missing and that only the
//! `/proc` passes lose by it.
use std::process::Command;

use anyhow::{ensure, Context as _, Result};
use ifsock_tests::{ifsock_bin, require_root};
use serde_json::Value;

fn doctor_without_ptrace(json: bool) -> Result<String> {
    let cmd = format!("{} doctor{}", ifsock_bin().display(), if json { " --json" } else { "" });
    let out = Command::new("capsh").args(["--drop=cap_sys_ptrace", "--", "-c", &cmd]).output().context("running capsh (apt-get install libcap2-bin)")?;
    ensure!(out.status.success(), "doctor failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn doctor_lists_a_dropped_capability_and_what_it_costs() -> Result<()> {
    require_root();
    let report: Value = serde_json::from_str(&doctor_without_ptrace(true)?)?;
    let caps = report["capabilities"].as_array().context("capabilities is a list")?;
    let ptrace = caps.iter().find(|c| c["name"] == "CAP_SYS_PTRACE").context("CAP_SYS_PTRACE listed")?;
    assert_eq!(ptrace["held"], false, "{ptrace}");
    assert!(ptrace["without"].as_str().is_some_and(|w| w.contains("/proc") && w.contains("wait-queue waiter source does not need it")), "{ptrace}");
    // Root keeps the others (the harness runs as root with a full set).
    for name in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        let c = caps.iter().find(|c| c["name"] == name).with_context(|| format!("{name} listed"))?;
        assert_eq!(c["held"], true, "{c}");
        assert!(c["without"].is_null(), "{c}");
    }
    let human = doctor_without_ptrace(false)?;
    assert!(human.lines().any(|l| l.trim_start().starts_with("MISSING CAP_SYS_PTRACE: ")), "{human}");
    assert!(human.lines().any(|l| l.trim_start().starts_with("have    CAP_BPF: ")), "{human}");
    assert!(human.lines().last().is_some_and(|l| l.starts_with("summary:") && l.contains("CAP_SYS_PTRACE")), "{human}");
    Ok(())
}
