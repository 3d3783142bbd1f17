//! Options of `ifsock sockets`.

/// Options of `sockets`.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketsArgs {
    /// Only sockets tied to this interface (exact name).
    #[arg(long, conflicts_with = "ifindex")]
    pub iface: Option<String>,
    /// Only sockets tied to this ifindex.
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
}
