//! Facts read from the running kernel outside the eBPF programs: BTF offsets, rtnetlink,
//! network namespaces, procfs, per-netns socket counts, and system state (privileges, mounts,
//! lockdown).
pub mod btf;
pub mod caps;
pub mod clock;
pub mod kallsyms;
pub mod cgroup;
pub mod netlink;
pub mod netns;
pub mod procfs;
pub mod signals;
pub mod sock_diag;
pub mod sockstat;
pub mod system;
pub mod waiters;
