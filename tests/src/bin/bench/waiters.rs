//! Waiter discovery (issues 16, 28): `sockets --json` over 1,000 UDP sockets in a netns, before
//! and while 1,000 threads wait on them (500 in `epoll_wait`, 500 in `poll`), with waiters from
//! the sockets' wait queues (the default) and from the `/proc` fallback
//! (`IFSOCK_WAITER_SOURCE=proc`: one pass over /proc, epoll fdinfo, and the poll sets read with
//! `process_vm_readv`), in the same run. Besides the whole command, the discovery phase alone
//! (ifsock's debug log: `sources::waiters`' "waiters: … in N µs", the same span for both
//! sources) and the wait-queue source's floor in that phase: verifying its `iter/udp` waiter
//! program (`probes::load`: "iter_udp_waiters … verified in") plus the walk itself.
use std::{net::UdpSocket, os::fd::AsRawFd, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use ifsock_tests::{ifsock_bin, ifsock_json, wait_until, Netns};

use crate::util::{median, ms, raise_nofile, timed, Row, Sink};

const THREADS: usize = 1000;

/// Threads of this process sleeping in one of `nrs` (`/proc/self/task/*/syscall`).
fn threads_in(nrs: &[i64]) -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| {
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("syscall"))
                    .ok()
                    .and_then(|l| l.split_whitespace().next()?.parse::<i64>().ok())
                    .is_some_and(|nr| nrs.contains(&nr))
            })
            .count()
    })
}

/// A `Duration` as `{:?}` prints it (`13.9ms`, `950.2µs`, `1.2s`), in ms.
fn debug_ms(text: &str) -> Option<f64> {
    let num = |suffix: &str| text.strip_suffix(suffix).and_then(|n| n.parse::<f64>().ok());
    num("ms").or_else(|| num("µs").map(|v| v / 1e3)).or_else(|| num("ns").map(|v| v / 1e6)).or_else(|| num("s").map(|v| v * 1e3))
}

/// The phases of one `sockets --json` run read from ifsock's debug log, in ms: the waiter
/// discovery (both sources), and for the wait queues the waiter program's verification and
/// the walk.
struct Phases {
    discovery: f64,
    verify: Option<f64>,
    walk: Option<f64>,
}

fn phases(bin: &str, netns: &str, source: &str) -> Result<Phases> {
    let out = Command::new(bin)
        .args(["--netns", netns, "sockets", "--json"])
        .env("IFSOCK_WAITER_SOURCE", source)
        .env("RUST_LOG", "ifsock::sources=debug,ifsock::probes=debug")
        .env("NO_COLOR", "1")
        .output()?;
    ensure!(out.status.success(), "ifsock sockets failed: {}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    let after = |key: &str| log.lines().find_map(|l| l.split_once(key).map(|(_, rest)| rest.trim().to_string()));
    let discovery = after("waiters: SourceNote")
        .and_then(|r| r.rsplit_once(" in ").and_then(|(_, t)| t.strip_suffix(" µs")?.parse::<f64>().ok()))
        .with_context(|| format!("no waiter discovery timing in the debug log: {log}"))?
        / 1e3;
    let verify = after("iter_udp_waiters (iter/udp) verified in").and_then(|t| debug_ms(&t));
    let walk = after("wait-queue walk:").and_then(|r| r.rsplit_once(" in ").and_then(|(_, t)| t.strip_suffix(" µs")?.parse::<f64>().ok())).map(|v| v / 1e3);
    Ok(Phases { discovery, verify, walk })
}

/// Adds the waiter-discovery rows: cost per 1,000 waiting threads.
pub fn discovery(rows: &mut Vec<Row>) -> Result<()> {
    raise_nofile(4 * THREADS as u64)?;
    let ns = Netns::new()?;
    let socks = ns.run(|| -> Result<Vec<UdpSocket>> { (0..THREADS).map(|_| Ok(UdpSocket::bind("127.0.0.1:0")?)).collect() })??;
    let bin = ifsock_bin();
    let bin = bin.to_str().context("ifsock path is not UTF-8")?;
    // `env` picks the source: no variable (the wait queues), or IFSOCK_WAITER_SOURCE=proc.
    let time_sockets = |source: &str| -> Result<(f64, u64)> {
        let (mut v, mut rss) = (Vec::new(), 0);
        for _ in 0..7 {
            let r = timed(&["env", source, bin, "--netns", &ns.name, "sockets", "--json"], None, Sink::Pipe, Duration::from_secs(60))?;
            v.push(ms(r.took));
            rss = rss.max(r.maxrss_kib);
        }
        Ok((median(&v), rss))
    };
    const QUEUE: &str = "IFSOCK_WAITER_SOURCE=wait_queue";
    const PROC: &str = "IFSOCK_WAITER_SOURCE=proc";
    let (idle, _) = time_sockets(QUEUE)?;
    let (idle_proc, _) = time_sockets(PROC)?;
    // Half the threads wait in epoll_wait on an epoll fd of their own holding their socket, half
    // in poll on theirs; a pipe written at the end wakes them all (it is in every wait set).
    let (wake_r, wake_w) = nix::unistd::pipe()?;
    let wake = wake_r.as_raw_fd();
    let mut handles = Vec::new();
    for (i, s) in socks.iter().enumerate() {
        let fd = s.as_raw_fd();
        let h = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            if i % 2 == 0 {
                // SAFETY: plain epoll calls on fds that outlive the thread (joined below).
                unsafe {
                    let ep = libc::epoll_create1(0);
                    for f in [fd, wake] {
                        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: f as u64 };
                        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, f, &mut ev);
                    }
                    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
                    libc::epoll_wait(ep, out.as_mut_ptr(), 2, -1);
                    libc::close(ep);
                }
            } else {
                let mut fds = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 }];
                // SAFETY: a valid pollfd array for the call.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            }
        })?;
        handles.push(h);
    }
    let waited = wait_until("1,000 threads in their waits", Duration::from_secs(60), || {
        threads_in(&[libc::SYS_epoll_wait, libc::SYS_poll]) >= THREADS
    });
    let measured = waited.and_then(|()| {
        let (busy, rss) = time_sockets(QUEUE)?;
        let (busy_proc, _) = time_sockets(PROC)?;
        let rows_json = ifsock_json(&["--netns", &ns.name, "sockets", "--json"])?;
        let named = rows_json.iter().filter(|r| r["waiters"].as_array().is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["source"] == "wait_queue"))).count();
        // The phases, the two sources taken in turn, fastest of 9 each (other load only adds).
        let (mut queue, mut proc, mut verify, mut walk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..9 {
            let q = phases(bin, &ns.name, "wait_queue")?;
            queue.push(q.discovery);
            verify.extend(q.verify);
            walk.extend(q.walk);
            proc.push(phases(bin, &ns.name, "proc")?.discovery);
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let floor = (min(&verify), min(&walk));
        Ok((busy, busy_proc, rss, named, (min(&queue), min(&proc), floor)))
    });
    nix::unistd::write(&wake_w, b"x")?;
    for h in handles {
        let _ = h.join();
    }
    let (busy, busy_proc, rss, named, (queue, proc, (verify, walk))) = measured?;
    ensure!(named == THREADS, "only {named} of {THREADS} sockets named their waiter from the wait queue");
    rows.push(Row {
        name: format!("waiter discovery: `sockets --json`, {THREADS} UDP sockets, {THREADS} threads waiting (500 `epoll_wait`, 500 `poll`)"),
        ifsock: format!("wait queues: {busy:.1} ms (idle {idle:.1} ms), every socket named its waiter"),
        baseline: format!("`/proc` pass: {busy_proc:.1} ms (idle {idle_proc:.1} ms)"),
        ratio: Some(busy / busy_proc),
        target: "— (the whole command; the discovery phase below)".into(),
        met: None,
        rss_kib: Some(rss),
    });
    rows.push(Row {
        name: format!("waiter discovery phase alone (ifsock's debug log), same {THREADS} waiting threads"),
        ifsock: format!("wait queues: {queue:.1} ms (fastest of 9)"),
        baseline: format!("`/proc` pass: {proc:.1} ms (fastest of 9, taken in turn)"),
        ratio: Some(queue / proc),
        target: "≤ 0.1 (≥ 10× faster)".into(),
        met: Some(queue * 10.0 <= proc),
        rss_kib: None,
    });
    rows.push(Row {
        name: "floor of the wait-queue phase: verifying the `iter/udp` waiter program + its walk".into(),
        ifsock: format!("{:.1} ms (verification {verify:.1} ms + walk {walk:.1} ms, fastest of 9 each)", verify + walk),
        baseline: format!("`/proc` pass: {proc:.1} ms"),
        ratio: Some((verify + walk) / proc),
        target: "— (floor of the target above)".into(),
        met: None,
        rss_kib: None,
    });
    drop(socks);
    Ok(())
}
