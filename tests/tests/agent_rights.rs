//! The agent's blocked-receiver gauge without `CAP_SYS_PTRACE`: a receiver of another user's
//! process (`nobody`), blocked on a socket stranded by its address being deleted, is counted from
//! the socket's wait queue; the `/proc` fallback (`IFSOCK_WAITER_SOURCE=proc`) cannot read that
//! thread's `syscall` file without the capability and misses it (the deploy files no longer keep
//! the capability for the gauge; docs/deploy.md says what they still keep it for).

use anyhow::{Context as _, Result};
use ifsock_tests::{nobody_udp_receiver, require_root, unique, Netns};

#[path = "support/agent.rs"]
mod support;
use support::{sample, Agent};

/// `CAP_SYS_PTRACE` (include/uapi/linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;

/// Whether process `pid` holds `cap` in its effective set (`/proc/PID/status` `CapEff`).
fn holds(pid: u32, cap: u32) -> Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("no CapEff")?;
    Ok(u64::from_str_radix(hex.trim(), 16)? & (1 << cap) != 0)
}

#[test]
fn agent_without_ptrace_counts_a_nobody_receiver_blocked_on_a_stranded_socket() -> Result<()> {
    require_root();
    let ns = Netns::new()?;
    let (a, b) = (unique("gr"), unique("gs"));
    ns.veth(&a, &b, Some("10.246.0.1/24"))?;
    let receiver = nobody_udp_receiver(&ns, "10.246.0.1")?;

    let agent = Agent::start_without("cap_sys_ptrace", &[], &[])?;
    let fallback = Agent::start_without("cap_sys_ptrace", &[("IFSOCK_WAITER_SOURCE", "proc")], &[])?;
    for ag in [&agent, &fallback] {
        assert!(!holds(ag.child.id(), CAP_SYS_PTRACE)?, "the agent {} still holds CAP_SYS_PTRACE", ag.child.id());
    }
    let healthy = format!("ifsock_sockets{{netns=\"{}\",ifname=\"{a}\",binding=\"address\",protocol=\"udp\"}}", ns.name);
    for ag in [&agent, &fallback] {
        ag.wait_sample(&healthy)?;
    }
    ns.ip(&["addr", "del", "10.246.0.1/24", "dev", &a])?;

    // The snapshot that shows the socket stranded counted its receivers with it.
    let stranded = format!("ifsock_stranded_sockets{{netns=\"{}\",ifname=\"{a}\",reason=\"address_gone\"}}", ns.name);
    let blocked = format!("ifsock_blocked_receivers{{netns=\"{}\",stranded=\"true\"}}", ns.name);
    assert_eq!(agent.wait_sample(&stranded)?, 1.0);
    let text = agent.metrics()?;
    assert_eq!(sample(&text, &blocked), Some(1.0), "the nobody receiver (pid {}) from the wait queue, without CAP_SYS_PTRACE:\n{text}", receiver.pid());

    // The /proc pass cannot read another user's syscall file without the capability: the same
    // snapshot misses the receiver (what the deploy files kept CAP_SYS_PTRACE for).
    assert_eq!(fallback.wait_sample(&stranded)?, 1.0);
    let text = fallback.metrics()?;
    assert_eq!(sample(&text, &blocked).unwrap_or(0.0), 0.0, "the /proc fallback read a nobody thread without CAP_SYS_PTRACE:\n{text}");
    Ok(())
}
