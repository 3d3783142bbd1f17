//! Options of `ifsock agent`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::parse_duration;
use crate::journal;

/// Options of `agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Serve /metrics and /healthz here (loopback by default; 0.0.0.0:9469 only if asked).
    #[arg(long, default_value = "127.0.0.1:9469")]
    pub listen: SocketAddr,
    /// Journal directory (JSON lines, rotated).
    #[arg(long, default_value = journal::DEFAULT_DIR)]
    pub journal: PathBuf,
    /// Bound on the journal's total size, bytes (8 segments of a eighth each; at least 32768).
    #[arg(long, default_value_t = journal::DEFAULT_MAX_BYTES)]
    pub journal_max_bytes: u64,
    /// Re-dump every netns's links and re-take its socket snapshot this often (0 = never).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconcile_every: Duration,
    /// Journal `receiver_stranded` records: after each down/delete, the receivers blocked on
    /// the sockets it strands (from the sockets' wait queues; no receive tracing unless
    /// `--record-receives`).
    #[arg(long)]
    pub receivers: bool,
    /// Name the task behind each change (`cause`) on kernels that refuse fentry and kprobes,
    /// from the syscall tracepoints sys_enter_{sendmsg,sendto,ioctl}, which run on every such
    /// call of the host (measured: about 0.4 µs per call: +404 and +490 ns per sendto in two runs, 1.08-1.10x a loopback UDP round trip, on the 6.18 host; `ifsock-bench causes`). Where fentry or kprobes work, causes come from the
    /// rtnetlink and ioctl handlers at no idle cost, without this flag.
    #[arg(long)]
    pub causes: bool,
    /// Record receives: attach the receive-path probes for each blocked receiver's exact
    /// blocked-since time, at the cost of tracing every receive syscall of the host. Without
    /// it receivers come from the sockets' wait queues and their blocked time is estimated from
    /// the scheduler (`blocked_since_source: scheduler`).
    #[arg(long, requires = "receivers")]
    pub record_receives: bool,
}
