//! `ifsock abort`: the observation half. One classic tracepoint on `raw_syscalls:sys_exit`
//! records, for each thread userspace put in `ABORT_WATCH`, the first syscall return after the
//! socket it waits on was destroyed (`ret`, syscall number, time).
//!
//! The destroying half, an `iter/udp`/`iter/tcp` program calling the `bpf_sock_destroy()`
//! kfunc, is not in this object: aya-obj 0.6 cannot relocate a kfunc call
//! (`BPF_PSEUDO_KFUNC_CALL`, aya-rs/aya#432), so userspace assembles that program itself
//! (`ifsock/src/probes/destroy.rs`).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use ifsock_common::{AbortWake, ABORT_WATCH_CAPACITY};

/// tid -> first syscall return after the watch began.
#[map]
pub static ABORT_WATCH: HashMap<u32, AbortWake> = HashMap::with_max_entries(ABORT_WATCH_CAPACITY, 0);

/// `raw_syscalls:sys_exit`: `long id` @8, `long ret` @16 (format file of every kernel since 2.6.33).
#[tracepoint]
pub fn abort_sys_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = ABORT_WATCH.get_ptr_mut(&tid) else { return 0 };
    // SAFETY: slot points into the map value; offsets from the tracepoint's format file.
    unsafe {
        if (*slot).ts_ns != 0 {
            return 0;
        }
        (*slot).nr = ctx.read_at::<i64>(8).unwrap_or(-1);
        (*slot).ret = ctx.read_at::<i64>(16).unwrap_or(0);
        (*slot).ts_ns = bpf_ktime_get_ns();
    }
    0
}
