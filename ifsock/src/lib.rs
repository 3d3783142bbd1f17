//! ifsock: an eBPF-assisted socket and interface tracer for Linux.
//!
//! Data flows probe → ring buffer / iterator → model → engine → render → view. Each layer
//! imports only the layers before it in this list:
//! - [`model`]: domain types and pure logic (interfaces, sockets and their ties, receivers,
//!   causes) and the tables every layer names things by ([`model::sys`]: syscalls, errnos);
//! - [`kernel`]: facts read outside eBPF (BTF, rtnetlink, netns, procfs, sock_diag, clocks);
//!   [`probes`]: loading the eBPF object, choosing the probe set ([`probes::plan`]), attaching,
//!   decoding events;
//! - [`engine`]: stateful correlators with no I/O: typed inputs in, typed records out;
//! - [`sources`]: the I/O the engines are handed that several views share (netns follower,
//!   receiver scanner, destroy path);
//! - [`render`]: every byte a user reads: human lines and tables, JSON, metrics;
//! - [`args`]: every subcommand's options; [`views`]: one thin file per subcommand (args →
//!   sources → engine → render); [`cli`]: the command assembled from `args`, for `main`.
//!
//! [`journal`] (the agent's on-disk history) reads and writes model types only.
pub mod args;
pub mod cli;
pub mod engine;
pub mod journal;
pub mod kernel;
pub mod model;
pub mod probes;
pub mod render;
pub mod sources;
pub mod views;
