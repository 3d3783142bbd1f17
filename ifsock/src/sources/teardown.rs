//! What the teardown engine asks for, read from the kernel: the plan (the target, the sockets
//! tied to it, and what the delete takes with it: veth peer, possibly in another netns; bridge
//! ports; the master; the fds holding a tun/tap), receivers blocked now, sockets alive now,
//! and the netlink step outcomes; and `--abort-stranded` through the destroy path.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    engine::{
        abort::{self, AbortReport, Outcome},
        teardown::{BlockedRecv, CompanionPlan, Plan, Relation, SockKey, StepOutcome, Teardown},
    },
    kernel::{
        netlink::{self, LinkRelations},
        netns::{self, NetnsHandle},
        procfs,
        signals::Signals,
    },
    model::{
        receiver::{Certainty, ReceiverSource},
        sys,
        ids::{IfIndex, NetnsIno},
        link::{Dump, Link},
        stranded::{self, SeenDeletion, Stranded},
        socket::{Binding, Socket},
        tie::{self, TiedSocket},
        tun,
    },
    probes::{plan, snapshot, Probes},
    sources::{
        destroy::{self, waiters, ViaChoice},
        receivers,
    },
};

/// `IFF_LOOPBACK` (include/uapi/linux/if.h).
const IFF_LOOPBACK: u32 = 0x8;

/// Finds the target by exact name and refuses what must not be torn down.
fn find_target<'a>(links: &'a [Link], name: &str) -> Result<&'a Link> {
    let link = links.iter().find(|l| l.name == name).ok_or_else(|| {
        let help = crate::model::names::unknown_help(name, links.iter().map(|l| l.name.as_str()));
        anyhow!("unknown interface {name:?}: no such interface in this network namespace (names are exact; for another namespace use `ifsock --netns NAME teardown {name}`); {help}")
    })?;
    if name == "lo" || link.flags & IFF_LOOPBACK != 0 {
        bail!("refusing to tear down the loopback interface {name:?}: every local socket of the namespace depends on it");
    }
    Ok(link)
}

fn tied(sockets: &[Socket], netns: NetnsIno, link: &Link, links: &[Link], wildcard: bool) -> Vec<TiedSocket> {
    let addrs: Vec<_> = link.addrs.iter().copied().collect();
    let mut t = tie::tied_to(sockets, netns, link.ifindex, &link.name, &addrs, links);
    if !wildcard {
        t.retain(|t| t.binding != Some(Binding::Wildcard));
    }
    t
}

fn name_of(ino: NetnsIno) -> Option<String> {
    netns::named().into_iter().find(|(_, i)| *i == ino).map(|(n, _)| n)
}

/// Reads the plan in the caller's netns. The second value holds, per companion, the handle of
/// its netns when that is not ours (for the end-of-grace snapshot and the "gone" check).
///
/// # Errors
/// Unknown interface, loopback, a device without rtnetlink kind, netlink or snapshot failures.
pub async fn plan(
    probes: &mut Probes,
    handle: &rtnetlink::Handle,
    iface: &str,
    dry_run: bool,
    grace: std::time::Duration,
) -> Result<(Plan, Vec<Option<NetnsHandle>>)> {
    let netns = netns::current_ino()?;
    let links = netlink::dump_links(handle).await?;
    let target = find_target(&links, iface)?.clone();
    let rels = netlink::dump_relations(handle).await?;
    let rel = rels.iter().find(|r| r.ifindex == target.ifindex).cloned();
    let Some(rel) = rel.filter(|r| r.kind.is_some()) else {
        bail!(
            "refusing to tear down {:?}: it has no rtnetlink kind (a physical or driver-managed device), so the kernel cannot delete it (RTM_DELLINK fails with EOPNOTSUPP) and it would be left down; use `ip link set {} down` if that is what you want",
            target.name, target.name
        );
    };
    let sockets = snapshot::sockets(probes, None).context("taking the socket snapshot")?;
    let mut companions = Vec::new();
    let mut handles = Vec::new();
    let same_ns = |relation, l: &Link, kind: Option<String>| CompanionPlan {
        relation,
        netns,
        netns_name: name_of(netns),
        ifindex: l.ifindex,
        ifname: l.name.clone(),
        kind,
        sockets: tied(&sockets, netns, l, &links, false),
        netns_sockets: Vec::new(),
    };
    let kind_of = |i: IfIndex| rels.iter().find(|r| r.ifindex == i).and_then(|r| r.kind.clone());
    match (rel.kind.as_deref(), rel.link, rel.link_netnsid) {
        (Some("veth"), Some(peer), None) => {
            if let Some(l) = links.iter().find(|l| l.ifindex == peer) {
                companions.push(same_ns(Relation::VethPeer, l, kind_of(peer)));
                handles.push(None);
            }
        }
        (Some("veth"), Some(peer), Some(_)) => match find_peer(netns, target.ifindex, peer).await {
            Some((h, peer_rel, peer_links)) => {
                let peer_sockets = snapshot::sockets(probes, Some(&h)).with_context(|| format!("taking the socket snapshot of the veth peer's netns {}", h.path.display()))?;
                let l = peer_links.iter().find(|l| l.ifindex == peer).cloned().ok_or_else(|| anyhow!("veth peer {peer} vanished while reading it"))?;
                companions.push(CompanionPlan {
                    relation: Relation::VethPeer,
                    netns: h.ino,
                    netns_name: h.name.clone().or_else(|| name_of(h.ino)),
                    ifindex: peer,
                    ifname: l.name.clone(),
                    kind: peer_rel.kind,
                    sockets: tied(&peer_sockets, h.ino, &l, &peer_links, true),
                    netns_sockets: peer_sockets,
                });
                handles.push(Some(h));
            }
            None => tracing::warn!("the veth peer of {} (ifindex {peer}, in another netns) was not found under /run/netns or /proc/*/ns/net: its sockets are not listed", target.name),
        },
        _ => {}
    }
    if rel.kind.as_deref() == Some("bridge") {
        for port in rels.iter().filter(|r| r.master == Some(target.ifindex)) {
            if let Some(l) = links.iter().find(|l| l.ifindex == port.ifindex) {
                companions.push(same_ns(Relation::BridgePort, l, port.kind.clone()));
                handles.push(None);
            }
        }
    }
    if let Some(l) = rel.master.and_then(|m| links.iter().find(|l| l.ifindex == m)) {
        companions.push(same_ns(Relation::Master, l, kind_of(l.ifindex)));
        handles.push(None);
    }
    let tun_holders = if rel.kind.as_deref() == Some("tun") {
        let tun_links: Vec<_> = netlink::dump_tun_links(handle).await?.into_iter().filter(|l| l.ifindex == target.ifindex).collect();
        let files = probes.tun_files().context("reading the fds that hold the tun/tap (iter/task_file)")?;
        tun::build(&tun_links, netns, None, &files).into_iter().flat_map(|d| d.fds).collect()
    } else {
        Vec::new()
    };
    let plan = Plan {
        netns,
        netns_name: name_of(netns),
        ifindex: target.ifindex,
        ifname: target.name.clone(),
        kind: rel.kind.clone(),
        was_up: target.is_up(),
        addrs: target.addrs.iter().copied().collect(),
        dry_run,
        grace_ms: grace.as_millis() as u64,
        sockets: tied(&sockets, netns, &target, &links, true),
        netns_sockets: sockets,
        companions,
        tun_holders,
    };
    Ok((plan, handles))
}

/// The veth peer in another netns: the netns (named under /run/netns, or of a process) holding
/// a veth with ifindex `peer` whose own `IFLA_LINK` is `ours` across a netns (`IFLA_LINK_NETNSID`
/// set). `IFLA_LINK_NETNSID` is an id local to our netns (`peernet2id()`), so it cannot be
/// resolved without this search.
async fn find_peer(our_ns: NetnsIno, ours: IfIndex, peer: IfIndex) -> Option<(NetnsHandle, LinkRelations, Vec<Link>)> {
    for h in netns::all() {
        if h.ino == our_ns {
            continue;
        }
        let Ok(hd) = netlink::connect_in(Some(&h)) else { continue };
        let Ok(rels) = netlink::dump_relations(&hd).await else { continue };
        let found = rels.into_iter().find(|r| {
            r.ifindex == peer && r.link == Some(ours) && r.link_netnsid.is_some() && r.kind.as_deref() == Some("veth")
        });
        if let Some(r) = found {
            let links = netlink::dump_links(&hd).await.ok()?;
            return Some((h, r, links));
        }
    }
    None
}

/// Sockets alive now in our netns and in every companion's netns.
///
/// # Errors
/// A snapshot failed.
pub fn alive(probes: &mut Probes, handles: &[Option<NetnsHandle>]) -> Result<HashSet<SockKey>> {
    let mut out: HashSet<SockKey> = snapshot::sockets(probes, None)?.iter().map(|s| (s.netns, s.inode.0)).collect();
    let mut seen = HashSet::new();
    for h in handles.iter().flatten().filter(|h| seen.insert(h.ino)) {
        out.extend(snapshot::sockets(probes, Some(h))?.iter().map(|s| (s.netns, s.inode.0)));
    }
    Ok(out)
}

/// Whether each companion is gone now (`None`: could not be checked).
pub async fn companions_gone(td: &Teardown, handle: &rtnetlink::Handle, handles: &[Option<NetnsHandle>]) -> Vec<Option<bool>> {
    let mut out = Vec::new();
    for (c, h) in td.plan().companions.iter().zip(handles) {
        let rels = match h {
            None => netlink::dump_relations(handle).await.ok(),
            Some(h) => match netlink::connect_in(Some(h)) {
                Ok(hd) => netlink::dump_relations(&hd).await.ok(),
                Err(_) => None,
            },
        };
        out.push(rels.map(|r| !r.iter().any(|r| r.ifindex == c.ifindex && r.name == c.ifname)));
    }
    out
}

/// Receivers blocked right now on the watched sockets, by the receiver scan `hung` uses
/// ([`receivers::blocked_on`]: the sockets' wait queues, which list a receiver whose fd is
/// closed, with the `/proc` pass where the walk cannot run, and the in-flight records with
/// `--record-receives`). When that scan fails, procfs and the in-flight records alone.
pub fn blocked_now(probes: &mut Probes, td: &Teardown) -> Vec<BlockedRecv> {
    let by_ino: HashMap<u64, SockKey> = td.watched().into_iter().map(|k| (k.1, k)).collect();
    let wanted: HashSet<u64> = by_ino.keys().copied().collect();
    let mut spaces: Vec<NetnsIno> = by_ino.values().map(|k| k.0).collect();
    spaces.sort();
    spaces.dedup();
    match receivers::blocked_on(probes, &wanted, &spaces) {
        // Only receivers known to be on their socket: the report carries no certainty, so an
        // `inferred` tie (the netns's only ownerless socket) is not listed as one.
        Ok(rows) => rows
            .into_iter()
            .filter(|r| matches!(r.certainty, Certainty::Exact | Certainty::CurrentFd))
            .filter_map(|r| {
                let sock = *by_ino.get(&r.socket.as_ref()?.inode.0)?;
                Some(BlockedRecv { pid: r.pid, tid: r.tid, comm: r.comm, fd: r.fd, syscall: r.syscall, sock, source: r.source })
            })
            .collect(),
        Err(e) => {
            tracing::warn!("receiver scan failed, receivers are found in procfs and in-flight records only: {e:#}");
            blocked_from_proc(probes, td, &by_ino)
        }
    }
}

/// The fallback of [`blocked_now`]: procfs for threads that entered before the probes were
/// attached, the in-flight records (`INFLIGHT_SLOTS`, `INFLIGHT_RECV`) for later ones.
fn blocked_from_proc(probes: &Probes, td: &Teardown, by_ino: &HashMap<u64, SockKey>) -> Vec<BlockedRecv> {
    let owners: HashSet<u32> = td.owner_pids();
    let mut out: HashMap<u32, BlockedRecv> = procfs::blocked_receivers(None)
        .into_iter()
        .filter(|b| owners.contains(&b.pid))
        .filter_map(|b| {
            let sock = *by_ino.get(&b.fd_socket?.0)?;
            let syscall = sys::recv_syscall_name(b.syscall);
            Some((b.tid, BlockedRecv { pid: b.pid, tid: b.tid, comm: b.comm, fd: Some(b.fd), syscall, sock, source: ReceiverSource::Proc }))
        })
        .collect();
    let inflight = probes.inflight().unwrap_or_else(|e| {
        tracing::warn!("in-flight receives unreadable, receivers are found in procfs only: {e:#}");
        Vec::new()
    });
    for r in inflight {
        let Some(&sock) = by_ino.get(&r.ino.0) else { continue };
        let mut b = BlockedRecv::from_inflight(&r);
        b.sock = sock;
        // Kernel-function sets record no fd: read it while the thread is still in the syscall.
        if b.fd.is_none() {
            if let Some((nr, fd)) = procfs::thread_syscall(r.pid, r.tid).filter(|(nr, _)| sys::recv_syscall_name(*nr) != "?") {
                b.syscall = sys::recv_syscall_name(nr);
                b.fd = u32::try_from(fd).ok();
            }
        }
        out.entry(r.tid).or_insert(b);
    }
    out.into_values().collect()
}

/// The state after the delete that `--abort-stranded` decides on: the sockets of our netns and
/// of each companion's, one rtnetlink dump per netns, and the receivers still blocked.
pub struct AfterDelete {
    /// Every socket of those namespaces now.
    pub sockets: Vec<Socket>,
    /// Links and address details, per netns.
    pub dumps: Vec<(NetnsIno, Dump)>,
    /// Receivers blocked now on the listed sockets.
    pub blocked: Vec<BlockedRecv>,
    /// The deletion ifsock just did: names a `device_deleted` socket's old ifindex.
    pub seen: Vec<SeenDeletion>,
}

impl AfterDelete {
    /// `model::stranded::health` of `s` in its own netns.
    pub fn health(&self, s: &Socket) -> Option<Stranded> {
        let (_, d) = self.dumps.iter().find(|(ino, _)| *ino == s.netns)?;
        stranded::health(s, &d.links, &d.addrs, &self.seen)
    }
}

/// Reads [`AfterDelete`].
///
/// # Errors
/// A snapshot or a dump failed.
pub async fn after_delete(probes: &mut Probes, td: &Teardown, handles: &[Option<NetnsHandle>]) -> Result<AfterDelete> {
    let here = td.plan().netns;
    let mut sockets = snapshot::sockets(probes, None)?;
    sockets.retain(|s| s.netns == here);
    let mut dumps = vec![(here, netlink::dump(&netlink::connect()?).await?)];
    for h in handles.iter().flatten() {
        if dumps.iter().any(|(ino, _)| *ino == h.ino) {
            continue;
        }
        let what = || format!("reading netns {} after the delete", h.path.display());
        let mut s = snapshot::sockets(probes, Some(h)).with_context(what)?;
        s.retain(|s| s.netns == h.ino);
        sockets.extend(s);
        dumps.push((h.ino, netlink::dump(&netlink::connect_in(Some(h)).with_context(what)?).await.with_context(what)?));
    }
    let p = td.plan();
    let seen = vec![SeenDeletion { netns: here, ifindex: p.ifindex, name: p.ifname.clone(), at_unix_ns: crate::kernel::clock::unix_ns() }];
    Ok(AfterDelete { sockets, dumps, blocked: blocked_now(probes, td), seen })
}

/// The engine's view of a netlink request's result.
pub fn outcome(r: Result<()>) -> StepOutcome {
    match r {
        Ok(()) => StepOutcome::Ok,
        Err(e) => {
            let errno = netlink::errno_of(&e);
            let error = errno.map_or_else(|| format!("{e:#}"), crate::model::sys::errno_desc);
            StepOutcome::Refused { errno, error }
        }
    }
}

/// The dry run of `--abort-stranded`: the listed sockets the delete would strand (predicted by
/// the engine) or with receivers blocked now, and the mechanism that would run.
pub fn would_abort(td: &Teardown, blocked: &[BlockedRecv], observe: Duration) -> Result<AbortReport> {
    let p = td.plan();
    let now: Vec<Socket> = p.netns_sockets.iter().chain(p.companions.iter().flat_map(|c| c.netns_sockets.iter())).cloned().collect();
    let (targets, skipped) = td.abort_candidates(&now, blocked, |s| td.predicted_stranded(s));
    let waiters = waiters(&targets.iter().map(|t| t.socket.clone()).collect::<Vec<_>>(), &now);
    let mech = destroy::choose(ViaChoice::Auto, &targets)?;
    let outcomes = vec![Outcome::WouldDestroy; targets.len()];
    Ok(abort::report(p.netns, true, Some(mech.via), mech.refused.clone(), observe.as_millis() as u64, &targets, &outcomes, &waiters, &Default::default(), 0, skipped))
}

/// `--abort-stranded` after the delete: destroys what the engine picks from a fresh snapshot,
/// each socket inside its own netns, and watches its waiters (a signal cuts the window short).
pub async fn abort_stranded(probes: &mut Probes, td: &Teardown, peers: &[Option<NetnsHandle>], signals: &mut Signals, observe: Duration) -> Result<AbortReport> {
    let now = after_delete(probes, td, peers).await?;
    let (targets, skipped) = td.abort_candidates(&now.sockets, &now.blocked, |s| now.health(s));
    let waiters = destroy::waiters_exact(probes, std::iter::once(None).chain(peers.iter().flatten().map(Some)), &targets.iter().map(|t| t.socket.clone()).collect::<Vec<_>>(), &now.sockets);
    let mech = destroy::choose(ViaChoice::Auto, &targets)?;
    let handles: Vec<&NetnsHandle> = peers.iter().flatten().collect();
    let run = destroy::Run { here: td.plan().netns, handles: &handles, waiters: &waiters, observe };
    destroy::execute(probes, &mech, &run, &targets, skipped, Some(signals)).await
}

/// What the report says a refused probe group leaves unobserved, with the kernel's reason.
pub fn unobserved(skipped: &plan::Skipped) -> String {
    let what = match skipped.group {
        plan::Group::SendErrors => "send errors (syscalls:sys_{enter,exit}_{sendto,sendmsg})",
        plan::Group::Recv => "receive wake-ups (__skb_recv_udp/__skb_wait_for_more_packets or syscalls:sys_{enter,exit}_{recv*,read})",
        plan::Group::SockErrors => "kernel-reported socket errors (sock:inet_sk_error_report)",
        other => return format!("{other}: {}", skipped.reason),
    };
    format!("{what}: {}", skipped.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn link(i: u32, name: &str, flags: u32) -> Link {
        Link { ifindex: IfIndex(i), name: name.into(), flags, addrs: BTreeSet::new() }
    }

    #[test]
    fn targets_are_exact_names_and_loopback_is_refused() {
        let links = [link(1, "lo", 0x9), link(5, "veth0", 0x1), link(6, "lo2", 0x8)];
        assert_eq!(find_target(&links, "veth0").unwrap().ifindex, IfIndex(5));
        assert!(find_target(&links, "veth").unwrap_err().to_string().contains("unknown interface \"veth\""));
        assert!(find_target(&links, "veth*").is_err());
        assert!(find_target(&links, "lo").unwrap_err().to_string().contains("loopback"));
        assert!(find_target(&links, "lo2").unwrap_err().to_string().contains("loopback"), "IFF_LOOPBACK under another name");
    }

    #[test]
    fn a_refused_group_is_reported_as_what_goes_unobserved() {
        let s = |group| plan::Skipped { group, reason: "EPERM (lockdown=integrity)".into() };
        assert_eq!(unobserved(&s(plan::Group::Recv)).split(" (").next(), Some("receive wake-ups"));
        assert!(unobserved(&s(plan::Group::SendErrors)).ends_with(": EPERM (lockdown=integrity)"));
        assert_eq!(unobserved(&s(plan::Group::Iterators)), "socket iterators: EPERM (lockdown=integrity)");
    }
}
