//! Waiter discovery (issues 16, 28): `sockets --json` over 1,000 UDP sockets in a netns, before
//! and while 1,000 threads wait on them (500 in `epoll_wait`, 500 in `poll`), with waiters from
//! the sockets' wait queues (the default) and from the `/proc` fallback
//! (`IFSOCK_WAITER_SOURCE=proc`: one pass over /proc, epoll fdinfo, and the poll sets read with
//! `process_vm_readv`), in the same run.
use std::{net::UdpSocket, os::fd::AsRawFd, time::Duration};

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

/// Adds the waiter-discovery row: cost per 1,000 waiting threads.
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
        Ok((busy, busy_proc, rss, named))
    });
    nix::unistd::write(&wake_w, b"x")?;
    for h in handles {
        let _ = h.join();
    }
    let (busy, busy_proc, rss, named) = measured?;
    ensure!(named == THREADS, "only {named} of {THREADS} sockets named their waiter from the wait queue");
    rows.push(Row {
        name: format!("waiter discovery: `sockets --json`, {THREADS} UDP sockets, {THREADS} threads waiting (500 `epoll_wait`, 500 `poll`)"),
        ifsock: format!("wait queues: {busy:.1} ms (idle {idle:.1} ms), every socket named its waiter"),
        baseline: format!("`/proc` pass: {busy_proc:.1} ms (idle {idle_proc:.1} ms)"),
        ratio: Some(busy / busy_proc),
        target: "≤ 0.1 (≥ 10× faster)".into(),
        met: Some(busy * 10.0 <= busy_proc),
        rss_kib: Some(rss),
    });
    drop(socks);
    Ok(())
}
