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
    /// Probe that saw it (`tracepoint:syscalls:sys_enter_sendmsg`).
    pub evidence: &'static str,
}

/// Parses a captured request; `None` when the bytes are not a link request.
pub fn parse_request(ev: &LinkRequestEvent) -> Option<LinkRequest> {
    let data = &ev.data[..(ev.len as usize).min(ev.data.len())];
    let base = |op, ifindex: Option<IfIndex>, name: Option<String>, evidence| LinkRequest {
        ts_ns: ev.ts_ns,
        pid: ev.pid,
        tid: ev.tid,
        comm: comm_str(&ev.comm),
        netns: NetnsIno(ev.netns),
        op,
        ifindex,
        name,
        evidence,
    };
    if ev.via == link_request_via::IOCTL_SIOCSIFFLAGS {
        // struct ifreq { char ifr_name[16]; short ifr_flags; }
        if data.len() < 18 {
            return None;
        }
        let flags = u16::from_ne_bytes([data[16], data[17]]) as u32;
        let name = comm_str(&data[..16]);
        return Some(base(RequestOp::Set { flags, change: 0, create: false }, None, Some(name), "tracepoint:syscalls:sys_enter_ioctl"));
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
    let mut name = None;
    let mut off = 32;
    while off + 4 <= msg_len {
        let alen = u16_at(off) as usize;
        let aty = u16_at(off + 2) & 0x3fff;
        if alen < 4 || off + alen > msg_len {
            break;
        }
        if aty == IFLA_IFNAME {
            name = Some(comm_str(&data[off + 4..off + alen]));
        }
        off += (alen + 3) & !3;
    }
    let op = match ty {
        RTM_DELLINK => RequestOp::Delete,
        RTM_NEWLINK | RTM_SETLINK => RequestOp::Set { flags, change, create: nl_flags & 0x400 != 0 },
        _ => return None,
    };
    let evidence = if ev.via == link_request_via::SENDTO {
        "tracepoint:syscalls:sys_enter_sendto"
    } else {
        "tracepoint:syscalls:sys_enter_sendmsg"
    };
    Some(base(op, (index != 0).then_some(IfIndex(index)), name, evidence))
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
    /// interface had before a rename).
    pub fn cause_of(&self, change: &Change, netns: NetnsIno) -> Option<Cause> {
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
        let found = self.recent.iter().rev().find(|r| {
            (r.netns == netns || r.netns.0 == 0 || netns.0 == 0)
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
        })?;
        let request = match (&found.op, found.evidence) {
            (_, "tracepoint:syscalls:sys_enter_ioctl") => "SIOCSIFFLAGS",
            (RequestOp::Delete, _) => "RTM_DELLINK",
            (RequestOp::Set { .. }, _) => "RTM_NEWLINK",
        };
        Some(Cause { pid: found.pid, tid: found.tid, comm: found.comm.clone(), request, evidence: found.evidence })
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

    fn change(kind: ChangeKind, ifindex: u32, name: &str) -> Change {
        Change { kind, ifindex: IfIndex(ifindex), name: name.into(), old_name: None, old_ifindex: None, address: None }
    }

    #[test]
    fn delete_by_index_and_down_by_flags_are_attributed() {
        // Live order: each change is matched when it arrives, after its own request.
        let mut t = CauseTracker::default();
        t.push(parse_request(&nl_request(RTM_NEWLINK, 1, 5, 0, IFF_UP, None)).unwrap());
        assert_eq!(t.cause_of(&change(ChangeKind::Down, 5, "v0"), NetnsIno(9)).unwrap().request, "RTM_NEWLINK");
        assert!(t.cause_of(&change(ChangeKind::Up, 5, "v0"), NetnsIno(9)).is_none(), "a down request does not explain up");
        assert!(t.cause_of(&change(ChangeKind::Deleted, 5, "v0"), NetnsIno(9)).is_none(), "a down request does not explain a delete");
        t.push(parse_request(&nl_request(RTM_DELLINK, 1, 5, 0, 0, None)).unwrap());
        let del = t.cause_of(&change(ChangeKind::Deleted, 5, "v0"), NetnsIno(9)).unwrap();
        assert_eq!((del.pid, del.comm.as_str(), del.request), (77, "ip", "RTM_DELLINK"));
        let implied = t.cause_of(&change(ChangeKind::Down, 5, "v0"), NetnsIno(9)).unwrap();
        assert_eq!(implied.request, "RTM_DELLINK", "deleting an up link takes it down first");
        assert!(t.cause_of(&change(ChangeKind::Deleted, 6, "v1"), NetnsIno(9)).is_none());
        assert!(t.cause_of(&change(ChangeKind::Deleted, 5, "v0"), NetnsIno(10)).is_none(), "other netns");
    }

    #[test]
    fn delete_by_name_and_creation_are_attributed() {
        let mut t = CauseTracker::default();
        let req = parse_request(&nl_request(RTM_DELLINK, 1, 0, 0, 0, Some("tun7"))).unwrap();
        assert_eq!(req.name.as_deref(), Some("tun7"));
        assert_eq!(req.ifindex, None);
        t.push(req);
        t.push(parse_request(&nl_request(RTM_NEWLINK, 1 | 0x400, 0, 0, 0, Some("tun8"))).unwrap());
        assert!(t.cause_of(&change(ChangeKind::Deleted, 12, "tun7"), NetnsIno(9)).is_some());
        assert!(t.cause_of(&change(ChangeKind::Created, 13, "tun8"), NetnsIno(9)).is_some());
        assert!(t.cause_of(&change(ChangeKind::Created, 13, "tun9"), NetnsIno(9)).is_none());
    }

    #[test]
    fn non_link_messages_are_ignored() {
        assert!(parse_request(&nl_request(24, 1, 5, 0, 0, None)).is_none());
    }
}
