//! The waiter walk: `iter/udp` and `iter/tcp` programs that list every entry of each socket's
//! wait queue (`sk->sk_wq->wait`), classified by wake function (ifsock-ebpf `iter.rs`,
//! `walk_waiters`).
use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array as BpfArray, MapData};
use ifsock_common::{WaitRecord, WakeFuncs, MAP_WAKE_FUNCS};

use super::{read::read_records, Probes, ITER_TCP_WAITERS, ITER_UDP_WAITERS};
use crate::kernel::{netns::NetnsHandle, sockstat};

impl Probes {
    /// The wait-queue records of every TCP and UDP socket of `netns` (or ifsock's own), with
    /// the entries classified by `wake` (addresses from `/proc/kallsyms`). Only the programs of
    /// the tables that hold sockets of `netns` are loaded (`sockstat`). Records of one
    /// socket come together; a socket shown twice by the iterator (a bucket re-read after a
    /// full seq buffer) may repeat its records, which the consumer dedupes by (inode, tid).
    ///
    /// # Errors
    /// The programs could not be loaded (the verifier refused them on this kernel), the map
    /// could not be written, or entering `netns` failed.
    pub fn wait_queue(&mut self, netns: Option<&NetnsHandle>, wake: &WakeFuncs) -> Result<Vec<WaitRecord>> {
        // Which tables hold sockets of the netns, read before loading: the program of a table
        // with none is neither verified nor run. Verifying a waiter program is most of the
        // walk's cost (its nested `bpf_loop` callbacks: ~6 ms each on an idle 6.18 host, against
        // ~2 ms for the walk of 1,000 sockets), and a netns often has only UDP or only TCP
        // sockets. Unreadable counts: both are walked.
        let inuse = match netns {
            None => sockstat::here().ok(),
            Some(ns) => ns.run(sockstat::here)?.ok(),
        };
        let (want_udp, want_tcp) = (inuse.is_none_or(|c| c.udp > 0), inuse.is_none_or(|c| c.tcp > 0));
        let wanted: Vec<(&'static str, &'static str)> =
            [(want_udp, (ITER_UDP_WAITERS, "udp")), (want_tcp, (ITER_TCP_WAITERS, "tcp"))].into_iter().filter_map(|(w, p)| w.then_some(p)).collect();
        if wanted.is_empty() {
            tracing::debug!("wait-queue walk: no TCP or UDP socket in this netns (sockstat); no program loaded");
            return Ok(Vec::new());
        }
        self.load_iters(&wanted)?;
        let map = self.ebpf.map_mut(MAP_WAKE_FUNCS).ok_or_else(|| anyhow!("map {MAP_WAKE_FUNCS} missing from the object"))?;
        let mut arr: BpfArray<&mut MapData, WakeFuncs> = BpfArray::try_from(map)?;
        arr.set(0, wake, 0).context("writing the wake-function addresses")?;
        let udp = if want_udp { Some(self.iter_link(ITER_UDP_WAITERS)?) } else { None };
        let tcp = if want_tcp { Some(self.iter_link(ITER_TCP_WAITERS)?) } else { None };
        let read = move || -> Result<Vec<WaitRecord>> {
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            if let Some(udp) = udp {
                out = read_records::<WaitRecord>(udp.into_file()?).context("reading the iter/udp waiter walk")?;
            }
            if let Some(tcp) = tcp {
                out.extend(read_records::<WaitRecord>(tcp.into_file()?).context("reading the iter/tcp waiter walk")?);
            }
            tracing::debug!("wait-queue walk: {} records in {} µs", out.len(), started.elapsed().as_micros());
            Ok(out)
        };
        match netns {
            None => read(),
            Some(ns) => ns.run(read)?,
        }
    }

    /// Verifies and loads both waiter programs whatever the sockets of any netns: `doctor`'s
    /// check that the walk can run on this kernel ([`Probes::wait_queue`] loads only those a
    /// netns needs).
    ///
    /// # Errors
    /// The kernel lacks the socket iterators or the verifier refused a program.
    pub fn load_waiter_iterators(&mut self) -> Result<()> {
        self.load_iters(&[(ITER_UDP_WAITERS, "udp"), (ITER_TCP_WAITERS, "tcp")])
    }
}
