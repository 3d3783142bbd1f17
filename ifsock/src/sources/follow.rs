//! The I/O of `watch` around the engine: per followed netns the rtnetlink subscription and
//! its reader task, the request connection for dumps, and socket snapshots; the clock; ring
//! buffer events turned into engine inputs.
use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use crate::{
    engine::watch::{KernelEvidence, KernelInput, Now, SocketSource},
    kernel::{
        clock::{monotonic_ns, unix_ns},
        netlink::{self, Received, Subscription},
        netns::{self, NetnsHandle},
    },
    model::{
        ids::{IfIndex, NetnsIno},
        link::Dump,
        socket::Socket,
    },
    probes::{events::Event, snapshot, Probes},
};

/// The I/O side of one followed netns; dropping it releases the namespace (file, sockets).
pub(crate) struct NsIo {
    /// `None`: ifsock's own netns (no setns needed).
    pub(crate) handle: Option<NetnsHandle>,
    pub(crate) rtnl: rtnetlink::Handle,
    _reader: AbortOnDrop,
}

/// Aborts a spawned task when dropped (a netns that goes away takes its reader with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) type NetlinkMsg = (NetnsIno, Result<Received>);

/// Opens a follower for one netns: subscription first, then the dump (see the module docs).
/// Returns its inode, name, I/O handles, dump and the subscription's effective rcvbuf.
pub(crate) async fn open_ns(handle: Option<NetnsHandle>, rcvbuf: Option<usize>, tx: mpsc::UnboundedSender<NetlinkMsg>) -> Result<(NetnsIno, Option<String>, NsIo, Dump, Option<usize>)> {
    let (ino, name) = match &handle {
        Some(h) => (h.ino, h.name.clone()),
        None => {
            let ino = netns::current_ino()?;
            (ino, netns::named().into_iter().find(|(_, i)| *i == ino).map(|(n, _)| n))
        }
    };
    // The socket is registered with tokio on the netns thread: that thread enters the runtime.
    let rt = tokio::runtime::Handle::current();
    let open = move || {
        let _guard = rt.enter();
        Subscription::open(rcvbuf)
    };
    let mut sub = match &handle {
        None => open()?,
        Some(h) => h.run(open)??,
    };
    let effective = sub.rcvbuf();
    let rtnl = netlink::connect_in(handle.as_ref())?;
    let reader = tokio::spawn(async move {
        loop {
            let r = sub.recv().await;
            if let Ok(Received::Overrun) = r {
                // Messages queued before the re-dump are older than it: drop them.
                sub.discard_pending();
            }
            let stop = r.is_err();
            if tx.send((ino, r)).is_err() || stop {
                break;
            }
        }
    });
    let dump = netlink::dump(&rtnl).await.with_context(|| format!("dumping links of netns {ino}"))?;
    Ok((ino, name, NsIo { handle, rtnl, _reader: AbortOnDrop(reader) }, dump, effective))
}

/// Socket snapshots for the engine, by BPF iterators run inside each followed netns.
pub(crate) struct Snapshots<'a> {
    pub(crate) probes: &'a mut Probes,
    pub(crate) spaces: &'a BTreeMap<NetnsIno, NsIo>,
}

impl SocketSource for Snapshots<'_> {
    fn sockets(&mut self, netns: NetnsIno) -> Result<Vec<Socket>> {
        let io = self.spaces.get(&netns).with_context(|| format!("netns {netns} is not followed"))?;
        snapshot::sockets(self.probes, io.handle.as_ref())
    }

    fn sockets_tied(&mut self, netns: NetnsIno, ifindexes: &[IfIndex], addrs: &[IpAddr]) -> Result<Vec<Socket>> {
        let io = self.spaces.get(&netns).with_context(|| format!("netns {netns} is not followed"))?;
        snapshot::sockets_maybe_tied_any(self.probes, io.handle.as_ref(), ifindexes, addrs)
    }
}

/// The clock, read once per input handed to the engine.
pub(crate) fn now() -> Now {
    Now { at: std::time::Instant::now(), mono_ns: monotonic_ns(), unix_ns: unix_ns() }
}

/// A ring-buffer event as the engine's input (`None`: not the engine's business).
pub(crate) fn kernel_input(ev: Event) -> Option<KernelInput> {
    match ev {
        Event::LinkRequest(r) => Some(KernelInput::LinkRequest(r)),
        Event::Device(d) => Some(KernelInput::Device(KernelEvidence::from_event(&d))),
        Event::SockError(e) => Some(KernelInput::SockError(e)),
        _ => None,
    }
}
