//! `ifsock abort`: destroy exactly the selected sockets, so that what is stuck on them wakes
//! with `ECONNABORTED`, and report what each waiter saw.
//!
//! args → snapshot (iterators, rtnetlink, procfs, sock_diag cookies) → `engine::abort::select`
//! → confirm → destroy (`probes::destroy` kfunc iterator, else `kernel::sock_diag`) → observe
//! (`raw_syscalls:sys_exit` per waiter) → `render::abort`.
use std::{
    collections::HashMap,
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    cli::parse_duration,
    engine::abort::{self, Outcome, Return, Selector, Target, Via},
    kernel::{
        netns, procfs,
        signals::{Interrupted, Signals},
        sock_diag::{self, DestroyOutcome, DiagSocket},
    },
    model::{ids::SockInode, socket::Protocol},
    probes::{
        destroy::{DestroyIter, KfuncOutcome},
        snapshot, Probes,
    },
    render::{self, fmt::errno_desc, monotonic_ns},
};

/// What destroy does, for `--help` and README.
const ABOUT_DESTROY: &str = "\
What destroy does: the kernel calls the protocol's diag_destroy with ECONNABORTED.
  UDP (udp_abort): the socket's error becomes ECONNABORTED, a thread blocked in recvmsg/recvfrom
  returns -1 ECONNABORTED once, and __udp_disconnect() clears the connected address and
  sk_bound_dev_if. A socket explicitly bound to its port stays bound to that port, now without
  its device binding: the application owns a changed socket afterwards.
  TCP (tcp_abort): established connections send a RST to the peer; the socket is closed with
  ECONNABORTED. A TCP LISTEN socket is destroyed only when named by --inode.

Mechanisms, in order: bpf_sock_destroy() from an iter/udp or iter/tcp program that re-checks each
socket's cookie (Linux >= 6.5), then SOCK_DESTROY over NETLINK_SOCK_DIAG with the exact tuple,
the socket's bound device and its cookie (CONFIG_INET_DIAG_DESTROY). A socket that went away
before the destroy is reported `gone`. Sockets of another netns are only reached with --netns.

Examples:
  ifsock -n svc abort --inode 48213 --dry-run
  ifsock -n svc abort --inode 48213 --yes --json
  ifsock abort --stranded --iface wg0 --pid 812";

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

/// Options of `abort`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = ABOUT_DESTROY)]
pub struct AbortArgs {
    /// Destroy the socket with this inode (`socket:[N]`); repeatable.
    #[arg(long = "inode", value_name = "N", value_parser = parse_inode)]
    pub inodes: Vec<SockInode>,
    /// Destroy stranded sockets: bound to a deleted or down device, or to an address no
    /// interface holds.
    #[arg(long)]
    pub stranded: bool,
    /// With --stranded: only those tied to this interface.
    #[arg(long, requires = "stranded", value_name = "NAME")]
    pub iface: Option<String>,
    /// Only sockets owned by (or waited on by a thread of) this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// List what would be destroyed and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
    /// How long to watch the waiters after the destroy.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub observe: Duration,
    /// Destroy mechanism.
    #[arg(long, value_enum, default_value = "auto")]
    pub via: ViaChoice,
}

fn parse_inode(s: &str) -> Result<SockInode, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("inode 0 names no socket (socket inodes start at 1; see `ifsock sockets`)".into()),
        Ok(n) => Ok(SockInode(n)),
        Err(_) => Err(format!("{s:?} is not a socket inode: give the number N of socket:[N] (see `ifsock sockets`)")),
    }
}

/// Runs `abort`.
///
/// # Errors
/// Bad selection, no confirmation, probe loading, or any selected socket not destroyed.
pub async fn run(args: AbortArgs) -> Result<()> {
    let mut probes = Probes::load(u64::MAX)?;
    let here = netns::current_ino()?;
    let sockets = snapshot::sockets(&mut probes, None)?;
    let links = snapshot::links(None).await?;
    let iface = match &args.iface {
        None => None,
        Some(name) => {
            let l = links.iter().find(|l| &l.name == name).ok_or_else(|| {
                anyhow!("no interface named {name:?} in netns {here} (a deleted interface's sockets are selected by --inode; see `ifsock sockets`)")
            })?;
            Some((l.ifindex, l.name.clone()))
        }
    };
    let local: Vec<_> = sockets.iter().filter(|s| s.netns == here).cloned().collect();
    let blocked = procfs::blocked_receivers(None);
    let all_waiters = abort::waiters_of(&local, &local, &blocked);
    let sel = Selector { inodes: args.inodes.clone(), stranded: args.stranded, iface, pid: args.pid };
    let (targets, skipped) = abort::select(&local, here, &sel, &all_waiters, abort::local_health(&links))?;
    let waiters: Vec<_> = all_waiters.into_iter().filter(|w| targets.iter().any(|t| t.socket.inode == w.socket)).collect();
    let diag = cookies_by_inode();
    let cookies: HashMap<SockInode, u64> = diag.iter().flatten().map(|(i, d)| (*i, d.cookie)).collect();
    if args.dry_run {
        let observe_ms = args.observe.as_millis() as u64;
        let outcomes = vec![Outcome::WouldDestroy; targets.len()];
        // Loading the destroy iterator destroys nothing: it says which mechanism would run.
        let (via, mut refused, _) = choose(args.via, &targets)?;
        if let Err(why) = &diag {
            refused.push(why.clone());
        }
        let r = abort::report(here, true, Some(via), refused, observe_ms, &targets, &cookies, &outcomes, &waiters, &HashMap::new(), 0, skipped);
        return render::abort::print(&r, args.json);
    }
    if !args.yes {
        confirm(&targets).await?;
    }
    let mut signals = Signals::new()?;
    let ctx = Ctx { here, diag: &diag, cookies: &cookies };
    let r = execute(&mut probes, &ctx, &targets, skipped, &waiters, args.via, args.observe, Some(&mut signals)).await?;
    render::abort::print(&r, args.json)?;
    if let Some(stop) = r.interrupted {
        return Err(Interrupted(stop).into());
    }
    if r.failed > 0 {
        bail!("{} of {} selected socket(s) could not be destroyed (see the error of each)", r.failed, r.sockets.len());
    }
    Ok(())
}

struct Ctx<'a> {
    here: crate::model::ids::NetnsIno,
    diag: &'a Diag,
    cookies: &'a HashMap<SockInode, u64>,
}

/// Destroys `targets` (sockets of the caller's netns, e.g. those a teardown left stranded) with
/// the best mechanism, watching the receivers blocked on them for `observe`; for
/// `teardown --abort-stranded`. Never asks for confirmation: the caller did.
///
/// # Errors
/// The watch cannot attach. Per-socket failures are in the
/// report (`failed`), not errors.
pub async fn abort_sockets(probes: &mut Probes, targets: &[Target], observe: Duration) -> Result<abort::AbortReport> {
    let here = netns::current_ino()?;
    let all = snapshot::sockets(probes, None)?;
    let waiters = abort::waiters_of(&targets.iter().map(|t| t.socket.clone()).collect::<Vec<_>>(), &all, &procfs::blocked_receivers(None));
    let diag = cookies_by_inode();
    let cookies: HashMap<SockInode, u64> = diag.iter().flatten().map(|(i, d)| (*i, d.cookie)).collect();
    let ctx = Ctx { here, diag: &diag, cookies: &cookies };
    execute(probes, &ctx, targets, Vec::new(), &waiters, ViaChoice::Auto, observe, None).await
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    probes: &mut Probes,
    ctx: &Ctx<'_>,
    targets: &[Target],
    skipped: Vec<abort::Skipped>,
    waiters: &[abort::Waiter],
    choice: ViaChoice,
    observe: Duration,
    mut signals: Option<&mut Signals>,
) -> Result<abort::AbortReport> {
    let (via, refused, iters) = choose(choice, targets)?;
    let tids: Vec<u32> = waiters.iter().map(|w| w.tid).collect();
    // Watch before destroying: the wake-up is the first return after this.
    probes.watch_returns(&tids)?;
    let destroyed_at = monotonic_ns();
    let outcomes = destroy(via, &iters, targets, ctx.diag, &refused);

    let deadline = Instant::now() + observe;
    let mut returns = HashMap::new();
    let mut interrupted = None;
    loop {
        for (tid, r) in tids.iter().zip(probes.returns(&tids)?) {
            if let Some(r) = r {
                returns.insert(*tid, Return { ts_ns: r.ts_ns, ret: r.ret, nr: r.nr });
            }
        }
        let now = Instant::now();
        if returns.len() == tids.len() || now >= deadline {
            break;
        }
        // The map has no notification; the 2 ms re-read bounds how soon the loop ends, not
        // woke_ms (the return's time is the kernel's timestamp).
        let nap = tokio::time::sleep((deadline - now).min(Duration::from_millis(2)));
        match signals.as_deref_mut() {
            Some(sig) => tokio::select! {
                stop = sig.recv() => { interrupted = Some(stop); break; }
                _ = nap => {}
            },
            None => nap.await,
        }
    }
    let observe_ms = observe.as_millis() as u64;
    let mut r = abort::report(ctx.here, false, Some(via), refused, observe_ms, targets, ctx.cookies, &outcomes, waiters, &returns, destroyed_at, skipped);
    r.interrupted = interrupted;
    if let Err(why) = ctx.diag {
        r.refused.push(why.clone());
    }
    Ok(r)
}

/// Each socket's exact sock_diag identity (tuple, `idiag_if`, cookie) by inode, or why it
/// cannot be read: without a cookie neither mechanism can name a socket exactly.
type Diag = Result<HashMap<SockInode, DiagSocket>, String>;

fn cookies_by_inode() -> Diag {
    sock_diag::dump_all()
        .map(|all| all.into_iter().map(|d| (d.inode, d)).collect())
        .map_err(|e| format!("socket cookie unknown: {e}"))
}

/// Picks the mechanism: the kfunc iterator for every protocol among the targets, else sock_diag.
fn choose(choice: ViaChoice, targets: &[Target]) -> Result<(Via, Vec<String>, Vec<DestroyIter>)> {
    if choice == ViaChoice::SockDiag {
        return Ok((Via::SockDiag, Vec::new(), Vec::new()));
    }
    let mut protocols: Vec<Protocol> = targets.iter().map(|t| t.socket.protocol).collect();
    protocols.sort_by_key(|p| *p as u8);
    protocols.dedup();
    let loaded: Result<Vec<DestroyIter>> = protocols.iter().map(|p| DestroyIter::load(*p, targets.len() as u32)).collect();
    match loaded {
        Ok(iters) => Ok((Via::BpfSockDestroy, Vec::new(), iters)),
        Err(e) if choice == ViaChoice::Bpf => Err(e.context("--via bpf")),
        Err(e) => {
            tracing::info!("bpf_sock_destroy not usable, using sock_diag: {e:#}");
            Ok((Via::SockDiag, vec![format!("bpf_sock_destroy: {e:#}")], Vec::new()))
        }
    }
}

fn destroy(via: Via, iters: &[DestroyIter], targets: &[Target], diag: &Diag, refused: &[String]) -> Vec<Outcome> {
    let diag = match diag {
        Ok(d) => d,
        Err(why) => return vec![Outcome::Failed(None, why.clone()); targets.len()],
    };
    match via {
        Via::BpfSockDestroy => {
            let mut out = vec![Outcome::Gone(via); targets.len()];
            for it in iters {
                let idx: Vec<usize> = (0..targets.len()).filter(|i| targets[*i].socket.protocol == it.protocol()).collect();
                // A socket sock_diag did not list is gone already (closed between the two reads).
                let known: Vec<usize> = idx.into_iter().filter(|i| diag.contains_key(&targets[*i].socket.inode)).collect();
                let cookies: Vec<u64> = known.iter().filter_map(|i| diag.get(&targets[*i].socket.inode).map(|d| d.cookie)).collect();
                match it.run(&cookies) {
                    Ok(res) => {
                        for (i, r) in known.iter().zip(res) {
                            out[*i] = match r {
                                KfuncOutcome::Destroyed => Outcome::Destroyed(via),
                                KfuncOutcome::Gone => Outcome::Gone(via),
                                KfuncOutcome::Failed(e) => Outcome::Failed(Some(via), format!("bpf_sock_destroy returned {}", errno_desc(e))),
                            };
                        }
                    }
                    Err(e) => {
                        for i in &known {
                            out[*i] = Outcome::Failed(Some(via), format!("{e:#}"));
                        }
                    }
                }
            }
            out
        }
        Via::SockDiag => targets
            .iter()
            .map(|t| match diag.get(&t.socket.inode) {
                None => Outcome::Gone(via),
                Some(d) => match sock_diag::destroy(d) {
                    Ok(DestroyOutcome::Destroyed) => Outcome::Destroyed(via),
                    Ok(DestroyOutcome::Gone) => Outcome::Gone(via),
                    Ok(DestroyOutcome::Failed(e)) if e == libc::EOPNOTSUPP => Outcome::Failed(
                        None,
                        format!(
                            "no destroy mechanism: SOCK_DESTROY answered EOPNOTSUPP (kernel without CONFIG_INET_DIAG_DESTROY){}",
                            refused.iter().map(|r| format!("; {r}")).collect::<String>()
                        ),
                    ),
                    Ok(DestroyOutcome::Failed(e)) => Outcome::Failed(Some(via), format!("SOCK_DESTROY answered {}", errno_desc(e))),
                    Err(e) => Outcome::Failed(Some(via), e.to_string()),
                },
            })
            .collect(),
    }
}

/// Asks on the terminal; refuses without one.
async fn confirm(targets: &[Target]) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to destroy {} socket(s) without confirmation: stdin is not a terminal; pass --yes to confirm, or --dry-run to see what would be destroyed", targets.len());
    }
    eprintln!("about to destroy {} socket(s); each gets ECONNABORTED (TCP peers get a RST):", targets.len());
    for t in targets {
        let s = &t.socket;
        eprintln!("  {:?} {}:{} inode {} owners {}", s.protocol, s.local_addr, s.local_port, s.inode, crate::render::fmt::owners(&s.owners, "-"));
    }
    eprint!("proceed? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the confirmation")?
    .context("reading the confirmation from stdin")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        bail!("not confirmed: no socket destroyed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_arguments_are_parsed_at_the_edge() {
        assert_eq!(parse_inode("42"), Ok(SockInode(42)));
        assert!(parse_inode("0").unwrap_err().contains("inode 0"));
        assert!(parse_inode("abc").unwrap_err().contains("not a socket inode"));
    }
}
