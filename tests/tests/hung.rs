//! `ifsock hung` reproduces seed 003: a wildcard UDP socket with IP_PKTINFO, a thread blocked
//! in recvmsg, the interface deleted, the fd closed from another thread.
use std::time::{Duration, Instant};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn mine<'a>(snapshot: &'a Value, tid: u32) -> Option<&'a Value> {
    snapshot["receivers"].as_array()?.iter().find(|r| r["tid"] == tid)
}

#[test]
fn hung_follow_records_orphaned_receiver_exactly() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ha"), unique("hb"));
    ns.veth(&a, &b, Some("10.205.0.1/24")).unwrap();
    let mut h = Running::start(&["--netns", &ns.name, "hung", "--follow", "--json", "--min-blocked", "0", "--interval", "200ms"]).unwrap();
    h.wait_for("ready", T, |v| v["type"] == "ready").unwrap();

    let t0 = Instant::now();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    let healthy = h.wait_for("receiver listed", T, |v| mine(v, r.tid).is_some()).unwrap();
    let row = mine(&healthy, r.tid).unwrap();
    assert_eq!(row["certainty"], "exact", "{row}");
    assert_eq!(row["stranded"], false, "healthy interface, not stranded: {row}");
    assert_eq!(row["fd_open"], true);

    ns.ip(&["link", "del", &a]).unwrap();
    r.close_fd();
    let snap = h
        .wait_for("orphaned + deleted", T, |v| mine(v, r.tid).is_some_and(|r| r["fd_open"] == false && r["stranded"] == true))
        .unwrap();
    let elapsed = t0.elapsed().as_nanos() as u64;
    let row = mine(&snap, r.tid).unwrap();
    assert_eq!(row["certainty"], "exact", "{row}");
    assert_eq!(row["syscall"], "recvmsg");
    assert_eq!(row["orphaned"], true, "no fd references the socket: {row}");
    assert_eq!(row["socket"]["pktinfo"], true);
    assert_eq!(row["socket"]["local_port"], r.port);
    let blocked = row["blocked_ns"].as_u64().unwrap();
    assert!(blocked > 0 && blocked <= elapsed, "blocked {blocked} ns not within elapsed {elapsed} ns");
    assert!(
        row["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == a.as_str() && i["state"] == "deleted"),
        "deleted interface missing: {row}"
    );

    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4, "the receiver gets the datagram");
    h.wait_for("receiver gone after wake-up", T, |v| v["type"] == "snapshot" && mine(v, r.tid).is_none()).unwrap();
}

#[test]
fn hung_started_after_the_receiver_blocked_infers_and_says_so() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("hc"), unique("hd"));
    ns.veth(&a, &b, Some("10.206.0.1/24")).unwrap();
    let t0 = Instant::now();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", true, None).unwrap();
    ns.ip(&["link", "del", &a]).unwrap();
    r.close_fd();

    let pid = std::process::id().to_string();
    let rows = ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid]).unwrap();
    let elapsed = t0.elapsed().as_nanos() as u64;
    let row = rows.iter().find(|v| v["tid"] == r.tid).unwrap_or_else(|| panic!("receiver {} missing: {rows:#?}", r.tid));
    assert_eq!(row["certainty"], "inferred", "an inference is labelled as one: {row}");
    assert!(row["evidence"].as_str().unwrap().contains("inference"), "{row}");
    assert_eq!(row["fd_open"], false);
    assert_eq!(row["socket"]["pktinfo"], true, "{row}");
    assert_eq!(row["socket"]["local_port"], r.port);
    let blocked = row["blocked_ns"].as_u64().unwrap();
    assert!(blocked > 0 && blocked <= elapsed, "blocked {blocked} ns not within elapsed {elapsed} ns");
    assert_eq!(r.wake(&ns, "127.0.0.1").unwrap(), 4);
    let after = ifsock_json(&["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid]).unwrap();
    assert!(after.iter().all(|v| v["tid"] != r.tid), "a receiver that woke is not listed");
}

#[test]
fn device_bound_receiver_is_stranded_when_its_interface_goes_down() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("he"), unique("hf"));
    ns.veth(&a, &b, Some("10.207.0.1/24")).unwrap();
    let r = BlockedReceiver::start(&ns, "0.0.0.0:0", false, Some(&a)).unwrap();
    let pid = std::process::id().to_string();
    let args = ["--netns", &ns.name, "hung", "--json", "--min-blocked", "0", "--pid", &pid];
    let before = ifsock_json(&args).unwrap();
    let row = before.iter().find(|v| v["tid"] == r.tid).expect("receiver listed");
    assert_eq!(row["certainty"], "current_fd");
    assert_eq!(row["stranded"], false);
    ns.ip(&["link", "set", &a, "down"]).unwrap();
    let after = ifsock_json(&args).unwrap();
    let row = after.iter().find(|v| v["tid"] == r.tid).expect("receiver listed");
    assert_eq!(row["stranded"], true, "{row}");
    assert!(row["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == a.as_str() && i["state"] == "down" && i["binding"] == "device"));
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    assert_eq!(r.wake(&ns, "10.207.0.1").unwrap(), 4);
    r.close_fd();
}
