//! The I/O the engines are handed: the netns follower (rtnetlink subscription, dumps and socket
//! snapshots per followed netns: `watch`, `agent`), the receiver scanner (procfs, the in-flight
//! map and snapshots: `hung`, `watch`, `agent`), the destroy path with its waiters (`abort`,
//! `teardown --abort-stranded`), what the teardown engine asks for (`teardown`), and the
//! agent's pipeline (the watch engine over every netns, with its snapshots judged). Views call
//! these and never each other.
//!
//! Layer: above `engine` (they implement its input traits and feed it), below `render` and
//! `views`; they print nothing.
pub mod agent;
pub mod destroy;
pub mod follow;
pub mod receivers;
pub mod teardown;
pub mod waiters;
