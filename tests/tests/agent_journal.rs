//! The agent's journal as a responder reads it: in causal order (a `socket_stranded` after the
//! `change` lines that explain it), and naming the task behind a link change (`cause`) where
//! the link-request probes are cheap (fentry/kprobe) or asked for (`--causes`).
use std::time::Duration;

use anyhow::{Context as _, Result};
use ifsock_tests::{require_root, skip::Feature, unique, Netns};
use serde_json::Value;

#[path = "support/agent.rs"]
mod support;
use support::Agent;

/// Rounds of the deletion race: the old pipeline journaled the stranded line first in some of
/// them (its snapshot read a dump the kernel had changed before the notifications arrived).
const ROUNDS: usize = 8;

/// Index of the first journal record of netns `ns` matching `pred`.
fn position(records: &[Value], pred: impl Fn(&Value) -> bool) -> Option<usize> {
    records.iter().position(pred)
}

#[test]
fn socket_stranded_is_journaled_after_the_changes_that_explain_it() -> Result<()> {
    require_root();
    let agent = Agent::start(&[])?;
    let ns = Netns::new()?;
    for round in 0..ROUNDS {
        let (a, b) = (unique("jo"), unique("jp"));
        let addr = format!("10.243.{round}.1");
        ns.veth(&a, &b, Some(&format!("{addr}/24")))?;
        let sock = ns.run(|| std::net::UdpSocket::bind((addr.as_str(), 5353)))??;
        let ifindex = u64::from(ns.ifindex(&a)?);
        // The socket must be known healthy first: its stranding is then a health change.
        let healthy = format!("ifsock_sockets{{netns=\"{}\",ifname=\"{a}\",binding=\"address\",protocol=\"udp\"}}", ns.name);
        agent.wait_sample(&healthy)?;
        // Past the agent's snapshot gap (250 ms) since its last snapshot: the deletion's first
        // notification may start a snapshot at once, while the kernel is still deleting, as
        // the race needs.
        std::thread::sleep(Duration::from_millis(300));
        ns.ip(&["link", "del", &a])?;
        let stranded = agent.wait_record("the stranded socket", |r| r["type"] == "socket_stranded" && r["address"] == addr.as_str())?;
        let records = agent.journal_records();
        let at = |pred: &dyn Fn(&Value) -> bool| position(&records, pred);
        let stranded_at = at(&|r| r["type"] == "socket_stranded" && r["address"] == addr.as_str()).context("vanished")?;
        let deleted_at = at(&|r| r["type"] == "change" && r["event"] == "deleted" && r["ifindex"] == ifindex)
            .with_context(|| format!("round {round}: no deleted line for {a} (ifindex {ifindex}); stranded: {stranded}"))?;
        assert!(
            deleted_at < stranded_at,
            "round {round}: socket_stranded (record {stranded_at}) journaled before the deletion of {a} (record {deleted_at}) that explains it:\n{}",
            records[deleted_at.min(stranded_at)..=deleted_at.max(stranded_at)].iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
        );
        if let Some(removed_at) = at(&|r| r["type"] == "change" && r["event"] == "address_removed" && r["address"] == addr.as_str()) {
            assert!(removed_at < stranded_at, "round {round}: socket_stranded before address_removed of {addr}");
        }
        drop(sock);
    }
    Ok(())
}

/// Deletes a veth of a fresh netns with `ip link del` while `agent` runs, and returns the
/// journal's `deleted` change line with the `ip` process's pid.
fn journaled_deletion(agent: &Agent) -> Result<(Value, u32)> {
    let ns = Netns::new()?;
    let (a, b) = (unique("jc"), unique("jd"));
    ns.veth(&a, &b, None)?;
    agent.wait_record("the veth's creation", |r| r["type"] == "change" && r["event"] == "created" && r["name"] == a.as_str())?;
    let child = std::process::Command::new("ip").args(["-n", &ns.name, "link", "del", &a]).spawn()?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "ip link del {a} failed");
    let deleted = agent.wait_record("the deletion", |r| r["type"] == "change" && r["event"] == "deleted" && r["name"] == a.as_str())?;
    Ok((deleted, pid))
}

/// The `ip` task is the cause, with the probe that saw its request as evidence.
fn assert_ip_is_the_cause(deleted: &Value, pid: u32, evidence_prefix: &str) {
    let cause = &deleted["cause"];
    assert_eq!(cause["comm"], "ip", "{deleted}");
    assert_eq!(cause["pid"], pid, "{deleted}");
    let evidence = cause["evidence"].as_str().unwrap_or_default();
    assert!(evidence.starts_with(evidence_prefix), "evidence {evidence:?} is not {evidence_prefix}*: {deleted}");
}

#[test]
fn agent_names_the_task_behind_a_deletion_from_the_handler_probes() -> Result<()> {
    require_root();
    if !ifsock_tests::skip::needs_any(&[Feature::Fentry, Feature::Kprobe]) {
        return Ok(());
    }
    // No --causes: where the handlers can be probed, causes cost nothing between requests.
    let agent = Agent::start(&[])?;
    let (deleted, pid) = journaled_deletion(&agent)?;
    let set = if Feature::Fentry.available().is_ok() { "fentry:rtnl_dellink" } else { "kprobe:rtnl_dellink" };
    assert_ip_is_the_cause(&deleted, pid, set);
    Ok(())
}

#[test]
fn agent_with_causes_names_the_task_behind_a_deletion_from_the_tracepoints() -> Result<()> {
    require_root();
    if !ifsock_tests::skip::needs(Feature::Tracepoint) {
        return Ok(());
    }
    let agent = Agent::start(&["--causes"])?;
    let (deleted, pid) = journaled_deletion(&agent)?;
    // The handler probes take precedence where the kernel allows them.
    let handlers = Feature::Fentry.available().is_ok() || Feature::Kprobe.available().is_ok();
    assert_ip_is_the_cause(&deleted, pid, if handlers { "" } else { "tracepoint:syscalls:sys_enter_" });
    Ok(())
}

#[test]
fn agent_without_causes_pays_no_tracepoint_for_causes() -> Result<()> {
    require_root();
    let agent = Agent::start(&[])?;
    let (deleted, pid) = journaled_deletion(&agent)?;
    if Feature::Fentry.available().is_ok() || Feature::Kprobe.available().is_ok() {
        // Causes from the handler probes (also proved by the test above).
        assert_ip_is_the_cause(&deleted, pid, "");
        assert!(!deleted["cause"]["evidence"].as_str().unwrap_or_default().starts_with("tracepoint"), "{deleted}");
    } else {
        assert!(deleted["cause"].is_null(), "no probe runs on every sendmsg without --causes: {deleted}");
    }
    Ok(())
}
