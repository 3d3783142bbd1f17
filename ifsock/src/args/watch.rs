//! Options of `ifsock watch`.
use std::time::Duration;

use super::parse_duration;
use crate::{
    kernel::netlink::RCVBUF_MAX,
    model::sock_error::SockErrorProbe,
    probes::select,
};

/// Options of `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Only events of this interface (by current or previous name).
    #[arg(long, value_parser = parse_iface)]
    pub iface: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Receive buffer of the rtnetlink subscription socket, bytes (1 to 1073741823; kernel
    /// default if unset). Above net.core.rmem_max it is set with SO_RCVBUFFORCE.
    #[arg(long, value_parser = parse_rcvbuf)]
    pub rcvbuf: Option<usize>,
    /// Re-dump and diff this often to catch silently lost events (0 = off).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconcile_every: Duration,
    /// Do not attach socket snapshots to events (cheaper under bursts).
    #[arg(long)]
    pub no_sockets: bool,
    /// Put each change's sockets in the change record itself, read before it is printed (one
    /// filtered socket walk later: 4-5 ms at 10k UDP sockets). By default a change is printed
    /// as soon as it is parsed, with `sockets_follow: true` and no sockets, and its sockets
    /// follow in a `change_sockets` record (read once no further netlink input is queued).
    #[arg(long, conflicts_with = "no_sockets")]
    pub sockets_inline: bool,
    /// The default (each change first, its sockets in a `change_sockets` record); accepted so
    /// that scripts written when it was an option keep working.
    #[arg(long, hide = true, conflicts_with_all = ["no_sockets", "sockets_inline"])]
    pub sockets_after: bool,
    /// Stop after this many change events (for scripts and tests).
    #[arg(long)]
    pub count: Option<u64>,
    /// Use this probe set for the device path (and the receive path, with `--record-receives`)
    /// instead of the best one allowed (fentry, kprobe, tracepoint); refused with the kernel's
    /// reason if it cannot load.
    #[arg(long, value_enum)]
    pub probe_set: Option<select::ProbeSet>,
    /// Follow every network namespace (named ones under /run/netns and those of running
    /// processes), including namespaces created and destroyed while running.
    #[arg(long)]
    pub all_netns: bool,
    /// Record receives: attach the receive-path probes for each blocked receiver's exact
    /// blocked-since time, at the cost of tracing every receive syscall of the host. Without
    /// it receivers come from the sockets' wait queues and their blocked time is estimated from
    /// the scheduler (`blocked_since_source: scheduler`).
    #[arg(long)]
    pub record_receives: bool,
    /// Raise `receiver_stranded` again when a receiver is still blocked this long after the
    /// down/delete that stranded it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub stranded_after: Duration,
    /// Observe kernel-reported socket errors with this program instead of the best one that
    /// loads (tp_btf, then tracepoint).
    #[arg(long, value_enum)]
    pub sock_error_probe: Option<SockErrorProbe>,
}

/// `--iface NAME`: an interface name of 1 to 15 bytes (IFNAMSIZ - 1); it need not exist yet.
///
/// # Errors
/// Empty or longer than an interface name can be.
pub fn parse_iface(s: &str) -> Result<String, String> {
    match s.len() {
        0 => Err("an empty name matches no interface: give a name, or omit --iface to watch every interface".into()),
        16.. => Err(format!("{s:?} is longer than an interface name can be (15 bytes, IFNAMSIZ - 1)")),
        _ => Ok(s.to_string()),
    }
}

/// `--rcvbuf BYTES`: the subscription socket's receive buffer in bytes (`SO_RCVBUFFORCE`).
///
/// # Errors
/// Not a whole number of bytes, or out of the accepted range.
pub fn parse_rcvbuf(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a size in bytes"))?;
    if n == 0 || n > RCVBUF_MAX {
        return Err(format!("{n} is outside the kernel's range for a receive buffer: 1 to {RCVBUF_MAX} bytes (omit --rcvbuf for the default)"));
    }
    Ok(n)
}
