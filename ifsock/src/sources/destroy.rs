//! The kernel work of `abort` (also run by `teardown --abort-stranded`): find the threads
//! waiting on the targets, pick the mechanism, destroy each target inside its own netns, and
//! watch the waiters' syscall returns for the observation window. Selection and the report are in [`crate::engine::abort`].
use std::time::Duration;

use anyhow::Result;

use crate::{
    engine::abort::{self, AbortReport, Observation, Outcome, Return, Skipped, Target, Via, Waiter},
    kernel::{
        clock::monotonic_ns,
        netns::NetnsHandle,
        procfs,
        signals::Signals,
        sock_diag::{self, DestroyOutcome, DiagSocket},
        waiters::WaiterIndex,
    },
    model::{
        ids::NetnsIno,
        socket::{Protocol, Socket},
        sys::errno_desc,
    },
    probes::{
        destroy::{DestroyIter, KfuncOutcome},
        Probes,
    },
};

/// Threads waiting on `targets`: receivers blocked on them (a closed fd is tied to the only
/// ownerless socket of its netns among `all`), then the epoll/poll/select waiters and the
/// receivers `kernel::waiters` finds through open fds.
pub fn waiters(targets: &[Socket], all: &[Socket]) -> Vec<Waiter> {
    from_proc(targets, all, &WaiterIndex::discover())
}

/// Threads waiting on `targets`, from the sockets' own wait queues in `spaces`
/// ([`super::waiters::index`]): every one `certainty: "exact"`, closed fds included. Where the
/// walk cannot run, the `/proc` fallback of [`waiters`] (with the index it already read).
pub fn waiters_exact<'a>(probes: &mut Probes, spaces: impl IntoIterator<Item = Option<&'a NetnsHandle>>, targets: &[Socket], all: &[Socket]) -> Vec<Waiter> {
    let index = super::waiters::index(probes, spaces);
    if !index.is_wait_queue() {
        return from_proc(targets, all, &index);
    }
    let mut out = Vec::new();
    for t in targets {
        abort::add_wait_queue(&mut out, t.inode, &index.for_socket(t), |tid| index.passed_fd(t.inode, tid));
    }
    out
}

/// The `/proc` answer: blocked receivers (a closed fd tied by inference), then `index`'s
/// epoll/poll/select waiters through open fds.
fn from_proc(targets: &[Socket], all: &[Socket], index: &WaiterIndex) -> Vec<Waiter> {
    let mut out = abort::waiters_of(targets, all, &procfs::blocked_receivers(None));
    for t in targets {
        abort::add_indexed(&mut out, t.inode, &index.for_socket(t));
    }
    out
}

/// Which destroy mechanism to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ViaChoice {
    /// bpf_sock_destroy() when it loads, else sock_diag.
    Auto,
    /// Only bpf_sock_destroy() (fails when it does not load).
    Bpf,
    /// Only SOCK_DESTROY over NETLINK_SOCK_DIAG.
    SockDiag,
}

/// The chosen mechanism: loaded destroy iterators (one per protocol among the targets), or
/// sock_diag with the reason the iterator was not used.
pub struct Mechanism {
    /// The mechanism that runs.
    pub via: Via,
    /// Why a better one was not used.
    pub refused: Vec<String>,
    iters: Vec<DestroyIter>,
}

/// Picks the mechanism: the kfunc iterator for every protocol among the targets, else sock_diag.
/// Loading the iterator destroys nothing, so a dry run calls this too.
///
/// # Errors
/// `--via bpf` and the iterator does not load.
pub fn choose(choice: ViaChoice, targets: &[Target]) -> Result<Mechanism> {
    if choice == ViaChoice::SockDiag {
        return Ok(Mechanism { via: Via::SockDiag, refused: Vec::new(), iters: Vec::new() });
    }
    let mut protocols: Vec<Protocol> = targets.iter().map(|t| t.socket.protocol).collect();
    protocols.sort_by_key(|p| *p as u8);
    protocols.dedup();
    let loaded: Result<Vec<DestroyIter>> = protocols.iter().map(|p| DestroyIter::load(*p, targets.len() as u32)).collect();
    match loaded {
        Ok(iters) => Ok(Mechanism { via: Via::BpfSockDestroy, refused: Vec::new(), iters }),
        Err(e) if choice == ViaChoice::Bpf => Err(e.context("--via bpf")),
        Err(e) => {
            tracing::info!("bpf_sock_destroy not usable, using sock_diag: {e:#}");
            Ok(Mechanism { via: Via::SockDiag, refused: vec![format!("bpf_sock_destroy: {e:#}")], iters: Vec::new() })
        }
    }
}

/// Runs `f` in netns `ino`: directly when it is ours, else on a thread inside it (the destroy
/// iterator walks, and a sock_diag socket sees, the netns current when it is created).
fn in_netns<T: Send>(ino: NetnsIno, here: NetnsIno, handles: &[&NetnsHandle], f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if ino == here {
        return Ok(f());
    }
    let h = handles.iter().find(|h| h.ino == ino).ok_or_else(|| format!("netns {ino} is not open (no handle under /run/netns or /proc/*/ns/net)"))?;
    h.run(f).map_err(|e| format!("{e:#}"))
}

impl Mechanism {
    /// Destroys `targets` (in any netns of `handles`, or `here`), re-checking each socket's
    /// cookie at the moment of the destroy: the iterator program re-reads it
    /// (`bpf_get_socket_cookie()`), SOCK_DESTROY carries it (`sock_diag_check_cookie()`). A
    /// socket whose cookie no longer matches, or that is gone, is [`Outcome::Gone`].
    pub fn destroy(&self, targets: &[Target], here: NetnsIno, handles: &[&NetnsHandle]) -> Vec<Outcome> {
        let via = self.via;
        let mut out = vec![Outcome::Gone(via); targets.len()];
        let mut namespaces: Vec<NetnsIno> = targets.iter().map(|t| t.socket.netns).collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces {
            let idx: Vec<usize> = (0..targets.len()).filter(|i| targets[*i].socket.netns == ns).collect();
            let results: Result<Vec<(usize, Outcome)>, String> = match via {
                Via::BpfSockDestroy => in_netns(ns, here, handles, || self.by_kfunc(targets, &idx)),
                Via::SockDiag => in_netns(ns, here, handles, || self.by_sock_diag(targets, &idx)),
            };
            match results {
                Ok(rs) => rs.into_iter().for_each(|(i, o)| out[i] = o),
                Err(why) => idx.iter().for_each(|i| out[*i] = Outcome::Failed(Some(via), why.clone())),
            }
        }
        out
    }

    fn by_kfunc(&self, targets: &[Target], idx: &[usize]) -> Vec<(usize, Outcome)> {
        let via = Via::BpfSockDestroy;
        let mut out = Vec::new();
        for it in &self.iters {
            let mine: Vec<usize> = idx.iter().copied().filter(|i| targets[*i].socket.protocol == it.protocol()).collect();
            let cookies: Vec<u64> = mine.iter().map(|i| targets[*i].socket.cookie).collect();
            match it.run(&cookies) {
                Ok(res) => out.extend(mine.iter().zip(res).map(|(i, r)| {
                    (*i, match r {
                        KfuncOutcome::Destroyed => Outcome::Destroyed(via),
                        KfuncOutcome::Gone => Outcome::Gone(via),
                        KfuncOutcome::Failed(e) => Outcome::Failed(Some(via), format!("bpf_sock_destroy returned {}", errno_desc(e))),
                    })
                })),
                Err(e) => out.extend(mine.iter().map(|i| (*i, Outcome::Failed(Some(via), format!("{e:#}"))))),
            }
        }
        out
    }

    fn by_sock_diag(&self, targets: &[Target], idx: &[usize]) -> Vec<(usize, Outcome)> {
        let via = Via::SockDiag;
        let outcome = |t: &Target| match sock_diag::destroy(&DiagSocket::of(&t.socket)) {
            Ok(DestroyOutcome::Destroyed) => Outcome::Destroyed(via),
            Ok(DestroyOutcome::Gone) => Outcome::Gone(via),
            Ok(DestroyOutcome::Failed(e)) if e == libc::EOPNOTSUPP => Outcome::Failed(
                None,
                format!(
                    "no destroy mechanism: SOCK_DESTROY answered EOPNOTSUPP (kernel without CONFIG_INET_DIAG_DESTROY){}",
                    self.refused.iter().map(|r| format!("; {r}")).collect::<String>()
                ),
            ),
            Ok(DestroyOutcome::Failed(e)) => Outcome::Failed(Some(via), format!("SOCK_DESTROY answered {}", errno_desc(e))),
            Err(e) => Outcome::Failed(Some(via), e.to_string()),
        };
        idx.iter().map(|i| (*i, outcome(&targets[*i]))).collect()
    }
}

/// Where the targets live and what to watch: `here` is the caller's netns, `handles` open the
/// others, `waiters` are the threads waiting on the targets.
pub struct Run<'a> {
    /// The caller's netns (the report's `netns`).
    pub here: NetnsIno,
    /// Handles of the other namespaces holding targets.
    pub handles: &'a [&'a NetnsHandle],
    /// Threads waiting on the targets.
    pub waiters: &'a [Waiter],
    /// How long to watch them after the destroy.
    pub observe: Duration,
}

/// Destroys `targets` with `mech` and watches their waiters for `run.observe`: the first
/// `raw_syscalls:sys_exit` of each after the destroy (`woke_ms`, `ret`). A signal ends the window
/// early (`interrupted`: the report is partial; what was destroyed stays destroyed).
///
/// # Errors
/// The syscall-exit watch cannot attach or be read. Per-socket failures are in the report.
pub async fn execute(probes: &mut Probes, mech: &Mechanism, run: &Run<'_>, targets: &[Target], skipped: Vec<Skipped>, signals: Option<&mut Signals>) -> Result<AbortReport> {
    let mut obs = Observation::new(run.waiters, monotonic_ns(), run.observe.as_nanos() as u64);
    // Watch before destroying: the wake-up is the first return after this.
    probes.watch_returns(obs.tids())?;
    let outcomes = mech.destroy(targets, run.here, run.handles);
    let interrupted = observe(probes, &mut obs, signals).await?;
    let mut r = abort::report(run.here, false, Some(mech.via), mech.refused.clone(), run.observe.as_millis() as u64, targets, &outcomes, run.waiters, obs.returns(), obs.destroyed_at_ns, skipped);
    r.interrupted = interrupted;
    Ok(r)
}

async fn observe(probes: &Probes, obs: &mut Observation, mut signals: Option<&mut Signals>) -> Result<Option<crate::kernel::signals::Stop>> {
    let read = |obs: &mut Observation| -> Result<()> {
        let tids = obs.tids().to_vec();
        for (tid, r) in tids.iter().zip(probes.returns(&tids)?) {
            if let Some(r) = r {
                obs.saw(*tid, Return { ts_ns: r.ts_ns, ret: r.ret, nr: r.nr });
            }
        }
        Ok(())
    };
    loop {
        read(obs)?;
        let now = monotonic_ns();
        if obs.done(now) {
            return Ok(None);
        }
        // The map has no notification; the 2 ms re-read bounds how soon the loop ends, not
        // woke_ms (the return's time is the kernel's timestamp).
        let nap = tokio::time::sleep(Duration::from_nanos(obs.left_ns(now).min(2_000_000)));
        match signals.as_deref_mut() {
            Some(sig) => tokio::select! {
                stop = sig.recv() => {
                    // A return recorded before the signal belongs in the partial report: read
                    // the map once more instead of reporting it as not woken.
                    read(obs)?;
                    return Ok(Some(stop));
                }
                _ = nap => {}
            },
            None => nap.await,
        }
    }
}
