//! Shared pieces of the benchmarks: the result table, timed child runs with their peak RSS
//! (`wait4`'s `ru_maxrss`), percentiles, running a command inside a netns, and helper processes
//! that hold many sockets or blocked receivers.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// One row of the final table. `ratio` is ifsock over its baseline unless `target` says otherwise.
pub struct Row {
    pub name: String,
    pub ifsock: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// `None`: no target for this row (a measurement reported for scale).
    pub met: Option<bool>,
    pub rss_kib: Option<u64>,
}

/// Prints the rows as one Markdown table (pasted into README as is).
pub fn print_table(rows: &[Row]) {
    let mut out = String::from("| benchmark | ifsock | baseline (same run) | ratio | target | met | peak RSS |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.ifsock,
            r.baseline,
            r.ratio.map_or("—".into(), |x| format!("{x:.2}")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
            r.rss_kib.map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        ));
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// `p`-th percentile (0..=100) of `v`, nearest rank.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((p / 100.0) * (s.len() - 1) as f64).round() as usize]
}

pub fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Where a timed child's stdout goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A pipe this process drains in 64 KiB reads.
    Pipe,
    /// A fresh file in the temp directory (removed afterwards).
    File,
    Null,
}

/// One finished, timed run.
pub struct Run {
    pub took: Duration,
    /// Peak resident set of the child, KiB (`ru_maxrss` from `wait4`).
    pub maxrss_kib: u64,
    pub stdout_lines: u64,
}

/// Makes `cmd` enter the network namespace `/run/netns/<netns>` before exec.
pub fn in_netns(cmd: &mut Command, netns: &str) -> Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).with_context(|| format!("netns {netns}"))?;
    let fd = file.as_raw_fd();
    // SAFETY: setns is async-signal-safe; the file stays open in the closure until exec.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &file;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `args` (in `netns` when given) to completion with stdout to `sink`; killed after
/// `timeout`. Fails when it exits non-zero.
pub fn timed(args: &[&str], netns: Option<&str>, sink: Sink, timeout: Duration) -> Result<Run> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).stderr(Stdio::piped()).stdin(Stdio::null());
    if let Some(ns) = netns {
        in_netns(&mut cmd, ns)?;
    }
    let path = std::env::temp_dir().join(format!("ifsock-bench-{}.out", std::process::id()));
    match sink {
        Sink::Pipe => cmd.stdout(Stdio::piped()),
        Sink::File => cmd.stdout(std::fs::File::create(&path)?),
        Sink::Null => cmd.stdout(Stdio::null()),
    };
    let t = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {args:?}"))?;
    let pid = child.id() as i32;
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut lines = 0u64;
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
            lines
        })
    });
    let mut stderr = child.stderr.take().context("stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            // SAFETY: plain kill(2) of our own child, not yet reaped (wait4 below reaps it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; std's Child is never waited on afterwards.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let mut lines = reader.map(|r| r.join().unwrap_or(0)).unwrap_or(0);
    let took = t.elapsed();
    let err = err_reader.join().unwrap_or_default();
    std::mem::forget(child);
    if sink == Sink::File {
        let data = std::fs::read(&path).unwrap_or_default();
        lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        let _ = std::fs::remove_file(&path);
    }
    if rc < 0 {
        bail!("wait4 {args:?}: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{args:?} failed (status {status:#x}, timeout {timeout:?}): {err}");
    }
    Ok(Run { took, maxrss_kib: ru.ru_maxrss as u64, stdout_lines: lines })
}

/// Raises the soft RLIMIT_NOFILE to at least `n`, up to the hard limit; above it only with
/// CAP_SYS_RESOURCE (then up to fs.nr_open).
pub fn raise_nofile(n: u64) -> Result<()> {
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (soft, hard) = nix::sys::resource::getrlimit(limit)?;
    if soft >= n {
        return Ok(());
    }
    let (soft, hard) = if n <= hard { (n, hard) } else { (n, n) };
    nix::sys::resource::setrlimit(limit, soft, hard)
        .with_context(|| format!("raising RLIMIT_NOFILE to {n} (hard limit {hard}; more needs CAP_SYS_RESOURCE, up to fs.nr_open)"))
}

/// How many fds one helper process may hold: the hard RLIMIT_NOFILE (or fs.nr_open when this
/// process may raise it), less a margin for the process's own fds.
pub fn fds_per_process() -> Result<u64> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")?.trim().parse()?;
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    // Probe CAP_SYS_RESOURCE by raising the hard limit by one (and back).
    let can_raise = hard < nr_open && nix::sys::resource::setrlimit(limit, hard.min(nr_open), hard + 1).is_ok();
    if can_raise {
        let _ = nix::sys::resource::setrlimit(limit, hard, hard);
    }
    let max = if can_raise { nr_open.min(250_000) } else { hard };
    Ok(max.saturating_sub(100).max(1))
}

/// Local address of the `i`-th benchmark socket: 60,000 ports (1024..61024) per loopback address
/// 127.0.A.B, so a million sockets need no ephemeral-port search.
pub fn nth_addr(i: u64) -> SocketAddrV4 {
    let a = i / 60_000;
    SocketAddrV4::new(Ipv4Addr::new(127, 0, (a / 200) as u8, (a % 200 + 1) as u8), 1024 + (i % 60_000) as u16)
}

/// A helper process (this binary, re-executed) holding sockets or blocked receivers inside a
/// netns; killed on drop.
pub struct Holder {
    child: Child,
}

impl Holder {
    /// `ifsock-bench --hold-sockets NETNS START COUNT` or `--hold-receivers NETNS COUNT`;
    /// returns once it printed `ready`.
    pub fn start(args: &[String], timeout: Duration) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let holder = Holder { child };
        match rx.recv_timeout(timeout) {
            Ok(l) if l.trim() == "ready" => Ok(holder),
            Ok(l) => bail!("holder {args:?} failed: {l:?}"),
            Err(_) => bail!("holder {args:?} not ready after {timeout:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn enter_netns(netns: &str) -> Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Body of `--hold-sockets NETNS START COUNT`: binds sockets START..START+COUNT (see
/// [`nth_addr`]), says `ready`, and holds them until stdin closes or it is killed.
pub fn hold_sockets(netns: &str, start: u64, count: u64) -> Result<()> {
    enter_netns(netns)?;
    raise_nofile(count + 64)?;
    let socks = (start..start + count).map(|i| UdpSocket::bind(nth_addr(i)).with_context(|| format!("binding {}", nth_addr(i)))).collect::<Result<Vec<_>>>()?;
    println!("ready");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(socks);
    Ok(())
}

/// Body of `--hold-receivers NETNS COUNT`: COUNT threads, each blocked in `recvfrom` on its own
/// UDP socket; says `ready` once every one of them is asleep in the syscall.
pub fn hold_receivers(netns: &str, count: u64) -> Result<()> {
    enter_netns(netns)?;
    raise_nofile(count + 64)?;
    for i in 0..count {
        let sock = UdpSocket::bind(nth_addr(i))?;
        std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let mut buf = [0u8; 16];
            let _ = sock.recv_from(&mut buf);
        })?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let blocked = std::fs::read_dir("/proc/self/task")?
            .filter_map(|e| e.ok())
            .filter(|e| std::fs::read_to_string(e.path().join("syscall")).is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_recvfrom))))
            .count() as u64;
        if blocked >= count {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {blocked}/{count} receivers blocked after 60s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("ready");
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    Ok(())
}
