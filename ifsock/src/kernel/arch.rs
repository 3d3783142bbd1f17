//! Syscall numbers of the architecture ifsock is built for.
//!
//! The numbers are what `/proc/PID/task/TID/syscall` prints and what the `syscalls:sys_enter_*`
//! tracepoints record in `__syscall_nr` (kept in `InFlightRecv.syscall`): the native numbers of
//! the running kernel's architecture (arch/x86/entry/syscalls/syscall_64.tbl,
//! include/uapi/asm-generic/unistd.h for arm64). The eBPF programs never compare syscall numbers:
//! they attach to the tracepoints by name and store `__syscall_nr` as the kernel gives it, so only
//! userspace needs this table, selected by `target_arch`. 32-bit compat tasks on a 64-bit kernel
//! report compat numbers in procfs and are not named.

#[cfg(target_arch = "x86_64")]
mod numbers {
    pub const READ: u64 = 0;
    pub const RECVFROM: u64 = 45;
    pub const RECVMSG: u64 = 47;
    pub const RECVMMSG: u64 = 299;
}

#[cfg(target_arch = "aarch64")]
mod numbers {
    pub const READ: u64 = 63;
    pub const RECVFROM: u64 = 207;
    pub const RECVMSG: u64 = 212;
    pub const RECVMMSG: u64 = 243;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("ifsock knows the receive syscall numbers of x86_64 and aarch64 only: add this architecture's to kernel/arch.rs");

pub use numbers::{READ, RECVFROM, RECVMMSG, RECVMSG};

/// The receive syscalls `hung` and `teardown` recognise, with their names.
pub const RECV_SYSCALLS: [(u64, &str); 4] = [(READ, "read"), (RECVFROM, "recvfrom"), (RECVMSG, "recvmsg"), (RECVMMSG, "recvmmsg")];

/// Name of a receive syscall number (`recvmsg`), `?` for any other number.
pub fn recv_syscall_name(nr: u64) -> &'static str {
    RECV_SYSCALLS.iter().find(|(n, _)| *n == nr).map_or("?", |(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_syscall_numbers_are_distinct() {
        let mut nrs: Vec<u64> = RECV_SYSCALLS.iter().map(|(n, _)| *n).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), 4);
        // The C library's own table for this target agrees.
        assert_eq!((READ, RECVFROM, RECVMSG, RECVMMSG), (libc::SYS_read as u64, libc::SYS_recvfrom as u64, libc::SYS_recvmsg as u64, libc::SYS_recvmmsg as u64));
    }
}
