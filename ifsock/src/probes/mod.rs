//! Loading ifsock's eBPF object, choosing the probe set, attaching programs, and reading what
//! they produce (iterator snapshots, ring-buffer events, counters, in-flight receives).
pub mod attach;
pub mod destroy;
pub mod events;
pub mod inflight;
pub mod plan;
pub mod select;
pub mod snapshot;

use std::{collections::HashSet, io::Read, path::Path};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, FEntry, FExit, Iter, KProbe, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use ifsock_common::{
    Counter, Record, SockFilter, SockRecord, TaskFileRecord, GLOBAL_OFFSETS,
    GLOBAL_RECV_REPORT_MIN_NS, MAP_ABORT_WATCH, MAP_COUNTERS, MAP_EVENTS, MAP_INFLIGHT, MAP_INFLIGHT_SLOTS, MAP_RECV_ERR_PTR,
    MAP_SEND_FD, MAP_SOCK_FILTER,
};

use crate::kernel::{netns::NetnsHandle, sockstat, system};
use crate::model::{kernel_event::InFlight, sock_error::SOCK_ERROR_TRACEPOINT, socket::SocketFds};
pub use crate::model::sock_error::SockErrorProbe;
pub use attach::{refusal, Attached, ProbeKind};
use attach::Pair;
pub use inflight::InflightReader;
pub use select::{ProbeSet, Selection};

/// The compiled eBPF object, built by `aya-build` from `ifsock-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ifsock"));

/// Up to this many sockets, an unfiltered snapshot ([`Probes::snapshot_decoded`]) has
/// `iter/task_file` write only their fds: two map writes per socket (~2 ms for 1,024) against a
/// walk that writes every socket fd of the host (a 104-byte record each).
pub const OWNER_FILTER_WORTH: usize = 1024;

/// Iterator program names (section `iter/<target>`).
pub const ITER_UDP: &str = "iter_udp_sockets";
/// `iter/tcp` program.
pub const ITER_TCP: &str = "iter_tcp_sockets";
/// `iter/task_file` program writing socket and tun fds ([`Probes::tun_files`]).
pub const ITER_TASK_FILE: &str = "iter_task_files";
/// `iter/task_file` program writing socket fds only (every socket snapshot's owners).
pub const ITER_TASK_SOCKETS: &str = "iter_task_sockets";

/// tp_btf program on `inet_sk_error_report` (socket errors with the `struct sock *`).
pub const SOCKERR_BTF: &str = "sockerr_btf_error_report";
/// Classic tracepoint program on `sock:inet_sk_error_report` (format fields only).
pub const SOCKERR_TP: &str = "sockerr_tp_error_report";

/// What [`Probes::attach_sock_errors_with`] attached.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SockErrorAttach {
    /// The program in use.
    pub probe: SockErrorProbe,
    /// Why tp_btf was not used, when the classic tracepoint was.
    pub tp_btf_refused: Option<String>,
}

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
    /// The iterator targets' ids-only BTF ([`btf_with_func_ids`]), built on a thread while the
    /// object loads; `None` when the ids could not be had (then the parsed BTF is used).
    iter_btf: Option<std::thread::JoinHandle<Btf>>,
    /// The ids it holds, to build it again for an iterator loaded later ([`Probes::tun_files`]):
    /// it is not kept, since placing three functions at their ids takes ~100k placeholder
    /// types (~4 MB held for the command's life otherwise).
    iter_funcs: Vec<(&'static str, u32)>,
    /// Iterator programs loaded so far.
    iters_loaded: Vec<&'static str>,
    /// Programs attached, in order (their `Display` is `category:name`, `fentry:function`…, as
    /// `doctor` and the banners print them).
    pub attached: Vec<Attached>,
    /// Optional probes this kernel does not have, with the reason (`doctor` lists them).
    pub unavailable: Vec<(String, String)>,
}

/// A kernel function to probe: BTF names to try (newest first) and the programs per set.
struct FnTarget {
    what: &'static str,
    candidates: &'static [&'static str],
    fentry: Pair,
    kprobe: Pair,
}

const fn fentry(entry: &'static str, exit: Option<&'static str>) -> Pair {
    Pair {
        entry: (entry, ProbeKind::Fentry),
        exit: match exit {
            Some(x) => Some((x, ProbeKind::Fexit)),
            None => None,
        },
    }
}

const fn kprobe(entry: &'static str, exit: Option<&'static str>) -> Pair {
    Pair {
        entry: (entry, ProbeKind::Kprobe),
        exit: match exit {
            Some(x) => Some((x, ProbeKind::Kretprobe)),
            None => None,
        },
    }
}

impl Probes {
    /// Checks privileges and BTF, mounts tracefs/bpffs when missing, reads offsets from BTF,
    /// and loads the object. `recv_report_min_ns`: receives in flight at least this long emit
    /// an event at return (`u64::MAX`: never).
    ///
    /// # Errors
    /// Not root / no CAP_BPF, no BTF, or the kernel refused the object (the message says which).
    pub fn load(recv_report_min_ns: u64) -> Result<Self> {
        Self::load_with(recv_report_min_ns, false)
    }

    /// [`Probes::load`] for commands that only run the iterators (`sockets`, `tun`): the maps
    /// no iterator touches (the event ring buffer, the in-flight receive, send and wake maps)
    /// are created with the smallest size the kernel accepts, since creating them preallocated
    /// at full size (`htab_map_alloc`, 16,384 entries each; a 1 MiB ring) was ~2 ms of a
    /// one-shot run. Attaching a kernel probe on such a `Probes` is a mistake: the probe would
    /// find its map full at once.
    ///
    /// # Errors
    /// As [`Probes::load`].
    pub fn load_for_snapshots() -> Result<Self> {
        Self::load_with(u64::MAX, true)
    }

    fn load_with(recv_report_min_ns: u64, snapshots_only: bool) -> Result<Self> {
        system::require_root()?;
        system::ensure_mounts()?;
        let t = std::time::Instant::now();
        let offsets = crate::kernel::btf::cached_kernel_offsets()?;
        tracing::debug!("kernel offsets at {:?}", t.elapsed());
        let iter_funcs: Vec<(&'static str, u32)> = match crate::kernel::btf::cached_iter_func_ids() {
            Ok(ids) => crate::kernel::btf::ITER_TARGET_FUNCS.into_iter().zip(ids).collect(),
            Err(e) => {
                tracing::debug!("iterator target ids unavailable ({e:#}); the iterators will use parsed vmlinux BTF");
                Vec::new()
            }
        };
        let iter_btf = (!iter_funcs.is_empty())
            .then(|| {
                let funcs = iter_funcs.clone();
                std::thread::Builder::new().name("ifsock-btf-ids".into()).spawn(move || btf_with_func_ids(&funcs)).ok()
            })
            .flatten();
        // No `.btf()`: the loader parses target BTF only for CO-RE relocations or typed ksyms,
        // which the Rust object has none of (offsets come in as `GLOBAL_OFFSETS` instead).
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_OFFSETS, &offsets, true)
            .override_global(GLOBAL_RECV_REPORT_MIN_NS, &recv_report_min_ns, true);
        if snapshots_only {
            for map in [MAP_INFLIGHT, MAP_INFLIGHT_SLOTS, MAP_RECV_ERR_PTR, MAP_SEND_FD, MAP_ABORT_WATCH] {
                loader.map_max_entries(map, 1);
            }
            // A ring buffer's size is a power-of-two multiple of the page size.
            loader.map_max_entries(MAP_EVENTS, page_size());
        } else {
            loader.map_max_entries(MAP_INFLIGHT_SLOTS, inflight::slot_count()?);
        }
        let ebpf = loader.load(EBPF_OBJECT).context("loading ifsock's eBPF object into the kernel")?;
        tracing::debug!("object loaded at {:?}", t.elapsed());
        Ok(Probes { ebpf, btf: None, iter_btf, iter_funcs, iters_loaded: Vec::new(), attached: Vec::new(), unavailable: Vec::new() })
    }

    fn iter_mut(&mut self, name: &str) -> Result<&mut Iter> {
        iter_in(&mut self.ebpf, name)
    }

    /// Loads the three iterator programs of a socket snapshot (`iter/udp`, `iter/tcp`, and
    /// `iter/task_file` for socket fds only), each on its own thread: the kernel verifies
    /// privileged programs concurrently, and verification is most of a one-shot command's
    /// start-up (~2–5 ms per program on 6.18).
    ///
    /// # Errors
    /// The kernel lacks BPF iterators (< 5.9 for tcp/udp) or the verifier refused a program.
    pub fn load_iterators(&mut self) -> Result<()> {
        self.load_iters(&[(ITER_UDP, "udp"), (ITER_TCP, "tcp"), (ITER_TASK_SOCKETS, "task_file")])
    }

    /// Loads those of `wanted` (program name, iterator target) not loaded yet, in parallel.
    fn load_iters(&mut self, wanted: &[(&'static str, &'static str)]) -> Result<()> {
        let mut pending: Vec<(&'static str, &'static str)> = wanted.iter().copied().filter(|(n, _)| !self.iters_loaded.contains(n)).collect();
        if pending.is_empty() {
            return Ok(());
        }
        // The ids alone, cached per boot, spare the full vmlinux parse; a program refused with
        // them is retried below with the fully parsed BTF.
        let small_btf: Option<Btf> = match self.iter_btf.take() {
            Some(h) => h.join().ok(),
            None => (!self.iter_funcs.is_empty()).then(|| btf_with_func_ids(&self.iter_funcs)),
        };
        let loaded: Vec<&'static str> = pending.iter().map(|(n, _)| *n).collect();
        if let Some(small) = &small_btf {
            let mut progs: Vec<(&'static str, &'static str, &mut Iter)> = Vec::new();
            for (name, prog) in self.ebpf.programs_mut() {
                if let Some(&(n, target)) = pending.iter().find(|(n, _)| *n == name) {
                    progs.push((n, target, prog.try_into()?));
                }
            }
            let found: Vec<&'static str> = progs.iter().map(|(n, _, _)| *n).collect();
            let refused: Vec<&'static str> = std::thread::scope(|scope| {
                let running: Vec<_> = progs
                    .into_iter()
                    .map(|(name, target, prog)| {
                        let verify = move || {
                            let t = std::time::Instant::now();
                            let loaded = prog.load(target, small);
                            tracing::debug!("{name} (iter/{target}) verified in {:?}", t.elapsed());
                            loaded
                        };
                        (name, target, scope.spawn(verify))
                    })
                    .collect();
                running
                    .into_iter()
                    .filter_map(|(name, target, handle)| match handle.join() {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => {
                            tracing::debug!("iter/{target} with cached BTF ids: {e}; retrying with parsed BTF");
                            Some(name)
                        }
                        Err(_) => Some(name),
                    })
                    .collect()
            });
            // Refused ones, and any not found (`iter_in` below names it in the error).
            pending.retain(|(name, _)| refused.contains(name) || !found.contains(name));
        }
        for (name, target) in pending {
            let btf = parsed_btf(&mut self.btf)?;
            iter_in(&mut self.ebpf, name)?
                .load(target, btf)
                .with_context(|| format!("loading iterator iter/{target} ({name})"))?;
        }
        self.iters_loaded.extend(loaded);
        tracing::debug!("iterators verified and loaded");
        Ok(())
    }

    fn iter_link(&mut self, name: &str) -> Result<aya::programs::iter::IterLink> {
        let prog = self.iter_mut(name)?;
        let id = prog.attach().with_context(|| format!("attaching {name}"))?;
        Ok(prog.take_link(id)?)
    }

    /// Runs the iterators and returns their records. Sockets are those of `netns` (the
    /// iterators walk the netns of the thread that opens them), or of ifsock's own netns;
    /// `files` are the socket fds of every task of the system (tun fds: [`Probes::tun_files`]).
    ///
    /// # Errors
    /// Iterator attach/read failures, or entering `netns` failed.
    pub fn snapshot(&mut self, netns: Option<&NetnsHandle>) -> Result<RawSnapshot> {
        let sockets = self.read_sockets(netns, None)?;
        let files = self.read_files()?;
        self.log_snapshot(sockets.len(), files.len());
        Ok(RawSnapshot { sockets, files })
    }

    /// As [`Probes::snapshot`] for callers that want the sockets and their owners only. The
    /// file records are kept as [`SocketFds`] while they are read (24 bytes per socket fd
    /// instead of a 104-byte record; no tun fds). Two paths, chosen by the netns's `sockstat`
    /// counts ([`sockstat::here`]):
    /// - more than [`OWNER_FILTER_WORTH`] sockets: every socket fd of the host is wanted (those
    ///   of other namespaces' sockets too, which a join by inode ignores), so the file walk
    ///   does not wait for the socket walk: it runs on a second thread beside it (at 100k
    ///   sockets the two walks are ~85 and ~50 ms here);
    /// - otherwise (or without counts) the socket walk comes first, and with at most
    ///   [`OWNER_FILTER_WORTH`] sockets `iter/task_file` writes only their fds, however many
    ///   fds the host's other processes hold.
    ///
    /// # Errors
    /// As [`Probes::snapshot`], or the owner filter could not be written.
    pub fn snapshot_decoded<S>(
        &mut self,
        netns: Option<&NetnsHandle>,
        decode: impl FnOnce(Vec<SockRecord>) -> S,
    ) -> Result<(S, SocketFds)> {
        self.load_iterators()?;
        let counts = match netns {
            None => sockstat::here().ok(),
            Some(ns) => ns.run(sockstat::here).ok().and_then(|c| c.ok()),
        };
        if counts.is_some_and(|c| c.udp + c.tcp > OWNER_FILTER_WORTH as u64) {
            let file = self.iter_link(ITER_TASK_SOCKETS)?.into_file()?;
            let (sockets, fds) = std::thread::scope(|scope| {
                let walker = scope.spawn(move || -> Result<SocketFds> {
                    let started = std::time::Instant::now();
                    let mut fds = SocketFds::default();
                    read_records_each::<TaskFileRecord>(file, |r| fds.push(&r))?;
                    tracing::debug!("iter/task_file walk: {} socket fds in {} µs (beside the socket walk)", fds.len(), started.elapsed().as_micros());
                    Ok(fds)
                });
                let sockets = self.read_sockets(netns, counts);
                let fds = walker.join().map_err(|_| anyhow!("the iter/task_file reader thread panicked"));
                (sockets, fds)
            });
            let (sockets, fds) = (sockets?, fds??);
            let count = sockets.len();
            let decoded = decode(sockets);
            self.log_snapshot(count, fds.len());
            return Ok((decoded, fds));
        }
        let sockets = self.read_sockets(netns, None)?;
        let count = sockets.len();
        // The inode set only serves the filter: above OWNER_FILTER_WORTH every socket fd is kept
        // and the owner join (by inode) ignores those of other sockets, so no set is built.
        let inodes: Option<HashSet<u64>> =
            (count <= OWNER_FILTER_WORTH).then(|| sockets.iter().map(|r| r.ino).filter(|i| *i != 0).collect());
        let decoded = decode(sockets);
        let fds = match &inodes {
            Some(inodes) => SocketFds::from_records(&self.owner_files(inodes, OWNER_FILTER_WORTH)?),
            None => SocketFds::from_records(&self.read_files()?),
        };
        self.log_snapshot(count, fds.len());
        Ok((decoded, fds))
    }

    /// `iter/udp` then `iter/tcp` in `netns`, deduplicated by cookie. A table the netns has no
    /// socket in (its `sockstat` counts, [`sockstat::here`], read on the thread in `netns` just
    /// before) is not walked: each walk visits every bucket of a table the whole host shares
    /// (here 262,144 TCP established buckets, 2.3 ms with none of them used). Counts that
    /// cannot be read mean both walks.
    /// `counts`: the netns's counts when the caller has just read them (not read again).
    fn read_sockets(&mut self, netns: Option<&NetnsHandle>, counts: Option<sockstat::InUse>) -> Result<Vec<SockRecord>> {
        self.load_iterators()?;
        let udp = self.iter_link(ITER_UDP)?;
        let tcp = self.iter_link(ITER_TCP)?;
        let read = move || -> Result<Vec<SockRecord>> {
            let inuse = counts.or_else(|| sockstat::here().map_err(|e| tracing::debug!("sockstat unreadable, walking both tables: {e}")).ok());
            let walk = |count: fn(&sockstat::InUse) -> u64| inuse.as_ref().is_none_or(|c| count(c) > 0);
            let timed = |name: &str, link: aya::programs::iter::IterLink| -> Result<Vec<SockRecord>> {
                let started = std::time::Instant::now();
                let records = read_records::<SockRecord>(link.into_file()?)?;
                tracing::debug!("{name} walk: {} records in {} µs", records.len(), started.elapsed().as_micros());
                Ok(records)
            };
            let mut out = Vec::new();
            if walk(|c| c.udp) {
                out = timed("iter/udp", udp)?;
            }
            if walk(|c| c.tcp) {
                out.extend(timed("iter/tcp", tcp)?);
            }
            if let Some(c) = inuse.filter(|c| c.udp == 0 || c.tcp == 0) {
                tracing::debug!("sockstat: {} UDP, {} TCP sockets in this netns; walks skipped for the empty tables", c.udp, c.tcp);
            }
            // The iterators leave `netns` to us (see `SockRecord::netns`): this thread's.
            let here = crate::kernel::netns::current_ino()?.0;
            for r in &mut out {
                r.netns = here;
            }
            Ok(dedupe_by_cookie(out))
        };
        match netns {
            None => read(),
            Some(ns) => ns.run(read)?,
        }
    }

    /// `iter/task_file` over every task of the system, socket fds only.
    fn read_files(&mut self) -> Result<Vec<TaskFileRecord>> {
        self.load_iterators()?;
        let files = self.iter_link(ITER_TASK_SOCKETS)?;
        let started = std::time::Instant::now();
        let records = read_records::<TaskFileRecord>(files.into_file()?)?;
        tracing::debug!("iter/task_file walk: {} records in {} µs", records.len(), started.elapsed().as_micros());
        Ok(records)
    }

    /// The socket and tun fds of every task of the system (`iter/task_file` by
    /// [`ITER_TASK_FILE`], verified on first use: only `tun` and a teardown of a tun/tap read
    /// tun fds), with no socket walk.
    ///
    /// # Errors
    /// The program could not be loaded, attached or read.
    pub fn tun_files(&mut self) -> Result<Vec<TaskFileRecord>> {
        self.load_iters(&[(ITER_TASK_FILE, "task_file")])?;
        let files = self.iter_link(ITER_TASK_FILE)?;
        read_records::<TaskFileRecord>(files.into_file()?)
    }

    fn log_snapshot(&self, sockets: usize, files: usize) {
        match self.counters() {
            Ok(c) => tracing::debug!("snapshot: {sockets} socket records, {files} file records, iter_retries={} so far", c.iter_retries),
            Err(e) => tracing::debug!("snapshot: counters unavailable: {e:#}"),
        }
    }

    /// As [`Probes::snapshot`], with `iter/udp` and `iter/tcp` writing only the sockets
    /// `filter` admits ([`SockFilter::admits`]: a superset of those tied to its interfaces), so
    /// the other sockets cost a walk but no record, copy or decode. Owners are read only for
    /// the sockets admitted: none admitted, no `iter/task_file` walk at all; up to
    /// [`ifsock_common::OWNER_FILTER_CAPACITY`], `iter/task_file` writes only their fds
    /// (their inodes in map `OWNER_INODES`); more, every fd is read. `files` holds socket
    /// records only (no tun fds). The filters are cleared afterwards, also on failure.
    ///
    /// # Errors
    /// As [`Probes::snapshot`], or a filter map could not be written.
    pub fn snapshot_filtered(&mut self, netns: Option<&NetnsHandle>, filter: &SockFilter) -> Result<RawSnapshot> {
        self.set_sock_filter(filter)?;
        let sockets = self.read_sockets(netns, None);
        let cleared = self.set_sock_filter(&SockFilter::OFF);
        let sockets = sockets?;
        cleared?;
        let inodes: HashSet<u64> = sockets.iter().map(|r| r.ino).filter(|i| *i != 0).collect();
        let files = self.owner_files(&inodes, ifsock_common::OWNER_FILTER_CAPACITY as usize)?;
        self.log_snapshot(sockets.len(), files.len());
        Ok(RawSnapshot { sockets, files })
    }

    /// The socket fd records of `inodes` (no others, no tun fds): none, no walk; up to
    /// `filter_up_to` inodes, `iter/task_file` writes only theirs (two map writes per inode,
    /// ~1 µs each); more, every fd is read and the others dropped here.
    fn owner_files(&mut self, inodes: &HashSet<u64>, filter_up_to: usize) -> Result<Vec<TaskFileRecord>> {
        if inodes.is_empty() {
            return Ok(Vec::new());
        }
        if inodes.len() <= filter_up_to.min(ifsock_common::OWNER_FILTER_CAPACITY as usize) {
            self.set_owner_filter(inodes, true)?;
            let files = self.read_files();
            let cleared = self.set_owner_filter(inodes, false);
            let files = files?;
            cleared?;
            return Ok(files);
        }
        let mut files = self.read_files()?;
        files.retain(|f| f.kind == ifsock_common::file_kind::SOCKET && inodes.contains(&f.ino));
        Ok(files)
    }

    /// Sets (`on`: only the socket fds of `inodes`) or clears (`!on`: and removes `inodes`)
    /// the owner filter of `iter/task_file` (maps `OWNER_INODES`, `OWNER_FILTER`). Inodes a
    /// failed run left behind are harmless: only listed sockets are joined with owners.
    fn set_owner_filter(&mut self, inodes: &HashSet<u64>, on: bool) -> Result<()> {
        use ifsock_common::{MAP_OWNER_FILTER, MAP_OWNER_INODES};
        let flag = |ebpf: &mut Ebpf, v: u32| -> Result<()> {
            let map = ebpf.map_mut(MAP_OWNER_FILTER).ok_or_else(|| anyhow!("map {MAP_OWNER_FILTER} missing from the object"))?;
            let mut arr: BpfArray<&mut MapData, u32> = BpfArray::try_from(map)?;
            arr.set(0, &v, 0).context("writing the owner filter flag")?;
            Ok(())
        };
        if !on {
            flag(&mut self.ebpf, 0)?;
        }
        let map = self.ebpf.map_mut(MAP_OWNER_INODES).ok_or_else(|| anyhow!("map {MAP_OWNER_INODES} missing from the object"))?;
        let mut set: BpfHashMap<&mut MapData, u64, u8> = BpfHashMap::try_from(map)?;
        for i in inodes {
            if on {
                set.insert(i, &1, 0).context("writing the owner filter's inodes")?;
            } else {
                // Absent already (ENOENT) is fine.
                let _ = set.remove(i);
            }
        }
        if on {
            flag(&mut self.ebpf, 1)?;
        }
        Ok(())
    }

    fn set_sock_filter(&mut self, filter: &SockFilter) -> Result<()> {
        let map = self.ebpf.map_mut(MAP_SOCK_FILTER).ok_or_else(|| anyhow!("map {MAP_SOCK_FILTER} missing from the object"))?;
        let mut arr: BpfArray<&mut MapData, SockFilter> = BpfArray::try_from(map)?;
        arr.set(0, filter, 0).with_context(|| format!("writing the socket filter into {MAP_SOCK_FILTER}"))?;
        let map = self
            .ebpf
            .map_mut(ifsock_common::MAP_SOCK_FILTER_ADDRS)
            .ok_or_else(|| anyhow!("map {} missing from the object", ifsock_common::MAP_SOCK_FILTER_ADDRS))?;
        let mut set: BpfHashMap<&mut MapData, [u8; 16], u8> = BpfHashMap::try_from(map)?;
        let old: Vec<[u8; 16]> = set.keys().filter_map(Result::ok).collect();
        for k in old {
            set.remove(&k).context("clearing the socket filter's addresses")?;
        }
        for a in filter.addrs.iter().take(filter.naddrs as usize) {
            set.insert(a, &1, 0).context("writing the socket filter's addresses")?;
        }
        Ok(())
    }

    /// Attaches a tracepoint program to `category:name`. Several attachments of one program are fine.
    ///
    /// # Errors
    /// The tracepoint does not exist on this kernel, or the program was refused.
    pub fn attach_tracepoint(&mut self, program: &'static str, category: &str, name: &str) -> Result<()> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().with_context(|| format!("loading {program}"))?;
        }
        prog.attach(category, name).with_context(|| format!("attaching {program} to {category}:{name}"))?;
        self.attached.push(Attached { kind: ProbeKind::Tracepoint, target: format!("{category}:{name}"), program });
        Ok(())
    }

    /// Attaches the device-path probes (close and unregister), each with its own fallback:
    /// fentry, then kprobe (unless `forced` names one set). Target functions are resolved from
    /// the running kernel's BTF, not from its version. Returns the set in use and, for every
    /// better set, why it was refused.
    ///
    /// # Errors
    /// A forced set that this kernel refuses.
    pub fn attach_device(&mut self, forced: Option<ProbeSet>) -> Result<Selection> {
        let targets = [
            FnTarget {
                what: "close",
                candidates: &["netif_close_many", "dev_close_many", "__dev_close_many"],
                fentry: fentry("dev_fentry_close_many", None),
                kprobe: kprobe("dev_kprobe_close_many", None),
            },
            FnTarget {
                what: "unregister",
                candidates: &["unregister_netdevice_queue"],
                fentry: fentry("dev_fentry_unregister", None),
                kprobe: kprobe("dev_kprobe_unregister", None),
            },
        ];
        let (selection, _) = self.attach_functions(&targets, forced)?;
        tracing::info!("device path: {selection}");
        Ok(selection)
    }

    /// Attaches receive tracking, each function with its own fallback (fentry/fexit, then
    /// kprobe/kretprobe) on `__skb_recv_udp`, `__skb_recv_datagram` and
    /// `__skb_wait_for_more_packets`. When any of them cannot be probed (or `forced` is
    /// [`ProbeSet::Tracepoint`]) the tracepoint set is attached too:
    /// `syscalls:sys_{enter,exit}_{recvmsg,recvfrom,recvmmsg,read}`.
    ///
    /// # Errors
    /// A forced set this kernel refuses, or a syscall tracepoint that cannot attach.
    pub fn attach_recv(&mut self, forced: Option<ProbeSet>) -> Result<Selection> {
        let targets = [
            FnTarget {
                what: "UDP receive",
                candidates: &["__skb_recv_udp"],
                fentry: fentry("recv_fentry_udp", Some("recv_fexit_udp")),
                kprobe: kprobe("recv_kprobe_udp", Some("recv_kretprobe_func")),
            },
            FnTarget {
                what: "datagram receive",
                candidates: &["__skb_recv_datagram"],
                fentry: fentry("recv_fentry_dgram", Some("recv_fexit_dgram")),
                kprobe: kprobe("recv_kprobe_dgram", Some("recv_kretprobe_func")),
            },
            FnTarget {
                what: "datagram wait",
                candidates: &["__skb_wait_for_more_packets"],
                fentry: fentry("recv_fentry_wait", Some("recv_fexit_wait")),
                kprobe: kprobe("recv_kprobe_wait", Some("recv_kretprobe_wait")),
            },
        ];
        let (selection, all_covered) = self.attach_functions(&targets, forced)?;
        if !all_covered {
            for sc in ["recvmsg", "recvfrom", "recvmmsg", "read"] {
                self.attach_tracepoint("recv_exit", "syscalls", &format!("sys_exit_{sc}"))?;
                let enter = if sc == "read" { "recv_enter_read" } else { "recv_enter" };
                self.attach_tracepoint(enter, "syscalls", &format!("sys_enter_{sc}"))?;
            }
        }
        tracing::info!("receive path: {selection}");
        Ok(selection)
    }

    /// Attaches each target with its own fallback (fentry, then kprobe, unless `forced`).
    /// Returns the selection (the weakest set in use, with why each better one was refused)
    /// and whether every target got a kernel-function probe.
    ///
    /// # Errors
    /// `forced` names fentry or kprobe and some target could not be attached with it.
    fn attach_functions(&mut self, targets: &[FnTarget], forced: Option<ProbeSet>) -> Result<(Selection, bool)> {
        let kbtf = crate::kernel::btf::KernelBtf::load(&[])?;
        let mut fentry_err: Option<String> = None;
        let mut kprobe_err: Option<String> = None;
        let mut outcomes = Vec::new();
        for t in targets {
            let Some(function) = t.candidates.iter().copied().find(|f| kbtf.has_function(f)) else {
                let why = format!("no {} function ({}) in this kernel's BTF", t.what, t.candidates.join("/"));
                fentry_err.get_or_insert(why.clone());
                kprobe_err.get_or_insert(why);
                self.unavailable.push((t.candidates.join("/"), "not in BTF".into()));
                outcomes.push(None);
                continue;
            };
            if forced.is_none() || forced == Some(ProbeSet::Fentry) {
                match self.attach_fentry_pair(&t.fentry, function) {
                    Ok(()) => {
                        outcomes.push(Some(ProbeSet::Fentry));
                        continue;
                    }
                    Err(e) => {
                        fentry_err.get_or_insert(refusal(&e));
                    }
                }
            }
            if forced.is_none() || forced == Some(ProbeSet::Kprobe) {
                match self.attach_kprobe_pair(&t.kprobe, function) {
                    Ok(()) => {
                        outcomes.push(Some(ProbeSet::Kprobe));
                        continue;
                    }
                    Err(e) => {
                        kprobe_err.get_or_insert(refusal(&e));
                    }
                }
            }
            outcomes.push(None);
        }
        let uncovered = outcomes.iter().any(Option::is_none);
        if let Some(set @ (ProbeSet::Fentry | ProbeSet::Kprobe)) = forced {
            if uncovered {
                let why = if set == ProbeSet::Fentry { fentry_err } else { kprobe_err };
                return Err(anyhow!("probe set {set:?} was forced but this kernel refuses it: {}", why.unwrap_or_default()));
            }
        }
        let caps = select::combine(&outcomes, fentry_err, kprobe_err);
        let selection = select::select(&caps, forced).map_err(anyhow::Error::msg)?;
        Ok((selection, !uncovered))
    }

    fn attach_fentry_pair(&mut self, pair: &Pair, function: &str) -> Result<()> {
        let done = attach::attach_pair::<FEntry, FExit>(&mut self.ebpf, parsed_btf(&mut self.btf)?, pair, function)?;
        self.attached.extend(done);
        Ok(())
    }

    fn attach_kprobe_pair(&mut self, pair: &Pair, function: &str) -> Result<()> {
        // Where the attach must fail, the program is not loaded first: verifying
        // `dev_kprobe_close_many` alone was ~0.45 s of `watch`'s start-up on 6.18 (410,299
        // instructions), only to be refused.
        if !attach::kprobes_attachable() {
            let why = format!("kprobe {} for {function}: no kprobe PMU ({}) and no {}/kprobe_events; not loaded", pair.entry.0, attach::KPROBE_PMU, system::TRACEFS);
            return Err(anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT)).context(why));
        }
        let done = attach::attach_pair::<KProbe, KProbe>(&mut self.ebpf, parsed_btf(&mut self.btf)?, pair, function)?;
        self.attached.extend(done);
        Ok(())
    }

    /// Attaches the syscall tracepoints that name the task behind a link change
    /// (`sys_enter_sendmsg`, `sys_enter_sendto` for netlink, `sys_enter_ioctl` for SIOCSIFFLAGS).
    pub fn attach_link_requests(&mut self) -> Result<()> {
        self.attach_tracepoint("link_enter_sendmsg", "syscalls", "sys_enter_sendmsg")?;
        self.attach_tracepoint("link_enter_sendto", "syscalls", "sys_enter_sendto")?;
        self.attach_tracepoint("link_enter_ioctl", "syscalls", "sys_enter_ioctl")
    }

    /// Attaches send-error tracking (`sys_enter/exit_{sendto,sendmsg}`).
    pub fn attach_send_errors(&mut self) -> Result<()> {
        for sc in ["sendto", "sendmsg"] {
            self.attach_tracepoint("send_exit", "syscalls", &format!("sys_exit_{sc}"))?;
            self.attach_tracepoint("send_enter", "syscalls", &format!("sys_enter_{sc}"))?;
        }
        Ok(())
    }

    /// Attaches kernel-reported socket errors (`sock:inet_sk_error_report`): tp_btf first, the
    /// classic tracepoint when tp_btf is refused.
    ///
    /// # Errors
    /// Neither loads (the tracepoint exists from Linux 5.14); the message gives both reasons.
    pub fn attach_sock_errors(&mut self) -> Result<()> {
        self.attach_sock_errors_with(None).map(|_| ())
    }

    /// As [`Probes::attach_sock_errors`], or only `forced`. Says which program attached and,
    /// for the classic fallback, why tp_btf was refused. Attaching twice is a no-op.
    ///
    /// # Errors
    /// As [`Probes::attach_sock_errors`], or the forced program was refused.
    pub fn attach_sock_errors_with(&mut self, forced: Option<SockErrorProbe>) -> Result<SockErrorAttach> {
        let done = match forced {
            None => self.sock_error_probe(),
            Some(p) => self.sock_error_probes().any(|a| a == p).then_some(p),
        };
        if let Some(probe) = done {
            return Ok(SockErrorAttach { probe, tp_btf_refused: None });
        }
        let mut tp_btf_refused = None;
        if forced != Some(SockErrorProbe::Tracepoint) {
            match self.attach_btf_tracepoint(SOCKERR_BTF, SOCK_ERROR_TRACEPOINT) {
                Ok(()) => {
                    tracing::info!("socket errors: {}", SockErrorProbe::TpBtf);
                    return Ok(SockErrorAttach { probe: SockErrorProbe::TpBtf, tp_btf_refused: None });
                }
                Err(e) if forced.is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!("tp_btf {SOCK_ERROR_TRACEPOINT} refused: {e:#}");
                    tp_btf_refused = Some(refusal(&e));
                }
            }
        }
        let classic = check_sock_error_format()
            .and_then(|()| self.attach_tracepoint(SOCKERR_TP, "sock", SOCK_ERROR_TRACEPOINT));
        match (classic, tp_btf_refused) {
            (Ok(()), refused) => {
                tracing::info!(
                    "socket errors: {}{}",
                    SockErrorProbe::Tracepoint,
                    refused.as_deref().map(|r| format!(" (tp_btf refused: {r})")).unwrap_or_default()
                );
                Ok(SockErrorAttach { probe: SockErrorProbe::Tracepoint, tp_btf_refused: refused })
            }
            (Err(e), None) => Err(e),
            (Err(e), Some(refused)) => Err(e.context(format!(
                "socket errors unavailable: tp_btf {SOCK_ERROR_TRACEPOINT} refused ({refused}) and the classic tracepoint too (sock:{SOCK_ERROR_TRACEPOINT} exists from Linux 5.14)"
            ))),
        }
    }

    /// Attaches the groups of `plan` in order with the one warn-or-fail policy of
    /// [`plan::apply`]: a required or forced group that fails is an error; an optional one is
    /// warned about once and recorded in [`Probes::unavailable`].
    ///
    /// # Errors
    /// A required or forced group failed (the chain holds the kernel's reason).
    pub fn apply(&mut self, plan: &plan::Plan, forced: plan::Forced) -> Result<plan::Applied> {
        use plan::{Group, Outcome};
        let applied = plan::apply(plan, forced, |group| match group {
            Group::Device => self.attach_device(forced.probe_set).map(Outcome::Selection),
            Group::Recv => self.attach_recv(forced.probe_set).map(Outcome::Selection),
            Group::LinkRequests => self.attach_link_requests().map(|()| Outcome::Done),
            Group::SendErrors => self.attach_send_errors().map(|()| Outcome::Done),
            Group::SockErrors => self.attach_sock_errors_with(forced.sock_error_probe).map(Outcome::SockErrors),
            Group::Iterators => self.load_iterators().map(|()| Outcome::Done),
        })?;
        for s in &applied.skipped {
            self.unavailable.push((s.group.to_string(), s.reason.clone()));
        }
        Ok(applied)
    }

    /// The socket-error program attached first, if any.
    pub fn sock_error_probe(&self) -> Option<SockErrorProbe> {
        self.sock_error_probes().next()
    }

    fn sock_error_probes(&self) -> impl Iterator<Item = SockErrorProbe> + '_ {
        self.attached.iter().filter_map(|a| match a.program {
            SOCKERR_BTF => Some(SockErrorProbe::TpBtf),
            SOCKERR_TP => Some(SockErrorProbe::Tracepoint),
            _ => None,
        })
    }

    fn attach_btf_tracepoint(&mut self, program: &'static str, tracepoint: &str) -> Result<()> {
        let btf = parsed_btf(&mut self.btf)?;
        let prog: &mut BtfTracePoint = self.ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing"))?.try_into()?;
        if prog.fd().is_err() {
            prog.load(tracepoint, btf).with_context(|| format!("loading tp_btf on {tracepoint}"))?;
        }
        prog.attach().with_context(|| format!("attaching tp_btf on {tracepoint}"))?;
        self.attached.push(Attached { kind: ProbeKind::TpBtf, target: tracepoint.to_string(), program });
        Ok(())
    }

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

fn iter_in<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Iter> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`; 4096 when it cannot be read).
fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |v| v as u32)
}

/// A BTF holding only the named functions, each at its kernel type id (`BTF_KIND_FUNC`), with
/// pointer placeholders below. Program loads that need a target (`Iter::load`) only look a name up
/// in the BTF they are given and pass the id to `BPF_PROG_LOAD` as `attach_btf_id`, so this
/// replaces parsing all of vmlinux when the ids are known. Memory: one placeholder per lower id
/// (72 bytes each, 4.6 MB for 64k types on 6.18), dropped after the load; ~2 ms to build.
fn btf_with_func_ids(funcs: &[(&str, u32)]) -> Btf {
    use aya_obj::btf::{BtfType, Func, FuncLinkage, Ptr};
    let mut btf = Btf::new();
    let mut sorted = funcs.to_vec();
    sorted.sort_by_key(|(_, id)| *id);
    let mut next = 1u32;
    for (name, id) in sorted {
        if id < next {
            continue; // duplicate id: the first name keeps it
        }
        while next < id {
            next = btf.add_type(BtfType::Ptr(Ptr::new(0, 0))) + 1;
        }
        let name_offset = btf.add_string(name);
        next = btf.add_type(BtfType::Func(Func::new(name_offset, 0, FuncLinkage::Global))) + 1;
    }
    btf
}

/// The parsed vmlinux BTF, parsing it on first use ([`crate::kernel::btf::vmlinux_for_aya`]).
fn parsed_btf(slot: &mut Option<Btf>) -> Result<&Btf> {
    if slot.is_none() {
        let t = std::time::Instant::now();
        *slot = Some(crate::kernel::btf::vmlinux_for_aya()?);
        tracing::debug!("aya BTF parsed in {:?}", t.elapsed());
    }
    slot.as_ref().ok_or_else(|| anyhow!("vmlinux BTF not parsed"))
}

/// Checks that the classic `sock:inet_sk_error_report` record has the field offsets the
/// program reads ([`ifsock_common::inet_sk_error_report_format`]).
fn check_sock_error_format() -> Result<()> {
    let path = format!("{}/events/sock/{SOCK_ERROR_TRACEPOINT}/format", system::TRACEFS);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}: no sock:{SOCK_ERROR_TRACEPOINT} tracepoint (it exists from Linux 5.14)"))?;
    let fields = format_offsets(&text);
    for (name, want) in ifsock_common::inet_sk_error_report_format::FIELDS {
        match fields.iter().find(|(n, _)| n == name) {
            Some((_, got)) if *got == want => {}
            Some((_, got)) => {
                return Err(anyhow!("{path}: field {name} at offset {got}, the program reads it at {want}: this kernel's record layout is not supported"));
            }
            None => return Err(anyhow!("{path}: no field {name}: this kernel's record layout is not supported")),
        }
    }
    Ok(())
}

/// (name, offset) of every `field:TYPE NAME[N]; offset:O;` line of a tracepoint format file.
fn format_offsets(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .filter_map(|line| {
            let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
            let name = decl.split_whitespace().last()?.split('[').next()?.to_string();
            let offset = line.split("offset:").nth(1)?.split(';').next()?.trim().parse().ok()?;
            Some((name, offset))
        })
        .collect()
}

/// Bytes asked of each `read()` of an iterator: more than the kernel's seq buffer
/// (`PAGE_SIZE << 3`, 32 KiB with 4 KiB pages, kernel/bpf/bpf_iter.c `bpf_seq_read`), so every
/// `read()` returns a full seq buffer and the record that did not fit is retried once at the
/// start of the next `read()` (counted as `iter_retries`). Smaller reads would avoid the retry
/// but double the number of syscalls.
const ITER_READ_BYTES: usize = 64 << 10;

/// Decodes the iterator's output as it is read, through one reused buffer of
/// [`ITER_READ_BYTES`] (plus one partial record carried to the next read): peak memory is the
/// decoded records, not the raw bytes as well (at 100k sockets the raw `task_file` and socket
/// output alone is ~20 MB, and a growing buffer doubles that).
///
/// `EAGAIN` is a pause, not an end: `bpf_seq_read()` returns it when one `read()` visited
/// `MAX_ITER_OBJECTS` (1,000,000) objects without writing a byte (a filter that admits none of
/// a million sockets), after saving its position; the next `read()` resumes there.
fn read_records<T: Record>(file: impl Read) -> Result<Vec<T>> {
    let mut out = Vec::new();
    read_records_each(file, |r| out.push(r))?;
    Ok(out)
}

/// As [`read_records`], handing each record to `each` as it is decoded instead of collecting.
fn read_records_each<T: Record>(mut file: impl Read, mut each: impl FnMut(T)) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let mut buf = vec![0u8; ITER_READ_BYTES + size];
    let mut kept = 0;
    loop {
        match file.read(&mut buf[kept..]) {
            Ok(0) => break,
            Ok(n) => {
                let filled = kept + n;
                let whole = filled - filled % size;
                buf[..whole].chunks_exact(size).filter_map(ifsock_common::read_record::<T>).for_each(&mut each);
                buf.copy_within(whole..filled, 0);
                kept = filled - whole;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => return Err(anyhow::Error::from(e).context("reading BPF iterator output")),
        }
    }
    if kept != 0 {
        return Err(anyhow!("iterator output ended with {kept} bytes of a {size}-byte record"));
    }
    Ok(())
}

/// Keeps the first record of every socket cookie. Before 6.16 (TCP) / 6.17 (UDP) a socket
/// iterator that resumes a hash bucket after a full seq buffer can show a socket twice; the
/// cookie (`sock_gen_cookie()`) identifies it across the dump. Records without a cookie (0,
/// never produced by `bpf_get_socket_cookie`) are kept.
fn dedupe_by_cookie(records: Vec<SockRecord>) -> Vec<SockRecord> {
    let mut seen = HashSet::new();
    records.into_iter().filter(|r| r.cookie == 0 || seen.insert(r.cookie)).collect()
}

/// True when a path exists (used by capability probes).
pub(crate) fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cookie: u64, lport: u16) -> SockRecord {
        SockRecord {
            sk: 1, cookie, ino: 0, netns: 7, uid: 0, bound_dev_if: 0, family: 2, protocol: 6, state: 10,
            lport, rport: 0, flags: 0, laddr: [0; 16], raddr: [0; 16], rx_queue: 0, drops: 0,
        }
    }

    #[test]
    fn a_btf_of_ids_alone_finds_each_function_at_its_kernel_id() {
        use aya_obj::btf::BtfKind;
        let btf = btf_with_func_ids(&[("bpf_iter_tcp", 900), ("bpf_iter_udp", 7), ("bpf_iter_task_file", 901)]);
        assert_eq!(btf.id_by_type_name_kind("bpf_iter_udp", BtfKind::Func).unwrap(), 7);
        assert_eq!(btf.id_by_type_name_kind("bpf_iter_tcp", BtfKind::Func).unwrap(), 900);
        assert_eq!(btf.id_by_type_name_kind("bpf_iter_task_file", BtfKind::Func).unwrap(), 901);
        assert!(btf.id_by_type_name_kind("bpf_iter_unix", BtfKind::Func).is_err());
    }

    #[test]
    fn a_socket_shown_twice_by_the_iterator_is_listed_once() {
        let out = dedupe_by_cookie(vec![rec(5, 80), rec(6, 81), rec(5, 80), rec(0, 82), rec(0, 83)]);
        let ports: Vec<u16> = out.iter().map(|r| r.lport).collect();
        assert_eq!(ports, vec![80, 81, 82, 83]);
    }

    fn file_with(bytes: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("ifsock-read-records-{}-{}", std::process::id(), bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn iterator_output_is_decoded_across_reads_and_a_torn_record_is_an_error() {
        // More than one read buffer; the record size does not divide it.
        let size = std::mem::size_of::<SockRecord>();
        assert_ne!(ITER_READ_BYTES % size, 0);
        let n = ITER_READ_BYTES / size * 3 + 5;
        let bytes: Vec<u8> = (0..n as u64)
            .flat_map(|i| {
                let r = rec(i + 1, 0);
                // SAFETY: test-only view of a repr(C) integer record as bytes.
                unsafe { std::slice::from_raw_parts((&r as *const SockRecord).cast::<u8>(), size) }.to_vec()
            })
            .collect();
        let got = read_records::<SockRecord>(file_with(&bytes)).unwrap();
        assert_eq!(got.len(), n);
        assert!(got.iter().enumerate().all(|(i, r)| r.cookie == i as u64 + 1));
        let err = read_records::<SockRecord>(file_with(&bytes[..bytes.len() - 1])).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("{} bytes of a {size}-byte record", size - 1)), "{err:#}");
    }

    /// A reader that fails with `errno` once before every `every`-th read.
    struct Pausing<R> {
        inner: R,
        errno: i32,
        every: usize,
        reads: usize,
    }

    impl<R: Read> Read for Pausing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads % self.every == 1 {
                return Err(std::io::Error::from_raw_os_error(self.errno));
            }
            self.inner.read(buf)
        }
    }

    #[test]
    fn an_iterator_read_paused_with_eagain_resumes_and_other_errors_stop_it() {
        let size = std::mem::size_of::<SockRecord>();
        let bytes: Vec<u8> = (0..(ITER_READ_BYTES / size * 2) as u64)
            .flat_map(|i| {
                let r = rec(i + 1, 0);
                // SAFETY: test-only view of a repr(C) integer record as bytes.
                unsafe { std::slice::from_raw_parts((&r as *const SockRecord).cast::<u8>(), size) }.to_vec()
            })
            .collect();
        let n = bytes.len() / size;
        let paused = Pausing { inner: &bytes[..], errno: libc::EAGAIN, every: 2, reads: 0 };
        let got = read_records::<SockRecord>(paused).expect("EAGAIN is retried");
        assert_eq!(got.len(), n);
        let failing = Pausing { inner: &bytes[..], errno: libc::EIO, every: 2, reads: 0 };
        let err = read_records::<SockRecord>(failing).unwrap_err();
        assert!(format!("{err:#}").contains("reading BPF iterator output"), "{err:#}");
    }

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

    #[test]
    fn classic_tracepoint_format_offsets_are_parsed() {
        let text = "name: inet_sk_error_report\nID: 2286\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:int error;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:__u8 saddr_v6[16];\toffset:28;\tsize:16;\tsigned:0;\n\nprint fmt: \"family=%s\"";
        assert_eq!(
            format_offsets(text),
            vec![("common_type".to_string(), 0), ("error".to_string(), 8), ("saddr_v6".to_string(), 28)]
        );
    }
}
