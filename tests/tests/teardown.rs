//! `ifsock teardown` against the real kernel, in a namespace of the test's own: what a sender
//! bound to the interface gets between down and delete (seed 000), a receiver that nothing
//! wakes (seed 003), the dry run, the safety refusals (lo, unknown names, no confirmation, a
//! "no" on the terminal's prompt, a grace over 24 h), an interface deleted by someone else
//! during the grace period, and a second signal while the interrupted teardown reports.
use std::{
    net::UdpSocket,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// A veth pair `a`/`b` in `ns`, both up, `a` = 10.22N.0.1, `b` = 10.22N.0.2; returns `a`'s ifindex.
fn pair(ns: &Netns, a: &str, b: &str, net: u8) -> u32 {
    ns.veth(a, b, Some(&format!("10.{net}.0.1/24"))).unwrap();
    ns.ip(&["addr", "add", &format!("10.{net}.0.2/24"), "dev", b]).unwrap();
    ns.ifindex(a).unwrap()
}

fn link_flags(ns: &Netns, link: &str) -> Option<Vec<String>> {
    let out = ns.ip(&["-j", "link", "show", "dev", link]).ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0]["flags"].as_array()?.iter().filter_map(|f| f.as_str().map(String::from)).collect())
}

fn socket(report: &Value, ino: u64) -> &Value {
    report["sockets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["inode"] == ino))
        .unwrap_or_else(|| panic!("socket inode {ino} missing from the report: {report:#}"))
}

#[test]
fn teardown_reports_the_senders_error_and_a_stranded_receiver_then_deletes_the_interface() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let a_index = pair(&ns, &a, &b, 221);
    let a2 = a.clone();
    let (sender, receiver, closer) = ns
        .run(move || -> anyhow::Result<_> {
            let s = UdpSocket::bind("0.0.0.0:6401")?;
            bind_to_device(&s, &a2)?;
            let r = UdpSocket::bind("10.221.0.1:6402")?;
            bind_to_device(&r, &a2)?;
            let c = UdpSocket::bind("10.221.0.1:6403")?;
            Ok((s, r, c))
        })
        .unwrap()
        .unwrap();
    let (sender_ino, receiver_ino) = (socket_inode(&sender).unwrap(), socket_inode(&receiver).unwrap());
    let closer_ino = socket_inode(&closer).unwrap();
    let pid = std::process::id();

    // A receiver blocked before ifsock starts: only procfs can show it (seed 003).
    let rx = receiver.try_clone().unwrap();
    let rx_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        rx.recv(&mut buf)
    });
    wait_until("receiver blocked in recvfrom", T, || thread_blocked_in_recvfrom(receiver_ino)).unwrap();

    // The sender: bounded (stops when told, or after 20 s at 1 ms per send), records the first
    // time each errno appears, and closes `closer` (the only fd of that socket) at the first
    // error, as an application giving up would; the first successful send is reported so the
    // test starts from a working socket.
    let stop = Arc::new(AtomicBool::new(false));
    let (first_ok_tx, first_ok) = mpsc::channel();
    let stop2 = stop.clone();
    let tx_sock = sender.try_clone().unwrap();
    let tx_fd = tx_sock.as_raw_fd();
    let tx_thread = std::thread::spawn(move || {
        let mut closer = Some(closer);
        let mut errors: Vec<(i32, Instant)> = Vec::new();
        let mut sent = 0u32;
        for _ in 0..20_000 {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            match tx_sock.send_to(b"ifsock", "10.221.0.2:9") {
                Ok(_) => {
                    sent += 1;
                    if sent == 1 {
                        let _ = first_ok_tx.send(());
                    }
                }
                Err(e) => {
                    drop(closer.take());
                    let errno = e.raw_os_error().unwrap_or(0);
                    if !errors.iter().any(|(x, _)| *x == errno) {
                        errors.push((errno, Instant::now()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (sent, errors)
    });
    first_ok.recv_timeout(T).expect("the sender never sent successfully before the teardown");

    let started = Instant::now();
    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--yes", "--json", "--grace", "1s"]);
    let finished = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = tx_thread.join().unwrap();
    // Wake the stranded receiver: shutdown(SHUT_RD) makes its recvfrom return 0.
    // SAFETY: shutdown on a valid fd owned by `receiver`.
    unsafe { libc::shutdown(receiver.as_raw_fd(), libc::SHUT_RD) };
    let rx_result = rx_thread.join().unwrap();
    let rows = rows.unwrap();

    assert_eq!(rows.len(), 1, "one JSON object: {rows:#?}");
    let r = &rows[0];
    assert_eq!(r["type"], "teardown");
    assert_eq!(r["ifindex"], a_index);
    assert_eq!(r["ifname"], a.as_str());
    assert_eq!(r["dry_run"], false);
    assert_eq!(r["down"]["ok"], true, "{r:#}");
    assert_eq!(r["delete"]["ok"], true, "{r:#}");
    assert_eq!(r["gone"], true);
    assert!(r["vanished_ms"].is_null(), "ifsock deleted it itself: {r:#}");
    assert_eq!(r["counters"]["ringbuf_drops"], 0, "{r:#}");
    assert!(ns.ifindex(&a).is_err(), "{a} still exists after teardown");

    // The real errno: what the sender itself got first, during the teardown.
    assert!(sent > 0);
    let (errno, at) = *errors.first().expect("the sender never saw an error");
    assert!(at > started && at < finished, "first send error outside the teardown run");
    assert_eq!(errno, libc::ENETUNREACH, "measured on Linux 6.18: a send on a socket bound to a down device fails with ENETUNREACH (ip_route_output_key_hash_rcu); got {errno}");

    let s = socket(r, sender_ino);
    assert_eq!(s["binding"], "device");
    assert_eq!(s["bound_dev_if"], a_index);
    let grace_ms = r["grace_ms"].as_f64().unwrap();
    let seen = s["send_errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["errno"] == errno)
        .unwrap_or_else(|| panic!("errno {errno} not reported for the sender: {s:#}"));
    assert_eq!(seen["error"], "ENETUNREACH");
    assert_eq!(seen["pid"], pid);
    assert_eq!(seen["fd"], tx_fd, "the sender thread sends on the clone's fd");
    assert!(seen["count"].as_u64().unwrap() >= 1);
    let first_ms = seen["first_ms"].as_f64().unwrap();
    assert!((0.0..=grace_ms).contains(&first_ms), "first error at {first_ms}ms, grace {grace_ms}ms");
    assert!(seen["last_ms"].as_f64().unwrap() <= grace_ms + 50.0);
    assert_eq!(s["closed"], false);

    let closed = socket(r, closer_ino);
    assert_eq!(closed["binding"], "address");
    assert_eq!(closed["closed"], true, "closed by its owner during grace: {closed:#}");

    let rcv = socket(r, receiver_ino);
    let waiting = &rcv["receivers"][0];
    assert_eq!(waiting["syscall"], "recvfrom", "{rcv:#}");
    assert_eq!(waiting["blocked_at_down"], true, "{rcv:#}");
    assert_eq!(waiting["blocked_at_end"], true, "nothing wakes a receiver on a downed device: {rcv:#}");
    assert!(waiting["woke_ms"].is_null(), "{rcv:#}");
    assert_eq!(rx_result.unwrap(), 0, "the receiver returned only because the test shut it down");
}

#[test]
fn teardown_dry_run_reports_the_bound_socket_and_changes_nothing() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let a_index = pair(&ns, &a, &b, 222);
    let a2 = a.clone();
    let sock = ns
        .run(move || -> anyhow::Result<_> {
            let s = UdpSocket::bind("0.0.0.0:6411")?;
            bind_to_device(&s, &a2)?;
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let ino = socket_inode(&sock).unwrap();
    // No --yes: a dry run changes nothing and needs no confirmation.
    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--dry-run", "--json"]).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["dry_run"], true);
    assert!(r["down"].is_null() && r["delete"].is_null(), "{r:#}");
    assert_eq!(r["gone"], false);
    assert_eq!(r["was_up"], true);
    assert_eq!(r["kind"], "veth");
    let s = socket(r, ino);
    assert_eq!(s["binding"], "device");
    assert!(s["owners"].as_array().unwrap().iter().any(|o| o["pid"] == std::process::id() && o["fd"] == sock.as_raw_fd()));
    assert_eq!(ns.ifindex(&a).unwrap(), a_index, "{a} must still exist with the same ifindex");
    let flags = link_flags(&ns, &a).unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "{a} must still be up: {flags:?}");

    let human = ifsock(&["--netns", &ns.name, "teardown", &a, "--dry-run"]).unwrap();
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(&format!("dry run: would tear down {a}")), "{text}");
    assert!(text.contains(&format!("inode {ino}")), "{text}");
    drop(sock);
}

#[test]
fn teardown_refuses_lo_unknown_names_and_unconfirmed_runs() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    pair(&ns, &a, &b, 223);
    let fails_with = |args: &[&str], needle: &str| {
        let out = ifsock(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ifsock {args:?} succeeded");
        assert!(stderr.contains(needle), "ifsock {args:?}: stderr {stderr:?} lacks {needle:?}");
        assert!(out.stdout.is_empty(), "partial output: {}", String::from_utf8_lossy(&out.stdout));
    };
    fails_with(&["--netns", &ns.name, "teardown", "lo", "--yes"], "refusing to tear down the loopback interface");
    fails_with(&["--netns", &ns.name, "teardown", "nosuchif0", "--yes"], "unknown interface \"nosuchif0\"");
    // A prefix is not a name.
    fails_with(&["--netns", &ns.name, "teardown", &a[..a.len() - 1], "--yes"], "unknown interface");
    // ifsock(…) runs with stdin closed: not a terminal, so no --yes means no.
    fails_with(&["--netns", &ns.name, "teardown", &a], "pass --yes");
    fails_with(&["--netns", &ns.name, "teardown", &a, "--grace", "2x"], "unknown unit");
    let flags = link_flags(&ns, &a).unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "a refused teardown left {a} changed: {flags:?}");
    assert!(link_flags(&ns, "lo").unwrap().iter().any(|f| f == "UP"));
}

#[test]
fn interface_deleted_by_someone_else_during_grace_is_reported_not_an_error() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    pair(&ns, &a, &b, 224);
    let mon = LinkMonitor::start(&ns, &b).unwrap();
    let child = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "teardown", &a, "--yes", "--json", "--grace", "10s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for ifsock's down (a notification for `a` without UP in its flags), then delete.
    let needle = format!(": {a}@");
    mon.wait_for("down notification", T, |l| l.contains(&needle) && !l.contains(",UP") && !l.contains("<UP")).unwrap();
    let t = Instant::now();
    ns.ip(&["link", "del", &a]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(9), "ifsock waited out the grace period? {:?}", t.elapsed());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["down"]["ok"], true);
    assert!(r["delete"].is_null(), "ifsock must not delete a vanished interface: {r:#}");
    let vanished = r["vanished_ms"].as_f64().expect("vanished_ms");
    assert!(vanished > 0.0 && vanished < 10_000.0, "{r:#}");
    assert_eq!(r["gone"], true);
}

/// Starts `teardown` with a long grace, waits until the interface's IFF_UP is cleared (ifsock's
/// down took effect), sends `signal`, and returns the finished run.
fn interrupted_run(ns: &Netns, a: &str, json: bool, signal: i32) -> std::process::Output {
    let mut args = vec!["--netns", ns.name.as_str(), "teardown", a, "--yes", "--grace", "60s"];
    if json {
        args.push("--json");
    }
    let child = Command::new(ifsock_bin()).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let waited = wait_until("ifsock's down (IFF_UP cleared)", T, || link_flags(ns, a).is_some_and(|f| !f.iter().any(|f| f == "UP")));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, signal) };
    let out = child.wait_with_output().unwrap();
    waited.unwrap();
    out
}

fn assert_left_down(ns: &Netns, a: &str, index: u32) {
    assert_eq!(ns.ifindex(a).unwrap(), index, "{a} must not be deleted");
    let flags = link_flags(ns, a).unwrap();
    assert!(!flags.iter().any(|f| f == "UP"), "{a} must be left down: {flags:?}");
}

#[test]
fn sigint_during_grace_stops_it_leaves_the_interface_down_and_says_how_to_restore_or_finish() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let index = pair(&ns, &a, &b, 225);
    let t = Instant::now();
    let out = interrupted_run(&ns, &a, false, libc::SIGINT);
    assert!(t.elapsed() < Duration::from_secs(50), "the signal did not end the 60 s grace: {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(130), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("teardown {a} (ifindex {index}")), "the partial report: {text}");
    assert!(text.contains("set down (acknowledged"), "{text}");
    let wanted = format!(
        "interrupted by SIGINT: {a} left down, not deleted; restore: ip -n {n} link set {a} up; finish: ifsock --netns {n} teardown {a} --grace 0 --yes",
        n = ns.name
    );
    assert!(text.contains(&wanted), "wanted {wanted:?} in: {text}");
    assert!(!text.contains("deleted after"), "{text}");
    assert_left_down(&ns, &a, index);
    // The finish command it printed does finish the job.
    let done = ifsock(&["--netns", &ns.name, "teardown", &a, "--grace", "0", "--yes"]).unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(ns.ifindex(&a).is_err(), "{a} still exists after the finish command");
}

#[test]
fn sigterm_during_grace_ends_in_one_json_object_with_the_state_left_and_exit_143() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let index = pair(&ns, &a, &b, 226);
    let out = interrupted_run(&ns, &a, true, libc::SIGTERM);
    assert_eq!(out.status.code(), Some(143), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((r["interrupted"].as_bool(), r["signal"].as_str()), (Some(true), Some("SIGTERM")), "{r:#}");
    assert_eq!(r["state_left"], "down", "{r:#}");
    assert_eq!(r["down"]["ok"], true);
    assert!(r["delete"].is_null(), "{r:#}");
    assert_eq!(r["gone"], false);
    assert_eq!(r["restore"], format!("ip -n {} link set {a} up", ns.name));
    assert!(r["error"].is_null());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("interrupted by SIGTERM: {a} left down, not deleted")));
    assert_left_down(&ns, &a, index);
}

#[test]
fn veth_peer_in_another_netns_is_planned_with_its_bound_socket_and_reported_gone() {
    require_root();
    let (ns, peer_ns) = (Netns::new().unwrap(), Netns::new().unwrap());
    let (a, b) = (unique("ta"), unique("tb"));
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &peer_ns.name]).unwrap();
    ns.ip(&["addr", "add", "10.227.0.1/24", "dev", &a]).unwrap();
    ns.ip(&["link", "set", &a, "up"]).unwrap();
    peer_ns.ip(&["addr", "add", "10.227.0.2/24", "dev", &b]).unwrap();
    peer_ns.ip(&["link", "set", &b, "up"]).unwrap();
    let b_index = peer_ns.ifindex(&b).unwrap();
    let b2 = b.clone();
    let server = peer_ns
        .run(move || -> anyhow::Result<_> {
            let s = UdpSocket::bind("10.227.0.2:6421")?;
            bind_to_device(&s, &b2)?;
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let ino = socket_inode(&server).unwrap();
    // A receiver on the peer's socket, blocked before ifsock starts: observed like our own.
    let rx = server.try_clone().unwrap();
    let rx_thread = std::thread::spawn(move || rx.recv(&mut [0u8; 16]));
    wait_until("peer-side receiver blocked in recvfrom", T, || thread_blocked_in_recvfrom(ino)).unwrap();

    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--dry-run", "--json"]).unwrap();
    let r = &rows[0];
    let peer = r["companions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["relation"] == "veth_peer"))
        .unwrap_or_else(|| panic!("no veth peer in the plan: {r:#}"));
    assert_eq!(peer["fate"], "deleted");
    assert_eq!(peer["netns_name"], peer_ns.name.as_str(), "{peer:#}");
    assert_eq!(peer["netns"], peer_ns.ino().unwrap());
    assert_eq!((peer["ifname"].as_str(), peer["ifindex"].as_u64()), (Some(b.as_str()), Some(u64::from(b_index))));
    let s = socket(peer, ino);
    assert_eq!(s["binding"], "device");
    assert_eq!(s["netns"], peer_ns.ino().unwrap());
    assert!(s["owners"].as_array().unwrap().iter().any(|o| o["pid"] == std::process::id()), "{s:#}");
    let human = ifsock(&["--netns", &ns.name, "teardown", &a, "--dry-run"]).unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(&format!("also {b} (ifindex {b_index}, kind veth, netns {}", peer_ns.name)), "{text}");
    assert!(text.contains(&format!("inode {ino}")), "{text}");
    assert_eq!(peer_ns.ifindex(&b).unwrap(), b_index, "a dry run deletes nothing");

    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--yes", "--json", "--grace", "200ms"]).unwrap();
    let r = &rows[0];
    assert_eq!((r["state_left"].as_str(), r["gone"].as_bool()), (Some("deleted"), Some(true)), "{r:#}");
    let peer = &r["companions"][0];
    assert_eq!(peer["gone"], true, "{peer:#}");
    let s = socket(peer, ino);
    assert_eq!(s["closed"], false, "still held by this test: {s:#}");
    let waiting = &s["receivers"][0];
    assert_eq!((waiting["syscall"].as_str(), waiting["blocked_at_down"].as_bool()), (Some("recvfrom"), Some(true)), "{s:#}");
    assert_eq!(waiting["blocked_at_end"], true, "nothing wakes a receiver whose device goes with the peer: {s:#}");
    assert!(peer_ns.ifindex(&b).is_err(), "{b} must be gone with {a}");
    // SAFETY: shutdown on a valid fd owned by `server`; makes the blocked recv return 0.
    unsafe { libc::shutdown(server.as_raw_fd(), libc::SHUT_RD) };
    assert_eq!(rx_thread.join().unwrap().unwrap(), 0, "the receiver returned only because the test shut it down");
    drop(server);
}

#[test]
fn bridge_teardown_lists_its_ports_as_released_and_a_port_names_its_master() {
    require_root();
    let ns = Netns::new().unwrap();
    let (br, a, b) = (unique("tbr"), unique("ta"), unique("tb"));
    ns.ip(&["link", "add", &br, "type", "bridge"]).unwrap();
    pair(&ns, &a, &b, 228);
    ns.ip(&["link", "set", &a, "master", &br]).unwrap();
    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &br, "--dry-run", "--json"]).unwrap();
    let ports: Vec<&Value> = rows[0]["companions"].as_array().unwrap().iter().filter(|c| c["relation"] == "bridge_port").collect();
    assert_eq!(ports.len(), 1, "{:#}", rows[0]);
    assert_eq!((ports[0]["ifname"].as_str(), ports[0]["fate"].as_str()), (Some(a.as_str()), Some("released")));
    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--dry-run", "--json"]).unwrap();
    let master = rows[0]["companions"].as_array().unwrap().iter().find(|c| c["relation"] == "master").cloned();
    let master = master.unwrap_or_else(|| panic!("no master: {:#}", rows[0]));
    assert_eq!((master["ifname"].as_str(), master["fate"].as_str()), (Some(br.as_str()), Some("loses_port")));
    assert!(rows[0]["companions"].as_array().unwrap().iter().any(|c| c["relation"] == "veth_peer" && c["ifname"] == b.as_str()), "{:#}", rows[0]);
}

#[test]
fn tun_teardown_lists_the_fds_that_hold_it() {
    require_root();
    let ns = Netns::new().unwrap();
    let name = unique("tt");
    let n2 = name.clone();
    let fd = ns.run(move || tun_queue(&n2, IFF_TUN | IFF_NO_PI)).unwrap().unwrap();
    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &name, "--dry-run", "--json"]).unwrap();
    let r = &rows[0];
    assert_eq!(r["kind"], "tun");
    let holder = r["tun_holders"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["pid"] == std::process::id() && h["fd"] == fd.as_raw_fd()))
        .unwrap_or_else(|| panic!("fd {} of this test not listed: {r:#}", fd.as_raw_fd()));
    assert_eq!((holder["queue"].as_u64(), holder["state"].as_str()), (Some(0), Some("attached")), "{holder:#}");
    let text = String::from_utf8_lossy(&ifsock(&["--netns", &ns.name, "teardown", &name, "--dry-run"]).unwrap().stdout).into_owned();
    assert!(text.contains(&format!("[{}]/fd{}: queue 0", std::process::id(), fd.as_raw_fd())), "{text}");
    drop(fd);
}

#[test]
fn json_errors_end_in_one_complete_object_saying_nothing_changed() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let index = pair(&ns, &a, &b, 229);
    let one_object = |args: &[&str]| -> Value {
        let out = ifsock(args).unwrap();
        assert_eq!(out.status.code(), Some(1), "ifsock {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
        serde_json::from_str(&text).unwrap()
    };
    let r = one_object(&["--netns", &ns.name, "teardown", "nosuchif0", "--yes", "--json"]);
    assert_eq!((r["type"].as_str(), r["state_left"].as_str(), r["interrupted"].as_bool()), (Some("teardown"), Some("untouched"), Some(false)));
    assert!(r["error"].as_str().unwrap().contains("unknown interface \"nosuchif0\""), "{r:#}");
    // Known target, no confirmation (stdin is not a terminal): the whole plan with the error.
    let r = one_object(&["--netns", &ns.name, "teardown", &a, "--json"]);
    assert_eq!((r["ifindex"].as_u64(), r["state_left"].as_str()), (Some(u64::from(index)), Some("untouched")), "{r:#}");
    assert!(r["error"].as_str().unwrap().contains("pass --yes"), "{r:#}");
    assert!(r["down"].is_null() && r["delete"].is_null());
    assert!(link_flags(&ns, &a).unwrap().iter().any(|f| f == "UP"));
}

#[test]
fn closed_stdout_does_not_stop_the_teardown_halfway_and_stderr_says_what_was_done() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    pair(&ns, &a, &b, 230);
    let mut child = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "teardown", &a, "--yes", "--grace", "300ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before ifsock writes anything (`ifsock teardown … | head -0`).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "stderr: {stderr}");
    assert!(ns.ifindex(&a).is_err(), "the teardown must be completed, not abandoned: {a} still exists");
    assert!(stderr.contains(&format!("stdout closed; {a} deleted")), "{stderr}");
}

#[test]
fn abort_stranded_wakes_a_receiver_blocked_on_the_deleted_veth_and_reports_it() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tap"));
    pair(&ns, &a, &b, 231);
    let dev = a.clone();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let sock = ns
        .run(move || -> anyhow::Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            bind_to_device(&s, &dev)?;
            let fd = s.as_raw_fd();
            std::thread::spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
                let mut buf = [0u8; 64];
                // SAFETY: fd stays open (the test holds the socket) for the call.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                let errno = if n < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
                let _ = done_tx.send((Instant::now(), errno));
            });
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let ino = socket_inode(&sock).unwrap();
    let tid: u32 = tid_rx.recv().unwrap();
    wait_until("receiver blocked", T, || thread_blocked_in_recvfrom(ino)).unwrap();

    let dry = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--dry-run", "--abort-stranded", "--json"]).unwrap().remove(0);
    let planned = dry["abort"]["sockets"].as_array().unwrap_or_else(|| panic!("dry run lists what would be destroyed: {dry:#}"));
    assert!(planned.iter().any(|s| s["inode"] == ino && s["result"] == "would_destroy"), "{dry:#}");
    assert!(ns.ifindex(&a).is_ok(), "the dry run changed nothing");
    assert!(done.try_recv().is_err(), "the dry run woke nothing");

    let started = Instant::now();
    let r = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--grace", "0", "--abort-stranded", "--yes", "--json"]).unwrap().remove(0);
    assert_eq!(r["state_left"], "deleted", "{r:#}");
    let (woke_at, errno) = done.recv_timeout(T).expect("the receiver woke");
    assert!(woke_at > started, "woke after the teardown started");
    assert_eq!(errno, libc::ECONNABORTED, "recv returned ECONNABORTED");
    let s = r["abort"]["sockets"].as_array().unwrap().iter().find(|s| s["inode"] == ino).unwrap_or_else(|| panic!("abort lists the socket: {r:#}")).clone();
    assert_eq!(s["destroyed"], true, "{s}");
    assert_eq!(s["stranded"]["reason"], "device_deleted", "{s}");
    let w = s["waiters"].as_array().unwrap().iter().find(|w| w["tid"] == tid).unwrap_or_else(|| panic!("the receiver is a waiter: {s}")).clone();
    assert_eq!((w["woke"].as_bool(), w["errno"].as_i64()), (Some(true), Some(103)), "{w}");
    let human = r["abort"]["destroyed"].as_u64();
    assert!(human.is_some_and(|n| n >= 1), "{r:#}");
}

/// `teardown` with a terminal for its stdin (`openpty(3)`): its stderr is collected on a
/// thread so the test can wait for the confirmation prompt.
struct OnTerminal {
    child: std::process::Child,
    master: std::fs::File,
    stderr: Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnTerminal {
    fn start(args: &[&str]) -> Self {
        use std::{io::Read as _, os::fd::FromRawFd as _};
        let (mut master, mut slave) = (0, 0);
        // SAFETY: out-pointers to two ints; null name, termios and winsize are allowed.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds are fresh and owned here.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave)) };
        let mut child = Command::new(ifsock_bin()).args(args).stdin(Stdio::from(slave)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (sink, mut from) = (stderr.clone(), child.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        OnTerminal { child, master, stderr, reader: Some(reader) }
    }

    /// Waits for the prompt, answers `line`, and returns the finished run's status, stdout
    /// and stderr.
    fn answer(mut self, line: &str) -> (std::process::ExitStatus, String, String) {
        use std::io::{Read as _, Write as _};
        let stderr = self.stderr.clone();
        let child = &mut self.child;
        wait_until("the confirmation prompt", Duration::from_secs(120), || {
            stderr.lock().unwrap().contains("proceed? [y/N]") || child.try_wait().ok().flatten().is_some()
        })
        .unwrap();
        assert!(self.child.try_wait().unwrap().is_none(), "teardown exited before asking: {}", self.stderr.lock().unwrap());
        self.master.write_all(line.as_bytes()).unwrap();
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        // The stderr reader ends at the pipe's end, with the process: its last bytes are in.
        self.reader.take().unwrap().join().unwrap();
        let err = self.stderr.lock().unwrap().clone();
        (status, out, err)
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn on_a_terminal_teardown_asks_and_no_leaves_the_interface_untouched_while_yes_proceeds() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let index = pair(&ns, &a, &b, 232);
    let args = ["--netns", ns.name.as_str(), "teardown", a.as_str(), "--grace", "0"];

    let (status, out, err) = OnTerminal::start(&args).answer("n\n");
    assert_eq!(status.code(), Some(0), "declining is an answer, not an error: {err}");
    assert!(err.contains(&format!("about to set {a} (ifindex {index}")), "the prompt says what would happen: {err}");
    assert!(err.contains(&format!("nothing changed, {a} left untouched")), "{err}");
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert_eq!(ns.ifindex(&a).unwrap(), index, "{a} still exists");
    assert!(link_flags(&ns, &a).unwrap().iter().any(|f| f == "UP"), "{a} still up");

    let (status, out, err) = OnTerminal::start(&args).answer("y\n");
    assert!(status.success(), "{err}");
    assert!(out.contains("deleted after"), "{out}");
    assert!(ns.ifindex(&a).is_err(), "confirmed: {a} deleted");
}

#[test]
fn grace_longer_than_a_day_and_json_refusals_of_lo_change_nothing() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let index = pair(&ns, &a, &b, 233);
    let out = ifsock(&["--netns", &ns.name, "teardown", &a, "--yes", "--grace", "25h"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("longer than 24h"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(ns.ifindex(&a).unwrap(), index);
    assert!(link_flags(&ns, &a).unwrap().iter().any(|f| f == "UP"), "a refused teardown left {a} changed");

    // Before the interface is known, the JSON refusal is the short object.
    let out = ifsock(&["--netns", &ns.name, "teardown", "lo", "--yes", "--json"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["dry_run", "error", "ifname", "interrupted", "state_left", "type"], "{r:#}");
    assert_eq!((r["ifname"].as_str(), r["state_left"].as_str(), r["interrupted"].as_bool()), (Some("lo"), Some("untouched"), Some(false)), "{r:#}");
    assert!(r["error"].as_str().unwrap().contains("loopback"), "{r:#}");
    assert!(link_flags(&ns, "lo").unwrap().iter().any(|f| f == "UP"), "lo untouched");
}

/// A child process killed and reaped on drop, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bits of the signals `pid` catches (`SigCgt` in /proc/PID/status).
fn caught(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("SigCgt:").map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0))))
        .unwrap_or(0)
}

#[test]
fn a_second_signal_while_the_interrupted_teardown_reports_ends_it_at_once_and_the_interface_stays_down() {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, os::unix::process::ExitStatusExt as _};
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    let index = pair(&ns, &a, &b, 234);
    // stdout is a one-page pipe the test fills and never reads: after the first signal the
    // report's write blocks, and the process can end only by the second signal.
    // Close-on-exec, so that no child holds the read end: once the test drops it, a teardown
    // still blocked (a failure) gets EPIPE instead of waiting forever.
    let (r, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
    assert!(unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    let filler = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(format!("/proc/self/fd/{}", wr.as_raw_fd())).unwrap();
    while (&filler).write(b"x").is_ok() {}
    let mut child = Reaped(
        Command::new(ifsock_bin())
            .args(["--netns", &ns.name, "teardown", &a, "--yes", "--grace", "60s"])
            .stdout(Stdio::from(wr))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let (sigint, sigterm) = (1u64 << (libc::SIGINT - 1), 1u64 << (libc::SIGTERM - 1));
    wait_until("ifsock's down (IFF_UP cleared) with its signal handlers installed", T, || {
        link_flags(&ns, &a).is_some_and(|f| !f.iter().any(|f| f == "UP")) && caught(pid) & sigint != 0
    })
    .unwrap();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    wait_until("the interrupted teardown blocked writing its report", T, || {
        caught(pid) & (sigint | sigterm) == 0 && in_syscall(pid, &[libc::SYS_write, libc::SYS_writev])
    })
    .unwrap();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the second signal did not end the teardown");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(status.signal(), Some(libc::SIGTERM), "ended by the second signal itself: {status}");
    assert_left_down(&ns, &a, index);
    drop(r);
}

#[test]
fn teardown_lists_a_tcp_reset_during_grace_on_a_connection_bound_to_the_interfaces_address() {
    use std::{io::Read as _, net::{TcpListener, TcpStream}};
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    pair(&ns, &a, &b, 235);
    // Both ends on `a`'s address: the local route of an address stays while its device is
    // down (only its deletion removes it), so the peer's RST still arrives during grace.
    let (mut client, server) = ns
        .run(|| -> anyhow::Result<(TcpStream, TcpStream)> {
            let l = TcpListener::bind("10.235.0.1:0")?;
            let c = TcpStream::connect(l.local_addr()?)?;
            Ok((c, l.accept()?.0))
        })
        .unwrap()
        .unwrap();
    let ino = socket_inode(&client).unwrap();
    let server_addr = server.local_addr().unwrap();
    let child = Command::new(ifsock_bin())
        .args(["--netns", &ns.name, "teardown", &a, "--yes", "--json", "--grace", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let down = wait_until("ifsock's down (IFF_UP cleared)", T, || link_flags(&ns, &a).is_some_and(|f| !f.iter().any(|f| f == "UP")));
    // The peer closes with SO_LINGER {on, 0}: a RST instead of a FIN.
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: linger is plain data, read as bytes for the call.
    let bytes = unsafe { std::slice::from_raw_parts((&linger as *const libc::linger).cast::<u8>(), std::mem::size_of::<libc::linger>()) };
    setsockopt(&server, libc::SOL_SOCKET, libc::SO_LINGER, bytes).unwrap();
    drop(server);
    client.set_read_timeout(Some(T)).unwrap();
    let read = client.read(&mut [0u8; 16]);
    // Ends the grace period early: an interface deleted by someone else.
    ns.ip(&["link", "del", &a]).unwrap();
    let out = child.wait_with_output().unwrap();
    down.unwrap();
    assert_eq!(read.map_err(|e| e.raw_os_error()).err(), Some(Some(libc::ECONNRESET)), "the client saw the RST during grace");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = socket(&r, ino);
    assert_eq!((s["binding"].as_str(), s["protocol"].as_str()), (Some("address"), Some("tcp")), "{s:#}");
    let seen = s["socket_errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["errno"] == libc::ECONNRESET)
        .unwrap_or_else(|| panic!("no kernel-reported ECONNRESET on the connection: {s:#}"));
    assert_eq!((seen["error"].as_str(), seen["count"].as_u64()), (Some("ECONNRESET"), Some(1)), "{seen}");
    assert_eq!(seen["remote"], server_addr.to_string(), "{seen}");
    let first = seen["first_ms"].as_f64().unwrap();
    assert!(first >= 0.0 && r["vanished_ms"].as_f64().is_some_and(|v| first <= v), "during grace: {r:#}");
    drop(client);
}

/// A server waiting in `select` (an event loop, as socat waits in `pselect6`) on a socket bound
/// to the interface's address: teardown shows it waiting, not "no receiver", and ends with a
/// verdict naming the socket left behind and the command that wakes its owner.
#[test]
fn an_event_loop_waiter_is_shown_waiting_and_the_report_ends_with_a_verdict_and_the_next_command() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("te"), unique("tf"));
    pair(&ns, &a, &b, 224);
    // A thread of this test in select(2) on a UDP socket bound to the interface's address (no
    // python3 in the VM's busybox guest: the event loop is the test's own).
    let sock = ns.run(|| std::net::UdpSocket::bind("10.224.0.1:6431")).unwrap().unwrap();
    let fd = sock.as_raw_fd();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let selector = std::thread::Builder::new()
        .name("evloop".into())
        .spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
            // SAFETY: fd_set is plain data; fd stays open until this thread is joined.
            let mut set: libc::fd_set = unsafe { std::mem::zeroed() };
            unsafe { libc::FD_SET(fd, &mut set) };
            let mut tv = libc::timeval { tv_sec: 600, tv_usec: 0 };
            // SAFETY: valid pointers for the call.
            unsafe { libc::select(fd + 1, &mut set, std::ptr::null_mut(), std::ptr::null_mut(), &mut tv) }
        })
        .unwrap();
    let tid = tid_rx.recv().unwrap();
    let pid = std::process::id();
    let in_select = || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()))
            .is_some_and(|nr| SELECT_WAITS.contains(&nr))
    };
    wait_until("the event loop in select", T, in_select).unwrap();
    let out = ifsock(&["--netns", &ns.name, "teardown", &a, "--yes", "--grace", "300ms"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let waiting = format!("evloop[{pid}] tid {tid} fd ");
    assert!(text.lines().any(|l| l.contains(&waiting) && l.contains("(select) at the end of grace — nothing woke it")), "{text}");
    assert!(!text.contains("no receiver"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("verdict: 1 socket(s) left bound to {a} (gone), 1 thread(s) still waiting")), "{text}");
    assert!(last.contains("next: `ifsock abort --inode "), "{text}");
    assert!(in_select(), "nothing woke the event loop");
    // Wake it ourselves (a shutdown makes the socket readable) and let it go.
    // SAFETY: fd is the open socket above.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    assert_eq!(selector.join().unwrap(), 1, "select returned the socket readable after the shutdown");
    drop(sock);
}

/// Seed 003 after the fact: a UDP receiver whose fd was closed is on its socket's wait queue,
/// so teardown's plan lists it on the socket it sleeps on (`source: wait_queue`), though no fd
/// of any process names that socket any more.
#[test]
fn teardown_lists_a_receiver_whose_fd_was_closed_from_its_sockets_wait_queue() {
    require_root();
    if !skip::needs(skip::Feature::Iterators) {
        return;
    }
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ta"), unique("tb"));
    pair(&ns, &a, &b, 236);
    let (fd, port) = ns
        .run(|| -> anyhow::Result<(i32, u16)> {
            let s = UdpSocket::bind("10.236.0.1:0")?;
            let port = s.local_addr()?.port();
            Ok((std::os::fd::IntoRawFd::into_raw_fd(s), port))
        })
        .unwrap()
        .unwrap();
    // SAFETY: fd is the socket's, open until closed once below.
    let ino = socket_inode(&unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let receiver = std::thread::spawn(move || {
        let _ = tid_tx.send(nix::unistd::gettid().as_raw() as u32);
        let mut buf = [0u8; 16];
        // SAFETY: fd and buf are valid for the call; the fd is closed by another thread while
        // the call holds the socket.
        unsafe { libc::recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), 0, std::ptr::null_mut(), std::ptr::null_mut()) }
    });
    let tid = tid_rx.recv().unwrap();
    wait_until("the receiver asleep in recvfrom", T, || {
        let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
        sc.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()) == Some(libc::SYS_recvfrom) && stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('S'))
    })
    .unwrap();
    // SAFETY: the fd was taken from the socket above and is closed once, here.
    unsafe { libc::close(fd) };
    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--dry-run", "--json"]).unwrap();
    let s = socket(&rows[0], ino);
    assert!(s["owners"].as_array().is_none_or(|o| o.is_empty()), "no fd names the socket: {s:#}");
    let r = s["receivers"].as_array().and_then(|rs| rs.iter().find(|r| r["tid"] == tid)).unwrap_or_else(|| panic!("receiver {tid} missing: {s:#}"));
    assert_eq!((r["source"].as_str(), r["syscall"].as_str(), r["fd"].as_i64()), (Some("wait_queue"), Some("recvfrom"), Some(i64::from(fd))), "{r}");
    assert_eq!(r["blocked_at_down"], true, "{r}");
    ns.run(move || UdpSocket::bind("10.236.0.2:0").and_then(|s| s.send_to(b"wake", ("10.236.0.1", port)))).unwrap().unwrap();
    assert_eq!(receiver.join().unwrap(), 4, "the receiver gets the datagram");
}
