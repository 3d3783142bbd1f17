//! ifsock: an eBPF-assisted socket and interface tracer for Linux.
//!
//! Data flows probe → ring buffer / iterator → model (correlation) → view:
//! - [`probes`]: loading the eBPF object with BTF offsets, choosing the probe set, attaching;
//! - [`kernel`]: BTF, rtnetlink, netns, procfs and system facts;
//! - [`model`]: interfaces, sockets, link changes and their causes;
//! - [`views`]: the subcommands' output.
pub mod cli;
pub mod engine;
pub mod journal;
pub mod kernel;
pub mod model;
pub mod probes;
pub mod render;
pub mod views;
