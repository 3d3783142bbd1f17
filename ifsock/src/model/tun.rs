//! tun/tap devices, the fds attached to them and their queues.
//!
//! Two kernel sources are joined here:
//! - the link dump (`RTM_GETLINK`, `IFLA_LINKINFO` kind `tun` with `IFLA_INFO_DATA` from
//!   `tun_fill_info()` in drivers/net/tun.c, >= 4.15): every device, also a persistent one no
//!   process holds open;
//! - `iter/task_file` records of kind `TUN` (one per fd on `/dev/net/tun`): queue index, state,
//!   `tx_ring` occupancy, and `tun_struct.flags` as the driver holds them.
//!
//! Records are matched to a device by ifindex *and* the device's netns
//! (`tun->dev->nd_net.net->ns.inum`): the task iterator is system-wide, ifindexes are per netns,
//! and the fd holder may live in another netns than the device.
use std::collections::BTreeMap;

use ifsock_common::{file_kind, TaskFileRecord};
use serde::Serialize;

use super::ids::{comm_str, IfIndex, NetnsIno};

/// `IFF_TUN` (include/uapi/linux/if_tun.h): layer-3 device.
pub const IFF_TUN: u32 = 0x0001;
/// `IFF_TAP`: layer-2 (Ethernet) device.
pub const IFF_TAP: u32 = 0x0002;
/// `IFF_MULTI_QUEUE`: one queue per attached fd.
pub const IFF_MULTI_QUEUE: u32 = 0x0100;
/// `IFF_PERSIST`, stored as `TUN_PERSIST` in `tun_struct.flags`: survives the last close.
pub const IFF_PERSIST: u32 = 0x0800;
/// `IFF_NO_PI`: no `struct tun_pi` header in front of packets.
pub const IFF_NO_PI: u32 = 0x1000;
/// `IFF_VNET_HDR`: a `virtio_net_hdr` in front of packets.
pub const IFF_VNET_HDR: u32 = 0x4000;
/// `IFF_DETACH_QUEUE` (`TUNSETQUEUE` request flag): disable one queue of a multi-queue device.
pub const IFF_DETACH_QUEUE: u32 = 0x0400;

/// `IFLA_TUN_*` attribute types inside `IFLA_INFO_DATA` (include/uapi/linux/if_link.h).
pub mod ifla_tun {
    /// `u32` owner uid (absent when unset).
    pub const OWNER: u16 = 1;
    /// `u32` group gid (absent when unset).
    pub const GROUP: u16 = 2;
    /// `u8`: `tun->flags & TUN_TYPE_MASK` (IFF_TUN or IFF_TAP).
    pub const TYPE: u16 = 3;
    /// `u8`: 1 unless `IFF_NO_PI`.
    pub const PI: u16 = 4;
    /// `u8`: `IFF_VNET_HDR`.
    pub const VNET_HDR: u16 = 5;
    /// `u8`: `IFF_PERSIST`.
    pub const PERSIST: u16 = 6;
    /// `u8`: `IFF_MULTI_QUEUE`.
    pub const MULTI_QUEUE: u16 = 7;
    /// `u32` `tun->numqueues` (multi-queue devices only).
    pub const NUM_QUEUES: u16 = 8;
    /// `u32` `tun->numdisabled` (multi-queue devices only).
    pub const NUM_DISABLED_QUEUES: u16 = 9;
}

/// tun (layer 3) or tap (layer 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunMode {
    /// `IFF_TUN`.
    Tun,
    /// `IFF_TAP`.
    Tap,
}

/// Device flags decoded from `tun_struct.flags` or from `IFLA_INFO_DATA`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TunFlags {
    /// tun or tap (`None`: neither bit set, which the driver never does).
    pub mode: Option<TunMode>,
    /// `IFF_MULTI_QUEUE`.
    pub multi_queue: bool,
    /// `IFF_PERSIST`.
    pub persist: bool,
    /// `IFF_VNET_HDR`.
    pub vnet_hdr: bool,
    /// `IFF_NO_PI`.
    pub no_pi: bool,
}

impl TunFlags {
    /// Decodes `tun_struct.flags` (`TUN_TYPE_MASK` bits, `TUN_FEATURES` bits, `TUN_PERSIST`).
    pub fn from_tun_struct(flags: u32) -> Self {
        let mode = match flags & (IFF_TUN | IFF_TAP) {
            IFF_TUN => Some(TunMode::Tun),
            IFF_TAP => Some(TunMode::Tap),
            _ => None,
        };
        TunFlags {
            mode,
            multi_queue: flags & IFF_MULTI_QUEUE != 0,
            persist: flags & IFF_PERSIST != 0,
            vnet_hdr: flags & IFF_VNET_HDR != 0,
            no_pi: flags & IFF_NO_PI != 0,
        }
    }
}

/// One tun/tap link from the link dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunLink {
    /// ifindex.
    pub ifindex: IfIndex,
    /// `IFLA_IFNAME`.
    pub name: String,
    /// `ifi_flags` (`IFF_UP`, `IFF_LOWER_UP`, …).
    pub link_flags: u32,
    /// Decoded `IFLA_INFO_DATA`, `None` when the kernel sent none (< 4.15).
    pub info: Option<TunInfo>,
}

/// `IFLA_INFO_DATA` of a tun link (`tun_fill_info()`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunInfo {
    /// `IFLA_TUN_OWNER`.
    pub owner: Option<u32>,
    /// `IFLA_TUN_GROUP`.
    pub group: Option<u32>,
    /// `IFLA_TUN_TYPE`.
    pub tun_type: Option<u8>,
    /// `IFLA_TUN_PI`.
    pub pi: Option<bool>,
    /// `IFLA_TUN_VNET_HDR`.
    pub vnet_hdr: Option<bool>,
    /// `IFLA_TUN_PERSIST`.
    pub persist: Option<bool>,
    /// `IFLA_TUN_MULTI_QUEUE`.
    pub multi_queue: Option<bool>,
    /// `IFLA_TUN_NUM_QUEUES` (attached queues).
    pub num_queues: Option<u32>,
    /// `IFLA_TUN_NUM_DISABLED_QUEUES` (detached queues).
    pub num_disabled: Option<u32>,
}

impl TunInfo {
    /// Folds one `IFLA_TUN_*` attribute (type, payload) in; unknown types and short payloads
    /// are ignored.
    pub fn apply(&mut self, kind: u16, value: &[u8]) {
        let u8v = value.first().copied();
        let u32v = value.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match kind {
            ifla_tun::OWNER => self.owner = u32v,
            ifla_tun::GROUP => self.group = u32v,
            ifla_tun::TYPE => self.tun_type = u8v,
            ifla_tun::PI => self.pi = u8v.map(|v| v != 0),
            ifla_tun::VNET_HDR => self.vnet_hdr = u8v.map(|v| v != 0),
            ifla_tun::PERSIST => self.persist = u8v.map(|v| v != 0),
            ifla_tun::MULTI_QUEUE => self.multi_queue = u8v.map(|v| v != 0),
            ifla_tun::NUM_QUEUES => self.num_queues = u32v,
            ifla_tun::NUM_DISABLED_QUEUES => self.num_disabled = u32v,
            _ => {}
        }
    }

    /// The flags as `IFLA_INFO_DATA` states them.
    pub fn flags(&self) -> TunFlags {
        let mode = match self.tun_type.map(u32::from) {
            Some(IFF_TUN) => Some(TunMode::Tun),
            Some(IFF_TAP) => Some(TunMode::Tap),
            _ => None,
        };
        TunFlags {
            mode,
            multi_queue: self.multi_queue.unwrap_or(false),
            persist: self.persist.unwrap_or(false),
            vnet_hdr: self.vnet_hdr.unwrap_or(false),
            no_pi: self.pi.is_some_and(|pi| !pi),
        }
    }
}

/// State of the queue behind one fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// In `tun->tfiles[]`: the kernel steers packets into it.
    Attached,
    /// Disabled with `TUNSETQUEUE` `IFF_DETACH_QUEUE` (`tun_file.detached` set): gets no packets.
    Detached,
}

/// One fd on `/dev/net/tun` attached to a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunFd {
    /// Thread-group id of the holder.
    pub pid: u32,
    /// Holder's command.
    pub comm: String,
    /// File descriptor number.
    pub fd: u32,
    /// `tun_file.queue_index`; `None` while detached (the index then belongs to another queue).
    pub queue: Option<u32>,
    /// Attached or detached.
    pub state: QueueState,
    /// Packets waiting in `tun_file.tx_ring` at the first snapshot (`None`: single snapshot, or
    /// the fd was not open yet).
    pub backlog_before: Option<u32>,
    /// Packets waiting in `tun_file.tx_ring` now (producer − consumer_head, ring size when full).
    pub backlog: u32,
    /// `tx_ring.size` in slots (the device's `tx_queue_len` when the queue was attached).
    pub ring_size: u32,
}

/// Why an attached queue is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckKind {
    /// The backlog grew between the snapshots.
    Grew,
    /// The ring was full at both snapshots (the kernel drops what it steers there).
    StayedFull,
    /// The backlog stayed at the same non-zero count.
    Stayed,
}

/// An attached queue whose backlog is non-zero and did not decrease between two snapshots:
/// packets are steered into it and nobody reads them (seed 001).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueWarning {
    /// Queue index.
    pub queue: u32,
    /// Backlog at the first snapshot (packets).
    pub before: u32,
    /// Backlog at the second snapshot (packets).
    pub after: u32,
    /// Ring size (slots).
    pub ring_size: u32,
    /// Grew, stayed full, or stayed.
    pub kind: StuckKind,
    /// The sentence shown to users.
    pub message: String,
}

impl QueueWarning {
    fn new(queue: u32, before: u32, after: u32, ring_size: u32) -> Option<Self> {
        if after == 0 || after < before {
            return None;
        }
        let (kind, what) = if after > before {
            (StuckKind::Grew, format!("backlog grew {before}→{after}"))
        } else if ring_size > 0 && after >= ring_size {
            (StuckKind::StayedFull, format!("backlog stayed full {before}→{after} (ring {ring_size})"))
        } else {
            (StuckKind::Stayed, format!("backlog stayed {before}→{after}"))
        };
        let message = format!("queue {queue} attached, {what}, nobody reads it: the kernel steers packets into it");
        Some(QueueWarning { queue, before, after, ring_size, kind, message })
    }
}

/// One tun/tap device with its fds and warnings.
#[derive(Clone, Debug, Serialize)]
pub struct TunDevice {
    /// Netns inode of the device.
    pub netns: NetnsIno,
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name.
    pub name: String,
    /// `IFF_UP`.
    pub up: bool,
    /// `IFF_LOWER_UP` (tun: at least one fd attached, or carrier forced).
    pub carrier: bool,
    /// Decoded flags: from `tun_struct.flags` when an fd is open, else from `IFLA_INFO_DATA`.
    #[serde(flatten)]
    pub flags: TunFlags,
    /// Raw `tun_struct.flags` read by `iter/task_file` (`None` when no fd is open).
    pub tun_struct_flags: Option<u32>,
    /// Owner uid (`tun_struct.owner`; `None` when unset).
    pub owner: Option<u32>,
    /// Group gid (`tun_struct.group`; `None` when unset).
    pub group: Option<u32>,
    /// Attached queues (`tun_struct.numqueues`).
    pub numqueues: u32,
    /// Detached queues (`tun_struct.numdisabled`).
    pub numdisabled: u32,
    /// Every fd attached to it (an fd shared by several processes appears once per holder).
    pub fds: Vec<TunFd>,
    /// Stuck attached queues.
    pub warnings: Vec<QueueWarning>,
}

/// `kuid_t`/`kgid_t` value meaning "unset" (`INVALID_UID`).
const INVALID_ID: u32 = u32::MAX;

/// True when `r` is an fd on the tun device (`netns`, `link`). A record without the device's
/// netns (offset `net_device.nd_net` missing) is matched by ifindex and name instead.
fn record_matches(r: &TaskFileRecord, netns: NetnsIno, link: &TunLink) -> bool {
    r.kind == file_kind::TUN
        && r.tun_ifindex == link.ifindex.0
        && if r.tun_netns != 0 { r.tun_netns == netns.0 } else { comm_str(&r.tun_name) == link.name }
}

/// Builds the devices of one netns from its tun links and one or two `iter/task_file` snapshots
/// (`before` taken an interval earlier than `after`, for the backlog comparison).
pub fn build(links: &[TunLink], netns: NetnsIno, before: Option<&[TaskFileRecord]>, after: &[TaskFileRecord]) -> Vec<TunDevice> {
    links
        .iter()
        .map(|link| {
            let mine: Vec<&TaskFileRecord> = after.iter().filter(|r| record_matches(r, netns, link)).collect();
            let earlier: BTreeMap<(u32, u32), &TaskFileRecord> = before
                .unwrap_or_default()
                .iter()
                .filter(|r| record_matches(r, netns, link))
                .map(|r| ((r.pid, r.fd), r))
                .collect();
            let info = link.info.clone().unwrap_or_default();
            let live = mine.first().copied();
            let flags = match (live, &link.info) {
                (Some(r), _) => TunFlags::from_tun_struct(r.tun_flags),
                (None, Some(i)) => i.flags(),
                (None, None) => TunFlags { mode: None, multi_queue: false, persist: false, vnet_hdr: false, no_pi: false },
            };
            let id = |v: u32| (v != INVALID_ID).then_some(v);
            let mut fds: Vec<TunFd> = mine
                .iter()
                .map(|r| {
                    let state = if r.tun_detached != 0 { QueueState::Detached } else { QueueState::Attached };
                    TunFd {
                        pid: r.pid,
                        comm: comm_str(&r.comm),
                        fd: r.fd,
                        queue: (state == QueueState::Attached).then_some(r.tun_queue),
                        state,
                        backlog_before: before.and_then(|_| earlier.get(&(r.pid, r.fd)).map(|e| e.tun_backlog)),
                        backlog: r.tun_backlog,
                        ring_size: r.tun_ring_size,
                    }
                })
                .collect();
            fds.sort_by_key(|f| (f.pid, f.fd));
            let mut warnings: BTreeMap<u32, QueueWarning> = BTreeMap::new();
            for f in &fds {
                if let (Some(q), Some(b)) = (f.queue, f.backlog_before) {
                    if let Some(w) = QueueWarning::new(q, b, f.backlog, f.ring_size) {
                        // Several fds on one open file (dup, fork) share the queue: warn once.
                        warnings.entry(q).or_insert(w);
                    }
                }
            }
            TunDevice {
                netns,
                ifindex: link.ifindex,
                name: link.name.clone(),
                up: link.link_flags & super::link::IFF_UP != 0,
                carrier: link.link_flags & super::link::IFF_LOWER_UP != 0,
                flags,
                tun_struct_flags: live.map(|r| r.tun_flags),
                owner: live.map_or(info.owner, |r| id(r.tun_owner)),
                group: live.map_or(info.group, |r| id(r.tun_group)),
                numqueues: live.map_or(info.num_queues.unwrap_or(0), |r| r.tun_numqueues),
                numdisabled: live.map_or(info.num_disabled.unwrap_or(0), |r| r.tun_numdisabled),
                fds,
                warnings: warnings.into_values().collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, fd: u32, ifindex: u32, netns: u32, queue: u32, detached: bool, backlog: u32) -> TaskFileRecord {
        let mut name = [0u8; 16];
        name[..4].copy_from_slice(b"tun0");
        TaskFileRecord {
            kind: file_kind::TUN, pid, tid: pid, fd, ino: 99, comm: [b'x'; 16], netns: 1,
            tun_ifindex: ifindex, tun_name: name, tun_flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE,
            tun_queue: queue, tun_detached: detached as u32, tun_backlog: backlog, tun_ring_size: 500,
            tun_numqueues: 1, tun_numdisabled: 1, tun_owner: u32::MAX, tun_group: 7, tun_netns: netns,
        }
    }

    fn link(ifindex: u32) -> TunLink {
        TunLink { ifindex: IfIndex(ifindex), name: "tun0".into(), link_flags: 0x1, info: None }
    }

    #[test]
    fn flags_decode_from_tun_struct_and_netlink_agree() {
        let f = TunFlags::from_tun_struct(IFF_TAP | IFF_PERSIST | IFF_VNET_HDR | 0x8000_0000);
        assert_eq!(f, TunFlags { mode: Some(TunMode::Tap), multi_queue: false, persist: true, vnet_hdr: true, no_pi: false });
        let mut i = TunInfo::default();
        for (k, v) in [(ifla_tun::TYPE, vec![2u8]), (ifla_tun::PI, vec![1]), (ifla_tun::VNET_HDR, vec![1]), (ifla_tun::PERSIST, vec![1]), (ifla_tun::MULTI_QUEUE, vec![0]), (ifla_tun::OWNER, 1000u32.to_ne_bytes().to_vec()), (ifla_tun::NUM_QUEUES, vec![1])] {
            i.apply(k, &v);
        }
        assert_eq!(i.flags(), f);
        assert_eq!(i.owner, Some(1000));
        assert_eq!(i.num_queues, None, "a short u32 payload is ignored");
    }

    #[test]
    fn records_match_by_device_netns_and_detached_queues_have_no_index() {
        let before = [rec(10, 4, 7, 50, 0, false, 3), rec(10, 5, 7, 50, 0, true, 0), rec(11, 4, 7, 51, 0, false, 9)];
        let after = [rec(10, 4, 7, 50, 0, false, 8), rec(10, 5, 7, 50, 0, true, 0), rec(11, 4, 7, 51, 0, false, 9)];
        let devs = build(&[link(7)], NetnsIno(50), Some(&before), &after);
        assert_eq!(devs.len(), 1);
        let d = &devs[0];
        assert_eq!(d.fds.len(), 2, "the record of ifindex 7 in netns 51 is another device");
        assert_eq!((d.fds[0].queue, d.fds[0].state, d.fds[0].backlog_before, d.fds[0].backlog), (Some(0), QueueState::Attached, Some(3), 8));
        assert_eq!((d.fds[1].queue, d.fds[1].state), (None, QueueState::Detached));
        assert_eq!((d.owner, d.group), (None, Some(7)));
        assert_eq!(d.warnings.len(), 1);
        assert_eq!(d.warnings[0].kind, StuckKind::Grew);
        assert_eq!(d.warnings[0].message, "queue 0 attached, backlog grew 3→8, nobody reads it: the kernel steers packets into it");
    }

    #[test]
    fn queue_warning_needs_a_nonzero_backlog_that_did_not_decrease() {
        assert!(QueueWarning::new(0, 0, 0, 500).is_none());
        assert!(QueueWarning::new(0, 9, 4, 500).is_none(), "someone reads it");
        assert_eq!(QueueWarning::new(1, 500, 500, 500).map(|w| w.kind), Some(StuckKind::StayedFull));
        assert_eq!(QueueWarning::new(1, 5, 5, 500).map(|w| w.kind), Some(StuckKind::Stayed));
        let single = build(&[link(7)], NetnsIno(50), None, &[rec(10, 4, 7, 50, 0, false, 8)]);
        assert!(single[0].warnings.is_empty(), "one snapshot cannot show growth");
        let persistent = build(&[TunLink { info: Some(TunInfo { tun_type: Some(1), persist: Some(true), ..Default::default() }), ..link(8) }], NetnsIno(50), None, &[]);
        assert!(persistent[0].fds.is_empty());
        assert!(persistent[0].flags.persist);
        assert_eq!(persistent[0].flags.mode, Some(TunMode::Tun));
    }
}
