//! Stateful correlators with no I/O of their own: typed inputs (netlink updates, decoded kernel
//! events, snapshots, a clock) in, typed records out. Unit-tested with fake inputs.
#![deny(missing_docs)]
pub mod abort;
pub mod health;
pub mod metrics;
pub mod receivers;
pub mod teardown;
pub mod watch;
