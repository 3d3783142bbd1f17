//! Reading the receives in flight that the receive programs record (`ifsock-ebpf` `recv.rs`):
//! the slot array `INFLIGHT_SLOTS` (index = tid, read through `mmap`) and, for tids beyond it,
//! the hash map `INFLIGHT_RECV`.
use std::os::fd::{AsFd as _, OwnedFd};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    Ebpf,
};
use ifsock_common::{InFlightRecv, INFLIGHT_SLOTS_DEFAULT, INFLIGHT_SLOTS_MAX, MAP_INFLIGHT, MAP_INFLIGHT_SLOTS};

use crate::model::kernel_event::InFlight;

/// Environment variable that sets the number of slots instead of `kernel.pid_max` (1 or more):
/// threads whose tid is at or beyond it are recorded in the hash map. For the tests of that
/// path, and for hosts that want the slots' kernel memory (88 bytes each) smaller.
pub const SLOTS_ENV: &str = "IFSOCK_INFLIGHT_SLOTS";

/// How many slots `INFLIGHT_SLOTS` gets: [`SLOTS_ENV`] when set, else `kernel.pid_max`
/// (`/proc/sys/kernel/pid_max`: every tid is below it) capped at [`INFLIGHT_SLOTS_MAX`], else
/// [`INFLIGHT_SLOTS_DEFAULT`] when it cannot be read. A host that raises `pid_max` after the
/// load records its new high tids in the hash map, as a tid beyond the cap is.
///
/// # Errors
/// [`SLOTS_ENV`] is set to something other than a number from 1 to [`INFLIGHT_SLOTS_MAX`].
pub fn slot_count() -> Result<u32> {
    if let Ok(text) = std::env::var(SLOTS_ENV) {
        return match text.trim().parse::<u32>() {
            Ok(n @ 1..=INFLIGHT_SLOTS_MAX) => Ok(n),
            _ => Err(anyhow!("{SLOTS_ENV}={text:?}: expected a number of slots from 1 to {INFLIGHT_SLOTS_MAX}; unset it to size the slots to kernel.pid_max")),
        };
    }
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|t| t.trim().parse::<u32>().ok());
    Ok(pid_max.map_or(INFLIGHT_SLOTS_DEFAULT, |n| n.clamp(1, INFLIGHT_SLOTS_MAX)))
}

/// Both in-flight maps opened through duplicated fds (the same kernel maps, no copy), so a
/// blocking thread can read them apart from [`super::Probes`].
pub struct InflightReader {
    hash: BpfHashMap<MapData, u32, InFlightRecv>,
    slots: OwnedFd,
    slot_count: usize,
}

impl InflightReader {
    /// Opens the maps of a loaded object.
    ///
    /// # Errors
    /// A map is missing or of another type, or an fd could not be duplicated (EMFILE).
    pub(super) fn open(ebpf: &Ebpf) -> Result<Self> {
        let Some(Map::HashMap(hash)) = ebpf.map(MAP_INFLIGHT) else { return Err(anyhow!("{MAP_INFLIGHT}: missing from the object or not a hash map")) };
        let fd = hash.fd().as_fd().try_clone_to_owned().context("duplicating the in-flight map's fd")?;
        let hash = BpfHashMap::try_from(Map::HashMap(MapData::from_fd(fd).context("opening the in-flight map by fd")?))?;
        let Some(Map::Array(slots)) = ebpf.map(MAP_INFLIGHT_SLOTS) else { return Err(anyhow!("{MAP_INFLIGHT_SLOTS}: missing from the object or not an array")) };
        let slot_count = slots.info().context("reading the in-flight slots' map info")?.max_entries() as usize;
        let slots = slots.fd().as_fd().try_clone_to_owned().context("duplicating the in-flight slots' fd")?;
        Ok(Self { hash, slots, slot_count })
    }

    /// Every receive in flight, decoded, with the netns and comm the entry probes leave out
    /// read from procfs ([`InFlight::complete`]). Skipped: entries removed while read (their
    /// receive returned), slots rewritten while copied, entries whose fd is no socket, and
    /// entries of threads gone since.
    ///
    /// # Errors
    /// The slots could not be mapped (`mmap` of the array map: ENOMEM, or EINVAL on a map
    /// without `BPF_F_MMAPABLE`).
    pub fn read(&self) -> Result<Vec<InFlight>> {
        let mut records = self.read_slots()?;
        records.extend(self.hash.iter().filter_map(|r| r.ok()).map(|(_, v)| v));
        let procfs = crate::kernel::procfs::Procfs;
        Ok(records.iter().map(InFlight::from_record).filter_map(|mut e| e.complete(&procfs).then_some(e)).collect())
    }

    /// The occupied slots, copied out of a read-only shared mapping of the array (mapped for
    /// this read only: 2.8 MiB at the default 32,768 slots, not kept resident).
    fn read_slots(&self) -> Result<Vec<InFlightRecv>> {
        let bytes = self.slot_count * std::mem::size_of::<InFlightRecv>();
        // SAFETY: a shared read-only mapping of a `BPF_F_MMAPABLE` array of `slot_count`
        // values of `InFlightRecv` (88 bytes, a multiple of 8, so the kernel's element stride);
        // the kernel writes it concurrently, which `occupied` reads with volatile loads only.
        let map = unsafe { memmap2::MmapOptions::new().len(bytes).map(&self.slots) }.context("mapping the in-flight slots (mmap of INFLIGHT_SLOTS)")?;
        // SAFETY: the mapping holds `slot_count` records and lives until the end of this call.
        Ok(unsafe { occupied(map.as_ptr().cast::<InFlightRecv>(), self.slot_count) })
    }
}

/// The records of the slots in flight among `len` slots at `base` that a receiving thread may
/// be writing meanwhile: a slot counts when its sequence word (`InFlightRecv::seq`) was the same
/// even value before and after its copy (`publish` in `ifsock-ebpf` makes it odd while it
/// writes), its copy's `since_ns` is non-zero (forgetting clears it) and its `tid` is its index.
///
/// # Safety
/// `base` points to `len` readable, 8-aligned `InFlightRecv` values.
unsafe fn occupied(base: *const InFlightRecv, len: usize) -> Vec<InFlightRecv> {
    use std::ptr::{addr_of, read_volatile};
    use std::sync::atomic::{fence, Ordering};
    let mut out = Vec::new();
    for index in 0..len {
        // SAFETY: per the caller, `index < len`.
        let slot = unsafe { base.add(index) };
        // SAFETY: as above; volatile reads of memory the kernel may be writing.
        if unsafe { read_volatile(addr_of!((*slot).since_ns)) } == 0 {
            continue;
        }
        // SAFETY: as above.
        let seq = unsafe { read_volatile(addr_of!((*slot).seq)) };
        if seq & 1 != 0 {
            continue;
        }
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let copy = unsafe { read_volatile(slot) };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let again = unsafe { read_volatile(addr_of!((*slot).seq)) };
        if again == seq && copy.since_ns != 0 && copy.tid as usize == index {
            out.push(copy);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tid: u32, since_ns: u64) -> InFlightRecv {
        // SAFETY: InFlightRecv is a POD record; all-zero is a valid value (a free slot).
        let mut r: InFlightRecv = unsafe { std::mem::zeroed() };
        (r.tid, r.pid, r.since_ns, r.ino, r.fd) = (tid, tid, since_ns, 1000 + u64::from(tid), 3);
        r
    }

    #[test]
    fn only_slots_in_flight_under_their_own_tid_are_read() {
        let mut slots: Vec<InFlightRecv> = (0..8).map(|_| slot(0, 0)).collect();
        slots[2] = slot(2, 500);
        slots[5] = slot(5, 700);
        // A forgotten slot keeps its fields but `since_ns == 0`.
        slots[6] = slot(6, 0);
        // Not its index: never written by its thread as a whole record.
        slots[7] = slot(3, 900);
        // Being rewritten by its thread (odd sequence word): skipped, not half-read.
        slots[4] = slot(4, 800);
        slots[4].seq = 7;
        // Rewritten and done (even again): read.
        slots[1] = slot(1, 800);
        slots[1].seq = 8;
        // SAFETY: a live Vec of 8 records.
        let got = unsafe { occupied(slots.as_ptr(), slots.len()) };
        let tids: Vec<(u32, u64, u64)> = got.iter().map(|r| (r.tid, r.since_ns, r.ino)).collect();
        assert_eq!(tids, vec![(1, 800, 1001), (2, 500, 1002), (5, 700, 1005)]);
    }

    #[test]
    fn the_slot_count_comes_from_the_environment_only_when_it_is_a_valid_count() {
        // One test touches the variable, so no other test sees it change.
        std::env::set_var(SLOTS_ENV, "64");
        assert_eq!(slot_count().unwrap(), 64);
        for bad in ["0", "lots", "70000"] {
            std::env::set_var(SLOTS_ENV, bad);
            let e = slot_count().unwrap_err().to_string();
            assert!(e.contains(SLOTS_ENV) && e.contains("unset it"), "{e}");
        }
        std::env::remove_var(SLOTS_ENV);
        let n = slot_count().unwrap();
        assert!((1..=INFLIGHT_SLOTS_MAX).contains(&n), "{n}");
    }
}
