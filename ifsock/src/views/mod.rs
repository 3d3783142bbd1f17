//! Thin subcommands: arguments → probes/kernel → engine → render.
pub mod abort;
pub mod doctor;
pub mod hung;
pub mod sockets;
pub mod teardown;
pub mod tun;
pub mod watch;
