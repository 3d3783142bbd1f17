//! Userspace side of `ifsock abort`'s kernel work:
//!
//! - the destroy iterator: an `iter/udp` or `iter/tcp` program that, for each socket whose
//!   cookie (`bpf_get_socket_cookie()`, re-read inside the program) is a key of a hash map
//!   userspace filled, calls the `bpf_sock_destroy()` kfunc (Linux >= 6.5, net/core/filter.c;
//!   only allowed from `BPF_TRACE_ITER` programs on the tcp/udp iterators, which hold the socket
//!   lock) and stores its return in the map value;
//! - the waiter watch: `raw_syscalls:sys_exit` (`abort_sys_exit` in ifsock-ebpf) records the
//!   first syscall return of each watched thread.
//!
//! The destroy iterator is assembled here and loaded with bpf(2) directly because aya 0.16
//! (aya-obj 0.6) does not relocate kfunc calls: a call to an `extern` function in the eBPF
//! object would fail the whole object's load (aya-rs/aya#432). The program is 19 instructions;
//! its kfunc call carries the BTF id of `bpf_sock_destroy` from `/sys/kernel/btf/vmlinux`
//! (`BPF_PSEUDO_KFUNC_CALL`), its attach target the BTF id of `bpf_iter_udp`/`bpf_iter_tcp`.
use std::{
    ffi::CString,
    io::{self, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use btf_rs::{Btf, Type};
use ifsock_common::{AbortWake, MAP_ABORT_WATCH, PROG_ABORT_SYS_EXIT};

use super::Probes;
use crate::model::socket::Protocol;

/// Initial map value: `bpf_sock_destroy()` returns 0 or `-errno`, never 1, so 1 means the
/// iterator did not meet the socket.
const NOT_VISITED: u64 = 1;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;

/// What the destroy iterator did with one cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KfuncOutcome {
    /// `bpf_sock_destroy()` returned 0.
    Destroyed,
    /// The iterator met no socket with that cookie: it went away after the selection.
    Gone,
    /// `bpf_sock_destroy()` returned `-errno` (`EOPNOTSUPP`: the protocol has no `diag_destroy`).
    Failed(i32),
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

/// The destroy iterator's instructions. Registers: r6 = the socket (`ctx->udp_sk` /
/// `ctx->sk_common` at offset 8 of both iterator contexts, trusted and nullable), r7 = the
/// map value.
fn program(map_fd: i32, kfunc_btf_id: i32) -> Vec<Insn> {
    vec![
        insn(0x79, 6, 1, 8, 0),                         // 0: r6 = *(u64 *)(r1 + 8)
        insn(0x15, 6, 0, 15, 0),                        // 1: if r6 == 0 goto 17
        insn(0xbf, 1, 6, 0, 0),                         // 2: r1 = r6
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_SOCKET_COOKIE), // 3: r0 = bpf_get_socket_cookie(sk)
        insn(0x7b, 10, 0, -8, 0),                       // 4: *(u64 *)(r10 - 8) = r0
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),    // 5: r1 = map (ld_imm64, 2 slots)
        insn(0x00, 0, 0, 0, 0),                         // 6
        insn(0xbf, 2, 10, 0, 0),                        // 7: r2 = r10
        insn(0x07, 2, 0, 0, -8),                        // 8: r2 += -8
        insn(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),  // 9: r0 = lookup(map, &cookie)
        insn(0x15, 0, 0, 6, 0),                         // 10: if r0 == 0 goto 17
        insn(0xbf, 7, 0, 0, 0),                         // 11: r7 = r0
        insn(0x79, 1, 0, 0, 0),                         // 12: r1 = *(u64 *)(r0 + 0)
        insn(0x55, 1, 0, 3, NOT_VISITED as i32),        // 13: if r1 != 1 goto 17 (visited twice)
        insn(0xbf, 1, 6, 0, 0),                         // 14: r1 = r6
        insn(0x85, 0, BPF_PSEUDO_KFUNC_CALL, 0, kfunc_btf_id), // 15: r0 = bpf_sock_destroy(sk)
        insn(0x7b, 7, 0, 0, 0),                         // 16: *(u64 *)(r7 + 0) = r0
        insn(0xb7, 0, 0, 0, 0),                         // 17: r0 = 0
        insn(0x95, 0, 0, 0, 0),                         // 18: exit
    ]
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i32> {
    // SAFETY: attr is a zero-padded 128-byte `union bpf_attr` for `cmd`; pointers in it
    // reference buffers that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

fn fd(r: i32) -> OwnedFd {
    // SAFETY: r is a new fd returned by bpf(2) and owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r) }
}

fn lo_hi(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// BTF id of the function `name` in vmlinux BTF.
fn func_id(btf: &Btf, name: &str) -> Option<u32> {
    let ids = btf.resolve_ids_by_name(name).ok()?;
    ids.into_iter().find(|id| matches!(btf.resolve_type_by_id(*id), Ok(Type::Func(_))))
}

fn vmlinux() -> Result<Btf> {
    let path = "/sys/kernel/btf/vmlinux";
    Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .with_context(|| format!("reading {path}"))
}

/// A loaded destroy iterator for one protocol, with its cookie map.
pub struct DestroyIter {
    map: OwnedFd,
    prog: OwnedFd,
    protocol: Protocol,
}

impl DestroyIter {
    /// Creates the cookie map (`capacity` entries) and loads the program for `protocol`.
    ///
    /// # Errors
    /// The sentence names the missing piece: no `bpf_sock_destroy` in BTF (Linux < 6.5), no
    /// `bpf_iter_udp`/`bpf_iter_tcp`, or the verifier's refusal with its last log line.
    pub fn load(protocol: Protocol, capacity: u32) -> Result<Self> {
        let btf = vmlinux()?;
        let kfunc = func_id(&btf, "bpf_sock_destroy")
            .ok_or_else(|| anyhow!("no bpf_sock_destroy kfunc in this kernel's BTF (it exists from Linux 6.5)"))?;
        let target = match protocol {
            Protocol::Udp => "bpf_iter_udp",
            Protocol::Tcp => "bpf_iter_tcp",
        };
        let attach = func_id(&btf, target).ok_or_else(|| anyhow!("no {target} in this kernel's BTF (BPF socket iterators exist from Linux 5.9)"))?;

        let mut attr = [0u64; 16];
        attr[0] = lo_hi(BPF_MAP_TYPE_HASH, 8); // map_type, key_size
        attr[1] = lo_hi(8, capacity.max(1)); // value_size, max_entries
        let map = fd(bpf(BPF_MAP_CREATE, &mut attr).context("creating the destroy iterator's cookie map")?);

        let insns = program(map.as_raw_fd(), kfunc as i32);
        let license = CString::new("GPL").map_err(|e| anyhow!("{e}"))?;
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(BPF_PROG_TYPE_TRACING, insns.len() as u32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        attr[3] = lo_hi(1, log.len() as u32); // log_level, log_size
        attr[4] = log.as_mut_ptr() as u64;
        // prog_name @48 (16 bytes): "ifsk_destroy".
        let name = *b"ifsk_destroy\0\0\0\0";
        attr[6] = u64::from_ne_bytes(name[..8].try_into().unwrap_or_default());
        attr[7] = u64::from_ne_bytes(name[8..].try_into().unwrap_or_default());
        attr[8] = lo_hi(0, BPF_TRACE_ITER); // prog_ifindex, expected_attach_type
        attr[13] = lo_hi(0, attach); // line_info_cnt @104, attach_btf_id @108
        let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(p) => fd(p),
            Err(e) => {
                let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
                let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                tracing::debug!("destroy iterator verifier log:\n{text}");
                return Err(anyhow!("the kernel refused the {target} program calling bpf_sock_destroy: {e}{}", if last.is_empty() { String::new() } else { format!(" ({last})") }));
            }
        };
        Ok(DestroyIter { map, prog, protocol })
    }

    /// Which protocol's iterator this is.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Destroys the sockets of the calling thread's netns whose cookies are in `cookies` (the
    /// iterator walks the netns current when the iterator fd is created), and returns what
    /// happened to each cookie, in order.
    ///
    /// # Errors
    /// Map update, link or iterator creation, or the read failed.
    pub fn run(&self, cookies: &[u64]) -> Result<Vec<KfuncOutcome>> {
        for c in cookies {
            let key = *c;
            let value = NOT_VISITED;
            let mut attr = [0u64; 16];
            attr[0] = u64::from(self.map.as_raw_fd() as u32);
            attr[1] = &key as *const u64 as u64;
            attr[2] = &value as *const u64 as u64;
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("filling the destroy iterator's cookie map")?;
        }
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(self.prog.as_raw_fd() as u32, 0); // prog_fd, target_fd
        attr[1] = lo_hi(BPF_TRACE_ITER, 0); // attach_type, flags
        let link = fd(bpf(BPF_LINK_CREATE, &mut attr).context("creating the destroy iterator's link")?);
        let mut attr = [0u64; 16];
        attr[0] = u64::from(link.as_raw_fd() as u32);
        let iter = fd(bpf(BPF_ITER_CREATE, &mut attr).context("creating the destroy iterator")?);
        let mut file = std::fs::File::from(iter);
        let mut sink = Vec::new();
        // The program writes nothing; reading to EOF runs it over every socket.
        file.read_to_end(&mut sink).context("running the destroy iterator")?;
        let mut out = Vec::with_capacity(cookies.len());
        for c in cookies {
            let key = *c;
            let mut value = 0u64;
            let mut attr = [0u64; 16];
            attr[0] = u64::from(self.map.as_raw_fd() as u32);
            attr[1] = &key as *const u64 as u64;
            attr[2] = &mut value as *mut u64 as u64;
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("reading the destroy iterator's results")?;
            out.push(match value {
                NOT_VISITED => KfuncOutcome::Gone,
                v => match v as u32 as i32 {
                    0 => KfuncOutcome::Destroyed,
                    e => KfuncOutcome::Failed(-e),
                },
            });
        }
        Ok(out)
    }
}

/// Whether the destroy iterator loads here (both protocols), as doctor reports it.
///
/// # Errors
/// The first refusal, naming the missing piece.
pub fn probe_kfunc() -> Result<()> {
    DestroyIter::load(Protocol::Udp, 1)?;
    DestroyIter::load(Protocol::Tcp, 1)?;
    Ok(())
}

impl Probes {
    /// Starts watching threads `tids`: attaches `raw_syscalls:sys_exit` (once) and puts each tid
    /// in the watch map with an empty record. Call before destroying, so no return is missed.
    ///
    /// # Errors
    /// The tracepoint does not attach, or the map is full.
    pub fn watch_returns(&mut self, tids: &[u32]) -> Result<()> {
        if tids.is_empty() {
            return Ok(());
        }
        {
            let map = self.ebpf.map_mut(MAP_ABORT_WATCH).ok_or_else(|| anyhow!("map {MAP_ABORT_WATCH} missing"))?;
            let mut map: BpfHashMap<&mut MapData, u32, AbortWake> = BpfHashMap::try_from(map)?;
            for tid in tids {
                map.insert(tid, &AbortWake::default(), 0).with_context(|| format!("watching thread {tid}"))?;
            }
        }
        if !self.attached.iter().any(|a| a.to_string() == "raw_syscalls:sys_exit") {
            self.attach_tracepoint(PROG_ABORT_SYS_EXIT, "raw_syscalls", "sys_exit")?;
        }
        Ok(())
    }

    /// The first syscall return of each watched thread since [`Probes::watch_returns`], `None`
    /// while it has not returned.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn returns(&self, tids: &[u32]) -> Result<Vec<Option<AbortWake>>> {
        let map = self.ebpf.map(MAP_ABORT_WATCH).ok_or_else(|| anyhow!("map {MAP_ABORT_WATCH} missing"))?;
        let map: BpfHashMap<&MapData, u32, AbortWake> = BpfHashMap::try_from(map)?;
        Ok(tids.iter().map(|t| map.get(t, 0).ok().filter(|w| w.ts_ns != 0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroy_program_jumps_land_on_the_exit_block() {
        let p = program(3, 77);
        assert_eq!(p.len(), 19);
        for (i, ins) in p.iter().enumerate() {
            if ins.code == 0x15 || ins.code == 0x55 {
                assert_eq!(i as i16 + 1 + ins.off, 17, "jump at {i}");
            }
        }
        assert_eq!(p[15].regs >> 4, BPF_PSEUDO_KFUNC_CALL);
        assert_eq!(p[15].imm, 77);
        assert_eq!(p[5].imm, 3);
        assert_eq!(p[17].code, 0xb7);
        assert_eq!(p[18].code, 0x95);
    }
}
