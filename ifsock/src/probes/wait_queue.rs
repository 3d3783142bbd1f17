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
    /// the entries classified by `wake` (addresses from `/proc/kallsyms`). Records of one
    /// socket come together; a socket shown twice by the iterator (a bucket re-read after a
    /// full seq buffer) may repeat its records, which the consumer dedupes by (inode, tid).
    ///
    /// # Errors
    /// The programs could not be loaded (the verifier refused them on this kernel), the map
    /// could not be written, or entering `netns` failed.
    pub fn wait_queue(&mut self, netns: Option<&NetnsHandle>, wake: &WakeFuncs) -> Result<Vec<WaitRecord>> {
        self.load_iters(&[(ITER_UDP_WAITERS, "udp"), (ITER_TCP_WAITERS, "tcp")])?;
        let map = self.ebpf.map_mut(MAP_WAKE_FUNCS).ok_or_else(|| anyhow!("map {MAP_WAKE_FUNCS} missing from the object"))?;
        let mut arr: BpfArray<&mut MapData, WakeFuncs> = BpfArray::try_from(map)?;
        arr.set(0, wake, 0).context("writing the wake-function addresses")?;
        let udp = self.iter_link(ITER_UDP_WAITERS)?;
        let tcp = self.iter_link(ITER_TCP_WAITERS)?;
        let read = move || -> Result<Vec<WaitRecord>> {
            let started = std::time::Instant::now();
            let inuse = sockstat::here().ok();
            let mut out = Vec::new();
            if inuse.as_ref().is_none_or(|c| c.udp > 0) {
                out = read_records::<WaitRecord>(udp.into_file()?).context("reading the iter/udp waiter walk")?;
            }
            if inuse.as_ref().is_none_or(|c| c.tcp > 0) {
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
}
