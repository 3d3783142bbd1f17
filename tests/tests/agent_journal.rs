//! The agent's journal as a responder reads it: in causal order (a `socket_stranded` after the
//! `change` lines that explain it), and naming the task behind a link change (`cause`) where
//! the link-request probes are cheap (fentry/kprobe) or asked for (`--causes`).
use std::time::Duration;

use anyhow::{Context as _, Result};
use ifsock_tests::{require_root, unique, Netns};
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
