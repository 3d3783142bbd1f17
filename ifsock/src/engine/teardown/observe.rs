//! The observer: folds kernel events (failed sends, finished receives, socket errors) and
//! receiver scans into per-socket findings, keyed by (netns, socket inode).
use std::collections::{BTreeMap, HashMap};

use super::{ms_since, BlockedRecv, ReceiverSeen, SendErrorsSeen, SockErrorsSeen, SockKey};
use crate::{
    model::{sock_error::SockError, socket::Socket, sys::errno_name, tie::TiedSocket},
    probes::events::Event,
};

/// Collects events of the observation into per-socket findings.
#[derive(Default)]
pub struct Observer {
    pub(super) t0: u64,
    /// Socket inode → its key, for the watched sockets (sockfs inode numbers are global, so
    /// events that carry no netns are placed by inode).
    pub(super) watched: HashMap<u64, SockKey>,
    sends: BTreeMap<(SockKey, u32, u32, i32), SendErrorsSeen>,
    receivers: BTreeMap<(SockKey, u32), ReceiverSeen>,
    sock_errors: BTreeMap<(SockKey, i32), SockErrorsSeen>,
    /// Every socket of the watched netns, to place reports that carry no inode (classic tracepoint).
    sockets: Vec<Socket>,
}

impl Observer {
    /// Watches `keys`; `sockets` places inode-less socket-error reports; `t0` is the down request.
    pub fn new(keys: impl IntoIterator<Item = SockKey>, sockets: Vec<Socket>, t0: u64) -> Self {
        let watched = keys.into_iter().filter(|k| k.1 != 0).map(|k| (k.1, k)).collect();
        Observer { t0, watched, sockets, ..Default::default() }
    }

    fn key(&self, ino: u64) -> Option<SockKey> {
        self.watched.get(&ino).copied()
    }

    /// Folds one kernel event in; events on sockets not watched are ignored.
    pub fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::SendError(e) => {
                let Some(key) = self.key(e.ino.0) else { return };
                let errno = e.errno;
                let at = ms_since(e.ts_ns, self.t0);
                let entry = self.sends.entry((key, e.tid, e.fd, errno)).or_insert_with(|| SendErrorsSeen {
                    pid: e.pid,
                    tid: e.tid,
                    comm: e.comm.clone(),
                    fd: e.fd,
                    errno,
                    error: errno_name(errno),
                    count: 0,
                    first_ms: at,
                    last_ms: at,
                });
                entry.count += 1;
                entry.first_ms = entry.first_ms.min(at);
                entry.last_ms = entry.last_ms.max(at);
            }
            Event::RecvDone(d) => {
                let Some(key) = self.key(d.entry.ino.0) else { return };
                let mut b = BlockedRecv::from_inflight(&d.entry);
                b.sock = key;
                let t0 = self.t0;
                let r = self.receiver(&b);
                r.blocked_at_down |= d.entry.since_ns < t0;
                // Keep the first wake-up after down: that is the one the teardown caused.
                if r.woke_ms.is_none() && d.ts_ns >= t0 {
                    r.woke_ms = Some(ms_since(d.ts_ns, t0));
                    r.ret = Some(d.ret);
                    r.error = (d.ret < 0).then(|| errno_name(i32::try_from(-d.ret).unwrap_or(0)));
                }
            }
            Event::SockError(e) => self.on_sock_error(e),
            _ => {}
        }
    }

    fn receiver(&mut self, b: &BlockedRecv) -> &mut ReceiverSeen {
        self.receivers.entry((b.sock, b.tid)).or_insert_with(|| ReceiverSeen::new(b))
    }

    fn on_sock_error(&mut self, e: &SockError) {
        let ino = match e.inode {
            Some(ino) => ino.0,
            None if e.netns.is_none() => e.match_socket(&self.sockets).map_or(0, |s| s.inode.0),
            None => 0,
        };
        let Some(key) = self.key(ino) else { return };
        if e.netns.is_some_and(|n| n != key.0) {
            return;
        }
        let at = ms_since(e.ts_ns, self.t0);
        let entry = self.sock_errors.entry((key, e.errno)).or_insert_with(|| SockErrorsSeen {
            errno: e.errno,
            error: errno_name(e.errno),
            count: 0,
            first_ms: at,
            last_ms: at,
            remote: e.remote,
        });
        entry.count += 1;
        entry.first_ms = entry.first_ms.min(at);
        entry.last_ms = entry.last_ms.max(at);
    }

    /// Receivers blocked when the down request was sent.
    pub fn blocked_at_down(&mut self, blocked: &[BlockedRecv]) {
        for b in blocked {
            if let Some(key) = self.key(b.sock.1) {
                self.receiver(&BlockedRecv { sock: key, ..b.clone() }).blocked_at_down = true;
            }
        }
    }

    /// Receivers blocked at the end of grace.
    pub fn blocked_at_end(&mut self, blocked: &[BlockedRecv]) {
        for b in blocked {
            if let Some(key) = self.key(b.sock.1) {
                self.receiver(&BlockedRecv { sock: key, ..b.clone() }).blocked_at_end = true;
            }
        }
    }

    /// Send errors, kernel-reported errors and receivers of one socket.
    pub fn for_socket(&self, key: SockKey) -> (Vec<SendErrorsSeen>, Vec<SockErrorsSeen>, Vec<ReceiverSeen>) {
        let sends = self.sends.iter().filter(|((k, ..), _)| *k == key).map(|(_, v)| v.clone()).collect();
        let errs = self.sock_errors.iter().filter(|((k, _), _)| *k == key).map(|(_, v)| v.clone()).collect();
        let recvs = self.receivers.iter().filter(|((k, _), _)| *k == key).map(|(_, v)| v.clone()).collect();
        (sends, errs, recvs)
    }
}

pub(super) fn key_of(t: &TiedSocket) -> SockKey {
    (t.socket.netns, t.socket.inode.0)
}
