//! The real daemons of the stranded tests, idle in their event loops: unbound (libevent,
//! `epoll_wait`) and dnsmasq (`poll`). Every socket they listen on names the daemon's waiting
//! thread from the socket's own wait queue (`"source": "wait_queue"`), with the right `via`,
//! the daemon's pid and the fd it holds the socket by, as the `/proc` pass on the same daemon
//! does. Host only (`cargo xtask vm-test` lists it as such): the busybox guest has neither
//! daemon.
use std::time::Duration;

use ifsock_tests::{skip::Feature, *};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);

/// Waits until `d` holds `want` sockets on `port` in `ns` and one of its threads sleeps in one
/// of `waits` before and after the listing, and returns the listing's rows of the daemon.
fn idle_rows(ns: &Netns, d: &mut Daemon, port: u16, waits: &[i64], want: usize) -> Vec<Value> {
    let pid = d.pid();
    let mut rows = Vec::new();
    wait_until("the daemon's sockets, listed while it waits", READY, || {
        if d.check_running().is_err() || !in_syscall(pid, waits) {
            return false;
        }
        rows = rows_of(&socket_rows(ns, false).unwrap_or_default(), pid).into_iter().filter(|r| r["local_port"] == port).collect();
        rows.len() >= want && in_syscall(pid, waits)
    })
    .unwrap();
    d.check_running().unwrap();
    rows
}

/// (tid, via, fd) of the waiters of `pid` on the row of the same inode in `rows`.
fn ties_of(rows: &[Value], inode: &Value, pid: u32) -> Vec<(u64, String, i64)> {
    let mut t: Vec<_> = rows
        .iter()
        .filter(|r| &r["inode"] == inode)
        .flat_map(|r| r["waiters"].as_array().cloned().unwrap_or_default())
        .filter(|w| w["pid"] == pid)
        .map(|w| (w["tid"].as_u64().unwrap_or(0), w["via"].as_str().unwrap_or("").to_string(), w["fd"].as_i64().unwrap_or(-1)))
        .collect();
    t.sort();
    t
}

/// Every row of the daemon names exactly one waiter of its: `via`, from the wait queue, a
/// thread of `pid` asleep in one of `waits`, on the fd the daemon holds the socket by; and the
/// `/proc` pass run right after agrees.
fn assert_waiters_from_wait_queue(ns: &Netns, rows: &[Value], pid: u32, via: &str, waits: &[i64]) {
    for r in rows {
        let mine: Vec<&Value> = r["waiters"].as_array().unwrap().iter().filter(|w| w["pid"] == pid).collect();
        assert_eq!(mine.len(), 1, "one waiter of the daemon on its {} socket: {r}", r["protocol"]);
        let w = mine[0];
        assert_eq!((w["source"].as_str(), w["via"].as_str()), (Some("wait_queue"), Some(via)), "{w}");
        let tid = w["tid"].as_u64().unwrap();
        let nr = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
        assert!(
            nr.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()).is_some_and(|n| waits.contains(&n)),
            "waiter {tid} is a thread of {pid} in its wait (syscall line {nr:?}): {w}"
        );
        let owned_fd = r["owners"].as_array().unwrap().iter().find(|o| o["pid"] == pid).map(|o| o["fd"].clone());
        assert_eq!(Some(w["fd"].clone()), owned_fd, "the fd the daemon holds the socket by: {r}");
    }
    assert!(in_syscall(pid, waits), "the daemon left its wait while being listed");
    let by_proc = socket_rows_from_proc(ns).unwrap();
    for r in rows {
        assert_eq!(ties_of(rows, &r["inode"], pid), ties_of(&by_proc, &r["inode"], pid), "the /proc pass agrees on {r}");
    }
}

#[test]
fn unbounds_epoll_loop_is_read_from_its_sockets_wait_queues() {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return;
    }
    const PORT: u16 = 10153;
    let ns = Netns::new().unwrap();
    let (mut d, _conf) = start_unbound(&ns, "127.0.0.1", PORT).unwrap();
    let pid = d.pid();
    // One UDP and one TCP listening socket on 127.0.0.1:PORT.
    let rows = idle_rows(&ns, &mut d, PORT, &EPOLL_WAITS, 2);
    assert!(["udp", "tcp"].iter().all(|p| rows.iter().any(|r| r["protocol"] == *p)), "{rows:#?}");
    assert_waiters_from_wait_queue(&ns, &rows, pid, "epoll", &EPOLL_WAITS);
    for r in &rows {
        let w = r["waiters"].as_array().unwrap().iter().find(|w| w["pid"] == pid).unwrap();
        assert!(w["syscall"].as_str().unwrap().starts_with("epoll_") && w["epfd"].is_u64(), "the epoll fd it waits in: {w}");
        assert_eq!(w["comm"], "unbound", "{w}");
    }
}

#[test]
fn dnsmasqs_poll_loop_is_read_from_its_sockets_wait_queues() {
    require_root();
    if !skip::needs(Feature::Iterators) {
        return;
    }
    const PORT: u16 = 10154;
    let ns = Netns::new().unwrap();
    // The default wildcard mode: UDP and TCP sockets on 0.0.0.0 (and :: where IPv6 is up).
    let mut d = start_dnsmasq(&ns, None, PORT).unwrap();
    let pid = d.pid();
    let rows = idle_rows(&ns, &mut d, PORT, &POLL_WAITS, 2);
    assert!(["udp", "tcp"].iter().all(|p| rows.iter().any(|r| r["protocol"] == *p)), "{rows:#?}");
    assert_waiters_from_wait_queue(&ns, &rows, pid, "poll", &POLL_WAITS);
    for r in &rows {
        let w = r["waiters"].as_array().unwrap().iter().find(|w| w["pid"] == pid).unwrap();
        assert_eq!((w["tid"].as_u64(), w["comm"].as_str()), (Some(pid as u64), Some("dnsmasq")), "dnsmasq's one thread: {w}");
    }
}
