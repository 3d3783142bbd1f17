//! The teardown correlator: the step sequence (down → grace → delete → after-delete) as a state
//! machine, and the observer that turns kernel events and receiver scans into per-socket
//! findings. No I/O: the view feeds it decoded events, blocked-receiver scans, snapshots, step
//! results and CLOCK_MONOTONIC timestamps (ns), and asks it what to do next; it returns a
//! [`TeardownReport`].
//!
//! Sockets are keyed by (netns inode, socket inode): the veth peer's sockets live in another
//! netns and get the same observation as ours.
//!
//! Files: this one holds the plan and the state machine; `observe.rs` the observer;
//! `records.rs` the report and its parts.
use std::{collections::HashSet, net::IpAddr};

use crate::{
    engine::abort::{AbortReport, Skipped, Target},
    kernel::signals::Stop,
    model::{
        ids::{IfIndex, NetnsIno},
        socket::{Binding, Socket},
        stranded::Stranded,
        tie::TiedSocket,
        tun::TunFd,
    },
    probes::{events::Event, Counters},
};

mod observe;
mod records;

use observe::key_of;
pub use observe::Observer;
pub use records::*;

/// The target as found before the teardown.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Its netns inode.
    pub netns: NetnsIno,
    /// Its netns name, when it has one (for the restore/finish commands).
    pub netns_name: Option<String>,
    /// ifindex.
    pub ifindex: IfIndex,
    /// Name.
    pub ifname: String,
    /// rtnetlink kind.
    pub kind: Option<String>,
    /// `IFF_UP` now.
    pub was_up: bool,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// Dry run.
    pub dry_run: bool,
    /// Grace period, ms.
    pub grace_ms: u64,
    /// Sockets tied to it (device, address, wildcard).
    pub sockets: Vec<TiedSocket>,
    /// Every socket of its netns.
    pub netns_sockets: Vec<Socket>,
    /// Interfaces the delete takes with it.
    pub companions: Vec<CompanionPlan>,
    /// Fds holding it, for a tun/tap.
    pub tun_holders: Vec<TunFd>,
}

/// What the view must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the down request; report with [`Teardown::down_sent`] and [`Teardown::down_done`].
    SetDown,
    /// Observe until the grace deadline, a vanish, or a signal; then feed the end observations
    /// and call [`Teardown::grace_over`].
    Observe,
    /// Send the delete request; report with [`Teardown::delete_done`].
    Delete,
    /// The interface is deleted: run what comes after the delete (`--abort-stranded`: destroy
    /// [`Teardown::abort_candidates`], then [`Teardown::abort_done`]; without it call
    /// [`Teardown::after_delete_done`]).
    AfterDelete,
    /// Print the report.
    Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Planned,
    Observing,
    Observed,
    Deleted,
    Done,
}

/// `ms` after `t0` (ns, CLOCK_MONOTONIC), rounded to 0.1 ms; negative before `t0`.
pub fn ms_since(ts_ns: u64, t0: u64) -> f64 {
    let d = ts_ns as i128 - t0 as i128;
    (d as f64 / 100_000.0).round() / 10.0
}
/// The teardown of one interface as a state machine; see [`Next`] for the sequence.
pub struct Teardown {
    plan: Plan,
    phase: Phase,
    obs: Observer,
    down: Option<Step>,
    delete: Option<Step>,
    vanished_ms: Option<f64>,
    interrupted: Option<Stop>,
    error: Option<String>,
    /// Sockets alive at the end of grace (`None` until the end snapshot).
    alive: Option<HashSet<SockKey>>,
    companion_gone: Vec<Option<bool>>,
    unobserved: Vec<String>,
    abort: Option<AbortReport>,
    /// Event-loop waiters per listed socket at the end of grace.
    loop_waiters: std::collections::HashMap<SockKey, Vec<crate::model::stranded::Waiter>>,
}

impl Teardown {
    /// Starts from the plan (nothing done yet).
    pub fn new(plan: Plan) -> Self {
        let mut keys: Vec<SockKey> = plan.sockets.iter().map(key_of).collect();
        let mut sockets = plan.netns_sockets.clone();
        for c in &plan.companions {
            keys.extend(c.sockets.iter().map(key_of));
            sockets.extend(c.netns_sockets.iter().cloned());
        }
        let companion_gone = vec![None; plan.companions.len()];
        Teardown {
            obs: Observer::new(keys, sockets, 0),
            plan,
            phase: Phase::Planned,
            down: None,
            delete: None,
            vanished_ms: None,
            interrupted: None,
            error: None,
            alive: None,
            companion_gone,
            unobserved: Vec::new(),
            abort: None,
            loop_waiters: std::collections::HashMap::new(),
        }
    }

    /// Replaces the plan by one taken again after the probes were attached (anything that
    /// appeared since the first one is then both in the plan and traced). Before the down only.
    pub fn replan(&mut self, plan: Plan) {
        if self.phase == Phase::Planned {
            let unobserved = std::mem::take(&mut self.unobserved);
            *self = Teardown::new(plan);
            self.unobserved = unobserved;
        }
    }

    /// The plan it was made from.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        if self.plan.dry_run || self.error.is_some() {
            return Next::Report;
        }
        match self.phase {
            Phase::Planned if self.interrupted.is_none() => Next::SetDown,
            Phase::Observing => Next::Observe,
            Phase::Observed if self.interrupted.is_none() && self.vanished_ms.is_none() => Next::Delete,
            Phase::Deleted => Next::AfterDelete,
            _ => Next::Report,
        }
    }

    /// Keys of the watched sockets (target's and companions').
    pub fn watched(&self) -> HashSet<SockKey> {
        self.obs.watched.values().copied().collect()
    }

    /// Owners' pids of the listed sockets (to narrow the procfs receiver scan).
    pub fn owner_pids(&self) -> HashSet<u32> {
        let companions = self.plan.companions.iter().flat_map(|c| c.sockets.iter());
        self.plan.sockets.iter().chain(companions).flat_map(|t| t.socket.owners.iter().map(|o| o.pid)).collect()
    }

    /// The down request is being sent now (`t0`, ns): every time in the report is relative to it.
    pub fn down_sent(&mut self, t0: u64) {
        self.obs.t0 = t0;
    }

    /// The kernel answered the down request at `ack` (ns); `blocked` were blocked when it was sent.
    pub fn down_done(&mut self, ack: u64, outcome: StepOutcome, blocked: &[BlockedRecv]) {
        self.obs.blocked_at_down(blocked);
        self.down = Some(step(0.0, ms_since(ack, self.obs.t0), &outcome));
        self.phase = Phase::Observing;
        if outcome.vanished() {
            self.vanished_ms = Some(0.0);
            self.phase = Phase::Done;
        } else if let StepOutcome::Refused { error, .. } = outcome {
            self.error = Some(format!("setting {} down (RTM_NEWLINK ifi_change=IFF_UP): {error}", self.plan.ifname));
            self.phase = Phase::Done;
        }
    }

    /// The interface was gone before the down request (between the plan and the down).
    pub fn vanished_before_down(&mut self) {
        self.vanished_ms = Some(0.0);
        self.phase = Phase::Done;
    }

    /// Receivers blocked right now, in the dry run (reported as blocked now).
    pub fn blocked_now(&mut self, blocked: &[BlockedRecv]) {
        self.obs.blocked_at_down(blocked);
    }

    /// One kernel event during grace.
    pub fn on_event(&mut self, ev: &Event) {
        self.obs.on_event(ev);
    }

    /// The interface disappeared at `now` (ns) without ifsock deleting it.
    pub fn vanished(&mut self, now: u64) {
        self.vanished_ms.get_or_insert(ms_since(now, self.obs.t0));
    }

    /// Has it vanished?
    pub fn has_vanished(&self) -> bool {
        self.vanished_ms.is_some()
    }

    /// A SIGINT/SIGTERM arrived: grace ends, nothing is deleted.
    pub fn interrupt(&mut self, stop: Stop) {
        self.interrupted.get_or_insert(stop);
    }

    /// Grace is over (deadline, vanish or signal): `blocked` are the receivers still blocked and
    /// `alive` the sockets still in the end snapshots (`None`: no snapshot could be taken).
    pub fn grace_over(&mut self, blocked: &[BlockedRecv], alive: Option<HashSet<SockKey>>) {
        self.obs.blocked_at_end(blocked);
        self.alive = alive;
        self.phase = Phase::Observed;
    }

    /// Every listed socket: the target's and the companions' (for the end-of-grace waiter pass).
    pub fn listed_sockets(&self) -> Vec<Socket> {
        let p = &self.plan;
        p.sockets.iter().chain(p.companions.iter().flat_map(|c| c.sockets.iter())).map(|t| t.socket.clone()).collect()
    }

    /// The threads waiting on `socket` at the end of grace (the `/proc` waiter pass): those
    /// waiting in an event loop (not in a receive call: those are receivers) are kept.
    pub fn waiters_at_end(&mut self, socket: &Socket, waiters: Vec<crate::model::stranded::Waiter>) {
        let looping: Vec<_> = waiters.into_iter().filter(|w| w.via != crate::model::stranded::Via::Recv).collect();
        if !looping.is_empty() {
            self.loop_waiters.insert((socket.netns, socket.inode.0), looping);
        }
    }

    /// The delete request was sent at `at` and answered at `ack` (ns).
    pub fn delete_done(&mut self, at: u64, ack: u64, outcome: StepOutcome) {
        self.delete = Some(step(ms_since(at, self.obs.t0), ms_since(ack, self.obs.t0), &outcome));
        match outcome {
            StepOutcome::Ok => self.phase = Phase::Deleted,
            o if o.vanished() => {
                self.vanished_ms = Some(ms_since(at, self.obs.t0));
                self.phase = Phase::Done;
            }
            StepOutcome::Refused { error, .. } => {
                self.error = Some(format!("deleting {} (RTM_DELLINK): {error}", self.plan.ifname));
                self.phase = Phase::Done;
            }
        }
    }

    /// What follows the delete is done.
    pub fn after_delete_done(&mut self) {
        self.phase = Phase::Done;
    }

    /// `teardown --abort-stranded`: which of the listed sockets (the target's and the
    /// companions', e.g. the veth peer's in its netns) to destroy. `now` is a snapshot taken
    /// after the delete (a dry run passes the plan's sockets), `blocked` the receivers blocked
    /// now, `health` the socket's health in its netns (`model::stranded::health`).
    ///
    /// A socket is chosen when it is bound to the interface (device or address) and stranded
    /// now (`because: stranded`), or when a receiver is still blocked on it (`blocked`). A socket
    /// gone from `now`, or whose cookie changed (the inode reused), is not chosen. TCP LISTEN
    /// sockets are kept (returned as skipped): `abort --inode` destroys those on request.
    pub fn abort_candidates(&self, now: &[Socket], blocked: &[BlockedRecv], health: impl Fn(&Socket) -> Option<Stranded>) -> (Vec<Target>, Vec<Skipped>) {
        let p = &self.plan;
        let listed = p.sockets.iter().chain(p.companions.iter().flat_map(|c| c.sockets.iter()));
        let mut targets: Vec<Target> = Vec::new();
        let mut skipped = Vec::new();
        for t in listed {
            let key = key_of(t);
            let Some(s) = now.iter().find(|s| (s.netns, s.inode.0) == key && s.cookie == t.socket.cookie && s.inode.0 != 0) else { continue };
            if targets.iter().any(|x| (x.socket.netns, x.socket.inode.0) == key) {
                continue;
            }
            let stranded = health(s);
            let mut because = Vec::new();
            if matches!(t.binding, Some(Binding::Device | Binding::Address)) && stranded.is_some() {
                because.push("stranded");
            }
            if blocked.iter().any(|b| b.sock == key) {
                because.push("blocked");
            }
            if because.is_empty() {
                continue;
            }
            if s.protocol == crate::model::socket::Protocol::Tcp && s.state == "LISTEN" {
                skipped.push(Skipped { inode: s.inode, why: "TCP LISTEN socket: destroyed only when named by abort --inode" });
                continue;
            }
            targets.push(Target { socket: s.clone(), stranded, because });
        }
        (targets, skipped)
    }

    /// What the delete would do to `s` (for the dry run of `--abort-stranded`): a socket bound to
    /// the target's device or to the veth peer's becomes `device_deleted`; one bound to an
    /// address of the target becomes `address_gone` (unless another interface also holds it,
    /// which the real run checks after the delete).
    pub fn predicted_stranded(&self, s: &Socket) -> Option<Stranded> {
        use crate::model::stranded::StrandReason;
        let p = &self.plan;
        let deleted = std::iter::once((p.netns, p.ifindex, &p.ifname))
            .chain(p.companions.iter().filter(|c| c.relation == Relation::VethPeer).map(|c| (c.netns, c.ifindex, &c.ifname)));
        for (netns, ifindex, name) in deleted {
            if s.netns == netns && s.bound_dev_if == ifindex.0 {
                let address = (!s.local_addr.is_unspecified()).then_some(s.local_addr);
                return Some(Stranded { reason: StrandReason::DeviceDeleted, ifindex: Some(ifindex), ifname: Some(name.clone()), now_ifindex: None, address, since_unix_ns: None });
            }
        }
        (s.netns == p.netns && s.bound_dev_if == 0 && p.addrs.contains(&s.local_addr))
            .then_some(Stranded { reason: StrandReason::AddressGone, ifindex: None, ifname: None, now_ifindex: None, address: Some(s.local_addr), since_unix_ns: None })
    }

    /// The `--abort-stranded` step ran (or, in a dry run, was planned): its report goes into the
    /// teardown report. An interrupt during its observation window interrupts the teardown
    /// (exit 130/143); a socket that could not be destroyed fails it.
    pub fn abort_done(&mut self, r: AbortReport) {
        if let Some(stop) = r.interrupted {
            self.interrupt(stop);
        }
        if r.failed > 0 {
            self.error.get_or_insert(format!("--abort-stranded: {} of {} socket(s) could not be destroyed (see abort.sockets[].error)", r.failed, r.sockets.len()));
        }
        self.abort = Some(r);
        if self.phase == Phase::Deleted {
            self.phase = Phase::Done;
        }
    }

    /// Whether each companion (in plan order) is gone after the teardown (`None`: unchecked).
    pub fn companions_checked(&mut self, gone: Vec<Option<bool>>) {
        for (g, now) in self.companion_gone.iter_mut().zip(gone) {
            *g = now;
        }
    }

    /// The teardown failed for a reason outside the steps (a dump or snapshot failed).
    pub fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    /// Something could not be observed, with the reason.
    pub fn unobserved(&mut self, what: String) {
        self.unobserved.push(what);
    }

    /// What the target is left in, from the steps done so far.
    pub fn state_left(&self) -> LeftState {
        if self.vanished_ms.is_some() {
            LeftState::Gone
        } else if self.delete.as_ref().is_some_and(|d| d.ok) {
            LeftState::Deleted
        } else if self.down.as_ref().is_some_and(|d| d.ok) {
            LeftState::Down
        } else {
            LeftState::Untouched
        }
    }

    /// The report. `counters`: the eBPF counters (`None`: unreadable, said in `unobserved`).
    pub fn report(&self, counters: Option<Counters>) -> TeardownReport {
        let p = &self.plan;
        let (sockets, unlisted) = self.seen(&p.sockets);
        let companions = p
            .companions
            .iter()
            .zip(&self.companion_gone)
            .map(|(c, gone)| Companion {
                relation: c.relation,
                fate: c.relation.fate(),
                netns: c.netns,
                netns_name: c.netns_name.clone(),
                ifindex: c.ifindex,
                ifname: c.ifname.clone(),
                kind: c.kind.clone(),
                sockets: self.seen(&c.sockets).0,
                gone: *gone,
            })
            .collect();
        let state_left = self.state_left();
        let (restore, finish) = if state_left == LeftState::Down {
            let ip_ns = p.netns_name.as_ref().map_or(String::new(), |n| format!("-n {n} "));
            let ifsock_ns = p.netns_name.as_ref().map_or(String::new(), |n| format!("--netns {n} "));
            (
                Some(format!("ip {ip_ns}link set {} up", p.ifname)),
                Some(format!("ifsock {ifsock_ns}teardown {} --grace 0 --yes", p.ifname)),
            )
        } else {
            (None, None)
        };
        let mut unobserved = self.unobserved.clone();
        if let Some(c) = counters.filter(|c| c.ringbuf_drops > 0) {
            unobserved.push(format!("{} events lost to a full ring buffer", c.ringbuf_drops));
        }
        TeardownReport {
            ty: "teardown",
            netns: p.netns,
            netns_name: p.netns_name.clone(),
            ifindex: p.ifindex,
            ifname: p.ifname.clone(),
            kind: p.kind.clone(),
            was_up: p.was_up,
            addrs: p.addrs.clone(),
            dry_run: p.dry_run,
            grace_ms: p.grace_ms,
            down: self.down.clone(),
            delete: self.delete.clone(),
            vanished_ms: self.vanished_ms,
            gone: matches!(state_left, LeftState::Deleted | LeftState::Gone),
            sockets,
            wildcard_sockets: unlisted,
            companions,
            tun_holders: p.tun_holders.clone(),
            interrupted: self.interrupted.is_some(),
            signal: self.interrupted,
            error: self.error.clone(),
            state_left,
            restore,
            finish,
            unobserved,
            counters: counters.unwrap_or_default(),
            abort: self.abort.clone(),
        }
    }

    /// Device/address-bound sockets with what they saw, plus wildcard sockets that saw errors;
    /// and the count of wildcard sockets left out.
    fn seen(&self, tied: &[TiedSocket]) -> (Vec<SocketSeen>, usize) {
        let mut unlisted = 0;
        let seen = tied
            .iter()
            .filter_map(|t| {
                let key = key_of(t);
                let (send_errors, socket_errors, receivers) = self.obs.for_socket(key);
                let wildcard = t.binding == Some(Binding::Wildcard);
                if wildcard && send_errors.is_empty() && socket_errors.is_empty() {
                    unlisted += 1;
                    return None;
                }
                let closed = key.1 != 0 && self.alive.as_ref().is_some_and(|a| !a.contains(&key));
                let waiters = self.loop_waiters.get(&key).cloned().unwrap_or_default();
                Some(SocketSeen { tied: t.clone(), send_errors, socket_errors, receivers, closed, waiters })
            })
            .collect();
        (seen, unlisted)
    }
}

fn step(at_ms: f64, ack_ms: f64, outcome: &StepOutcome) -> Step {
    match outcome {
        StepOutcome::Ok => Step { at_ms, ack_ms, ok: true, error: None },
        StepOutcome::Refused { error, .. } => Step { at_ms, ack_ms, ok: false, error: Some(error.clone()) },
    }
}
#[cfg(test)]
mod tests;
