//! Probe-set selection and the fentry / kprobe device probes. On a kernel that refuses a set
//! (this project's lockdown host) the set's test says why and which kernel it needs; the VM run
//! (`cargo xtask vm-test`, Debian 6.1) exercises both sets.
use std::{net::UdpSocket, process::Command, time::Duration};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn doctor() -> Value {
    ifsock_json(&["doctor", "--json"]).unwrap().remove(0)
}

#[test]
fn doctor_names_the_probe_set_and_every_refusal() {
    require_root();
    let d = doctor();
    let sel = &d["probe_set"];
    let chosen = sel["chosen"].as_str().unwrap();
    let refused: Vec<&str> = sel["refused"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap()).collect();
    match chosen {
        "tracepoint" => assert_eq!(refused, ["fentry", "kprobe"], "{d}"),
        "kprobe" => assert_eq!(refused, ["fentry"], "{d}"),
        "fentry" => assert!(refused.is_empty(), "{d}"),
        other => panic!("unknown set {other}"),
    }
    for r in sel["refused"].as_array().unwrap() {
        assert!(!r[1].as_str().unwrap().is_empty(), "a refusal carries its reason: {r}");
    }
    if d["lockdown"] == "integrity" || d["lockdown"] == "confidentiality" {
        assert_eq!(chosen, "tracepoint", "lockdown forbids fentry here: {d}");
    }
}

fn deleted_veth_is_seen_by(set: &str) {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ka"), unique("kb"));
    ns.veth(&a, &b, Some("10.210.0.1/24")).unwrap();
    let index = ns.ifindex(&a).unwrap();
    let a2 = a.clone();
    let bound = ns
        .run(move || -> anyhow::Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:6401")?;
            bind_to_device(&s, &a2)?;
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let mut w = match Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--probe-set", set]) {
        Ok(w) => w,
        Err(e) => panic!("{e:#}"),
    };
    let ready = match w.wait_for("ready", T, |v| v["type"] == "ready") {
        Ok(r) => r,
        Err(_) => {
            let d = doctor();
            eprintln!(
                "SKIPPED: this kernel refuses the {set} set ({}); it needs a kernel with {set} support, e.g. `cargo xtask vm-test` (Debian 6.1)",
                d["probe_set"]["refused"]
            );
            return;
        }
    };
    assert_eq!(ready["probe_set"]["chosen"], set);
    let deleter = Command::new("ip").args(["-n", &ns.name, "link", "del", &a]).spawn().unwrap();
    let pid = deleter.id();
    assert!(deleter.wait_with_output().unwrap().status.success());
    let ev = w.wait_for("deleted", T, |v| v["type"] == "change" && v["event"] == "deleted" && v["ifindex"] == index).unwrap();
    assert_eq!(ev["source"], "kernel+netlink", "{ev}");
    assert_eq!(ev["kernel"]["via"], set);
    assert_eq!(ev["kernel"]["reason"], "unregister");
    assert_eq!(ev["kernel"]["pid"], pid, "the unregister ran in the deleting ip's context: {ev}");
    assert_eq!(ev["name"], a.as_str());
    assert!(ev["sockets"].as_array().unwrap().iter().any(|s| s["local_port"] == 6401 && s["binding"] == "device"));
    assert!(w.interrupt().unwrap().success());
    drop(bound);
}

#[test]
fn fentry_set_sees_a_deleted_veth_with_the_deleting_pid() {
    deleted_veth_is_seen_by("fentry");
}

#[test]
fn kprobe_set_sees_a_deleted_veth_with_the_deleting_pid() {
    deleted_veth_is_seen_by("kprobe");
}
