//! Benchmarks, each printed as a ratio against a baseline measured in the same run:
//! - `sockets`: `ifsock sockets --json` vs `ss -uanp` with 10,000 UDP sockets in a netns;
//! - `burst`: events/s while `watch` consumes a burst of 1,000 veth pairs (default buffer),
//!   losses, and watch's resident memory before and after 10 bursts;
//! - `recv`: a UDP request/response loop on loopback with and without ifsock's receive probes
//!   attached, for each probe set the kernel allows (tracepoint, fentry, kprobe);
//! - `waiters`: the cost of waiter discovery (one pass over /proc, epoll fdinfo, poll sets read
//!   with process_vm_readv) per 1,000 threads: `sockets --json` over the same 1,000 UDP sockets
//!   before and while 1,000 threads wait on them (500 in epoll_wait, 500 in poll).
use std::{
    io::Write,
    net::UdpSocket,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_cmd(args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

fn bench_sockets() -> Result<()> {
    let ns = Netns::new()?;
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (_, hard) = nix::sys::resource::getrlimit(limit)?;
    // Root may raise the hard limit up to fs.nr_open.
    let want = hard.max(20_000);
    nix::sys::resource::setrlimit(limit, want, want).with_context(|| format!("raising RLIMIT_NOFILE to {want}"))?;
    let socks = ns.run(|| -> Result<Vec<UdpSocket>> { (0..10_000).map(|_| Ok(UdpSocket::bind("127.0.0.1:0")?)).collect() })??;
    let bin = ifsock_bin();
    let bin = bin.to_str().context("path")?;
    let mut ss = Vec::new();
    let mut ifs = Vec::new();
    for _ in 0..5 {
        ss.push(time_cmd(&["ip", "netns", "exec", &ns.name, "ss", "-uanp"])?);
        ifs.push(time_cmd(&[bin, "--netns", &ns.name, "sockets", "--json"])?);
    }
    let (ss, ifs) = (median(ss), median(ifs));
    println!(
        "sockets: 10,000 UDP sockets: ifsock sockets {:.1} ms, ss -uanp {:.1} ms, ratio ifsock/ss = {:.2}",
        ifs.as_secs_f64() * 1e3,
        ss.as_secs_f64() * 1e3,
        ifs.as_secs_f64() / ss.as_secs_f64()
    );
    drop(socks);
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn bench_burst() -> Result<()> {
    let ns = Netns::new()?;
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0", "--no-sockets"])?;
    w.wait_for("ready", Duration::from_secs(30), |v| v["type"] == "ready")?;
    let pid = w.pid();
    let rss_before = rss_kib(pid)?;
    let mut rates = Vec::new();
    let mut lags = Vec::new();
    let mut batches = Vec::new();
    let mut first_consume = Duration::ZERO;
    for round in 0..10 {
        let prefix = unique("bz");
        let path = std::env::temp_dir().join(format!("{prefix}.batch"));
        let mut f = std::fs::File::create(&path)?;
        for i in 0..1000 {
            writeln!(f, "link add {prefix}a{i} type veth peer name {prefix}b{i}")?;
        }
        let (m1, m2) = (format!("{prefix}m"), format!("{prefix}n"));
        writeln!(f, "link add {m1} type veth peer name {m2}")?;
        for i in 0..1000 {
            writeln!(f, "link del {prefix}a{i}")?;
        }
        writeln!(f, "link del {m1}")?;
        drop(f);
        let t = Instant::now();
        sh(&["ip", "-n", &ns.name, "-batch", path.to_str().context("path")?])?;
        let batch_done = t.elapsed();
        let mut events = 0u64;
        w.wait_for("marker deleted", Duration::from_secs(120), |v| {
            if v["type"] == "change" {
                events += 1;
            }
            v["type"] == "change" && v["event"] == "deleted" && v["name"] == m1.as_str()
        })?;
        let took = t.elapsed();
        batches.push(batch_done);
        lags.push(took.saturating_sub(batch_done));
        if round == 0 {
            first_consume = took;
        }
        rates.push(events as f64 / took.as_secs_f64());
        let _ = std::fs::remove_file(&path);
    }
    let rss_after = rss_kib(pid)?;
    w.interrupt()?;
    let counters = w.rest().into_iter().find(|v| v["type"] == "counters").context("counters")?;
    rates.sort_by(f64::total_cmp);
    let (batch, lag) = (median(batches), median(lags));
    println!(
        "burst: the kernel needs {:.0} ms to run the batch (baseline); watch is done {:.0} ms after it, ratio (batch+lag)/batch = {:.3}",
        batch.as_secs_f64() * 1e3,
        lag.as_secs_f64() * 1e3,
        (batch + lag).as_secs_f64() / batch.as_secs_f64()
    );
    println!(
        "burst: 1,000 veth pairs created+deleted (4,004 links changes/round), default rcvbuf: first round consumed in {:.0} ms, median {:.0} events/s; enobufs={} resyncs={}",
        first_consume.as_secs_f64() * 1e3,
        rates[rates.len() / 2],
        counters["counters"]["enobufs"],
        counters["counters"]["resyncs"]
    );
    println!("burst: watch RSS {rss_before} KiB before, {rss_after} KiB after 10 bursts, ratio after/before = {:.2}", rss_after as f64 / rss_before as f64);
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// `n` UDP request/response round trips on loopback. Both threads share one CPU, so every
/// round trip is two direct context switches instead of cross-CPU wake-ups, whose latency
/// (idle states, IPIs, a VM's halt exits) would otherwise swamp the cost being measured.
fn rtt_loop(n: u32) -> Result<Duration> {
    let cpu = 0;
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    let echo = std::thread::spawn(move || -> Result<()> {
        pin(cpu)?;
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let (len, from) = server.recv_from(&mut buf)?;
            server.send_to(&buf[..len], from)?;
        }
        Ok(())
    });
    // The client runs in its own pinned thread too; the main thread (which spawns `ifsock`)
    // keeps its affinity.
    let client = std::thread::spawn(move || -> Result<Duration> {
        pin(cpu)?;
        let client = UdpSocket::bind("127.0.0.1:0")?;
        let mut buf = [0u8; 64];
        let t = Instant::now();
        for _ in 0..n {
            client.send_to(b"ping", addr)?;
            client.recv_from(&mut buf)?;
        }
        Ok(t.elapsed())
    });
    let took = client.join().map_err(|_| anyhow::anyhow!("client thread"))??;
    echo.join().map_err(|_| anyhow::anyhow!("echo thread"))??;
    Ok(took)
}

/// Per set: the same UDP request/response loop untraced (baseline, measured right before) and
/// with `hung --follow --probe-set SET` attached. Each round trip is two receives (one per
/// side), so the per-receive cost is half the per-round-trip difference.
fn bench_recv() -> Result<()> {
    let n = 20_000;
    rtt_loop(2_000)?;
    let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
    for set in ["tracepoint", "fentry", "kprobe"] {
        let mut h = Running::start(&["hung", "--follow", "--json", "--interval", "10s", "--probe-set", set])?;
        let ready = match h.wait_for("ready", Duration::from_secs(60), |v| v["type"] == "ready") {
            Ok(r) => r,
            Err(_) => {
                println!("recv: {set} set: refused by this kernel (see `ifsock doctor`), not measured");
                continue;
            }
        };
        h.interrupt()?;
        let probes = ready["probes"].as_array().map(|a| a.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default();
        // Pairs of (untraced, traced) runs back to back, so that load from elsewhere hits both
        // halves of a pair alike; the median pair ratio is reported.
        let mut pairs = Vec::new();
        for i in 0..5 {
            // Alternate which half runs first, so that an order effect cancels out.
            let base_first = i % 2 == 0;
            let mut base = if base_first { per(rtt_loop(n)?) } else { 0.0 };
            let mut h = Running::start(&["hung", "--follow", "--json", "--interval", "10s", "--probe-set", set])?;
            h.wait_for("ready", Duration::from_secs(60), |v| v["type"] == "ready")?;
            let traced = per(rtt_loop(n)?);
            h.interrupt()?;
            if !base_first {
                base = per(rtt_loop(n)?);
            }
            pairs.push((traced / base, base, traced));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, base, traced) = pairs[pairs.len() / 2];
        println!(
            "recv: {set} set: UDP round trip on loopback {base:.0} ns untraced, {traced:.0} ns traced (median of 5 pairs), ratio = {ratio:.2}; {:+.0} ns per receive ({probes})",
            (traced - base) / 2.0,
        );
    }
    Ok(())
}

/// Threads of this process sleeping in `nrs` (`/proc/self/task/*/syscall`).
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

fn bench_waiters() -> Result<()> {
    use std::os::fd::AsRawFd;
    const THREADS: usize = 1000;
    let ns = Netns::new()?;
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (_, hard) = nix::sys::resource::getrlimit(limit)?;
    let want = hard.max(10_000);
    nix::sys::resource::setrlimit(limit, want, want).with_context(|| format!("raising RLIMIT_NOFILE to {want}"))?;
    let socks = ns.run(|| -> Result<Vec<UdpSocket>> { (0..THREADS).map(|_| Ok(UdpSocket::bind("127.0.0.1:0")?)).collect() })??;
    let bin = ifsock_bin();
    let bin = bin.to_str().context("path")?;
    let time_sockets = || -> Result<Duration> {
        let mut v = Vec::new();
        for _ in 0..7 {
            v.push(time_cmd(&[bin, "--netns", &ns.name, "sockets", "--json"])?);
        }
        Ok(median(v))
    };
    let idle = time_sockets()?;
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
    wait_until("1,000 threads in their waits", Duration::from_secs(60), || {
        threads_in(&[libc::SYS_epoll_wait, libc::SYS_poll]) >= THREADS
    })?;
    let busy = time_sockets()?;
    let rows = ifsock_json(&["--netns", &ns.name, "sockets", "--json"])?;
    let named = rows.iter().filter(|r| r["waiters"].as_array().is_some_and(|w| !w.is_empty())).count();
    nix::unistd::write(&wake_w, b"x")?;
    for h in handles {
        let _ = h.join();
    }
    println!(
        "waiters: {THREADS} UDP sockets: sockets --json {:.1} ms without waiting threads, {:.1} ms with {THREADS} (500 epoll_wait, 500 poll; {named} sockets named a waiter): discovery costs {:.1} ms per 1,000 threads",
        idle.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
        (busy.as_secs_f64() - idle.as_secs_f64()) * 1e3 * 1000.0 / THREADS as f64
    );
    drop(socks);
    Ok(())
}

fn main() -> Result<()> {
    require_root();
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    let want = |name: &str| all || which.iter().any(|w| w == name);
    if want("recv") {
        bench_recv()?;
    }
    if want("sockets") {
        bench_sockets()?;
    }
    if want("burst") {
        bench_burst()?;
    }
    if want("waiters") {
        bench_waiters()?;
    }
    Ok(())
}
