//! Options of `ifsock abort`.
use std::time::Duration;

use super::parse_duration;
use crate::{model::ids::SockInode, render::abort::ABOUT_DESTROY, sources::destroy::ViaChoice};

/// Options of `abort`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = ABOUT_DESTROY)]
pub struct AbortArgs {
    /// Destroy the socket with this inode (`socket:[N]`); repeatable.
    #[arg(long = "inode", value_name = "N", value_parser = parse_inode)]
    pub inodes: Vec<SockInode>,
    /// Destroy stranded sockets: bound to a deleted or down device, or to an address no
    /// interface holds (the `stranded` of `sockets --json`).
    #[arg(long)]
    pub stranded: bool,
    /// With --stranded: only those tied to this interface, or still bound to any ifindex an
    /// interface of that name had before it was deleted (from the journal, see --journal).
    #[arg(long, requires = "stranded", value_name = "NAME")]
    pub iface: Option<String>,
    /// Only sockets owned by (or waited on by a thread of) this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Select among the sockets of every network namespace; each is destroyed inside its own.
    /// Without it (or --netns) other namespaces are never touched.
    #[arg(long)]
    pub all_netns: bool,
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
    /// Journal of a recorder that was running before (`ifsock agent`): the names of deleted
    /// interfaces, for --iface and for sockets still bound to them. Default: the agent's
    /// directory, when it exists.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}

/// `--inode N`: a socket inode as `ls -l /proc/PID/fd` shows it (`socket:[N]`), a positive
/// integer.
///
/// # Errors
/// Not a positive integer, with what was given.
pub fn parse_inode(s: &str) -> Result<SockInode, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("inode 0 names no socket (socket inodes start at 1; see `ifsock sockets`)".into()),
        Ok(n) => Ok(SockInode(n)),
        Err(_) => Err(format!("{s:?} is not a socket inode: give the number N of socket:[N] (see `ifsock sockets`)")),
    }
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
