//! Options of `ifsock teardown`.
use std::time::Duration;

use super::parse_duration;

/// Options of `teardown`.
#[derive(Debug, Clone, clap::Args)]
pub struct TeardownArgs {
    /// Interface to tear down: its exact name (no patterns; `lo` is refused).
    pub iface: String,
    /// How long to observe between setting it down and deleting it (500ms, 2s, 1m).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Only report what would be affected; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// One JSON object: the report (fields documented in README.md), also on error and interrupt.
    #[arg(long)]
    pub json: bool,
    /// Record receives: attach the receive-path probes to time each receiver's wake-up during
    /// grace (`woke_ms`), at the cost of tracing every receive syscall of the host. Without it
    /// `woke_ms` is null; `blocked_at_down` and `blocked_at_end` still say who stayed blocked.
    #[arg(long)]
    pub record_receives: bool,
    /// After the delete, destroy the sockets it left stranded (bound to the interface or the veth
    /// peer by device or address), and those with receivers still blocked, as `ifsock abort`
    /// does; the report's `abort` field lists them (the dry run: what would be destroyed).
    #[arg(long)]
    pub abort_stranded: bool,
    /// With --abort-stranded: how long to watch the waiters after the destroy.
    #[arg(long, default_value = "500ms", value_parser = parse_duration, requires = "abort_stranded")]
    pub observe: Duration,
}
