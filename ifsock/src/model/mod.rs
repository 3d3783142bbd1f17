//! What ifsock knows: interfaces, sockets and their owners, tasks, and interface events.
pub mod event;
pub mod ids;
pub mod kernel_event;
pub mod link;
pub mod names;
pub mod receiver;
pub mod sock_error;
pub mod stranded;
pub mod sys;
pub mod socket;
pub mod tie;
pub mod tun;
