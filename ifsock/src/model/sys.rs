//! Tables every layer names things by: the receive and wait syscall numbers of the
//! architecture ifsock is built for, and errno names.
//!
//! Syscall numbers:
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
    //! x86_64 numbers: arch/x86/entry/syscalls/syscall_64.tbl (`common`/`64` entries).

    /// `read(2)`.
    pub const READ: u64 = 0;
    /// `recvfrom(2)` (also `recv(3)`, which glibc implements with it).
    pub const RECVFROM: u64 = 45;
    /// `recvmsg(2)`.
    pub const RECVMSG: u64 = 47;
    /// `recvmmsg(2)`.
    pub const RECVMMSG: u64 = 299;
    /// `pselect6(2)` (glibc's `select`/`pselect` on newer ABIs).
    pub const PSELECT6: u64 = 270;
    /// `ppoll(2)`.
    pub const PPOLL: u64 = 271;
    /// `epoll_pwait(2)`.
    pub const EPOLL_PWAIT: u64 = 281;
    /// `io_uring_enter(2)` (Linux >= 5.1).
    pub const IO_URING_ENTER: u64 = 426;
    /// `epoll_pwait2(2)` (Linux >= 5.11).
    pub const EPOLL_PWAIT2: u64 = 441;
    /// Waits only the older ABIs have (asm-generic, hence arm64, dropped them).
    pub const LEGACY_WAITS: &[(u64, &str)] = &[(7, "poll"), (23, "select"), (232, "epoll_wait")];
}

#[cfg(target_arch = "aarch64")]
mod numbers {
    //! arm64 numbers: include/uapi/asm-generic/unistd.h (`__NR_*`).

    /// `read(2)`.
    pub const READ: u64 = 63;
    /// `recvfrom(2)` (also `recv(3)`).
    pub const RECVFROM: u64 = 207;
    /// `recvmsg(2)`.
    pub const RECVMSG: u64 = 212;
    /// `recvmmsg(2)`.
    pub const RECVMMSG: u64 = 243;
    /// `pselect6(2)` (libc's `select` too: asm-generic has no `select`).
    pub const PSELECT6: u64 = 72;
    /// `ppoll(2)` (libc's `poll` too: asm-generic has no `poll`).
    pub const PPOLL: u64 = 73;
    /// `epoll_pwait(2)` (libc's `epoll_wait` too: asm-generic has no `epoll_wait`).
    pub const EPOLL_PWAIT: u64 = 22;
    /// `io_uring_enter(2)` (Linux >= 5.1).
    pub const IO_URING_ENTER: u64 = 426;
    /// `epoll_pwait2(2)` (Linux >= 5.11).
    pub const EPOLL_PWAIT2: u64 = 441;
    /// asm-generic has no poll, select or epoll_wait: libc implements them with the p* forms.
    pub const LEGACY_WAITS: &[(u64, &str)] = &[];
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("ifsock knows the receive and wait syscall numbers of x86_64 and aarch64 only: add this architecture's to model/sys.rs");

pub use numbers::{EPOLL_PWAIT, EPOLL_PWAIT2, IO_URING_ENTER, PPOLL, PSELECT6, READ, RECVFROM, RECVMMSG, RECVMSG};

/// The fd waits `kernel::waiters` recognises besides the receives, with their names: epoll,
/// poll, select and io_uring (the legacy `poll`/`select`/`epoll_wait` on x86_64 only).
pub const WAIT_SYSCALLS: [(u64, &str); 5] = [(PSELECT6, "pselect6"), (PPOLL, "ppoll"), (EPOLL_PWAIT, "epoll_pwait"), (IO_URING_ENTER, "io_uring_enter"), (EPOLL_PWAIT2, "epoll_pwait2")];

/// Name of a receive or wait syscall number (`recvmsg`, `epoll_wait`, `ppoll`), `None` for any
/// other number.
pub fn fd_wait_syscall_name(nr: u64) -> Option<&'static str> {
    RECV_SYSCALLS.iter().chain(WAIT_SYSCALLS.iter()).chain(numbers::LEGACY_WAITS.iter()).find(|(n, _)| *n == nr).map(|(_, s)| *s)
}

/// The receive syscalls `hung` and `teardown` recognise, with their names.
pub const RECV_SYSCALLS: [(u64, &str); 4] = [(READ, "read"), (RECVFROM, "recvfrom"), (RECVMSG, "recvmsg"), (RECVMMSG, "recvmmsg")];

/// Name of a receive syscall number (`recvmsg`), `?` for any other number.
pub fn recv_syscall_name(nr: u64) -> &'static str {
    RECV_SYSCALLS.iter().find(|(n, _)| *n == nr).map_or("?", |(_, s)| s)
}

/// errno name (`ECONNREFUSED`), `UnknownErrno` for numbers the platform does not define
/// (include/uapi/asm-generic/errno*.h through libc).
pub fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

/// `ENODEV: No such device`: the errno name and the C library's description.
pub fn errno_desc(errno: i32) -> String {
    format!("{}: {}", errno_name(errno), nix::errno::Errno::from_raw(errno).desc())
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

    #[test]
    fn wait_syscall_numbers_match_the_c_library() {
        let libc_nr = |n: libc::c_long| n as u64;
        assert_eq!(
            (PSELECT6, PPOLL, EPOLL_PWAIT, IO_URING_ENTER, EPOLL_PWAIT2),
            (libc_nr(libc::SYS_pselect6), libc_nr(libc::SYS_ppoll), libc_nr(libc::SYS_epoll_pwait), libc_nr(libc::SYS_io_uring_enter), libc_nr(libc::SYS_epoll_pwait2))
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(numbers::LEGACY_WAITS, &[(libc_nr(libc::SYS_poll), "poll"), (libc_nr(libc::SYS_select), "select"), (libc_nr(libc::SYS_epoll_wait), "epoll_wait")]);
        assert_eq!(fd_wait_syscall_name(PPOLL), Some("ppoll"));
        assert_eq!(fd_wait_syscall_name(RECVMSG), Some("recvmsg"));
        assert_eq!(fd_wait_syscall_name(u64::MAX), None);
    }

    #[test]
    fn errnos_are_named_and_described() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_desc(19), "ENODEV: No such device");
        assert_eq!(recv_syscall_name(RECVMSG), "recvmsg");
        assert_eq!(recv_syscall_name(u64::MAX), "?");
    }
}
