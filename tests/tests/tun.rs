//! `ifsock tun` against the real kernel: a multi-queue tun with two queues held by this test
//! process (one detached with `IFF_DETACH_QUEUE`), then traffic into the attached queue that
//! nobody reads (seed 001).
use std::{
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use ifsock_tests::*;
use serde_json::Value;

fn device(ns: &Netns, name: &str, interval: &str) -> Value {
    let rows = ifsock_json(&["--netns", &ns.name, "tun", name, "--json", "--interval", interval]).unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    rows.into_iter().next().unwrap()
}

fn fd_row(dev: &Value, fd: i32) -> &Value {
    dev["fds"]
        .as_array()
        .and_then(|f| f.iter().find(|r| r["fd"] == fd && r["pid"] == std::process::id()))
        .unwrap_or_else(|| panic!("fd {fd} of pid {} missing: {dev:#}", std::process::id()))
}

#[test]
fn tun_shows_attached_and_detached_queues_and_warns_about_an_unread_growing_backlog() {
    require_root();
    let ns = Netns::new().unwrap();
    let name = unique("tq");
    let flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE;
    let n2 = name.clone();
    // Opened inside the namespace (the device is created there); held by this process, whose
    // other threads live in the host namespace.
    let (detached, attached) = ns
        .run(move || -> anyhow::Result<_> {
            let first = tun_queue(&n2, flags)?;
            let second = tun_queue(&n2, flags)?;
            tun_detach_queue(&first)?;
            Ok((first, second))
        })
        .unwrap()
        .unwrap();

    let dev = device(&ns, &name, "0");
    assert_eq!(dev["type"], "tun");
    assert_eq!(dev["name"], name.as_str());
    assert_eq!(dev["netns"], ns.ino().unwrap(), "the device's netns, not the holder's");
    assert_eq!(dev["ifindex"], ns.ifindex(&name).unwrap());
    assert_eq!(dev["mode"], "tun");
    assert_eq!(dev["multi_queue"], true);
    assert_eq!(dev["persist"], false);
    assert_eq!(dev["vnet_hdr"], false);
    assert_eq!(dev["no_pi"], true);
    assert_eq!(dev["tun_struct_flags"].as_u64().unwrap() & 0x1103, 0x1101, "IFF_TUN|IFF_MULTI_QUEUE|IFF_NO_PI: {dev:#}");
    assert_eq!((dev["numqueues"].as_u64(), dev["numdisabled"].as_u64()), (Some(1), Some(1)), "{dev:#}");
    assert_eq!(dev["fds"].as_array().unwrap().len(), 2, "{dev:#}");
    let d = fd_row(&dev, detached.as_raw_fd());
    assert_eq!(d["state"], "detached", "{dev:#}");
    assert!(d["queue"].is_null(), "a detached queue has no index: {dev:#}");
    let a = fd_row(&dev, attached.as_raw_fd());
    assert_eq!(a["state"], "attached", "{dev:#}");
    assert_eq!(a["queue"], 0);
    assert_eq!(a["backlog"], 0, "down device, no traffic yet: {dev:#}");
    assert!(a["ring_size"].as_u64().unwrap() > 0);
    assert!(dev["warnings"].as_array().unwrap().is_empty());

    // Route 10.212.0.0/24 through the tun and send a bounded burst: tun_net_xmit() puts each
    // packet in the attached queue's tx_ring before sendto() returns.
    ns.ip(&["addr", "add", "10.212.0.1/24", "dev", &name]).unwrap();
    ns.ip(&["link", "set", &name, "up"]).unwrap();
    let sock = ns.run(|| UdpSocket::bind("10.212.0.1:0")).unwrap().unwrap();
    const BURST: u64 = 20;
    for _ in 0..BURST {
        sock.send_to(b"into the tun", "10.212.0.2:9").unwrap();
    }
    let dev = device(&ns, &name, "0");
    let landed = fd_row(&dev, attached.as_raw_fd())["backlog"].as_u64().unwrap();
    assert!(landed >= BURST, "{BURST} datagrams sent, backlog {landed}: {dev:#}");
    assert_eq!(fd_row(&dev, detached.as_raw_fd())["backlog"], 0, "the kernel steers nothing into a detached queue");

    // Keep sending (bounded: 400 datagrams, 5 ms apart, well under the 500-slot ring) while ifsock
    // compares two snapshots 300 ms apart.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let tx = sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0u32;
        // Paced so that sending spans ifsock's start-up even on a slow (emulated) machine, and
        // capped below the ring's 500 slots so the backlog can still grow inside the window.
        while sent < 450 && !stop2.load(Ordering::Relaxed) {
            tx.send_to(b"into the tun", "10.212.0.2:9").unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    });
    let grew = device(&ns, &name, "300ms");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let q = fd_row(&grew, attached.as_raw_fd());
    let (before, after) = (q["backlog_before"].as_u64().unwrap(), q["backlog"].as_u64().unwrap());
    assert!(after > before && before >= landed, "backlog {before}→{after} while sending {sent}: {grew:#}");
    assert_eq!(grew["interval_ms"], 300);
    let w = &grew["warnings"][0];
    assert_eq!(w["queue"], 0, "{grew:#}");
    assert_eq!(w["kind"], "grew");
    assert_eq!((w["before"].as_u64(), w["after"].as_u64()), (Some(before), Some(after)));
    let expected = format!("queue 0 attached, backlog grew {before}→{after}, nobody reads it: the kernel steers packets into it");
    assert_eq!(w["message"], expected.as_str());

    // Sending stopped, still nobody reads: the human output still warns.
    let out = ifsock(&["--netns", &ns.name, "tun", &name, "--interval", "100ms"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{name} ifindex")), "{text}");
    assert!(text.contains("detached") && text.contains("attached"), "{text}");
    assert!(text.contains("warning: queue 0 attached, backlog stayed") && text.contains("nobody reads it"), "{text}");
    drop((sock, attached, detached));
}

#[test]
fn persistent_tun_without_fds_is_listed_and_bad_names_are_errors() {
    require_root();
    let ns = Netns::new().unwrap();
    let name = unique("tp");
    ns.ip(&["tuntap", "add", "mode", "tap", "name", &name, "vnet_hdr", "user", "1000", "group", "100"]).unwrap();
    let dev = device(&ns, &name, "0");
    assert_eq!(dev["mode"], "tap");
    assert_eq!(dev["persist"], true);
    assert_eq!(dev["vnet_hdr"], true);
    assert_eq!(dev["multi_queue"], false);
    assert_eq!((dev["owner"].as_u64(), dev["group"].as_u64()), (Some(1000), Some(100)));
    assert!(dev["fds"].as_array().unwrap().is_empty());
    assert!(dev["tun_struct_flags"].is_null());

    let fails_with = |args: &[&str], needle: &str| {
        let out = ifsock(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ifsock {args:?} succeeded");
        assert!(stderr.contains(needle), "ifsock {args:?}: stderr {stderr:?} lacks {needle:?}");
    };
    fails_with(&["--netns", &ns.name, "tun", "nosuchtun0"], "unknown interface \"nosuchtun0\"");
    fails_with(&["--netns", &ns.name, "tun", "lo"], "is not a tun/tap device");
    fails_with(&["--netns", &ns.name, "tun", "--interval", "abc"], "not a duration");
}
