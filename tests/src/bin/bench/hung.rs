//! `hung` on an idle host, and with 1,000 threads blocked in `recvfrom` in a netns.
use std::time::Duration;

use anyhow::{ensure, Result};
use ifsock_tests::{ifsock_bin, Netns};

use crate::util::{median, ms, timed, Holder, Row, Sink};

/// Returns the idle median (ms) for the 1,000-thread row's ratio.
pub fn idle(rows: &mut Vec<Row>) -> Result<f64> {
    let bin = ifsock_bin();
    let bin = bin.to_str().unwrap_or("ifsock");
    let t = Duration::from_secs(60);
    timed(&[bin, "hung"], None, Sink::Null, t)?;
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..5 {
        let r = timed(&[bin, "hung", "--json"], None, Sink::Pipe, t)?;
        times.push(ms(r.took));
        rss = rss.max(r.maxrss_kib);
    }
    let m = median(&times);
    rows.push(Row {
        name: "`hung` on an idle host".into(),
        ifsock: format!("{m:.0} ms"),
        baseline: "—".into(),
        ratio: None,
        target: "≤ 100 ms".into(),
        met: Some(m <= 100.0),
        rss_kib: Some(rss),
    });
    Ok(m)
}

pub fn blocked(n: u64, idle_ms: f64, rows: &mut Vec<Row>) -> Result<()> {
    let ns = Netns::new()?;
    let holder = Holder::start(&["--hold-receivers".into(), ns.name.clone(), n.to_string()], Duration::from_secs(120))?;
    let bin = ifsock_bin();
    let bin = bin.to_str().unwrap_or("ifsock");
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..3 {
        let r = timed(&[bin, "--netns", &ns.name, "hung", "--json", "--min-blocked", "0s", "--pid", &holder.pid().to_string()], None, Sink::Pipe, Duration::from_secs(120))?;
        ensure!(r.stdout_lines >= n, "hung listed {} of {n} blocked threads", r.stdout_lines);
        times.push(ms(r.took));
        rss = rss.max(r.maxrss_kib);
    }
    let m = median(&times);
    rows.push(Row {
        name: format!("`hung` with {n} threads blocked in `recvfrom`"),
        ifsock: format!("{m:.0} ms ({:.0} µs/thread over idle), all {n} listed", (m - idle_ms) * 1e3 / n as f64),
        baseline: format!("idle `hung` {idle_ms:.0} ms"),
        ratio: Some(m / idle_ms),
        target: "— (scale)".into(),
        met: None,
        rss_kib: Some(rss),
    });
    Ok(())
}
