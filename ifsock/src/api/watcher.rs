//! [`LinkWatcher`]: `watch`'s engine without probes or sockets, as a tokio `Stream`.
//!
//! The pieces are the ones `ifsock watch` runs: `sources::follow::open_ns` subscribes to the
//! rtnetlink groups *before* it dumps (a change during the dump is queued on the subscription
//! and applied on top of it: netbird's start-up race, seed 004), `engine::watch` classifies live
//! updates and re-dumps alike, an `ENOBUFS` re-dumps at once (`resync`) and a timer re-dumps
//! periodically (`reconcile`: iroh's backstop for silent loss, seed 002).
use std::{
    net::IpAddr,
    path::Path,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{ChangeSource, Error, LinkChange, LinkChangeKind, LinkInfo, Netns};
use crate::{
    engine::watch::{Config, SocketSource, Source, WatchEngine, WatchRecord},
    kernel::{
        netlink::{self, Received},
        netns::{NetnsHandle, NETNS_RUN_DIR},
    },
    model::{
        ids::{IfIndex, NetnsIno},
        socket::Socket,
    },
    sources::follow::{now, open_ns, NetlinkMsg, NsIo},
};

/// How often a watcher re-dumps by default: `ifsock watch --reconcile-every`'s default.
pub const DEFAULT_RECONCILE: Duration = Duration::from_secs(30);

/// Options of a [`LinkWatcher`]; [`LinkWatcher::builder`] makes one.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until start() is awaited"]
pub struct LinkWatcherBuilder {
    netns: Netns,
    iface: Option<String>,
    reconcile_every: Duration,
    rcvbuf: Option<usize>,
}

impl LinkWatcherBuilder {
    /// Watches `netns` instead of the current one ([`Netns::Current`], the default).
    pub fn netns(mut self, netns: Netns) -> Self {
        self.netns = netns;
        self
    }

    /// Reports only the changes of the interface named `name` (at most 15 bytes): a change
    /// whose current or previous name is `name`, so its rename away, its deletion and the
    /// creation of another interface under the name are all reported. Without it, every
    /// interface of the netns.
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.iface = Some(name.into());
        self
    }

    /// Re-dumps every `every` and reports the differences as `source: reconcile` changes
    /// (default [`DEFAULT_RECONCILE`], 30 s; `Duration::ZERO` turns it off). One
    /// `RTM_GETLINK` + `RTM_GETADDR` dump per period, nothing reported when nothing differs.
    pub fn reconcile_every(mut self, every: Duration) -> Self {
        self.reconcile_every = every;
        self
    }

    /// Requests `bytes` as the subscription socket's `SO_RCVBUF` (the kernel doubles it and
    /// applies its minimum; above `net.core.rmem_max` only CAP_NET_ADMIN gets it, through
    /// `SO_RCVBUFFORCE`). Default: the kernel's default. A small buffer loses notifications
    /// under bursts, which the watcher then reports as `resync` changes.
    pub fn rcvbuf(mut self, bytes: usize) -> Self {
        self.rcvbuf = Some(bytes);
        self
    }

    /// Subscribes, dumps, and starts the watcher's task on the current tokio runtime.
    /// Returns once the dump is in ([`LinkWatcher::initial`]): every change after that point
    /// is reported, including those during the dump.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a tokio runtime; [`Error::Netns`] when the netns cannot
    /// be opened or entered; [`Error::Netlink`] when the subscription socket cannot be made
    /// (a `rcvbuf` above `net.core.rmem_max` without CAP_NET_ADMIN included) or the dump fails.
    pub async fn start(self) -> Result<LinkWatcher, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let handle = match &self.netns {
            Netns::Current => None,
            Netns::Named(name) => Some(open_netns(&Path::new(NETNS_RUN_DIR).join(name), Some(name.clone()))?),
            Netns::Path(path) => Some(open_netns(path, None)?),
        };
        let (tx, rx) = mpsc::unbounded_channel::<NetlinkMsg>();
        let (ino, name, io, dump, rcvbuf) = open_ns(handle, self.rcvbuf, tx).await.map_err(Error::netlink)?;
        let wanted = |n: &str| self.iface.as_deref().is_none_or(|i| i == n);
        let initial = dump.links.iter().filter(|l| wanted(&l.name)).map(LinkInfo::from_model).collect();
        let config = Config { iface: self.iface.clone(), sockets: false, recv_tracking: false, stranded_after: Duration::MAX, sockets_after: false };
        let mut engine = WatchEngine::new(config);
        engine.add_netns(ino, name, dump, false, &now(), &mut NoSockets);
        let (out, changes) = mpsc::unbounded_channel();
        let reconcile = (!self.reconcile_every.is_zero()).then_some(self.reconcile_every);
        let task = tokio::spawn(follow(engine, ino, io, rx, reconcile, out));
        Ok(LinkWatcher { changes, initial, netns: ino.0, rcvbuf, _task: AbortOnDrop(task) })
    }
}

fn open_netns(path: &Path, name: Option<String>) -> Result<NetnsHandle, Error> {
    let h = NetnsHandle::open(path, name).map_err(|e| Error::Netns(format!("{e:#}")))?;
    // The subscription socket is made inside the netns: say so now if entering it is refused.
    h.run(|| ()).map_err(|e| Error::Netns(format!("{e:#} (entering another netns needs CAP_SYS_ADMIN; a watcher of the current netns needs none)")))?;
    Ok(h)
}

/// A tokio `Stream` of the interface changes of one network namespace, in the order the
/// kernel made them.
///
/// Items are `Result<`[`LinkChange`]`, `[`Error`]`>`. An `Err` is final: the watcher stopped
/// (its subscription failed, or a re-dump did) and the stream ends after it; start a new
/// watcher, whose [`initial`](Self::initial) dump tells the state you may have missed.
/// Dropping the watcher stops its task and closes its sockets. Changes wait in memory until
/// read: a caller that stops reading for long should drop the watcher rather than let them pile
/// up. A watcher of a named netns holds it open: after `ip netns del` it reports nothing more.
///
/// Needs no privilege for the current netns: only `NETLINK_ROUTE` sockets (a subscription to
/// `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`, and a request socket for
/// dumps), which any user may open.
#[derive(Debug)]
pub struct LinkWatcher {
    changes: mpsc::UnboundedReceiver<Result<LinkChange, Error>>,
    initial: Vec<LinkInfo>,
    netns: u32,
    rcvbuf: Option<usize>,
    _task: AbortOnDrop,
}

impl LinkWatcher {
    /// Options for a watcher: the current netns, every interface, reconcile every 30 s.
    pub fn builder() -> LinkWatcherBuilder {
        LinkWatcherBuilder { netns: Netns::Current, iface: None, reconcile_every: DEFAULT_RECONCILE, rcvbuf: None }
    }

    /// The interfaces of the first dump, sorted by ifindex (only the watched one, with
    /// [`LinkWatcherBuilder::interface`]: empty when it did not exist then). Changes are
    /// relative to this.
    pub fn initial(&self) -> &[LinkInfo] {
        &self.initial
    }

    /// Inode of the watched netns (`net.ns.inum`).
    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// The subscription socket's effective receive buffer in bytes (`getsockopt(SO_RCVBUF)`),
    /// `None` when it could not be read.
    pub fn rcvbuf(&self) -> Option<usize> {
        self.rcvbuf
    }

    /// The next change: the same as `StreamExt::next`, without importing `futures`.
    /// Cancel-safe (a change is never lost by dropping this future, e.g. in `tokio::select!`).
    pub async fn recv(&mut self) -> Option<Result<LinkChange, Error>> {
        self.changes.recv().await
    }
}

impl futures::Stream for LinkWatcher {
    type Item = Result<LinkChange, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx)
    }
}

/// Aborts the watcher's task when the watcher is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The library never reads sockets (the engine is configured with `sockets: false`).
struct NoSockets;
impl SocketSource for NoSockets {
    fn sockets(&mut self, _netns: NetnsIno) -> anyhow::Result<Vec<Socket>> {
        Ok(Vec::new())
    }
    fn sockets_tied(&mut self, _netns: NetnsIno, _ifindexes: &[IfIndex], _addrs: &[IpAddr]) -> anyhow::Result<Vec<Socket>> {
        Ok(Vec::new())
    }
}

/// The watcher's task: live datagrams, `ENOBUFS` re-dumps and reconcile ticks into the engine,
/// its change records out. Ends after sending an error, or when the watcher is dropped.
async fn follow(
    mut engine: WatchEngine,
    ino: NetnsIno,
    io: NsIo,
    mut rx: mpsc::UnboundedReceiver<NetlinkMsg>,
    reconcile: Option<Duration>,
    out: mpsc::UnboundedSender<Result<LinkChange, Error>>,
) {
    let mut tick = reconcile.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let records = tokio::select! {
            biased;
            _ = out.closed() => return,
            msg = rx.recv() => match msg {
                Some((_, Ok(Received::Updates(updates)))) => Ok(engine.on_updates(ino, updates, &now(), &mut NoSockets)),
                Some((_, Ok(Received::Overrun))) => {
                    // The reader already discarded what was queued before the overrun: the
                    // dump is newer than all of it.
                    engine.on_overrun(ino);
                    tracing::debug!("rtnetlink ENOBUFS in netns {ino}: events were lost, re-dumping");
                    redump(&mut engine, ino, &io, Source::Resync).await
                }
                Some((_, Err(e))) => Err(Error::netlink(e)),
                None => Err(Error::Netlink("the subscription reader stopped".to_string())),
            },
            _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                engine.on_reconcile();
                redump(&mut engine, ino, &io, Source::Reconcile).await
            }
        };
        match records {
            Ok(records) => {
                for r in records {
                    if let WatchRecord::Change(c) = r {
                        let change = LinkChange {
                            kind: LinkChangeKind::from_model(c.change.kind),
                            source: ChangeSource::from_engine(c.source),
                            ifindex: c.change.ifindex.0,
                            name: c.change.name,
                            old_ifindex: c.change.old_ifindex.map(|i| i.0),
                            old_name: c.change.old_name,
                            address: c.change.address,
                            netns: ino.0,
                            ts_unix_ns: c.ts_unix_ns,
                        };
                        if out.send(Ok(change)).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                // Final: the caller restarts the watcher rather than trusting a state that
                // stopped being followed.
                let _ = out.send(Err(e));
                return;
            }
        }
    }
}

async fn redump(engine: &mut WatchEngine, ino: NetnsIno, io: &NsIo, source: Source) -> Result<Vec<WatchRecord>, Error> {
    let dump = netlink::dump(&io.rtnl).await.map_err(Error::netlink)?;
    Ok(engine.on_dump(ino, dump, source, &now(), &mut NoSockets))
}
