//! The agent's cost: idle CPU (per cent of one core over 60 s, from `/proc/PID/stat` utime +
//! stime) and resident memory (`VmRSS`) before and after 10 bursts of 1,000 link changes.
//!
//! `IFSOCK_BIN=target/release/ifsock cargo run --release -p ifsock-tests --bin ifsock-agent-bench [IDLE_SECS]`
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use ifsock_tests::*;

fn get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

/// Waits until the agent has used no CPU for `quiet` (it has caught up with a burst).
fn settle(pid: u32, quiet: Duration, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = cpu_ticks(pid)?;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        if Instant::now() > deadline {
            bail!("agent still busy after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_ticks(pid)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    require_root();
    let idle_secs: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(60);
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let journal = std::env::temp_dir().join(format!("ifsock-agent-bench-{}", std::process::id()));
    let mut child = Command::new(ifsock_bin())
        .args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--journal"])
        .arg(&journal)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let result = (|| -> Result<()> {
        wait_until("agent /healthz", Duration::from_secs(60), || get(port, "/healthz").is_ok_and(|t| t.ends_with("ok\n")))?;
        let ns = Netns::new()?;
        settle(pid, Duration::from_secs(2), Duration::from_secs(60))?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let events = |text: &str| -> f64 {
            text.lines().filter(|l| l.starts_with("ifsock_link_events_total")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
        };
        let events_before = events(&get(port, "/metrics")?);
        let before = cpu_ticks(pid)?;
        let t = Instant::now();
        // Idle means idle: nothing is asked of the agent while this runs.
        std::thread::sleep(Duration::from_secs(idle_secs));
        let idle = (cpu_ticks(pid)? - before) as f64 / hz / t.elapsed().as_secs_f64() * 100.0;
        let seen = events(&get(port, "/metrics")?) - events_before;
        println!("idle cpu: {idle:.3}% of one core over {idle_secs}s (reconcile every 30s, the default); link changes on the host meanwhile: {seen}");
        let rss_before = rss_kib(pid)?;
        let batch = journal.with_extension("batch");
        let mut cmds = String::new();
        // 1,000 link changes per burst: 250 veth pairs created (500 links) and deleted (500).
        for i in 0..250 {
            cmds.push_str(&format!("link add bb{i} type veth peer name bc{i}\n"));
        }
        for i in 0..250 {
            cmds.push_str(&format!("link del bb{i}\n"));
        }
        std::fs::write(&batch, cmds)?;
        let t = Instant::now();
        for _ in 0..10 {
            ns.ip(&["-batch", &batch.to_string_lossy()])?;
            settle(pid, Duration::from_millis(500), Duration::from_secs(120))?;
        }
        let _ = std::fs::remove_file(&batch);
        let rss_after = rss_kib(pid)?;
        let metrics = get(port, "/metrics")?;
        let lost = metrics.lines().find(|l| l.starts_with("ifsock_events_lost_total{source=\"netlink_enobufs\"}")).unwrap_or("");
        println!(
            "rss: {rss_before} KiB before, {rss_after} KiB after 10 bursts of 1,000 link changes ({:.1}s; {} link events counted); {lost}",
            t.elapsed().as_secs_f64(),
            events(&metrics)
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&journal);
    result
}
