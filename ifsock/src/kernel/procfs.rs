//! procfs facts about tasks that the eBPF programs cannot see: threads that were already
//! blocked in a receive before ifsock attached its tracepoints (`recv_enter` never ran for
//! them, so `INFLIGHT_RECV` does not know them).
//!
//! Source: `/proc/PID/task/TID/syscall` (`proc_pid_syscall()`, needs ptrace access: root):
//! `NR ARG0 … ARG5 SP PC` while the thread sleeps in syscall NR, `running` otherwise; and
//! `/proc/PID/fd/FD` → `socket:[INODE]`.
use std::fs;

use serde::Serialize;

/// A thread blocked in a receive syscall on a socket fd when procfs was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockedRecv {
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread command (`/proc/PID/task/TID/comm`).
    pub comm: String,
    /// fd passed to the syscall (its first argument).
    pub fd: u32,
    /// `read`, `recvfrom`, `recvmsg` or `recvmmsg`.
    pub syscall: &'static str,
    /// Socket inode behind the fd.
    pub ino: u64,
}

/// Receive syscalls whose first argument is the fd, by this architecture's numbers.
fn recv_syscall_name(nr: i64) -> Option<&'static str> {
    match nr {
        libc::SYS_read => Some("read"),
        libc::SYS_recvfrom => Some("recvfrom"),
        libc::SYS_recvmsg => Some("recvmsg"),
        libc::SYS_recvmmsg => Some("recvmmsg"),
        _ => None,
    }
}

/// Parses one `/proc/PID/task/TID/syscall` line into (syscall name, fd) when it is a receive.
pub fn parse_syscall_line(line: &str) -> Option<(&'static str, u32)> {
    let mut words = line.split_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    let name = recv_syscall_name(nr)?;
    let arg0 = words.next()?.trim_start_matches("0x");
    let fd = u32::try_from(u64::from_str_radix(arg0, 16).ok()?).ok()?;
    Some((name, fd))
}

/// The socket inode behind `/proc/PID/fd/FD` (`socket:[N]`), if it is a socket.
pub fn fd_socket_inode(pid: u32, fd: u32) -> Option<u64> {
    let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Threads of `pids` blocked in a receive on a socket right now. Threads that vanish or deny
/// access while being read are skipped: this is a snapshot, not a guarantee.
pub fn blocked_receives(pids: impl IntoIterator<Item = u32>) -> Vec<BlockedRecv> {
    let mut out = Vec::new();
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            let Ok(line) = fs::read_to_string(task.path().join("syscall")) else { continue };
            let Some((syscall, fd)) = parse_syscall_line(&line) else { continue };
            let Some(ino) = fd_socket_inode(pid, fd) else { continue };
            let comm = fs::read_to_string(task.path().join("comm")).map(|c| c.trim_end().to_string()).unwrap_or_default();
            out.push(BlockedRecv { pid, tid, comm, fd, syscall, ino });
        }
    }
    out.sort_by_key(|b| (b.pid, b.tid));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_are_parsed() {
        let line = format!("{} 0x3 0x7f689b5f20f0 0xa 0x0 0x7f 0x7f 0x7ffd 0x7f68", libc::SYS_recvfrom);
        assert_eq!(parse_syscall_line(&line), Some(("recvfrom", 3)));
        assert_eq!(parse_syscall_line("running"), None);
        assert_eq!(parse_syscall_line("-1 0x7ffd 0x7f68"), None);
        assert_eq!(parse_syscall_line(&format!("{} 0x5 0x0", libc::SYS_sendto)), None);
    }

    #[test]
    fn own_blocked_receiver_is_found() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock) as u32;
        let pid = std::process::id();
        let clone = sock.try_clone().expect("clone");
        let waiter = std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let _ = clone.recv_from(&mut buf);
        });
        let ino = fd_socket_inode(pid, fd).expect("socket inode");
        // The thread has to reach the kernel's wait first: poll procfs (bounded) for it.
        let mut found = Vec::new();
        for _ in 0..500 {
            found = blocked_receives([pid]).into_iter().filter(|b| b.ino == ino).collect();
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(found.len(), 1, "blocked receiver not seen");
        assert_eq!(found[0].syscall, "recvfrom");
        sock.send_to(b"x", sock.local_addr().expect("addr")).expect("wake the receiver");
        waiter.join().expect("join");
    }
}
