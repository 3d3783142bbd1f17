//! Thin subcommands: arguments → probes/kernel → engine → render.
pub mod abort;
pub mod agent;
pub mod doctor;
pub mod hung;
pub mod journal;
pub mod sockets;
pub mod teardown;
pub mod tun;
pub mod watch;
