//! Task facts from procfs: which threads sit in a receive syscall right now, on which fd, since
//! when — the only source for receivers that blocked before ifsock started.
use std::{fs, os::unix::fs::MetadataExt};

pub use crate::model::receiver::BlockedThread;
use crate::{
    model::{
        ids::{NetnsIno, SockInode},
        receiver::TaskSource,
    },
};

/// Receive syscalls (this architecture's numbers, as in `/proc/PID/task/TID/syscall`).
pub use crate::model::sys::RECV_SYSCALLS;

/// `read(2)`'s number on this arch.
const READ_NR: u64 = crate::model::sys::READ;

/// `PF_KTHREAD` (include/linux/sched.h) in `/proc/PID/stat` flags.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The syscall a thread is in now and its first argument (`/proc/PID/task/TID/syscall`), or
/// `None` when it is running in user space, gone, or unreadable.
pub fn thread_syscall(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let sc = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut fields = sc.split_whitespace();
    let nr = fields.next()?.parse::<u64>().ok()?;
    let arg0 = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    Some((nr, arg0))
}

/// `se.exec_start` of the calling thread after migrating it to `cpu`: "now" on that CPU's
/// runqueue clock (runqueue clocks of different CPUs can be seconds apart in VMs).
fn now_on_cpu(cpu: usize) -> Option<u64> {
    use nix::{sched::{sched_getaffinity, sched_setaffinity, CpuSet}, unistd::Pid};
    let me = Pid::from_raw(0);
    let saved = sched_getaffinity(me).ok()?;
    let mut only = CpuSet::new();
    only.set(cpu).ok()?;
    sched_setaffinity(me, &only).ok()?;
    let now = exec_start_ns("/proc/thread-self/sched");
    let _ = sched_setaffinity(me, &saved);
    now
}

/// `se.exec_start` of a thread in ns (the scheduler clock; `/proc/.../sched` prints ms).
fn exec_start_ns(path: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.trim_start().starts_with("se.exec_start"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((ms * 1_000_000.0) as u64)
}

/// Every thread of every process currently in state `S`/`D` inside a receive syscall.
/// `pid`: only that process. Threads that vanish while being read are skipped.
pub fn blocked_receivers(pid: Option<u32>) -> Vec<BlockedThread> {
    let mut now_by_cpu: std::collections::HashMap<usize, Option<u64>> = std::collections::HashMap::new();
    let Ok(procs) = procfs::process::all_processes() else { return Vec::new() };
    let mut out = Vec::new();
    for proc in procs.flatten() {
        if pid.is_some_and(|p| p as i32 != proc.pid) {
            continue;
        }
        let Ok(tasks) = proc.tasks() else { continue };
        for task in tasks.flatten() {
            let Ok(stat) = task.stat() else { continue };
            // PF_KTHREAD: kernel threads have no syscall of their own.
            if stat.state != 'S' && stat.state != 'D' || stat.flags & PF_KTHREAD != 0 {
                continue;
            }
            let base = format!("/proc/{}/task/{}", proc.pid, task.tid);
            let Ok(sc) = fs::read_to_string(format!("{base}/syscall")) else { continue };
            let mut fields = sc.split_whitespace();
            let Some(nr) = fields.next().and_then(|n| n.parse::<u64>().ok()) else { continue };
            if !RECV_SYSCALLS.iter().any(|(n, _)| *n == nr) {
                continue;
            }
            let Some(fd) = fields.next().and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()) else { continue };
            let link = fs::read_link(format!("/proc/{}/fd/{fd}", proc.pid));
            let fd_socket = link.as_ref().ok().and_then(|l| socket_inode(l.to_str()?));
            if nr == READ_NR && fd_socket.is_none() {
                continue; // read(2) on a non-socket, or on a closed fd (too common to infer from)
            }
            let netns = thread_netns(proc.pid as u32, task.tid as u32).unwrap_or_default();
            let then = exec_start_ns(&format!("{base}/sched"));
            let cpu = stat.processor.unwrap_or(0).max(0) as usize;
            let now = *now_by_cpu.entry(cpu).or_insert_with(|| now_on_cpu(cpu));
            let blocked_ns = match (now, then) {
                (Some(now), Some(then)) => Some(now.saturating_sub(then)),
                _ => None,
            };
            out.push(BlockedThread {
                pid: proc.pid as u32,
                tid: task.tid as u32,
                comm: stat.comm.clone(),
                syscall: nr,
                fd: fd as u32,
                fd_socket,
                fd_open: link.is_ok(),
                netns,
                blocked_ns,
            });
        }
    }
    out
}

/// Blocked time estimate of one sleeping thread, ns: as [`BlockedThread::blocked_ns`] (our
/// `se.exec_start` on the CPU it last ran on, minus its own); None when unreadable.
pub fn sched_blocked_ns(pid: u32, tid: u32) -> Option<u64> {
    let base = format!("/proc/{pid}/task/{tid}");
    let stat = procfs::process::Process::new(pid as i32).ok()?.task_from_tid(tid as i32).ok()?.stat().ok()?;
    let then = exec_start_ns(&format!("{base}/sched"))?;
    let now = now_on_cpu(stat.processor.unwrap_or(0).max(0) as usize)?;
    Some(now.saturating_sub(then))
}

/// Whether some sleeping thread sits in a call a wait-queue receiver can be in that
/// [`blocked_receivers`] does not list: `accept`/`accept4`, or `read` on a closed fd (its
/// socket, if it was one, is held by the call). `hung` walks the wait queues only when this or
/// `blocked_receivers` finds a thread: on an idle host the walk (two iterator programs to
/// verify, ~15 ms) would find no receiver. A sleeping thread whose `syscall` this process may
/// not read (another user's, without CAP_SYS_PTRACE) counts too: only the walk can see it.
pub fn unlisted_socket_wait() -> bool {
    let Ok(procs) = procfs::process::all_processes() else { return true };
    for proc in procs.flatten() {
        let Ok(tasks) = proc.tasks() else { continue };
        for task in tasks.flatten() {
            let sc = match fs::read_to_string(format!("/proc/{}/task/{}/syscall", proc.pid, task.tid)) {
                Ok(sc) => sc,
                // Another user's task without CAP_SYS_PTRACE (`proc_pid_syscall` needs
                // `ptrace_may_access(PTRACE_MODE_ATTACH_FSCREDS)`): what it waits in cannot be
                // read, so a sleeping one may be a receiver only the walk can see.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    if task.stat().is_ok_and(|st| matches!(st.state, 'S' | 'D') && st.flags & PF_KTHREAD == 0) {
                        return true;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let mut fields = sc.split_whitespace();
            let Some(nr) = fields.next().and_then(|n| n.parse::<i64>().ok()) else { continue };
            let candidate = if nr == libc::SYS_accept || nr == libc::SYS_accept4 {
                true
            } else if nr as u64 == READ_NR {
                // A read whose fd is a socket now is listed by `blocked_receivers`; one whose fd
                // was closed (or closed and reused: the number says nothing then) is told by
                // where it sleeps (`wchan`): a datagram or stream socket wait, or unknown.
                let Some(fd) = fields.next().and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()) else { continue };
                let on_socket = fs::read_link(format!("/proc/{}/fd/{fd}", proc.pid)).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
                !on_socket && socket_wchan(&fs::read_to_string(format!("/proc/{}/task/{}/wchan", proc.pid, task.tid)).unwrap_or_default())
            } else {
                false
            };
            // A kernel thread shows syscall 0 (`read`) and has no fd table: not a reader.
            if candidate && task.stat().is_ok_and(|st| matches!(st.state, 'S' | 'D') && st.flags & PF_KTHREAD == 0) {
                return true;
            }
        }
    }
    false
}

/// Whether a `wchan` (`/proc/PID/task/TID/wchan`: the function a sleeping task waits in) can
/// be a socket receive: `__skb_wait_for_more_packets` (datagram sockets), `sk_wait_data` and
/// `wait_woken` (stream sockets, also ttys), or unreadable (`0`, hidden). A pipe's
/// `pipe_read`/`anon_pipe_read` and the like are not.
fn socket_wchan(wchan: &str) -> bool {
    matches!(wchan.trim(), "" | "0" | "__skb_wait_for_more_packets" | "sk_wait_data" | "wait_woken")
}

/// True when thread `tid` of `pid` still exists.
pub fn thread_alive(pid: u32, tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// True when process `pid` exists (`/proc/PID`).
pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The netns inode of a thread (`/proc/PID/task/TID/ns/net`), None when it is gone.
pub fn thread_netns(pid: u32, tid: u32) -> Option<NetnsIno> {
    fs::metadata(format!("/proc/{pid}/task/{tid}/ns/net")).ok().map(|m| NetnsIno(m.ino() as u32))
}

/// `socket:[INO]` (an fd's link target) → INO.
fn socket_inode(target: &str) -> Option<SockInode> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok().map(SockInode)
}

/// The socket fd `fd` of `pid` refers to now (`/proc/PID/fd/FD` → `socket:[INO]`).
pub fn fd_socket(pid: u32, fd: u32) -> Option<SockInode> {
    socket_inode(fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?.to_str()?)
}

/// The live procfs behind the receivers engine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Procfs;

impl TaskSource for Procfs {
    fn thread_alive(&self, pid: u32, tid: u32) -> bool {
        thread_alive(pid, tid)
    }
    fn fd_socket(&self, pid: u32, fd: u32) -> Option<SockInode> {
        fd_socket(pid, fd)
    }
}

impl crate::model::kernel_event::ThreadFacts for Procfs {
    fn thread_netns(&self, pid: u32, tid: u32) -> Option<NetnsIno> {
        thread_netns(pid, tid)
    }
    fn thread_comm(&self, pid: u32, tid: u32) -> Option<String> {
        fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok().map(|c| c.trim_end_matches('\n').to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse_and_others_do_not() {
        assert_eq!(socket_inode("socket:[12345]"), Some(SockInode(12345)));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
