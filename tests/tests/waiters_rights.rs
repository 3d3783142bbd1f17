//! Waiters of another user's process read without `CAP_SYS_PTRACE`: the wait-queue source finds
//! them (it reads the kernel's wait queues, not the task's `/proc` files); the `/proc` fallback
//! (`IFSOCK_WAITER_SOURCE=proc`) cannot read them and says so with the errno, instead of an
//! empty list that would mean nobody waits.
use std::{process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use ifsock_tests::{ifsock_bin, require_root, Daemon, Netns};
use serde_json::Value;

/// `ifsock sockets --json` inside `ns` under `capsh --drop=cap_sys_ptrace`, with `source` as
/// `IFSOCK_WAITER_SOURCE` when given: the row of UDP port `port`.
fn row_without_ptrace(ns: &Netns, port: u16, source: Option<&str>) -> Result<Value> {
    let env = source.map_or_else(String::new, |s| format!("IFSOCK_WAITER_SOURCE={s} "));
    let cmd = format!("{env}{} sockets --json", ifsock_bin().display());
    let out = Command::new("ip").args(["netns", "exec", &ns.name, "capsh", "--drop=cap_sys_ptrace", "--", "-c", &cmd]).output().context("running capsh (apt-get install libcap2-bin)")?;
    ensure!(out.status.success(), "ifsock sockets failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["local_port"] == port)
        .with_context(|| format!("no row for port {port}"))
}

#[test]
fn waiters_of_another_users_process_without_ptrace_are_found_or_unknown_never_empty() -> Result<()> {
    require_root();
    let ns = Netns::new()?;
    // A tokio server as nobody: its socket is in the runtime's epoll instance, the workers park in epoll_wait.
    let server = env!("CARGO_BIN_EXE_tokio-udp-server");
    let mut d = Daemon::start(&ns, &["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", server, "127.0.0.1:0", "-", "2"])?;
    let ready = d.wait_line("ready ", Duration::from_secs(30))?;
    let port: u16 = ready.split_whitespace().nth(1).and_then(|p| p.parse().ok()).context("ready PORT FD")?;

    let row = row_without_ptrace(&ns, port, Some("proc"))?;
    let waiters = row["waiters"].as_array().context("waiters is a list")?;
    ensure!(!waiters.is_empty(), "the /proc source without CAP_SYS_PTRACE returned an empty list, as if nobody waited: {row}");
    for w in waiters {
        assert_eq!(w["via"], "unknown", "{row}");
        assert_eq!(w["pid"], d.pid(), "{row}");
        let reason = w["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("CAP_SYS_PTRACE") && (reason.contains("EPERM") || reason.contains("EACCES")), "the reason names the errno and the capability: {reason}");
    }

    // The wait-queue source needs no ptrace access: the epoll waiter is found.
    let row = row_without_ptrace(&ns, port, None)?;
    let waiters = row["waiters"].as_array().context("waiters is a list")?;
    assert!(waiters.iter().any(|w| w["via"] == "epoll" && w["pid"] == d.pid() && w["source"] == "wait_queue"), "{row}");
    Ok(())
}
