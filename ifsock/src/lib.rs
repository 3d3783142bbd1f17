//! ifsock as a library: the interface watcher and the "is my socket stranded?" check that VPN
//! and discovery daemons otherwise write by hand (netbird's `watchInterface`, iroh's netwatch),
//! with no root and no BPF.
//!
//! - [`LinkWatcher`]: a tokio `Stream` of typed [`LinkChange`]s for one network namespace, one
//!   interface or all: created, deleted, recreated (old and new ifindex), renamed, moved out
//!   or in, up, down, carrier, address added and removed. It subscribes before it dumps (a
//!   change during start-up is not lost), re-dumps after `ENOBUFS` (changes marked
//!   [`ChangeSource::Resync`]) and every 30 s (`Reconcile`), so a burst that overflows the
//!   socket or a silently lost notification is still reported.
//! - [`SocketHealth`]: the daemon's own sockets (`std`/tokio sockets or raw fds, through
//!   [`AsFd`](std::os::fd::AsFd)) judged [`Health::AddressGone`], [`Health::DeviceDown`],
//!   [`Health::DeviceDeleted`] or healthy now, and each [`HealthTransition`] as interfaces and
//!   addresses change: the kernel keeps such a socket open without an error, so a server
//!   waiting on it is never told.
//! - [`Probes`] (cargo feature `probes`, on by default): the privileged part, every socket of
//!   the netns from BPF iterators; its constructor names what is missing (capabilities,
//!   lockdown).
//!
//! Both unprivileged types need a tokio runtime with the `net` and `time` drivers; errors are
//! [`Error`]. The rest of the crate (`model`, `kernel`, `engine`… below, hidden from these
//! docs) is the `ifsock` command's internals: public only because the binary is a separate
//! target of this crate, and not covered by semver. The API above is listed in the README; no
//! release is tagged yet, and once one is, `cargo-semver-checks` runs in CI against it.
//!
//! # Example: restart my tunnel when wg0 is deleted or recreated
//!
//! The event-driven form of netbird's `watchInterface`: the tunnel stops when `wg0` is deleted,
//! renamed or moved away and restarts on the new ifindex when an interface named `wg0`
//! appears again. An `Err` from the watcher is final: restart `supervise`.
#![doc = concat!("```no_run\n", include_str!("api/tunnel_example.rs"), "```")]
//!
//! More in `examples/watch_iface.rs` (print every change as a JSON line) and
//! `examples/self_heal_udp.rs` (a UDP server that rebinds when its address comes back).
mod api;

pub use api::{DEFAULT_RECONCILE, ChangeSource, Error, Health, HealthTransition, LinkChange, LinkChangeKind, LinkInfo, LinkWatcher, LinkWatcherBuilder, Netns, SocketHealth, SocketId};
#[cfg(feature = "probes")]
pub use api::{Probes, ProbesError, SocketSnapshot};

// The `ifsock` command's layers (probe → ring buffer / iterator → model → engine → render →
// view; each imports only the layers before it). Public for the binary targets of this crate,
// hidden from the library's documentation, and not part of its API. Rustdoc still reads their
// docs and `cargo xtask test` fails on a broken link in them (-D warnings); links to private
// items are allowed there, since these docs are for the command's own readers.
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod args;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod cli;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod engine;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod journal;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod kernel;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod model;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod probes;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod render;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod sources;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod views;
