//! What users see: one module per subcommand, plus shared snapshot and output helpers.
pub mod doctor;
pub mod hung;
pub mod output;
pub mod snapshot;
pub mod sockets;
pub mod teardown;
pub mod tun;
pub mod watch;
