//! A point-in-time view of one netns: its sockets with owners (BPF iterators) and its links
//! (rtnetlink dump).
use std::net::IpAddr;

use anyhow::Result;
use ifsock_common::SockFilter;

use crate::{
    kernel::{netlink, netns::NetnsHandle},
    model::{
        ids::IfIndex,
        link::Link,
        socket::{join_owners, Socket, SocketFds},
    },
    probes::{Probes, RawSnapshot},
};

/// Sockets of one netns with owners, from the `iter/udp`, `iter/tcp` and `iter/task_file`
/// iterators.
///
/// # Errors
/// Iterator load/attach/read failures, or entering `netns` failed.
pub fn sockets(probes: &mut Probes, netns: Option<&NetnsHandle>) -> Result<Vec<Socket>> {
    let (mut sockets, fds) = probes.snapshot_decoded(netns, |records| records.iter().map(Socket::from_record).collect::<Vec<_>>())?;
    join_owners(&mut sockets, fds);
    Ok(sockets)
}

/// Sockets of one netns that may be tied to the interface `ifindex` holding `addrs` (bound
/// to it, to one of `addrs`, or to the wildcard), with owners: the iterators filter in the
/// kernel ([`SockFilter`]); with more addresses than the filter holds, every socket is read.
/// Callers still tie with [`crate::model::tie`], which decides exactly.
///
/// # Errors
/// As [`sockets`].
pub fn sockets_maybe_tied(probes: &mut Probes, netns: Option<&NetnsHandle>, ifindex: IfIndex, addrs: &[IpAddr]) -> Result<Vec<Socket>> {
    sockets_maybe_tied_any(probes, netns, &[ifindex], addrs)
}

/// As [`sockets_maybe_tied`] for several interfaces at once (at most
/// [`ifsock_common::SOCK_FILTER_IFINDEXES`]; more, or none, reads every socket).
///
/// # Errors
/// As [`sockets`].
pub fn sockets_maybe_tied_any(probes: &mut Probes, netns: Option<&NetnsHandle>, ifindexes: &[IfIndex], addrs: &[IpAddr]) -> Result<Vec<Socket>> {
    let raw_ifindexes: Vec<u32> = ifindexes.iter().map(|i| i.0).collect();
    let raw = match SockFilter::tied_to_any(&raw_ifindexes, addrs) {
        Some(filter) => probes.snapshot_filtered(netns, &filter)?,
        None => probes.snapshot(netns)?,
    };
    Ok(decode(raw))
}

/// Decodes a snapshot, freeing the raw socket records before the owner join (which needs
/// the file records and its own index): one raw copy fewer at the peak.
fn decode(raw: RawSnapshot) -> Vec<Socket> {
    let RawSnapshot { sockets: records, files } = raw;
    let mut sockets: Vec<Socket> = records.iter().map(Socket::from_record).collect();
    drop(records);
    join_owners(&mut sockets, SocketFds::from_records(&files));
    sockets
}

/// Dumps links (with addresses) of `netns`, or of the caller's netns.
///
/// # Errors
/// The rtnetlink socket could not be opened in `netns`, or the dump failed.
pub async fn links(netns: Option<&NetnsHandle>) -> Result<Vec<Link>> {
    netlink::dump_links(&netlink::connect_in(netns)?).await
}
