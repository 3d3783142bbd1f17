//! Device-path probes for the fentry and kprobe sets: `*_close_many` (down, and the close
//! before a delete) and `unregister_netdevice_queue` (delete, netns teardown, driver removal).
//! They run in the context of whoever caused the change, so the event names that task even
//! when no netlink request was sent (a tun whose last fd closed, a netns torn down).
//!
//! The target functions are chosen by userspace from the running kernel's BTF at load time
//! (`netif_close_many` on >= 6.15, `dev_close_many` before); the section names below only
//! give defaults.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use ifsock_common::{device_reason, probe_via, Counter, DeviceEvent, EventKind, IFNAME_LEN, OFFSET_NONE};

use crate::{
    kernel::{current_task, net_inum, off, rd, task_ids},
    maps::{count, EVENTS},
};

/// Bound on devices walked from one close list (the verifier needs a bound; `ip link` closes one).
const MAX_CLOSE_LIST: u32 = 16;

#[inline(always)]
fn emit(dev: u64, reason: u32, via: u32) {
    if dev == 0 {
        return;
    }
    let (pid, tid, comm) = task_ids(current_task());
    let ev = DeviceEvent {
        kind: EventKind::Device as u32,
        reason,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: rd::<u32>(dev, off!(dev_ifindex)).unwrap_or(0),
        netns: net_inum(rd::<u64>(dev, off!(dev_nd_net)).unwrap_or(0)),
        pid,
        tid,
        comm,
        name: rd::<[u8; IFNAME_LEN]>(dev, off!(dev_name)).unwrap_or([0; IFNAME_LEN]),
        via,
        _pad: 0,
    };
    if EVENTS.output(&ev, 0).is_err() {
        count(Counter::RingbufDrops);
    }
}

/// Walks `struct list_head *head` of devices linked by `net_device.close_list`.
#[inline(always)]
fn close_list(head: u64, via: u32) {
    let link = off!(dev_close_list);
    if head == 0 || link == OFFSET_NONE {
        return;
    }
    let mut node = rd::<u64>(head, 0).unwrap_or(0);
    for _ in 0..MAX_CLOSE_LIST {
        if node == 0 || node == head {
            return;
        }
        emit(node - link as u64, device_reason::CLOSE, via);
        node = rd::<u64>(node, 0).unwrap_or(0);
    }
}

/// fentry on `{netif,dev}_close_many(struct list_head *head, bool unlink)`.
#[fentry(function = "dev_close_many")]
pub fn dev_fentry_close_many(ctx: FEntryContext) -> u32 {
    close_list(ctx.arg::<u64>(0), probe_via::FENTRY);
    0
}

/// fentry on `unregister_netdevice_queue(struct net_device *dev, struct list_head *head)`.
#[fentry(function = "unregister_netdevice_queue")]
pub fn dev_fentry_unregister(ctx: FEntryContext) -> u32 {
    emit(ctx.arg::<u64>(0), device_reason::UNREGISTER, probe_via::FENTRY);
    0
}

/// kprobe on `{netif,dev}_close_many`.
#[kprobe]
pub fn dev_kprobe_close_many(ctx: ProbeContext) -> u32 {
    close_list(ctx.arg::<u64>(0).unwrap_or(0), probe_via::KPROBE);
    0
}

/// kprobe on `unregister_netdevice_queue`.
#[kprobe]
pub fn dev_kprobe_unregister(ctx: ProbeContext) -> u32 {
    emit(ctx.arg::<u64>(0).unwrap_or(0), device_reason::UNREGISTER, probe_via::KPROBE);
    0
}
