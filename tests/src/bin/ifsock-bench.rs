//! Benchmarks of issue 14, printed as one Markdown table: each row gives ifsock, a baseline
//! measured in the same run, the ratio and the target. Groups (all by default, or name them):
//! - `sockets`: `sockets --json` with 10k, 100k, 1M UDP sockets (stdout a pipe and a file) vs
//!   `ss -uan` / `ss -uanp`, and start-up on a netns with 10 sockets vs `ss -tuanp`;
//! - `hung`: `hung` on an idle host and with 1,000 blocked receivers;
//! - `watch`: interface delete → `watch --json` line vs `ip monitor link` (10k sockets, and
//!   `--no-sockets`), and the floor of a line with its sockets (one filtered walk, ifsock's
//!   `iter/udp` and sock_diag's);
//! - `burst`: 10 rounds of 1,000 links created and deleted;
//! - `recv`: the receive path per probe set, its floor (empty programs), per-program cost;
//! - `waiters`: waiter discovery (epoll/poll) per 1,000 waiting threads;
//! - `causes`: the send path under `agent` and `agent --causes` (syscall tracepoints).
//!
//! `IFSOCK_BENCH_SOCKETS=10000,100000` picks the socket counts (default 10k, 100k, 1M). Each group works in
//! its own netns; helper processes hold the sockets and are killed on drop.
#[path = "bench/causes.rs"]
mod causes;
#[path = "bench/hung.rs"]
mod hung;
#[path = "bench/recv.rs"]
mod recv;
#[path = "bench/sockets.rs"]
mod sockets;
#[path = "bench/util.rs"]
mod util;
#[path = "bench/waiters.rs"]
mod waiters;
#[path = "bench/watch.rs"]
mod watch;

use anyhow::{Context as _, Result};
use ifsock_tests::require_root;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--hold-sockets") => {
            let [_, ns, start, count] = &args[..] else { anyhow::bail!("--hold-sockets NETNS START COUNT") };
            return util::hold_sockets(ns, start.parse()?, count.parse()?);
        }
        Some("--hold-receivers") => {
            let [_, ns, count] = &args[..] else { anyhow::bail!("--hold-receivers NETNS COUNT") };
            return util::hold_receivers(ns, count.parse()?);
        }
        _ => {}
    }
    require_root();
    let all = args.is_empty();
    let want = |name: &str| all || args.iter().any(|w| w == name);
    let counts: Vec<u64> = std::env::var("IFSOCK_BENCH_SOCKETS")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|v| v.trim().parse().context("IFSOCK_BENCH_SOCKETS: comma-separated socket counts"))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    // A failing group is reported and the others still run: the table shows what was measured.
    let mut failed = Vec::new();
    let mut group = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            eprintln!("bench {name}: FAILED: {e:#}");
            failed.push(name.to_string());
        }
    };
    if want("sockets") {
        for n in counts {
            group("sockets", sockets::scale(n, &mut rows));
        }
        group("sockets", sockets::startup(&mut rows));
    }
    if want("hung") {
        let r = hung::idle(&mut rows).and_then(|idle| hung::blocked(1000, idle, &mut rows));
        group("hung", r);
    }
    if want("watch") {
        group("watch", watch::latency(watch::Sockets::InLine, 30, &mut rows));
        group("watch", watch::latency(watch::Sockets::After, 30, &mut rows));
        group("watch", watch::latency(watch::Sockets::None, 30, &mut rows));
        group("watch", watch::walk_floor(&mut rows));
    }
    if want("burst") {
        group("burst", watch::burst(10, 500, &mut rows));
    }
    if want("recv") {
        group("recv", recv::run(&mut rows));
    }
    if want("causes") {
        group("causes", causes::run(&mut rows));
    }
    if want("recv") || want("daemons") {
        group("daemons", recv::with_daemons(&mut rows));
    }
    if want("waiters") {
        group("waiters", waiters::discovery(&mut rows));
    }
    util::print_table(&rows);
    if !failed.is_empty() {
        anyhow::bail!("benchmark groups failed: {}", failed.join(", "));
    }
    Ok(())
}
