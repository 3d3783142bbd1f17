//! Who waits on which socket: the waiter walk over the sockets' own wait queues (primary), or
//! the `/proc` pass where the walk cannot run (fallback, with the reason).
use crate::{
    kernel::{kallsyms::Symbols, netns::NetnsHandle, waiters::WaiterIndex},
    probes::Probes,
};

/// The waiters of every socket of `spaces` (`None`: ifsock's own netns): the waiter walk in each
/// namespace ([`Probes::wait_queue`], classified with `/proc/kallsyms`), or, when kallsyms shows
/// no addresses (`kernel.kptr_restrict`) or a walk fails (the verifier refused the programs on
/// this kernel), one `/proc` pass for all of them, with the reason in
/// [`WaiterIndex::source`]. Never both: a thread is listed once, by one source.
pub fn index<'a>(probes: &mut Probes, spaces: impl IntoIterator<Item = Option<&'a NetnsHandle>>) -> WaiterIndex {
    let started = std::time::Instant::now();
    let forced = std::env::var(SOURCE_ENV).ok().filter(|v| v == "proc");
    let walked = match forced {
        Some(_) => Err(format!("{SOURCE_ENV}=proc")),
        None => walk(probes, spaces),
    };
    let index = match walked {
        Ok(index) => index,
        Err(reason) => {
            tracing::warn!("waiters from /proc (fallback): {reason}");
            WaiterIndex::discover_fallback(reason)
        }
    };
    if let Some(note) = &index.source {
        tracing::debug!("waiters: {:?} in {} µs", note, started.elapsed().as_micros());
        if note.truncated > 0 {
            tracing::warn!("{} wait queue(s) longer than the walk's bound: their waiters are listed in part", note.truncated);
        }
    }
    index
}

/// Whether the waiter walk runs here (kallsyms addresses readable, the programs verified, one
/// walk of ifsock's own netns read), or why not: `doctor`'s answer to which source `waiters`
/// come from.
///
/// # Errors
/// The reason the `/proc` fallback would be used.
pub fn usable(probes: &mut Probes) -> Result<(), String> {
    // Both programs, also where ifsock's netns has no socket of one protocol (the walk would
    // skip it); kallsyms first, as the walk checks it.
    Symbols::cached().map_err(|e| e.to_string())?;
    probes.load_waiter_iterators().map_err(|e| format!("the waiter walk failed: {}", first_line(&format!("{e:#}"))))?;
    walk(probes, [None]).map(|_| ())
}

/// The waiter walk alone, without the `/proc` fallback (the receivers of `hung`, `watch` and
/// the agent have their own procfs pass): the index, or why the walk did not run
/// ([`SOURCE_ENV`]`=proc`, hidden kallsyms addresses, a refused program).
///
/// # Errors
/// The reason, as [`WaiterIndex::discover_fallback`] would be given it.
pub fn walk_only<'a>(probes: &mut Probes, spaces: impl IntoIterator<Item = Option<&'a NetnsHandle>>) -> Result<WaiterIndex, String> {
    if std::env::var(SOURCE_ENV).is_ok_and(|v| v == "proc") {
        return Err(format!("{SOURCE_ENV}=proc"));
    }
    walk(probes, spaces)
}

/// Environment variable that picks the `/proc` pass even where the walk works (`proc`): for
/// comparing the two sources on one workload, as the tests do.
pub const SOURCE_ENV: &str = "IFSOCK_WAITER_SOURCE";

/// The waiter walk in each of `spaces`, or why it could not run.
fn walk<'a>(probes: &mut Probes, spaces: impl IntoIterator<Item = Option<&'a NetnsHandle>>) -> Result<WaiterIndex, String> {
    let names = Symbols::cached().map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    for ns in spaces {
        let found = probes.wait_queue(ns, &names.wake).map_err(|e| {
            tracing::debug!("waiter walk: {e:#}");
            format!("the waiter walk failed: {}", first_line(&format!("{e:#}")))
        })?;
        records.extend(found);
    }
    Ok(WaiterIndex::from_wait_queue(&records, &names))
}

/// The first line of an error (a verifier refusal carries the whole verifier log after it;
/// `-vv` shows it).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
