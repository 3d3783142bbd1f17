//! Options of `ifsock sockets`.

/// Options of `sockets`.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketsArgs {
    /// Only sockets tied to this interface (exact name), and those still bound to any ifindex
    /// an interface of that name had before it was deleted (from the journal, see --journal).
    #[arg(long, conflicts_with = "ifindex")]
    pub iface: Option<String>,
    /// Only sockets tied to this ifindex. A deleted ifindex is accepted, with a note: the
    /// sockets still bound to it are listed.
    #[arg(long)]
    pub ifindex: Option<u32>,
    /// Every network namespace on the host (named ones and those of running processes).
    #[arg(long)]
    pub all_netns: bool,
    /// One JSON object per line (fields documented in README.md).
    #[arg(long)]
    pub json: bool,
    /// Only stranded sockets (address gone, bound device down or deleted); none is not an error.
    #[arg(long)]
    pub stranded: bool,
    /// Journal of a recorder that was running before (`ifsock agent`): the names of deleted
    /// interfaces, for sockets still bound to them and for --iface. Default: the agent's
    /// directory, when it exists.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
}
