//! `hung` without `CAP_SYS_PTRACE`: a receiver of another user's process (`nobody`) is found on
//! its socket's wait queue. Without the capability `hung` cannot read that thread's
//! `/proc/PID/task/TID/syscall`, so its procfs pass sees no receive; the wait-queue walk, which
//! `hung` skips on an idle host, must still run when a sleeping thread's syscall is unreadable.
use std::process::Command;

use anyhow::{ensure, Context as _, Result};
use ifsock_tests::{ifsock_bin, nobody_udp_receiver, require_root, skip, skip::Feature, unique, Netns};
use serde_json::Value;

/// `ifsock hung --json --min-blocked 0` inside `ns` under `capsh --drop=cap_sys_ptrace`: its rows.
fn hung_rows_without_ptrace(ns: &Netns) -> Result<Vec<Value>> {
    let cmd = format!("{} hung --json --min-blocked 0", ifsock_bin().display());
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "capsh", "--drop=cap_sys_ptrace", "--", "-c", &cmd])
        .output()
        .context("running capsh (apt-get install libcap2-bin)")?;
    ensure!(out.status.success(), "ifsock hung failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

#[test]
fn hung_without_ptrace_finds_a_nobody_receiver_on_its_wait_queue() -> Result<()> {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return Ok(());
    }
    let ns = Netns::new()?;
    let (a, b) = (unique("hr"), unique("hs"));
    ns.veth(&a, &b, Some("10.247.0.1/24"))?;
    let receiver = nobody_udp_receiver(&ns, "10.247.0.1")?;

    // The capability really is gone for ifsock: the receiver's syscall file is unreadable.
    let probe = Command::new("capsh")
        .args(["--drop=cap_sys_ptrace", "--", "-c", &format!("cat /proc/{0}/task/{0}/syscall", receiver.pid())])
        .output()?;
    ensure!(!probe.status.success(), "without CAP_SYS_PTRACE, root read a nobody thread's syscall file: the test proves nothing");

    let rows = hung_rows_without_ptrace(&ns)?;
    let row = rows
        .iter()
        .find(|r| r["pid"] == receiver.pid())
        .with_context(|| format!("the nobody receiver (pid {}) is not listed: {rows:#?}", receiver.pid()))?;
    assert_eq!((row["certainty"].as_str(), row["source"].as_str()), (Some("exact"), Some("wait_queue")), "{row}");
    assert_eq!(row["syscall"], "recvfrom", "{row}");
    assert_eq!(row["socket"]["protocol"], "udp", "{row}");
    Ok(())
}
