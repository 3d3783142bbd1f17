//! Options of `ifsock hung`.
use std::time::Duration;

use super::{parse_bounded_duration, parse_positive_duration};
use crate::probes::select::ProbeSet;

/// Options of `hung`.
#[derive(Debug, Clone, clap::Args)]
pub struct HungArgs {
    /// Only receivers blocked at least this long (0 to 24h).
    #[arg(long, default_value = "1s", value_parser = parse_bounded_duration)]
    pub min_blocked: Duration,
    /// Only this process (a pid that exists).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// Every network namespace, with a NETNS column (JSON: `netns`). Without it, only receivers
    /// of the netns ifsock runs in (`--netns`): by their socket's netns, or by the thread's
    /// netns when the socket is unknown.
    #[arg(long)]
    pub all_netns: bool,
    /// JSON: one object per receiver (one-shot), or one `snapshot` object per interval (`--follow`).
    #[arg(long)]
    pub json: bool,
    /// Keep running: follow interface deletions and print the list every `--interval`
    /// (receivers from the sockets' wait queues, re-read at each interval).
    #[arg(long)]
    pub follow: bool,
    /// With `--follow`: record receives, attaching the receive-path probes, for the exact
    /// blocked-since time of receives that start while ifsock runs, at the cost of tracing
    /// every receive syscall of the host. Without it receivers come from the sockets' wait
    /// queues and blocked time is estimated from the scheduler (`blocked_since_source`).
    #[arg(long, requires = "follow")]
    pub record_receives: bool,

    /// Interval between snapshots with `--follow` (1ms to 24h; default 1s).
    #[arg(long, requires = "follow", value_parser = parse_positive_duration)]
    pub interval: Option<Duration>,
    /// Receive-path probe set instead of the best one allowed (fentry: `__skb_recv_udp`,
    /// `__skb_recv_datagram`, `__skb_wait_for_more_packets` trampolines; kprobe: the same with
    /// kprobes; tracepoint: the receive syscalls). Refused with the kernel's reason if unavailable.
    /// Only with `--follow`; implies `--record-receives`.
    #[arg(long, value_enum, requires = "follow")]
    pub probe_set: Option<ProbeSet>,
    /// Journal of a recorder that was running before (`ifsock agent`): interfaces it saw
    /// deleted name the interface a wildcard IP_PKTINFO receiver was stranded by. Default: the
    /// agent's directory, when it exists.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}
