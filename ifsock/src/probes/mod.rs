//! Loading ifsock's eBPF object, choosing the probe set, attaching programs, and reading what
//! they produce (iterator snapshots, ring-buffer events, counters, in-flight receives).
//!
//! [`Probes`] is the one handle on the loaded object; its methods live by concern: `load.rs`
//! (object and iterator programs), `read.rs` (iterator snapshots), `attach.rs` (kernel-function
//! and tracepoint probes, [`plan`] applied), `sock_errors.rs` (the socket-error program pair).
pub mod attach;
pub mod destroy;
pub mod events;
pub mod inflight;
pub mod plan;
pub mod select;
pub mod snapshot;
mod load;
mod read;
mod sock_errors;
mod wait_queue;

use std::path::Path;

use anyhow::{anyhow, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    Btf, Ebpf,
};
use ifsock_common::{Counter, SockRecord, TaskFileRecord, MAP_COUNTERS};

use crate::model::kernel_event::InFlight;
pub use attach::{refusal, Attached, ProbeKind};
pub use inflight::InflightReader;
pub use read::OWNER_FILTER_WORTH;
pub use select::{ProbeSet, Selection};
pub use sock_errors::{SockErrorAttach, SockErrorProbe, SOCKERR_BTF, SOCKERR_TP};

/// Iterator program names (section `iter/<target>`).
pub const ITER_UDP: &str = "iter_udp_sockets";
/// `iter/tcp` program.
pub const ITER_TCP: &str = "iter_tcp_sockets";
/// `iter/task_file` program writing socket and tun fds ([`Probes::tun_files`]).
pub const ITER_TASK_FILE: &str = "iter_task_files";
/// `iter/task_file` program writing socket fds only (every socket snapshot's owners).
pub const ITER_TASK_SOCKETS: &str = "iter_task_sockets";

/// `iter/udp` waiter walk (one `WaitRecord` per wait-queue entry; [`Probes::wait_queue`]).
pub const ITER_UDP_WAITERS: &str = "iter_udp_waiters";
/// `iter/tcp` waiter walk.
pub const ITER_TCP_WAITERS: &str = "iter_tcp_waiters";

/// Counters from the per-CPU counter map ([`ifsock_common::Counter`]), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Events lost: the ring buffer was full when a program wrote one (real losses).
    pub ringbuf_drops: u64,
    /// Receives not tracked: the in-flight map was full (real losses of tracking).
    pub inflight_full: u64,
    /// Iterator records written again because the seq buffer was full. Not a loss: the kernel
    /// shows the same object again in the next `read()`.
    pub iter_retries: u64,
    /// Link requests captured.
    pub link_requests: u64,
}

impl Counters {
    /// Builds the counters from one value per [`Counter`].
    pub fn from_fn(mut value: impl FnMut(Counter) -> u64) -> Self {
        Counters {
            ringbuf_drops: value(Counter::RingbufDrops),
            inflight_full: value(Counter::InflightFull),
            iter_retries: value(Counter::IterRetries),
            link_requests: value(Counter::LinkRequests),
        }
    }
}

/// Raw iterator output of one netns.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    /// `iter/udp` and `iter/tcp` records.
    pub sockets: Vec<SockRecord>,
    /// `iter/task_file` records (system-wide: the task iterator is not netns-scoped).
    pub files: Vec<TaskFileRecord>,
}

/// A loaded eBPF object, its globals set to the running kernel's offsets.
pub struct Probes {
    ebpf: Ebpf,
    /// aya's parse of vmlinux BTF, made on first use (iterators, tp_btf, fentry/fexit) and
    /// shared by every program load; commands that attach only tracepoints never parse it.
    btf: Option<Btf>,
    /// The iterator targets' ids-only BTF ([`load::btf_with_func_ids`]), built on a thread while the
    /// object loads; `None` when the ids could not be had (then the parsed BTF is used).
    iter_btf: Option<std::thread::JoinHandle<Btf>>,
    /// The ids it holds, to build it again for an iterator loaded later ([`Probes::tun_files`]):
    /// it is not kept, since placing three functions at their ids takes ~100k placeholder
    /// types (~4 MB held for the command's life otherwise).
    iter_funcs: Vec<(&'static str, u32)>,
    /// One-shot commands ([`Probes::load_for_snapshots`]: `sockets`, `tun`) keep the ids-only
    /// BTF here between loads: the waiter programs are loaded right after the snapshot's, and
    /// building it again cost ~2 ms (more on a busy host) of the waiter walk. Long-running
    /// commands do not keep it (the ~4 MB above).
    kept_iter_btf: Option<Option<Btf>>,
    /// Iterator programs loaded so far.
    iters_loaded: Vec<&'static str>,
    /// Programs attached, in order (their `Display` is `category:name`, `fentry:function`…, as
    /// `doctor` and the banners print them).
    pub attached: Vec<Attached>,
    /// Optional probes this kernel does not have, with the reason (`doctor` lists them).
    pub unavailable: Vec<(String, String)>,
}

impl Probes {
    /// Takes the events ring buffer for an [`events::EventStream`].
    pub fn events(&mut self) -> Result<events::EventStream> {
        let map = self
            .ebpf
            .take_map(ifsock_common::MAP_EVENTS)
            .ok_or_else(|| anyhow!("events map already taken"))?;
        events::EventStream::new(map)
    }

    /// Sums the per-CPU counters, each read at its [`Counter`] index.
    ///
    /// # Errors
    /// The counter map is missing or a lookup failed (`bpf_map_lookup_elem` errno): callers
    /// report the counters as unavailable, never as zeros.
    pub fn counters(&self) -> Result<Counters> {
        let map = self.ebpf.map(MAP_COUNTERS).ok_or_else(|| anyhow!("counters map missing"))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut failed = None;
        let counters = Counters::from_fn(|c| match arr.get(&(c as u32), 0) {
            Ok(values) => values.iter().sum(),
            Err(e) => {
                failed.get_or_insert((c, e));
                0
            }
        });
        match failed {
            None => Ok(counters),
            Some((c, e)) => Err(anyhow::Error::from(e).context(format!("reading counter {c:?} from {MAP_COUNTERS}"))),
        }
    }

    /// Receives currently in flight (one per thread): recorded at the entry of a kernel receive
    /// function (fentry/kprobe sets) or of a receive syscall (tracepoint set), decoded.
    ///
    /// # Errors
    /// As [`Probes::inflight_reader`] and [`InflightReader::read`].
    pub fn inflight(&self) -> Result<Vec<InFlight>> {
        self.inflight_reader()?.read()
    }

    /// A second handle on the in-flight maps, for reading them on another thread (duplicated
    /// map fds: the same kernel maps, no copy).
    ///
    /// # Errors
    /// A map is missing or its fd could not be duplicated (EMFILE).
    pub fn inflight_reader(&self) -> Result<InflightReader> {
        InflightReader::open(&self.ebpf)
    }
}

/// True when a path exists (used by capability probes).
pub(crate) fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name_not_position() {
        let c = Counters::from_fn(|c| match c {
            Counter::RingbufDrops => 1,
            Counter::InflightFull => 2,
            Counter::IterRetries => 3,
            Counter::LinkRequests => 4,
        });
        assert_eq!((c.ringbuf_drops, c.inflight_full, c.iter_retries, c.link_requests), (1, 2, 3, 4));
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["iter_retries"], 3);
        assert!(json.get("iter_overflow").is_none());
    }

}
