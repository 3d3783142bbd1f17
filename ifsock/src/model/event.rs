//! Link-change requests captured at syscall entry, and their correlation with rtnetlink
//! changes: which task caused a down, delete, rename or creation.
use std::collections::VecDeque;

use ifsock_common::{link_request_via, LinkRequestEvent};
use serde::Serialize;

use super::{
    ids::{comm_str, IfIndex, NetnsIno},
    link::{Change, ChangeKind, IFF_UP},
};

/// `RTM_NEWLINK`, `RTM_DELLINK`, `RTM_SETLINK` (include/uapi/linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
/// `IFLA_IFNAME`.
const IFLA_IFNAME: u16 = 3;
/// `IFLA_LINKINFO` (nested: `IFLA_INFO_KIND` 1, `IFLA_INFO_DATA` 2).
const IFLA_LINKINFO: u16 = 18;
/// `VETH_INFO_PEER` inside veth's `IFLA_INFO_DATA`: a `struct ifinfomsg` then the peer's attributes.
const VETH_INFO_PEER: u16 = 1;
/// How long a request may precede the change it caused (ns).
pub const CAUSE_WINDOW_NS: u64 = 5_000_000_000;

/// What a task asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    /// `RTM_DELLINK`.
    Delete,
    /// `RTM_NEWLINK`/`RTM_SETLINK`, or `SIOCSIFFLAGS`: set flags (`change` mask, 0 = all).
    Set {
        /// `ifi_flags`.
        flags: u32,
        /// `ifi_change` (0 means every flag is taken from `flags`).
        change: u32,
        /// `NLM_F_CREATE` was set.
        create: bool,
    },
}

/// A parsed link request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRequest {
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub ts_ns: u64,
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// Requester's netns.
    pub netns: NetnsIno,
    /// Operation.
    pub op: RequestOp,
    /// `ifi_index` (None when 0: the request names the link by `IFLA_IFNAME`).
    pub ifindex: Option<IfIndex>,
    /// `IFLA_IFNAME` or `ifr_name`.
    pub name: Option<String>,
    /// For the creation of a veth pair: the peer's `IFLA_IFNAME` (`IFLA_LINKINFO` →
    /// `IFLA_INFO_DATA` → `VETH_INFO_PEER`), when it lies within the captured bytes.
    pub peer_name: Option<String>,
    /// Tracepoint that captured it.
    pub evidence: &'static str,
}

/// The task behind a change, as attached to a watch event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command.
    pub comm: String,
    /// Request (`RTM_DELLINK`, `RTM_NEWLINK`, `SIOCSIFFLAGS`).
    pub request: &'static str,
    /// Probe that saw it (`tracepoint:syscalls:sys_enter_sendmsg`), or `peer of <ifindex>`
    /// (`peer of <name>` at creation, before the other end has an ifindex) when the request
    /// made the other end of a veth pair and this end with it.
    pub evidence: String,
}

/// Parses a captured request; `None` when the bytes are not a link request.
pub fn parse_request(ev: &LinkRequestEvent) -> Option<LinkRequest> {
    let data = &ev.data[..(ev.len as usize).min(ev.data.len())];
    let base = |op, ifindex: Option<IfIndex>, name: Option<String>, peer_name: Option<String>, evidence| LinkRequest {
        ts_ns: ev.ts_ns,
        pid: ev.pid,
        tid: ev.tid,
        comm: comm_str(&ev.comm),
        netns: NetnsIno(ev.netns),
        op,
        ifindex,
        name,
        peer_name,
        evidence,
    };
    let ioctl = match ev.via {
        link_request_via::IOCTL_SIOCSIFFLAGS => Some("tracepoint:syscalls:sys_enter_ioctl"),
        link_request_via::FENTRY_DEV_IOCTL => Some("fentry:dev_ioctl"),
        link_request_via::KPROBE_DEV_IOCTL => Some("kprobe:dev_ioctl"),
        _ => None,
    };
    if let Some(evidence) = ioctl {
        // struct ifreq { char ifr_name[16]; short ifr_flags; }
        if data.len() < 18 {
            return None;
        }
        let flags = u16::from_ne_bytes([data[16], data[17]]) as u32;
        let name = comm_str(&data[..16]);
        return Some(base(RequestOp::Set { flags, change: 0, create: false }, None, Some(name), None, evidence));
    }
    if data.len() < 32 {
        return None;
    }
    let u16_at = |o: usize| u16::from_ne_bytes([data[o], data[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
    let msg_len = (u32_at(0) as usize).min(data.len());
    let ty = u16_at(4);
    let nl_flags = u16_at(6);
    // struct ifinfomsg at 16: family u8, pad u8, type u16, index i32 @20, flags u32 @24, change u32 @28.
    let index = u32_at(20);
    let flags = u32_at(24);
    let change = u32_at(28);
    let top = &data[32.min(msg_len)..msg_len];
    let name = attr(top, IFLA_IFNAME).map(comm_str);
    let peer_name = attr(top, IFLA_LINKINFO)
        .and_then(|info| attr(info, 2))
        .and_then(|data| attr(data, VETH_INFO_PEER))
        .and_then(|peer| peer.get(16..))
        .and_then(|attrs| attr(attrs, IFLA_IFNAME))
        .map(comm_str);
    let op = match ty {
        RTM_DELLINK => RequestOp::Delete,
        RTM_NEWLINK | RTM_SETLINK => RequestOp::Set { flags, change, create: nl_flags & 0x400 != 0 },
        _ => return None,
    };
    let evidence = match (ev.via, ty) {
        (link_request_via::SENDTO, _) => "tracepoint:syscalls:sys_enter_sendto",
        (link_request_via::FENTRY_RTNL, RTM_DELLINK) => "fentry:rtnl_dellink",
        (link_request_via::FENTRY_RTNL, RTM_SETLINK) => "fentry:rtnl_setlink",
        (link_request_via::FENTRY_RTNL, _) => "fentry:rtnl_newlink",
        (link_request_via::KPROBE_RTNL, RTM_DELLINK) => "kprobe:rtnl_dellink",
        (link_request_via::KPROBE_RTNL, RTM_SETLINK) => "kprobe:rtnl_setlink",
        (link_request_via::KPROBE_RTNL, _) => "kprobe:rtnl_newlink",
        _ => "tracepoint:syscalls:sys_enter_sendmsg",
    };
    Some(base(op, (index != 0).then_some(IfIndex(index)), name, peer_name, evidence))
}

/// The payload of the first netlink attribute of type `ty` in `attrs` (flag bits masked); an
/// attribute cut off by the capture length ends the walk.
fn attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            return None;
        }
        if aty == ty {
            return Some(&attrs[4..alen]);
        }
        attrs = attrs.get((alen + 3) & !3..)?;
    }
    None
}

/// Recent requests, matched against changes as they arrive.
#[derive(Debug, Default)]
pub struct CauseTracker {
    recent: VecDeque<LinkRequest>,
}

impl CauseTracker {
    /// Records a request; requests older than [`CAUSE_WINDOW_NS`] before it are forgotten.
    pub fn push(&mut self, req: LinkRequest) {
        while self.recent.front().is_some_and(|r| r.ts_ns + CAUSE_WINDOW_NS < req.ts_ns) {
            self.recent.pop_front();
        }
        self.recent.push_back(req);
        if self.recent.len() > 4096 {
            self.recent.pop_front();
        }
    }

    /// The most recent request in `netns` that explains `change` (`old_name`: the name the
    /// interface had before a rename), made at most [`CAUSE_WINDOW_NS`] before `now_ns`
    /// (CLOCK_MONOTONIC, the clock of the requests' `ts_ns`) and not after it.
    pub fn cause_of(&self, change: &Change, netns: NetnsIno, now_ns: u64) -> Option<Cause> {
        let found = self.request_for(change, netns, now_ns)?;
        Some(Cause { pid: found.pid, tid: found.tid, comm: found.comm.clone(), request: request_name(found), evidence: found.evidence.to_string() })
    }

    /// The request that created a veth pair whose peer is `change` (a `created`/`recreated`
    /// not named by any request), with the name the request gave the other end.
    pub fn peer_creation(&self, change: &Change, netns: NetnsIno, now_ns: u64) -> Option<(Cause, Option<String>)> {
        if !matches!(change.kind, ChangeKind::Created | ChangeKind::Recreated) {
            return None;
        }
        let found = self.recent.iter().rev().find(|r| {
            in_window(r, now_ns)
                && (r.netns == netns || r.netns.0 == 0 || netns.0 == 0)
                && matches!(r.op, RequestOp::Set { create: true, .. })
                && r.peer_name.as_deref() == Some(change.name.as_str())
        })?;
        let cause = Cause { pid: found.pid, tid: found.tid, comm: found.comm.clone(), request: request_name(found), evidence: String::new() };
        Some((cause, found.name.clone()))
    }

    fn request_for(&self, change: &Change, netns: NetnsIno, now_ns: u64) -> Option<&LinkRequest> {
        let names_match = |r: &LinkRequest| {
            r.name.as_deref() == Some(change.name.as_str())
                || (change.old_name.is_some() && r.name.as_deref() == change.old_name.as_deref())
        };
        let target_match = |r: &LinkRequest| r.ifindex == Some(change.ifindex) || (r.ifindex.is_none() && names_match(r));
        let up_change = |r: &LinkRequest, want_up: bool| match r.op {
            RequestOp::Set { flags, change, .. } => {
                (change == 0 || change & IFF_UP != 0) && ((flags & IFF_UP != 0) == want_up)
            }
            RequestOp::Delete => false,
        };
        self.recent.iter().rev().find(|r| {
            in_window(r, now_ns)
                && (r.netns == netns || r.netns.0 == 0 || netns.0 == 0)
                && match change.kind {
                    ChangeKind::Deleted => matches!(r.op, RequestOp::Delete) && target_match(r),
                    // A move is an RTM_NEWLINK carrying IFLA_NET_NS_FD/PID; deleting a netns moves nothing.
                    ChangeKind::MovedOut => target_match(r),
                    // Deleting an up link closes it first: the delete request explains the down.
                    ChangeKind::Down | ChangeKind::CarrierDown => {
                        target_match(r) && (up_change(r, false) || matches!(r.op, RequestOp::Delete))
                    }
                    ChangeKind::Up => target_match(r) && up_change(r, true),
                    ChangeKind::Renamed => {
                        r.ifindex == Some(change.ifindex) && r.name.as_deref() == Some(change.name.as_str())
                    }
                    ChangeKind::Created | ChangeKind::Recreated => {
                        matches!(r.op, RequestOp::Set { create: true, .. }) && names_match(r)
                    }
                    _ => false,
                }
        })
    }
}

/// Made before `now_ns` and at most [`CAUSE_WINDOW_NS`] before it.
fn in_window(r: &LinkRequest, now_ns: u64) -> bool {
    r.ts_ns <= now_ns && now_ns - r.ts_ns <= CAUSE_WINDOW_NS
}

fn request_name(r: &LinkRequest) -> &'static str {
    match (&r.op, r.evidence) {
        (_, "tracepoint:syscalls:sys_enter_ioctl") => "SIOCSIFFLAGS",
        (RequestOp::Delete, _) => "RTM_DELLINK",
        (RequestOp::Set { .. }, _) => "RTM_NEWLINK",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ifsock_common::{EventKind, NL_CAPTURE_LEN};

    fn nl_request(ty: u16, flags_nl: u16, index: u32, ifi_flags: u32, change: u32, name: Option<&str>) -> LinkRequestEvent {
        let mut data = [0u8; NL_CAPTURE_LEN];
        let mut len = 32usize;
        data[4..6].copy_from_slice(&ty.to_ne_bytes());
        data[6..8].copy_from_slice(&flags_nl.to_ne_bytes());
        data[20..24].copy_from_slice(&index.to_ne_bytes());
        data[24..28].copy_from_slice(&ifi_flags.to_ne_bytes());
        data[28..32].copy_from_slice(&change.to_ne_bytes());
        if let Some(n) = name {
            let alen = 4 + n.len() + 1;
            data[len..len + 2].copy_from_slice(&(alen as u16).to_ne_bytes());
            data[len + 2..len + 4].copy_from_slice(&IFLA_IFNAME.to_ne_bytes());
            data[len + 4..len + 4 + n.len()].copy_from_slice(n.as_bytes());
            len += (alen + 3) & !3;
        }
        data[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"ip");
        LinkRequestEvent {
            kind: EventKind::LinkRequest as u32, via: link_request_via::SENDMSG, ts_ns: 1_000, pid: 77, tid: 77,
            netns: 9, len: NL_CAPTURE_LEN as u32, comm, data,
        }
    }

    #[test]
    fn handler_probes_name_the_handler_as_evidence() {
        let mut ev = nl_request(RTM_DELLINK, 1, 5, 0, 0, None);
        ev.via = link_request_via::FENTRY_RTNL;
        let req = parse_request(&ev).unwrap();
        assert_eq!((req.op, req.ifindex, req.evidence), (RequestOp::Delete, Some(IfIndex(5)), "fentry:rtnl_dellink"));
        ev.via = link_request_via::KPROBE_RTNL;
        assert_eq!(parse_request(&ev).unwrap().evidence, "kprobe:rtnl_dellink");
        let mut ioctl = nl_request(RTM_NEWLINK, 1, 0, 0, 0, None);
        ioctl.data[..4].copy_from_slice(b"eth0");
        ioctl.data[4..16].fill(0);
        ioctl.via = link_request_via::FENTRY_DEV_IOCTL;
        let req = parse_request(&ioctl).unwrap();
        assert_eq!((req.name.as_deref(), req.evidence), (Some("eth0"), "fentry:dev_ioctl"));
    }

    /// Just after the requests of [`nl_request`] (made at 1,000 ns).
    const NOW: u64 = 2_000;

    fn change(kind: ChangeKind, ifindex: u32, name: &str) -> Change {
        Change { kind, ifindex: IfIndex(ifindex), name: name.into(), old_name: None, old_ifindex: None, address: None }
    }

    #[test]
    fn delete_by_index_and_down_by_flags_are_attributed() {
        // Live order: each change is matched when it arrives, after its own request.
        let mut t = CauseTracker::default();
        t.push(parse_request(&nl_request(RTM_NEWLINK, 1, 5, 0, IFF_UP, None)).unwrap());
        assert_eq!(t.cause_of(&change(ChangeKind::Down, 5, "v0"), NetnsIno(9), NOW).unwrap().request, "RTM_NEWLINK");
        assert!(t.cause_of(&change(ChangeKind::Up, 5, "v0"), NetnsIno(9), NOW).is_none(), "a down request does not explain up");
        assert!(t.cause_of(&change(ChangeKind::Deleted, 5, "v0"), NetnsIno(9), NOW).is_none(), "a down request does not explain a delete");
        t.push(parse_request(&nl_request(RTM_DELLINK, 1, 5, 0, 0, None)).unwrap());
        let del = t.cause_of(&change(ChangeKind::Deleted, 5, "v0"), NetnsIno(9), NOW).unwrap();
        assert_eq!((del.pid, del.comm.as_str(), del.request), (77, "ip", "RTM_DELLINK"));
        let implied = t.cause_of(&change(ChangeKind::Down, 5, "v0"), NetnsIno(9), NOW).unwrap();
        assert_eq!(implied.request, "RTM_DELLINK", "deleting an up link takes it down first");
        assert!(t.cause_of(&change(ChangeKind::Deleted, 6, "v1"), NetnsIno(9), NOW).is_none());
        assert!(t.cause_of(&change(ChangeKind::Deleted, 5, "v0"), NetnsIno(10), NOW).is_none(), "other netns");
    }

    #[test]
    fn delete_by_name_and_creation_are_attributed() {
        let mut t = CauseTracker::default();
        let req = parse_request(&nl_request(RTM_DELLINK, 1, 0, 0, 0, Some("tun7"))).unwrap();
        assert_eq!(req.name.as_deref(), Some("tun7"));
        assert_eq!(req.ifindex, None);
        t.push(req);
        t.push(parse_request(&nl_request(RTM_NEWLINK, 1 | 0x400, 0, 0, 0, Some("tun8"))).unwrap());
        assert!(t.cause_of(&change(ChangeKind::Deleted, 12, "tun7"), NetnsIno(9), NOW).is_some());
        assert!(t.cause_of(&change(ChangeKind::Created, 13, "tun8"), NetnsIno(9), NOW).is_some());
        assert!(t.cause_of(&change(ChangeKind::Created, 13, "tun9"), NetnsIno(9), NOW).is_none());
    }

    #[test]
    fn requests_outside_the_window_or_after_the_change_explain_nothing() {
        let mut t = CauseTracker::default();
        t.push(parse_request(&nl_request(RTM_DELLINK, 1, 5, 0, 0, None)).unwrap());
        let del = change(ChangeKind::Deleted, 5, "v0");
        assert!(t.cause_of(&del, NetnsIno(9), 1_000 + CAUSE_WINDOW_NS).is_some(), "at the window's edge");
        assert!(t.cause_of(&del, NetnsIno(9), 1_001 + CAUSE_WINDOW_NS).is_none(), "stale request");
        assert!(t.cause_of(&del, NetnsIno(9), 999).is_none(), "a request made after the change did not cause it");
    }

    #[test]
    fn veth_creation_names_its_peer() {
        // ip link add va type veth peer name vb: IFLA_IFNAME, then IFLA_LINKINFO { KIND "veth",
        // DATA { VETH_INFO_PEER { ifinfomsg, IFLA_IFNAME "vb" } } }.
        let mut ev = nl_request(RTM_NEWLINK, 1 | 0x400, 0, 0, 0, Some("va"));
        let nla = |ty: u16, payload: &[u8]| {
            let mut v = Vec::new();
            v.extend(((4 + payload.len()) as u16).to_ne_bytes());
            v.extend(ty.to_ne_bytes());
            v.extend(payload);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v
        };
        let mut peer = vec![0u8; 16];
        peer.extend(nla(IFLA_IFNAME, b"vb\0"));
        let data = nla(2 | 0x8000, &nla(VETH_INFO_PEER | 0x8000, &peer));
        let mut info = nla(1, b"veth\0");
        info.extend(data);
        let linkinfo = nla(IFLA_LINKINFO | 0x8000, &info);
        let start = u32::from_ne_bytes([ev.data[0], ev.data[1], ev.data[2], ev.data[3]]) as usize;
        ev.data[start..start + linkinfo.len()].copy_from_slice(&linkinfo);
        ev.data[0..4].copy_from_slice(&((start + linkinfo.len()) as u32).to_ne_bytes());
        let req = parse_request(&ev).unwrap();
        assert_eq!((req.name.as_deref(), req.peer_name.as_deref()), (Some("va"), Some("vb")));
        let mut t = CauseTracker::default();
        t.push(req);
        assert!(t.cause_of(&change(ChangeKind::Created, 8, "vb"), NetnsIno(9), NOW).is_none(), "not named by the request");
        let (cause, other) = t.peer_creation(&change(ChangeKind::Created, 8, "vb"), NetnsIno(9), NOW).unwrap();
        assert_eq!((cause.pid, cause.request, other.as_deref()), (77, "RTM_NEWLINK", Some("va")));
        assert!(t.peer_creation(&change(ChangeKind::Created, 9, "vc"), NetnsIno(9), NOW).is_none());
        assert!(t.peer_creation(&change(ChangeKind::Deleted, 8, "vb"), NetnsIno(9), NOW).is_none());
    }

    #[test]
    fn non_link_messages_are_ignored() {
        assert!(parse_request(&nl_request(24, 1, 5, 0, 0, None)).is_none());
    }
}
