//! The agent's journal: JSON lines (one record each, with `type` and `ts_unix_ns`) in a
//! directory of segment files `journal-<seq>.jsonl`, bounded in total size.
//!
//! Bound: each segment holds at most `max_bytes / 8`; when the next record would not fit, the
//! segment is fsynced and closed, a new one opened, and the oldest segments removed until the
//! closed ones plus a full current one fit in `max_bytes`. So the directory never holds more
//! than `max_bytes` of journal.
//!
//! Crash safety: records are appended with one `write(2)` each, so a crash leaves at most one
//! torn line at the end of the last segment; [`read`] skips lines that do not parse and counts
//! them. After a failed write (a full disk, `ENOSPC`) the segment is cut back to its last whole
//! line and kept, so a full disk leaves neither torn lines nor one empty segment per lost record
//! (when the cut fails, the segment is closed at its real size instead); the first record written
//! after a run of failures starts a new segment unless the current one is still empty.
use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::ids::{IfIndex, NetnsIno};

/// Where the agent writes and `ifsock journal` reads by default.
pub const DEFAULT_DIR: &str = "/var/lib/ifsock/journal";
/// Default bound on the whole journal, bytes (64 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Segments per journal: each holds at most `max_bytes / SEGMENTS`.
pub const SEGMENTS: u64 = 8;
/// Smallest accepted bound (8 segments of 4 KiB): smaller would not hold one change record.
pub const MIN_MAX_BYTES: u64 = SEGMENTS * 4096;

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The directory cannot be created or written.
    #[error("journal directory {dir}: {source} (fix: create it writable by ifsock, or pass --journal DIR)")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing, syncing or rotating a segment failed (for example a full disk, `ENOSPC`).
    #[error("writing journal segment {path}: {source}")]
    Write {
        /// The segment.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The record is not a JSON object with `type` and `ts_unix_ns`.
    #[error("journal record is not an object with \"type\" and \"ts_unix_ns\": {0}")]
    Shape(String),
    /// The record is longer than one segment (`max_bytes / 8`).
    #[error("journal record of {len} bytes exceeds the segment size of {max} bytes (raise --journal-max-bytes)")]
    TooLarge {
        /// Line length, bytes.
        len: u64,
        /// Segment size, bytes.
        max: u64,
    },
}

/// The fields every reader filters on; the rest of a record stays in [`Entry::line`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Header {
    /// Record type (`change`, `socket_stranded`, `receiver_stranded`, `socket_error`, …).
    #[serde(rename = "type")]
    pub ty: String,
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Netns inode, when the record has one.
    #[serde(default)]
    pub netns: Option<u32>,
    /// Netns name, when it has one.
    #[serde(default)]
    pub netns_name: Option<String>,
    /// For `change`: the event (`deleted`, `down`, …).
    #[serde(default)]
    pub event: Option<String>,
    /// ifindex of the interface concerned.
    #[serde(default)]
    pub ifindex: Option<u32>,
    /// Interface name (`change` records).
    #[serde(default)]
    pub name: Option<String>,
    /// Previous name (`renamed`).
    #[serde(default)]
    pub old_name: Option<String>,
    /// Interface name (`socket_stranded` records).
    #[serde(default)]
    pub ifname: Option<String>,
    /// Address (`address_removed`, `socket_stranded`).
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Reason (`socket_stranded`).
    #[serde(default)]
    pub reason: Option<String>,
    /// The change that caused it (`receiver_stranded`).
    #[serde(default)]
    pub change: Option<Box<Header>>,
    /// The ifindex a `recreated` interface had before.
    #[serde(default)]
    pub old_ifindex: Option<u32>,
    /// The socket of `socket_*` records (what the human line names).
    #[serde(default)]
    pub socket: Option<SocketHeader>,
    /// `socket_still_stranded`: why, and the next step.
    #[serde(default)]
    pub verdict: Option<String>,
}

/// The fields of a journaled socket the human line names: `{protocol, local_addr, local_port,
/// owners: [{pid, comm, fd}]}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SocketHeader {
    /// `tcp`, `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Local address.
    #[serde(default)]
    pub local_addr: Option<IpAddr>,
    /// Local port.
    #[serde(default)]
    pub local_port: Option<u16>,
    /// Processes holding an fd to it.
    #[serde(default)]
    pub owners: Vec<OwnerHeader>,
}

/// One owner of a journaled socket.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct OwnerHeader {
    /// Process id.
    pub pid: u32,
    /// Command.
    #[serde(default)]
    pub comm: String,
    /// The fd.
    pub fd: u32,
}

/// Every interface identity `(netns, ifindex)` the name `name` went by in `entries`: any record
/// naming it (as its name, previous name or ifname) with an ifindex. A rename record (`name`
/// new, `old_name` old, same ifindex) ties both names to the one interface, so `journal --iface`
/// follows a rename both ways, and a deleted-then-recreated name covers both ifindexes.
pub fn identities_of(entries: &[Entry], name: &str) -> std::collections::HashSet<(Option<u32>, u32)> {
    entries
        .iter()
        .map(|e| &e.header)
        .filter(|h| [&h.name, &h.old_name, &h.ifname].iter().any(|n| n.as_deref() == Some(name)))
        .filter_map(|h| Some((h.netns, h.ifindex?)))
        .collect()
}

impl Header {
    /// Whether the record concerns interface `name` (current, previous, or the change's).
    pub fn mentions_iface(&self, name: &str) -> bool {
        [&self.name, &self.old_name, &self.ifname].iter().any(|n| n.as_deref() == Some(name))
            || self.change.as_ref().is_some_and(|c| c.mentions_iface(name))
    }

    /// Whether the record concerns `name` or one of the interfaces `ids` that name went by
    /// ([`identities_of`]): a record under a later or earlier name of the same interface.
    pub fn about_iface(&self, name: &str, ids: &std::collections::HashSet<(Option<u32>, u32)>) -> bool {
        self.mentions_iface(name)
            || self.ifindex.is_some_and(|i| ids.contains(&(self.netns, i)))
            || self.change.as_ref().is_some_and(|c| c.ifindex.is_some_and(|i| ids.contains(&(c.netns.or(self.netns), i))))
    }
}

/// One record read back: its header and the line as written (JSON).
#[derive(Clone, Debug)]
pub struct Entry {
    /// Parsed filter fields.
    pub header: Header,
    /// The JSON line, without its newline.
    pub line: String,
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct Read {
    /// Records at or after `since`, oldest first.
    pub entries: Vec<Entry>,
    /// Lines that did not parse (a torn last line after a crash, or a write cut short).
    pub skipped: usize,
}

/// The writer. Not shared: the agent's event loop owns it.
pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    segment_max: u64,
    /// Closed segments, oldest first: (seq, bytes).
    closed: VecDeque<(u64, u64)>,
    /// Sequence number of the current segment.
    seq: u64,
    current: Option<File>,
    current_bytes: u64,
    write_errors: u64,
    failing: bool,
    /// Test hook: while set, every write fails as [`Fault`] says.
    #[cfg(test)]
    fault: Option<Fault>,
}

/// A write failure injected by unit tests (a disk filling up mid-line).
#[cfg(test)]
#[derive(Clone, Copy)]
struct Fault {
    /// Bytes of the line that reach the file before the write fails with `ENOSPC`.
    written: usize,
    /// Whether cutting the segment back to its last whole line fails too.
    cut_fails: bool,
}

/// Segment file name of `seq` (zero-padded so names sort in order).
fn segment_name(seq: u64) -> String {
    format!("journal-{seq:010}.jsonl")
}

/// Segments in `dir`, oldest first: (seq, path, bytes).
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(seq) = name.strip_prefix("journal-").and_then(|s| s.strip_suffix(".jsonl")).and_then(|s| s.parse().ok()) else {
            continue;
        };
        out.push((seq, e.path(), e.metadata()?.len()));
    }
    out.sort();
    Ok(out)
}

impl Journal {
    /// Opens (creating) the journal in `dir`, bounded to `max_bytes` in total; new records go to
    /// a new segment after the existing ones, and old segments beyond the bound are removed.
    ///
    /// # Errors
    /// [`JournalError::Dir`] when the directory cannot be created, listed or written (checked
    /// here by opening the first segment, so an unwritable directory fails at start).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, JournalError> {
        let dir_err = |source| JournalError::Dir { dir: dir.to_path_buf(), source };
        // 0700 and 0600 whatever the umask: the journal names every netns's processes, pids,
        // cgroups and addresses. The mode is set again on a directory that already existed.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let existing = segments(dir).map_err(dir_err)?;
        let seq = existing.last().map_or(0, |(s, _, _)| s + 1);
        let mut j = Journal {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
            segment_max: max_bytes.max(MIN_MAX_BYTES) / SEGMENTS,
            closed: existing.into_iter().map(|(s, _, b)| (s, b)).collect(),
            seq,
            current: None,
            current_bytes: 0,
            write_errors: 0,
            failing: false,
            #[cfg(test)]
            fault: None,
        };
        j.open_segment().map_err(|e| match e {
            JournalError::Write { source, .. } => dir_err(source),
            other => other,
        })?;
        j.trim();
        Ok(j)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Failed appends so far (the agent's `ifsock_journal_write_errors_total`).
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }

    fn open_segment(&mut self) -> Result<(), JournalError> {
        let path = self.path(self.seq);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)).map(|()| f))
            .map_err(|source| JournalError::Write { path: path.clone(), source })?;
        self.current_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.current = Some(f);
        Ok(())
    }

    /// Removes the oldest closed segments until they plus one full segment fit the bound.
    fn trim(&mut self) {
        while self.closed.iter().map(|(_, b)| b).sum::<u64>() + self.segment_max > self.max_bytes {
            let Some((seq, _)) = self.closed.pop_front() else { break };
            if let Err(e) = std::fs::remove_file(self.path(seq)) {
                tracing::warn!("journal: removing old segment {}: {e}", self.path(seq).display());
            }
        }
    }

    /// Closes the current segment (fsynced) and starts the next one.
    fn rotate(&mut self) -> Result<(), JournalError> {
        if let Some(f) = self.current.take() {
            f.sync_all().map_err(|source| JournalError::Write { path: self.path(self.seq), source })?;
            self.closed.push_back((self.seq, self.current_bytes));
        }
        self.seq += 1;
        self.trim();
        self.open_segment()
    }

    /// Appends one record as a JSON line. The record must serialise to an object with `type`
    /// and `ts_unix_ns` (every watch record does).
    ///
    /// # Errors
    /// [`JournalError::Shape`] (a caller's bug, not counted), [`JournalError::TooLarge`] or
    /// [`JournalError::Write`] (both counted in [`Journal::write_errors`]; the first of a run of
    /// write failures is logged, and the journal recovers on its own when writes succeed again).
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(record).map_err(|e| JournalError::Shape(e.to_string()))?;
        if let Err(e) = serde_json::from_str::<Header>(&line) {
            return Err(JournalError::Shape(e.to_string()));
        }
        line.push('\n');
        let len = line.len() as u64;
        if len > self.segment_max {
            // A record lost to the bound is a real loss: counted like a failed write.
            self.write_errors += 1;
            let e = JournalError::TooLarge { len, max: self.segment_max };
            tracing::warn!("journal: {e}");
            return Err(e);
        }
        let r = self.write_line(line.as_bytes(), len);
        match &r {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.write_errors += 1;
                if !self.failing {
                    tracing::error!("journal: {e}; records are being lost until writes succeed again (counted in ifsock_journal_write_errors_total)");
                }
                self.failing = true;
                self.discard_partial(len);
            }
        }
        r
    }

    /// After a failed write of a `len`-byte line: cuts the current segment back to the
    /// `current_bytes` of whole lines it held and keeps it, so a full disk neither leaves a torn
    /// line (a line cut just before its newline would read as a whole record that was counted
    /// lost) nor one new empty segment per lost record. When the cut fails, the segment is
    /// closed at the bytes it really holds (never `current_bytes + len`: on a full disk nothing
    /// of the line may have been written, and counting it would make [`Journal::trim`] remove
    /// history that fits the bound), nothing is appended after its torn line ([`read`] skips
    /// it), and the next record starts a new segment.
    fn discard_partial(&mut self, len: u64) {
        let Some(f) = self.current.as_ref() else { return };
        let whole = self.current_bytes;
        let on_disk = |f: &File| f.metadata().map(|m| m.len());
        #[cfg(test)]
        let cut_fails = self.fault.is_some_and(|fault| fault.cut_fails);
        #[cfg(not(test))]
        let cut_fails = false;
        let cut = || -> std::io::Result<bool> {
            if on_disk(f)? == whole {
                return Ok(true);
            }
            if cut_fails {
                return Err(std::io::Error::other("injected: cut fails"));
            }
            f.set_len(whole)?;
            Ok(on_disk(f)? == whole)
        };
        if cut().unwrap_or(false) {
            return;
        }
        // The length is unknown only when fstat fails too: assume the whole line got there.
        let bytes = on_disk(f).unwrap_or(whole + len);
        let _ = f.sync_all();
        self.current = None;
        self.closed.push_back((self.seq, bytes));
        self.seq += 1;
    }

    fn write_line(&mut self, line: &[u8], len: u64) -> Result<(), JournalError> {
        if self.current.is_none() {
            self.trim();
            self.open_segment()?;
        }
        // After a run of failures, a new segment: lost records then fall between segments,
        // never inside one (docs/agent.md: "a fresh segment when writes succeed again").
        if self.current_bytes > 0 && (self.failing || self.current_bytes + len > self.segment_max) {
            self.rotate()?;
        }
        let path = self.path(self.seq);
        let f = self.current.as_mut().ok_or_else(|| JournalError::Write {
            path: path.clone(),
            source: std::io::Error::other("no open segment"),
        })?;
        #[cfg(test)]
        if let Some(fault) = self.fault {
            let _ = f.write_all(&line[..fault.written.min(line.len())]);
            return Err(JournalError::Write { path, source: std::io::ErrorKind::StorageFull.into() });
        }
        f.write_all(line).map_err(|source| JournalError::Write { path, source })?;
        self.current_bytes += len;
        Ok(())
    }

    /// fsyncs the current segment (on shutdown).
    ///
    /// # Errors
    /// [`JournalError::Write`] when `fsync` fails.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        match &self.current {
            Some(f) => f.sync_all().map_err(|source| JournalError::Write { path: self.path(self.seq), source }),
            None => Ok(()),
        }
    }
}

/// Reads every record of the journal in `dir` with `ts_unix_ns >= since_unix_ns`, oldest
/// first. Lines that do not parse are skipped and counted, never fatal.
///
/// # Errors
/// [`JournalError::Dir`] when `dir` cannot be listed (for example it does not exist).
pub fn read(dir: &Path, since_unix_ns: u64) -> Result<Read, JournalError> {
    let dir_err = |source| JournalError::Dir { dir: dir.to_path_buf(), source };
    let mut out = Read::default();
    for (_, path, _) in segments(dir).map_err(dir_err)? {
        // A segment removed by the writer's rotation between listing and reading is simply gone.
        let Ok(bytes) = std::fs::read(&path) else { continue };
        for raw in bytes.split(|&b| b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            let Ok(text) = std::str::from_utf8(raw) else {
                out.skipped += 1;
                continue;
            };
            match serde_json::from_str::<Header>(text) {
                Ok(header) if header.ts_unix_ns >= since_unix_ns => out.entries.push(Entry { header, line: text.to_string() }),
                Ok(_) => {}
                Err(_) => out.skipped += 1,
            }
        }
    }
    Ok(out)
}

/// An interface deletion recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deletion {
    /// ifindex the interface had.
    pub ifindex: IfIndex,
    /// Its name.
    pub ifname: String,
    /// When the deletion was seen, ns since the Unix epoch.
    pub ts_unix_ns: u64,
}

/// Interfaces deleted in `netns` at or after `since_unix_ns`, oldest first, from the `change`
/// records with `event: "deleted"` (or `moved_out`) that a running agent or `watch` journaled.
///
/// For `hung`: a wildcard IP_PKTINFO socket whose receiver has been blocked since before one of
/// these gets a `deleted` tie to that interface, as information (it is not stranded: it still
/// receives on the others), labelled as coming from the journal (the kernel keeps no record of
/// which interface a wildcard socket last received on). A missing journal directory gives
/// an empty list: the journal is optional evidence.
///
/// # Errors
/// [`JournalError::Dir`] when the directory exists but cannot be listed.
pub fn deletions_since(dir: &Path, netns: NetnsIno, since_unix_ns: u64) -> Result<Vec<Deletion>, JournalError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(read(dir, since_unix_ns)?
        .entries
        .into_iter()
        .filter(|e| e.header.ty == "change" && e.header.netns == Some(netns.0))
        .filter(|e| matches!(e.header.event.as_deref(), Some("deleted" | "moved_out")))
        .filter_map(|e| {
            Some(Deletion { ifindex: IfIndex(e.header.ifindex?), ifname: e.header.name?, ts_unix_ns: e.header.ts_unix_ns })
        })
        .collect())
}

/// Every deletion the journal in `dir` holds for `netns`, as the evidence that names a deleted
/// ifindex ([`crate::model::stranded::SeenDeletion`]): for one-shot commands (`sockets`,
/// `abort`), which cannot have seen the deletion themselves. A missing directory gives none.
///
/// # Errors
/// As [`deletions_since`].
pub fn seen_deletions(dir: &Path, netns: NetnsIno) -> Result<Vec<crate::model::stranded::SeenDeletion>, JournalError> {
    Ok(deletions_since(dir, netns, 0)?
        .into_iter()
        .map(|d| crate::model::stranded::SeenDeletion { netns, ifindex: d.ifindex, name: d.ifname, at_unix_ns: d.ts_unix_ns })
        .collect())
}

/// The ifindexes of `netns` that had the name `name` and were deleted, newest last, from
/// `seen` (each once).
pub fn deleted_ifindexes_named(seen: &[crate::model::stranded::SeenDeletion], netns: NetnsIno, name: &str) -> Vec<IfIndex> {
    let mut out: Vec<IfIndex> = Vec::new();
    for d in seen.iter().filter(|d| d.netns == netns && d.name == name) {
        if !out.contains(&d.ifindex) {
            out.push(d.ifindex);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Rec<'a> {
        #[serde(rename = "type")]
        ty: &'a str,
        ts_unix_ns: u64,
        netns: u32,
        event: &'a str,
        ifindex: u32,
        name: &'a str,
        pad: String,
    }

    fn rec(ts: u64, event: &'static str, name: &'static str) -> Rec<'static> {
        Rec { ty: "change", ts_unix_ns: ts, netns: 7, event, ifindex: 3, name, pad: "x".repeat(200) }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ifsock-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn total(dir: &Path) -> u64 {
        segments(dir).unwrap().iter().map(|(_, _, b)| b).sum()
    }

    #[test]
    fn iface_follows_a_rename_both_ways_and_a_recreate() {
        let line = |v: serde_json::Value| Entry { header: serde_json::from_value(v.clone()).unwrap(), line: v.to_string() };
        let entries = vec![
            line(serde_json::json!({"type": "change", "ts_unix_ns": 1, "netns": 7, "event": "up", "ifindex": 3, "name": "old0"})),
            line(serde_json::json!({"type": "change", "ts_unix_ns": 2, "netns": 7, "event": "renamed", "ifindex": 3, "name": "new0", "old_name": "old0"})),
            line(serde_json::json!({"type": "change", "ts_unix_ns": 3, "netns": 7, "event": "down", "ifindex": 3, "name": "new0"})),
            line(serde_json::json!({"type": "socket_stranded", "ts_unix_ns": 4, "netns": 7, "reason": "device_down", "ifindex": 3, "ifname": "new0",
                "socket": {"protocol": "udp", "local_addr": "0.0.0.0", "local_port": 53, "owners": [{"pid": 9, "comm": "dnsmasq", "fd": 4}]}})),
            line(serde_json::json!({"type": "change", "ts_unix_ns": 5, "netns": 8, "event": "down", "ifindex": 3, "name": "other"})),
        ];
        let keep = |name: &str| {
            let ids = identities_of(&entries, name);
            entries.iter().filter(|e| e.header.about_iface(name, &ids)).map(|e| e.header.ts_unix_ns).collect::<Vec<_>>()
        };
        assert_eq!(keep("old0"), vec![1, 2, 3, 4], "the old name shows the later events");
        assert_eq!(keep("new0"), vec![1, 2, 3, 4], "the new name shows the earlier events");
        assert_eq!(keep("other"), vec![5], "ifindex 3 of another netns is another interface");
        let s = entries[3].header.socket.as_ref().unwrap();
        assert_eq!((s.local_port, s.owners[0].comm.as_str()), (Some(53), "dnsmasq"));
    }

    #[test]
    fn rotation_keeps_the_bound_under_a_burst() {
        let dir = tmp("burst");
        let max = MIN_MAX_BYTES;
        let mut j = Journal::open(&dir, max).unwrap();
        for i in 0..5_000 {
            j.append(&rec(i, "up", "veth0")).unwrap();
            assert!(total(&dir) <= max, "bound exceeded after {i} records: {}", total(&dir));
        }
        let segs = segments(&dir).unwrap();
        assert!(segs.len() as u64 <= SEGMENTS, "{} segments", segs.len());
        assert!(segs.iter().all(|(_, _, b)| *b <= max / SEGMENTS));
        let r = read(&dir, 0).unwrap();
        assert_eq!(r.skipped, 0);
        // The newest records survive, in order.
        assert_eq!(r.entries.last().unwrap().header.ts_unix_ns, 4_999);
        assert!(r.entries.windows(2).all(|w| w[0].header.ts_unix_ns + 1 == w[1].header.ts_unix_ns));
        assert!(r.entries.len() > 50 && r.entries.len() < 5_000, "{} records kept", r.entries.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopening_continues_after_existing_segments_and_keeps_the_bound() {
        let dir = tmp("reopen");
        for round in 0..3 {
            let mut j = Journal::open(&dir, MIN_MAX_BYTES).unwrap();
            for i in 0..1_000 {
                j.append(&rec(round * 1_000 + i, "up", "a")).unwrap();
            }
            j.flush().unwrap();
        }
        assert!(total(&dir) <= MIN_MAX_BYTES);
        assert_eq!(read(&dir, 0).unwrap().entries.last().unwrap().header.ts_unix_ns, 2_999);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let dir = tmp("torn");
        let mut j = Journal::open(&dir, DEFAULT_MAX_BYTES).unwrap();
        j.append(&rec(1, "down", "a")).unwrap();
        j.append(&rec(2, "deleted", "a")).unwrap();
        drop(j);
        let (_, path, _) = segments(&dir).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(br#"{"type":"change","ts_unix_ns":3,"ne"#).unwrap();
        let r = read(&dir, 0).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.skipped, 1);
        // The writer never appends after a torn line: it starts a new segment.
        let mut j = Journal::open(&dir, DEFAULT_MAX_BYTES).unwrap();
        j.append(&rec(4, "up", "b")).unwrap();
        let r = read(&dir, 0).unwrap();
        assert_eq!(r.entries.iter().map(|e| e.header.ts_unix_ns).collect::<Vec<_>>(), vec![1, 2, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn since_filters_and_deletions_are_found() {
        let dir = tmp("since");
        let mut j = Journal::open(&dir, DEFAULT_MAX_BYTES).unwrap();
        j.append(&rec(10, "deleted", "old")).unwrap();
        j.append(&rec(20, "down", "veth1")).unwrap();
        j.append(&rec(30, "deleted", "veth1")).unwrap();
        assert_eq!(read(&dir, 20).unwrap().entries.len(), 2);
        let d = deletions_since(&dir, NetnsIno(7), 15).unwrap();
        assert_eq!(d, vec![Deletion { ifindex: IfIndex(3), ifname: "veth1".into(), ts_unix_ns: 30 }]);
        assert!(deletions_since(&dir, NetnsIno(8), 0).unwrap().is_empty(), "other netns");
        assert!(deletions_since(&dir.join("missing"), NetnsIno(7), 0).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_larger_than_a_segment_is_counted_as_lost() {
        let dir = tmp("large");
        let mut j = Journal::open(&dir, MIN_MAX_BYTES).unwrap();
        let mut big = rec(1, "up", "a");
        big.pad = "x".repeat((MIN_MAX_BYTES / SEGMENTS) as usize);
        assert!(matches!(j.append(&big), Err(JournalError::TooLarge { .. })));
        assert_eq!(j.write_errors(), 1);
        j.append(&rec(2, "up", "a")).unwrap();
        assert_eq!(read(&dir, 0).unwrap().entries.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_without_type_or_time_are_refused() {
        let dir = tmp("shape");
        let mut j = Journal::open(&dir, DEFAULT_MAX_BYTES).unwrap();
        assert!(matches!(j.append(&serde_json::json!({"ts_unix_ns": 1})), Err(JournalError::Shape(_))));
        assert!(matches!(j.append(&42), Err(JournalError::Shape(_))));
        assert_eq!(j.write_errors(), 0, "a bad record is not a write error");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_failures_are_counted_and_the_journal_recovers() {
        let dir = tmp("fail");
        let mut j = Journal::open(&dir, MIN_MAX_BYTES).unwrap();
        j.append(&rec(1, "up", "a")).unwrap();
        // Make new segments impossible: the directory is replaced by a file.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
        let mut failed = 0;
        for i in 0..200 {
            if j.append(&rec(2 + i, "up", "a")).is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0);
        assert_eq!(j.write_errors(), failed);
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        j.append(&rec(1_000, "up", "a")).unwrap();
        assert_eq!(read(&dir, 0).unwrap().entries.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The bytes each segment file holds, oldest first.
    fn sizes(dir: &Path) -> Vec<(u64, u64)> {
        segments(dir).unwrap().into_iter().map(|(s, _, b)| (s, b)).collect()
    }

    fn full_disk(written: usize, cut_fails: bool) -> Option<Fault> {
        Some(Fault { written, cut_fails })
    }

    #[test]
    fn a_full_disk_keeps_history_reuses_one_segment_and_counts_every_lost_record() {
        let dir = tmp("full");
        let mut j = Journal::open(&dir, MIN_MAX_BYTES).unwrap();
        // Four full segments of history, well under the bound: the next record rotates.
        let line_len = serde_json::to_string(&rec(0, "up", "a")).unwrap().len() as u64 + 1;
        let mut ts = 0;
        while !(segments(&dir).unwrap().len() == 4 && j.current_bytes + line_len > j.segment_max) {
            j.append(&rec(ts, "up", "a")).unwrap();
            ts += 1;
        }
        let before = sizes(&dir);
        j.fault = full_disk(0, false);
        for i in 0..500 {
            assert!(matches!(j.append(&rec(10_000 + i, "up", "a")), Err(JournalError::Write { .. })));
        }
        assert_eq!(j.write_errors(), 500, "every lost record is counted");
        let during = sizes(&dir);
        assert!(before.iter().all(|s| during.contains(s)), "history removed or resized: {before:?} -> {during:?}");
        assert_eq!(during.len(), before.len() + 1, "one segment per lost record: {during:?}");
        assert_eq!(during.last().map(|(_, b)| *b), Some(0), "{during:?}");
        let closed: Vec<(u64, u64)> = j.closed.iter().copied().collect();
        assert_eq!(closed, during[..during.len() - 1], "closed segments counted at their real size");
        j.fault = None;
        j.append(&rec(20_000, "up", "a")).unwrap();
        assert_eq!(sizes(&dir).len(), during.len(), "the segment nothing was written to is reused");
        let r = read(&dir, 0).unwrap();
        assert_eq!(r.skipped, 0);
        let got: Vec<u64> = r.entries.iter().map(|e| e.header.ts_unix_ns).collect();
        assert_eq!(got, (0..ts).chain([20_000]).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_cut_short_leaves_no_torn_line() {
        let line_len = serde_json::to_string(&rec(2, "up", "a")).unwrap().len() + 1;
        // Cut mid-line, and cut just before the newline (the rest would parse as a whole record).
        for written in [1, 40, line_len - 1] {
            let dir = tmp(&format!("cut{written}"));
            let mut j = Journal::open(&dir, MIN_MAX_BYTES).unwrap();
            j.append(&rec(1, "up", "a")).unwrap();
            j.fault = full_disk(written, false);
            assert!(j.append(&rec(2, "up", "a")).is_err());
            assert_eq!(sizes(&dir), vec![(0, line_len as u64)], "written {written}: cut back to the whole line");
            j.fault = None;
            j.append(&rec(3, "up", "a")).unwrap();
            assert_eq!(sizes(&dir), vec![(0, line_len as u64), (1, line_len as u64)], "a new segment after the failure");
            let r = read(&dir, 0).unwrap();
            assert_eq!((r.entries.iter().map(|e| e.header.ts_unix_ns).collect::<Vec<_>>(), r.skipped), (vec![1, 3], 0), "written {written}");
            assert_eq!(j.write_errors(), 1);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_segment_that_cannot_be_cut_is_closed_at_its_real_size() {
        let dir = tmp("nocut");
        let mut j = Journal::open(&dir, MIN_MAX_BYTES).unwrap();
        j.append(&rec(1, "up", "a")).unwrap();
        let whole = sizes(&dir)[0].1;
        j.fault = full_disk(40, true);
        assert!(j.append(&rec(2, "up", "a")).is_err());
        assert_eq!(j.closed.iter().copied().collect::<Vec<_>>(), vec![(0, whole + 40)]);
        // Nothing is written after the torn line; a failure that wrote nothing needs no cut and
        // keeps the new segment current.
        j.fault = full_disk(0, true);
        assert!(j.append(&rec(3, "up", "a")).is_err());
        j.fault = None;
        j.append(&rec(4, "up", "a")).unwrap();
        assert_eq!(sizes(&dir), vec![(0, whole + 40), (1, whole)]);
        let r = read(&dir, 0).unwrap();
        assert_eq!((r.entries.iter().map(|e| e.header.ts_unix_ns).collect::<Vec<_>>(), r.skipped), (vec![1, 4], 1));
        assert_eq!(j.write_errors(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directory_fails_at_open_with_the_fix() {
        let dir = tmp("unwritable");
        std::fs::write(&dir, b"file").unwrap();
        let e = Journal::open(&dir.join("sub"), DEFAULT_MAX_BYTES).err().unwrap().to_string();
        assert!(e.contains("--journal"), "{e}");
        std::fs::remove_file(&dir).unwrap();
    }
}
