//! `watch` latency against `ip monitor link`, both read by this process (one clock): the time
//! from `ip link del` to each tool's line for that deletion, with 10,000 UDP sockets in the
//! netns; and a burst of 1,000-link rounds.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ifsock_tests::{ifsock_bin, sh, unique, Netns, Running};
use serde_json::Value;

use crate::util::{median, ms, percentile, Holder, Row};

enum From {
    Watch(Value),
    Ip(String),
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// What the change line of a latency run carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// Its sockets, read before it is printed (the default).
    InLine,
    /// `--sockets-after`: none; a `change_sockets` record follows.
    After,
    /// `--no-sockets`.
    None,
}

/// Median/p90/p99 of (watch line − `ip monitor` line) per deleted interface, ms.
pub fn latency(mode: Sockets, iters: usize, rows: &mut Vec<Row>) -> Result<()> {
    let ns = Netns::new()?;
    let _holder = Holder::start(&["--hold-sockets".into(), ns.name.clone(), "0".into(), "10000".into()], Duration::from_secs(120))?;
    let (tx, rx) = mpsc::channel::<(Instant, From)>();
    let mut args = vec!["--netns", ns.name.as_str(), "watch", "--json", "--reconcile-every", "0"];
    match mode {
        Sockets::InLine => {}
        Sockets::After => args.push("--sockets-after"),
        Sockets::None => args.push("--no-sockets"),
    }
    let mut watch = Command::new(ifsock_bin()).args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut ipmon = Command::new("ip").args(["-n", &ns.name, "monitor", "link"]).stdout(Stdio::piped()).spawn()?;
    let wpid = watch.id();
    let (wout, iout) = (watch.stdout.take().context("stdout")?, ipmon.stdout.take().context("stdout")?);
    let t1 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(wout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l) {
                if t1.send((Instant::now(), From::Watch(v))).is_err() {
                    break;
                }
            }
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(iout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), From::Ip(l))).is_err() {
                break;
            }
        }
    });
    let result = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, m) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).context("watch never became ready")?;
            if matches!(&m, From::Watch(v) if v["type"] == "ready") {
                break;
            }
        }
        let (mut extra, mut ipmon_after) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let (a, b) = (unique("bl"), unique("bm"));
            ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            // Each deletion starts from an idle watcher: with --sockets-after that is after the
            // creation's own `change_sockets` record (its walk), not just its change line.
            let created_done = if mode == Sockets::After { "change_sockets" } else { "change" };
            let (mut seen_w, mut seen_i) = (false, false);
            while !(seen_w && seen_i) {
                let (_, m) = rx.recv_timeout(Duration::from_secs(30)).context("creation not reported")?;
                match m {
                    From::Watch(v) if v["type"] == created_done && v["event"] == "created" && v["name"] == a.as_str() => seen_w = true,
                    From::Ip(l) if l.contains(&format!(": {a}@")) => seen_i = true,
                    _ => {}
                }
            }
            let t0 = Instant::now();
            ns.ip(&["link", "del", &a])?;
            let (mut tw, mut ti) = (None, None);
            while tw.is_none() || ti.is_none() {
                let (at, m) = rx.recv_timeout(Duration::from_secs(30)).context("deletion not reported")?;
                match m {
                    From::Watch(v) if v["type"] == "change" && v["event"] == "deleted" && v["name"] == a.as_str() => tw = Some(at),
                    From::Ip(l) if l.starts_with("Deleted") && l.contains(&format!(": {a}@")) => ti = Some(at),
                    _ => {}
                }
            }
            let (tw, ti) = (tw.context("watch")?, ti.context("ip")?);
            let signed = if tw >= ti { ms(tw - ti) } else { -ms(ti - tw) };
            extra.push(signed);
            ipmon_after.push(ms(ti - t0));
        }
        Ok((extra, ipmon_after))
    })();
    let hwm = vm_hwm_kib(wpid);
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = ipmon.kill();
    let _ = ipmon.wait();
    let (extra, after) = result?;
    let (med, p90, p99) = (median(&extra), percentile(&extra, 90.0), percentile(&extra, 99.0));
    let (name, target, met) = match mode {
        Sockets::None => ("interface delete → `watch --json --no-sockets` line", "median extra ≤ 0.5 ms", med <= 0.5),
        Sockets::InLine => ("interface delete → `watch --json` line (sockets in it), 10k UDP sockets", "median extra ≤ 1 ms, p99 ≤ 5 ms", med <= 1.0 && p99 <= 5.0),
        Sockets::After => ("interface delete → `watch --json --sockets-after` line (its sockets in the next record), 10k UDP sockets", "median extra ≤ 1 ms, p99 ≤ 5 ms", med <= 1.0 && p99 <= 5.0),
    };
    rows.push(Row {
        name: format!("{name} ({iters} deletions)"),
        ifsock: format!("extra: median {med:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms"),
        baseline: format!("`ip monitor link` {:.2} ms after `ip link del` started (median)", median(&after)),
        ratio: None,
        target: target.into(),
        met: Some(met),
        rss_kib: hwm,
    });
    Ok(())
}

/// `rounds` × (`pairs` veth pairs created and deleted in one `ip -batch`): how long after the
/// kernel finished `watch` has printed the last deletion, events lost, memory growth.
pub fn burst(rounds: usize, pairs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let ns = Netns::new()?;
    let mut w = Running::start(&["--netns", &ns.name, "watch", "--json", "--reconcile-every", "0"])?;
    w.wait_for("ready", Duration::from_secs(30), |v| v["type"] == "ready")?;
    let pid = w.pid();
    let rss_before = rss_kib(pid).unwrap_or(0);
    let (mut batches, mut lags) = (Vec::new(), Vec::new());
    let mut min_deleted = usize::MAX;
    for _ in 0..rounds {
        let prefix = unique("bz");
        let path = std::env::temp_dir().join(format!("{prefix}.batch"));
        let mut f = std::fs::File::create(&path)?;
        for i in 0..pairs {
            writeln!(f, "link add {prefix}a{i} type veth peer name {prefix}b{i}")?;
        }
        let (m1, m2) = (format!("{prefix}m"), format!("{prefix}n"));
        writeln!(f, "link add {m1} type veth peer name {m2}")?;
        for i in 0..pairs {
            writeln!(f, "link del {prefix}a{i}")?;
        }
        writeln!(f, "link del {m1}")?;
        drop(f);
        let t = Instant::now();
        sh(&["ip", "-n", &ns.name, "-batch", path.to_str().context("path")?])?;
        let batch_done = t.elapsed();
        // Until both ends of the marker pair are printed: the kernel deletes them together, and
        // the peer's line may come after the named end's.
        let (mut deleted, mut markers) = (0usize, 0usize);
        w.wait_for("marker pair deleted", Duration::from_secs(300), |v| {
            if v["type"] == "change" && v["event"] == "deleted" {
                deleted += 1;
                if v["name"] == m1.as_str() || v["name"] == m2.as_str() {
                    markers += 1;
                }
            }
            markers == 2
        })?;
        let took = t.elapsed();
        let _ = std::fs::remove_file(&path);
        batches.push(ms(batch_done));
        lags.push(ms(took.saturating_sub(batch_done)));
        min_deleted = min_deleted.min(deleted);
    }
    let rss_after = rss_kib(pid).unwrap_or(0);
    let hwm = vm_hwm_kib(pid);
    w.interrupt()?;
    let counters = w.rest().into_iter().find(|v| v["type"] == "counters").context("counters")?;
    let (batch, lag) = (median(&batches), median(&lags));
    let ratio = (batch + lag) / batch;
    rows.push(Row {
        name: format!("burst: {rounds} × {} links created+deleted, default rcvbuf", 2 * pairs),
        ifsock: format!(
            "last deletion printed {lag:.0} ms after the batch (median); {min_deleted}/{} deletions reported (fewest in a round); enobufs {}, resyncs {}; RSS {rss_before} → {rss_after} KiB",
            2 * (pairs + 1), counters["counters"]["enobufs"], counters["counters"]["resyncs"]
        ),
        baseline: format!("kernel runs the batch in {batch:.0} ms"),
        ratio: Some(ratio),
        target: "every link accounted for; ratio ≤ 1.05".into(),
        // After ENOBUFS a link created and deleted between two dumps is never seen: that round
        // is accounted for by the resync, not by a deletion line.
        met: Some(ratio <= 1.05 && (min_deleted >= 2 * (pairs + 1) || counters["counters"]["enobufs"].as_u64().unwrap_or(0) > 0)),
        rss_kib: hwm,
    });
    Ok(())
}

/// The floor of a change line that carries its sockets: one walk of the netns's sockets,
/// filtered in the kernel to an interface none of the 10,000 UDP sockets is tied to, as
/// `watch` runs it for a deletion. ifsock's walk (`iter/udp`, the only source of the PKTINFO
/// flag and the queue fields, `lock_sock()` per socket) is timed by ifsock itself (its debug
/// log); the baseline is the cheapest walk the kernel offers, sock_diag with an in-kernel
/// bytecode filter (`ss -uanH src 192.0.2.1`, TEST-NET-1, held by no socket), minus the same
/// `ss` in an empty netns (process start-up and the walk of an empty table), each the least
/// CPU time (user + sys) of 40 runs.
pub fn walk_floor(rows: &mut Vec<Row>) -> Result<()> {
    let ns = Netns::new()?;
    let _holder = Holder::start(&["--hold-sockets".into(), ns.name.clone(), "0".into(), "10000".into()], Duration::from_secs(120))?;
    let (a, b) = (unique("fa"), unique("fb"));
    ns.veth(&a, &b, None)?;
    let mut walks = Vec::new();
    for _ in 0..15 {
        let out = Command::new(ifsock_bin()).args(["--netns", &ns.name, "sockets", "--iface", &a]).env("RUST_LOG", "ifsock::probes=debug").env("NO_COLOR", "1").output()?;
        anyhow::ensure!(out.status.success(), "ifsock sockets --iface {a}: {}", String::from_utf8_lossy(&out.stderr));
        let log = String::from_utf8_lossy(&out.stderr);
        let us: f64 = log
            .lines()
            .find_map(|l| l.split_once("iter/udp walk: ").map(|(_, rest)| rest.to_string()))
            .and_then(|rest| rest.split(" records in ").nth(1)?.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no iter/udp walk timing in the debug log: {log}"))?;
        walks.push(us / 1000.0);
    }
    let empty = Netns::new()?;
    // CPU time (user + sys from wait4), fastest of 40 runs: the walk is ~0.5 ms, less than
    // the wall-clock noise of starting a process.
    let ss = |netns: &str| -> Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..40 {
            let mut cmd = Command::new("ss");
            cmd.args(["-uanH", "src", "192.0.2.1"]).stdout(Stdio::piped()).stderr(Stdio::null());
            crate::util::in_netns(&mut cmd, netns)?;
            let mut child = cmd.spawn().context("starting ss")?;
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().context("stdout")?, &mut out)?;
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid out-parameter; waits for our own child, which std
            // never waits on afterwards (forgotten below).
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
            std::mem::forget(child);
            anyhow::ensure!(rc > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "ss failed in {netns}");
            anyhow::ensure!(out.is_empty(), "ss admitted sockets: {out}");
            let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
            best = best.min(tv(ru.ru_utime) + tv(ru.ru_stime));
        }
        Ok(best)
    };
    let (full, bare) = (ss(&ns.name)?, ss(&empty.name)?);
    let diag = full - bare;
    let walk = median(&walks);
    rows.push(Row {
        name: "floor of a `watch` line with its sockets: one filtered walk of 10k UDP sockets, none tied to the interface".into(),
        ifsock: format!("`iter/udp` {walk:.2} ms (median of 15, ifsock's debug log)"),
        baseline: format!("sock_diag, bytecode filter: `ss -uan src 192.0.2.1` CPU {full:.2} ms − {bare:.2} ms in an empty netns = {diag:.2} ms (fastest of 40)"),
        ratio: (diag >= 0.05).then(|| walk / diag),
        target: "≤ 1 ms (the line's median extra)".into(),
        met: Some(walk <= 1.0),
        rss_kib: None,
    });
    Ok(())
}
