//! The I/O the engines are handed, shared by several views: the netns follower (rtnetlink
//! subscription, dumps and socket snapshots per followed netns: `watch`, `agent`), the receiver
//! scanner (procfs, the in-flight map and snapshots: `hung`, `watch`, `agent`), and the destroy
//! path with its waiters (`abort`, `teardown --abort-stranded`).
//!
//! Layer: above `engine` (they implement its input traits and feed it), below `render` and
//! `views`; they print nothing.
pub mod destroy;
pub mod follow;
pub mod receivers;
