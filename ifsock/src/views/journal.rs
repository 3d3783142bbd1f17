//! `ifsock journal`: the history an agent recorded (changes, stranded and recovered sockets,
//! namespaces), as human lines or as the JSON lines it stored.

use anyhow::{bail, Result};

use crate::{
    args::JournalArgs,
    journal::{self, Entry},
    render,
};

fn human(e: &Entry) -> String {
    let h = &e.header;
    let ns = match (&h.netns, &h.netns_name) {
        (Some(i), Some(n)) => format!("{i}({n})"),
        (Some(i), None) => i.to_string(),
        (None, _) => "-".into(),
    };
    let iface = |name: &Option<String>| match (h.ifindex, name.as_deref()) {
        (Some(i), Some(n)) if !n.is_empty() => format!(" {i}:{n}"),
        (Some(i), _) => format!(" {i}"),
        (None, Some(n)) if !n.is_empty() => format!(" {n}"),
        _ => String::new(),
    };
    let addr = h.address.map(|a| format!(" {a}")).unwrap_or_default();
    let detail = match h.ty.as_str() {
        "change" => format!("{}{}{addr}", h.event.as_deref().unwrap_or("?"), iface(&h.name)),
        "socket_stranded" | "socket_recovered" => format!("{}{}{addr}", h.reason.as_deref().unwrap_or("?"), iface(&h.ifname)),
        _ => iface(&h.name).trim_start().to_string(),
    };
    format!("{} {:<17} netns {ns} {detail}", render::date_time(h.ts_unix_ns), h.ty).trim_end().to_string()
}

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
    let keep = |e: &Entry| {
        args.iface.as_ref().is_none_or(|i| e.header.mentions_iface(i))
            && netns.as_ref().is_none_or(|n| {
                e.header.netns_name.as_deref() == Some(n.as_str()) || e.header.netns.is_some_and(|i| i.to_string() == *n)
            })
    };
    for e in read.entries.iter().filter(|e| keep(e)) {
        if args.json {
            render::json_text_line(&e.line)?;
        } else {
            render::line(&human(e))?;
        }
    }
    Ok(())
}
