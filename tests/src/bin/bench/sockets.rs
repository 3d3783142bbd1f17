//! `sockets` at scale (10k, 100k, 1M UDP sockets held by helper processes in a netns) against
//! `ss -uan` / `ss -uanp` run in the same netns, and start-up on a near-empty netns against
//! `ss -tuanp`.
use std::time::Duration;

use anyhow::{ensure, Result};
use ifsock_tests::{ifsock_bin, Netns};

use crate::util::{median, ms, timed, Holder, Row, Sink};

/// `reps` runs of `args`: (median ms, peak RSS KiB, stdout lines of the last run).
fn best(args: &[&str], ns: &str, sink: Sink, reps: usize, timeout: Duration) -> Result<(f64, u64, u64)> {
    let mut times = Vec::new();
    let mut rss = 0;
    let mut lines = 0;
    for _ in 0..reps {
        let r = timed(args, Some(ns), sink, timeout)?;
        times.push(ms(r.took));
        rss = rss.max(r.maxrss_kib);
        lines = r.stdout_lines;
    }
    Ok((median(&times), rss, lines))
}

/// `reps` runs of `base` and of `ours` taken in turn (alternating which goes first), so that
/// both see the same load: (fastest ms, peak RSS KiB, stdout lines) of each. On a shared
/// machine other load only ever adds time, so the fastest run is the closest to the cost
/// being measured; a median of runs taken one command after the other compared the two under
/// different load (the 100k pipe ratio ranged 1.16–1.78 over three runs of one binary).
/// (fastest ms, peak RSS KiB, stdout lines) of one command.
type Fastest = (f64, u64, u64);

fn fastest_in_turn(base: &[&str], ours: &[&str], ns: &str, sink: Sink, reps: usize, timeout: Duration) -> Result<(Fastest, Fastest)> {
    let (mut b, mut o) = ((f64::INFINITY, 0, 0), (f64::INFINITY, 0, 0));
    let one = |args: &[&str], acc: &mut (f64, u64, u64)| -> Result<()> {
        let r = timed(args, Some(ns), sink, timeout)?;
        *acc = (acc.0.min(ms(r.took)), acc.1.max(r.maxrss_kib), r.stdout_lines);
        Ok(())
    };
    for i in 0..reps {
        if i % 2 == 0 {
            one(base, &mut b)?;
            one(ours, &mut o)?;
        } else {
            one(ours, &mut o)?;
            one(base, &mut b)?;
        }
    }
    Ok((b, o))
}

/// Rows for `n` sockets: stdout a pipe (vs `ss -uan`), stdout a file (vs `ss -uanp` up to
/// 100k; `ss -uanp` at 1M would take minutes, so `ss -uan` there).
pub fn scale(n: u64, rows: &mut Vec<Row>) -> Result<()> {
    let ns = Netns::new()?;
    eprintln!("bench sockets: binding {n} UDP sockets in {}", ns.name);
    let t0 = std::time::Instant::now();
    // Each socket needs an fd: RLIMIT_NOFILE (fs.nr_open at most) caps one process.
    let per_holder = crate::util::fds_per_process()?;
    let mut holders = Vec::new();
    let mut start = 0;
    while start < n {
        let count = per_holder.min(n - start);
        holders.push(Holder::start(&["--hold-sockets".into(), ns.name.clone(), start.to_string(), count.to_string()], Duration::from_secs(300))?);
        start += count;
    }
    eprintln!("bench sockets: {n} sockets held by {} processes after {:.1} s", holders.len(), t0.elapsed().as_secs_f64());
    let bin = ifsock_bin();
    let bin = bin.to_str().unwrap_or("ifsock");
    let reps = if n >= 1_000_000 { 1 } else if n >= 100_000 { 5 } else { 7 };
    let t = Duration::from_secs(600);
    let per = |ms: f64| ms * 1e6 / n as f64;
    let label = if n >= 1_000_000 { format!("{}M", n / 1_000_000) } else { format!("{}k", n / 1000) };

    let ((ss_pipe, _, ss_lines), (if_pipe, if_rss, if_lines)) =
        fastest_in_turn(&["ss", "-uan"], &[bin, "sockets", "--json"], &ns.name, Sink::Pipe, reps, t)?;
    ensure!(if_lines >= n, "ifsock sockets listed {if_lines} of {n} sockets");
    ensure!(ss_lines > n, "ss -uan listed {ss_lines} lines for {n} sockets");
    let rss_ok = n != 100_000 || if_rss <= 40 * 1024;
    let ratio = if_pipe / ss_pipe;
    rows.push(Row {
        name: format!("`sockets --json`, {label} UDP sockets, stdout a pipe"),
        ifsock: format!("{if_pipe:.0} ms ({:.2} µs/socket)", per(if_pipe) / 1e3),
        baseline: format!("`ss -uan` {ss_pipe:.0} ms (no owners)"),
        ratio: Some(ratio),
        target: if n == 100_000 { "≤ 1.5× `ss -uan`, RSS ≤ 40 MB".into() } else { "≤ 1.5× `ss -uan`".into() },
        met: Some(ratio <= 1.5 && rss_ok),
        rss_kib: Some(if_rss),
    });

    // `--iface` on an interface that holds none of the sockets: the iterators still walk every
    // socket, but the kernel-side filter (`SockFilter`) writes no record for them.
    let (va, vb) = (ifsock_tests::unique("bf"), ifsock_tests::unique("bg"));
    ns.veth(&va, &vb, Some("10.250.0.1/24"))?;
    let (if_iface, iface_rss, iface_lines) = best(&[bin, "sockets", "--iface", &va, "--json"], &ns.name, Sink::Pipe, reps, t)?;
    ensure!(iface_lines == 0, "sockets --iface {va} listed {iface_lines} sockets, none is tied to it");
    rows.push(Row {
        name: format!("`sockets --iface X --json`, {label} UDP sockets, none tied to X (filtered in the kernel)"),
        ifsock: format!("{if_iface:.0} ms ({:.2} µs/socket walked)", per(if_iface) / 1e3),
        baseline: format!("unfiltered `sockets --json` {if_pipe:.0} ms"),
        ratio: Some(if_iface / if_pipe),
        target: "— (cost of the walk alone)".into(),
        met: None,
        rss_kib: Some(iface_rss),
    });

    if n <= 100_000 {
        let ((ssp, _, _), (if_file, if_rss, _)) = fastest_in_turn(&["ss", "-uanp"], &[bin, "sockets", "--json"], &ns.name, Sink::File, 3, t)?;
        let speedup = ssp / if_file;
        rows.push(Row {
            name: format!("same, {label}, stdout a file"),
            ifsock: format!("{if_file:.0} ms ({:.2} µs/socket)", per(if_file) / 1e3),
            baseline: format!("`ss -uanp` {ssp:.0} ms"),
            ratio: Some(if_file / ssp),
            // Issue 14 sets this target at 100k sockets; below, `ss -uanp`'s procfs pass over
            // the host's fds is too short for a ratio to mean much, so the row is for scale.
            target: if n == 100_000 {
                format!("≥ 10× faster than `ss -uanp` (here {speedup:.1}×)")
            } else {
                format!("— (the ≥ 10× target is at 100k; here {speedup:.1}×)")
            },
            met: (n == 100_000).then_some(speedup >= 10.0),
            rss_kib: Some(if_rss),
        });
    } else {
        let ((ss_file, _, _), (if_file, if_rss, _)) = fastest_in_turn(&["ss", "-uan"], &[bin, "sockets", "--json"], &ns.name, Sink::File, reps, t)?;
        rows.push(Row {
            name: format!("same, {label}, stdout a file"),
            ifsock: format!("{if_file:.0} ms ({:.2} µs/socket)", per(if_file) / 1e3),
            baseline: format!("`ss -uan` {ss_file:.0} ms (`ss -uanp` not run: minutes at 1M)"),
            ratio: Some(if_file / ss_file),
            target: "— (scale)".into(),
            met: None,
            rss_kib: Some(if_rss),
        });
    }
    drop(holders);
    Ok(())
}

/// `sockets` on a netns with 10 UDP sockets vs `ss -tuanp`: what start-up costs.
pub fn startup(rows: &mut Vec<Row>) -> Result<()> {
    let ns = Netns::new()?;
    let _h = Holder::start(&["--hold-sockets".into(), ns.name.clone(), "0".into(), "10".into()], Duration::from_secs(30))?;
    let bin = ifsock_bin();
    let bin = bin.to_str().unwrap_or("ifsock");
    let t = Duration::from_secs(60);
    timed(&[bin, "sockets"], Some(&ns.name), Sink::Null, t)?;
    let ((ss, _, _), (ifs, rss, _)) = fastest_in_turn(&["ss", "-tuanp"], &[bin, "sockets"], &ns.name, Sink::Pipe, 10, t)?;
    rows.push(Row {
        name: "start-up: `sockets`, 10 UDP sockets".into(),
        ifsock: format!("{ifs:.1} ms"),
        baseline: format!("`ss -tuanp` {ss:.1} ms"),
        ratio: Some(ifs / ss),
        target: "≤ 3× `ss -tuanp`".into(),
        met: Some(ifs / ss <= 3.0),
        rss_kib: Some(rss),
    });
    Ok(())
}
