//! `ifsock journal`: the history an agent recorded (changes, stranded and recovered sockets,
//! namespaces), as human lines or as the JSON lines it stored.

use anyhow::{bail, Result};

use crate::{
    args::JournalArgs,
    journal::{self, Entry},
    render,
};

/// Prints the journal's records, oldest first.
///
/// # Errors
/// The directory cannot be read (with the fix), or stdout closed.
pub fn run(args: JournalArgs, netns: Option<String>) -> Result<()> {
    if !args.journal.is_dir() {
        bail!("no journal at {} (fix: run `ifsock agent --journal {0}` first, or pass --journal DIR)", args.journal.display());
    }
    let read = journal::read(&args.journal, args.since.unwrap_or(0))?;
    if read.skipped > 0 {
        tracing::warn!("{} journal line(s) did not parse and were skipped (a torn last line after a crash)", read.skipped);
    }
    // Every interface the name went by (renamed either way, or deleted and recreated).
    let ids = args.iface.as_deref().map(|i| journal::identities_of(&read.entries, i)).unwrap_or_default();
    let keep = |e: &Entry| {
        args.iface.as_ref().is_none_or(|i| e.header.about_iface(i, &ids))
            && netns.as_ref().is_none_or(|n| {
                e.header.netns_name.as_deref() == Some(n.as_str()) || e.header.netns.is_some_and(|i| i.to_string() == *n)
            })
    };
    for e in read.entries.iter().filter(|e| keep(e)) {
        render::journal::entry(e, args.json)?;
    }
    Ok(())
}
