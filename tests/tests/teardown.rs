//! `ifsock teardown` against the real kernel, in a namespace of the test's own: what a sender
//! bound to the interface gets between down and delete (seed 000), a receiver that nothing
//! wakes (seed 003), the dry run, the safety refusals, and an interface deleted by someone else
//! during the grace period.
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
