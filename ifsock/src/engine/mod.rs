//! Stateful correlators with no I/O of their own: typed inputs (netlink updates, decoded kernel
//! events, snapshots, a clock) in, typed records out. Unit-tested with fake inputs.
pub mod abort;
pub mod health;
pub mod metrics;
pub mod receivers;
pub mod snapshot;
pub mod sockets;
pub mod teardown;
pub mod watch;
