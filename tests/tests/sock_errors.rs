//! Kernel-reported socket errors (`sock:inet_sk_error_report`) against the real kernel: a
//! connected UDP socket that sends to a closed port gets an ICMP port unreachable, the kernel
//! sets `sk_err` = ECONNREFUSED and reports it (`__udp4_lib_err()` → `sk_error_report()`);
//! `watch` must show it with the socket's inode, through tp_btf and through the classic
//! tracepoint fallback, and `teardown` must list it on the socket bound to the interface. A TCP
//! connection reset by its peer: `tcp_reset()` sets `sk_err` = ECONNRESET and reports it.
use std::{
    io::Read as _,
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use ifsock_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// A UDP socket on 127.0.0.1 connected to a port nobody listens on (the port of a socket bound
/// and closed just before, in a namespace of the test's own), that sent once and got
/// ECONNREFUSED from its next receive. Returns the socket (kept open), its inode and local port.
fn refused_udp() -> anyhow::Result<(UdpSocket, u64, u16)> {
    let closed = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(closed)?;
    s.send(b"ifsock")?;
    let err = s.recv(&mut [0u8; 16]).expect_err("a receive after the ICMP port unreachable fails");
    anyhow::ensure!(err.raw_os_error() == Some(libc::ECONNREFUSED), "expected ECONNREFUSED, got {err}");
    let ino = socket_inode(&s)?;
    let port = s.local_addr()?.port();
    Ok((s, ino, port))
}

fn is_error_of(ino: u64) -> impl FnMut(&Value) -> bool {
    move |v: &Value| v["type"] == "socket_error" && v["inode"] == ino
}

#[test]
fn watch_reports_econnrefused_on_a_connected_udp_socket_with_its_inode() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    let ready = w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(
        ready["sock_errors"], "tp_btf",
        "tp_btf on inet_sk_error_report needs Linux >= 5.14 with BTF: {ready}"
    );

    // The same error in the test's own netns (not followed) must not be reported.
    let (outside, outside_ino, _) = refused_udp().unwrap();
    let (inside, ino, port) = ns.run(refused_udp).unwrap().unwrap();

    let ev = w.wait_for("socket_error of the connected socket", T, is_error_of(ino)).unwrap();
    assert_eq!(ev["errno"], libc::ECONNREFUSED, "{ev}");
    assert_eq!(ev["error"], "ECONNREFUSED");
    assert_eq!(ev["netns"], ns.ino().unwrap());
    assert_eq!(ev["netns_name"], ns.name.as_str());
    assert_eq!(ev["local"], format!("127.0.0.1:{port}"));
    assert_eq!(ev["protocol"], "udp");
    assert_eq!(ev["family"], 4);
    assert_eq!(ev["bound_dev_if"], 0);
    assert_eq!(ev["via"], "tp_btf");
    assert_eq!(ev["inode_source"], "sk");
    assert!(ev["ts_unix_ns"].as_u64().unwrap() > 0);

    assert!(w.interrupt().unwrap().success());
    let rest = w.rest();
    assert!(!rest.iter().any(is_error_of(outside_ino)), "a socket outside the followed netns was reported");
    let counters = rest.iter().find(|v| v["type"] == "counters").expect("counters line on exit");
    assert!(counters["counters"]["socket_errors"].as_u64().unwrap() >= 1, "{counters}");
    assert_eq!(counters["counters"]["ringbuf_drops"], 0, "{counters}");
    drop((inside, outside));
}

#[test]
fn watch_falls_back_to_the_classic_tracepoint_and_finds_the_socket_by_address() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&[
        "--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--sock-error-probe", "tracepoint",
    ])
    .unwrap();
    let ready = w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["sock_errors"], "tracepoint", "{ready}");

    // The socket stays open until the event arrives: the classic tracepoint names no socket,
    // ifsock finds it in a snapshot taken after the report.
    let (inside, ino, port) = ns.run(refused_udp).unwrap().unwrap();
    let ev = w.wait_for("socket_error of the connected socket", T, is_error_of(ino)).unwrap();
    assert_eq!(ev["errno"], libc::ECONNREFUSED, "{ev}");
    assert_eq!(ev["local"], format!("127.0.0.1:{port}"));
    assert_eq!(ev["netns"], ns.ino().unwrap());
    assert_eq!(ev["via"], "tracepoint");
    assert_eq!(ev["inode_source"], "snapshot");
    assert!(w.interrupt().unwrap().success());
    drop(inside);
}

#[test]
fn teardown_lists_kernel_reported_errors_on_a_socket_bound_to_the_interface() {
    require_root();
    let ns = Netns::new().unwrap();
    let (a, b) = (unique("ea"), unique("eb"));
    ns.veth(&a, &b, Some("10.231.0.1/24")).unwrap();
    ns.ip(&["addr", "add", "10.231.0.2/24", "dev", &b]).unwrap();

    // Bound to `a`'s address, connected to a closed port on `b`'s: every other send draws an
    // ICMP port unreachable (local delivery, so no per-peer ICMP rate limit) until the down.
    let sock = ns
        .run(|| -> anyhow::Result<UdpSocket> {
            let closed = UdpSocket::bind("10.231.0.2:0")?.local_addr()?;
            let s = UdpSocket::bind("10.231.0.1:0")?;
            s.connect(closed)?;
            Ok(s)
        })
        .unwrap()
        .unwrap();
    let ino = socket_inode(&sock).unwrap();

    // The sender: paced at 1 ms (a bound on the load, not a synchronisation), stops when told
    // or after 20 s; reports the first ECONNREFUSED so the teardown starts from a socket that
    // already draws them.
    let stop = Arc::new(AtomicBool::new(false));
    let (refused_tx, refused) = mpsc::channel();
    let stop2 = stop.clone();
    let tx_sock = sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for _ in 0..20_000 {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            if let Err(e) = tx_sock.send(b"ifsock") {
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    let _ = refused_tx.send(());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    refused.recv_timeout(T).expect("the sender never got ECONNREFUSED before the teardown");

    let rows = ifsock_json(&["--netns", &ns.name, "teardown", &a, "--yes", "--json", "--grace", "500ms"]);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let rows = rows.unwrap();
    let r = &rows[0];
    assert_eq!(r["delete"]["ok"], true, "{r:#}");
    assert!(
        !r["unobserved"].as_array().unwrap().iter().any(|u| u.as_str().unwrap_or("").contains("inet_sk_error_report")),
        "{r:#}"
    );
    let s = r["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["inode"] == ino)
        .unwrap_or_else(|| panic!("socket {ino} missing from the report: {r:#}"));
    assert_eq!(s["binding"], "address");
    let seen = s["socket_errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["errno"] == libc::ECONNREFUSED)
        .unwrap_or_else(|| panic!("no kernel-reported ECONNREFUSED on the bound socket: {s:#}"));
    assert_eq!(seen["error"], "ECONNREFUSED");
    assert!(seen["count"].as_u64().unwrap() >= 1);
    assert!(seen["remote"].as_str().unwrap().starts_with("10.231.0.2:"), "{seen}");
    drop(sock);
}

/// An established TCP connection on 127.0.0.1 whose server end is closed with `SO_LINGER`
/// {on, 0}: `tcp_close()` sends a RST instead of a FIN, and the client's `tcp_reset()` sets
/// `sk_err` = ECONNRESET and reports it. Returns the client (kept open, so it still has its
/// inode), its inode, its local port and the server's port, once its blocked read returned
/// ECONNRESET.
fn reset_tcp() -> anyhow::Result<(TcpStream, u64, u16, u16)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server_port = listener.local_addr()?.port();
    let mut client = TcpStream::connect(("127.0.0.1", server_port))?;
    let (server, _) = listener.accept()?;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: linger is plain data, read as bytes for the call.
    let bytes = unsafe { std::slice::from_raw_parts((&linger as *const libc::linger).cast::<u8>(), std::mem::size_of::<libc::linger>()) };
    setsockopt(&server, libc::SOL_SOCKET, libc::SO_LINGER, bytes)?;
    drop(server);
    let err = client.read(&mut [0u8; 16]).expect_err("a read after the peer's RST fails");
    anyhow::ensure!(err.raw_os_error() == Some(libc::ECONNRESET), "expected ECONNRESET, got {err}");
    let ino = socket_inode(&client)?;
    let port = client.local_addr()?.port();
    Ok((client, ino, port, server_port))
}

#[test]
fn watch_reports_econnreset_on_a_tcp_connection_reset_by_its_peer() {
    require_root();
    let ns = Netns::new().unwrap();
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"]).unwrap();
    let ready = w.wait_for("ready line", T, |v| v["type"] == "ready").unwrap();
    assert_eq!(ready["sock_errors"], "tp_btf", "tp_btf on inet_sk_error_report needs Linux >= 5.14 with BTF: {ready}");
    let (client, ino, port, server_port) = ns.run(reset_tcp).unwrap().unwrap();
    let ev = w.wait_for("socket_error of the reset connection", T, is_error_of(ino)).unwrap();
    assert_eq!((ev["errno"].as_i64(), ev["error"].as_str()), (Some(i64::from(libc::ECONNRESET)), Some("ECONNRESET")), "{ev}");
    assert_eq!(ev["protocol"], "tcp", "{ev}");
    assert_eq!(ev["family"], 4);
    assert_eq!(ev["local"], format!("127.0.0.1:{port}"), "{ev}");
    assert_eq!(ev["remote"], format!("127.0.0.1:{server_port}"), "{ev}");
    assert_eq!(ev["netns"], ns.ino().unwrap());
    assert_eq!(ev["via"], "tp_btf");
    assert!(w.interrupt().unwrap().success());
    let errors_of_it = w.rest().iter().filter(|v| v["type"] == "socket_error" && v["inode"] == ino).count();
    assert_eq!(errors_of_it, 1, "one reset, one report");
    drop(client);
}
