//! Options of `ifsock tun`.
use std::time::Duration;

use super::parse_bounded_duration;

/// Options of `tun`.
#[derive(Debug, Clone, clap::Args)]
pub struct TunArgs {
    /// Only this device (exact name).
    pub iface: Option<String>,
    /// Time between the two queue snapshots that show whether backlogs drain (0: one snapshot,
    /// no warnings; at most 24h).
    #[arg(long, default_value = "500ms", value_parser = parse_bounded_duration)]
    pub interval: Duration,
    /// One JSON object per device (fields documented in README.md).
    #[arg(long)]
    pub json: bool,
    /// Every network namespace (named ones under /run/netns and those of running processes),
    /// not only the current one.
    #[arg(long)]
    pub all_netns: bool,
}
