//! Reading what the iterators produce: socket and task-file snapshots (whole, decoded, or
//! filtered in the kernel), decoded record by record through one reused buffer.
use std::{collections::HashSet, io::Read};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array as BpfArray, HashMap as BpfHashMap, MapData},
    Ebpf,
};
use ifsock_common::{Record, SockFilter, SockRecord, TaskFileRecord, MAP_SOCK_FILTER};

use super::{Probes, RawSnapshot, ITER_TASK_FILE, ITER_TASK_SOCKETS, ITER_TCP, ITER_UDP};
use crate::kernel::{netns::NetnsHandle, sockstat};
use crate::model::socket::SocketFds;

/// Up to this many sockets, an unfiltered snapshot ([`Probes::snapshot_decoded`]) has
/// `iter/task_file` write only their fds: two map writes per socket (~2 ms for 1,024) against a
/// walk that writes every socket fd of the host (a 104-byte record each).
pub const OWNER_FILTER_WORTH: usize = 1024;

impl Probes {
    pub(super) fn iter_link(&mut self, name: &str) -> Result<aya::programs::iter::IterLink> {
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
pub(super) fn read_records<T: Record>(file: impl Read) -> Result<Vec<T>> {
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
}
