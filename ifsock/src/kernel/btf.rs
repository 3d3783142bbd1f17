//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`, plus the
//! `tun` module's split BTF when tun is a module). Rust eBPF programs get no CO-RE relocations,
//! so these offsets are computed here and handed to the programs as `KernelOffsets`.
use std::path::Path;

use btf_rs::{Btf, Type};
use fallible_iterator::FallibleIterator;
use ifsock_common::{KernelOffsets, OFFSET_NONE};

/// Path of the kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors reading kernel BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The kernel exposes no BTF.
    #[error("no kernel BTF at {VMLINUX_BTF}: ifsock needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    Missing,
    /// The BTF could not be parsed.
    #[error("cannot parse kernel BTF {path}: {source}")]
    Parse {
        /// File that failed.
        path: String,
        /// Parser error.
        source: btf_rs::Error,
    },
    /// A field every probe needs is absent.
    #[error("kernel BTF lacks {0}: this kernel's layout is not supported")]
    Required(&'static str),
}

/// vmlinux BTF parsed by aya, for the program loads that need a target type id (iterators,
/// tp_btf, fentry/fexit). The file is mapped rather than read: sysfs serves this bin
/// attribute one page per `read()` (kernfs), ~1,000 reads for 4 MB, while the kernel maps it
/// from Linux 6.16 (`btf_sysfs_vmlinux_mmap`). Older kernels refuse the map (ENODEV/EINVAL)
/// and get the plain read.
///
/// # Errors
/// No kernel BTF, unreadable, or aya could not parse it.
pub fn vmlinux_for_aya() -> anyhow::Result<aya::Btf> {
    use anyhow::Context as _;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(BtfError::Missing.into());
    }
    let endian = aya::Endianness::default();
    let file = std::fs::File::open(VMLINUX_BTF).with_context(|| format!("opening {VMLINUX_BTF}"))?;
    // Private and read-only: `btf_sysfs_vmlinux_mmap` refuses shared or writable maps (EACCES).
    // SAFETY: the kernel's BTF is read-only and never changes while the kernel runs; the map
    // is dropped before this returns (aya copies what it parses).
    let mapped = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) };
    let parsed = match mapped {
        Ok(map) => aya::Btf::parse(&map, endian),
        Err(e) => {
            tracing::debug!("{VMLINUX_BTF} cannot be mapped ({e}), reading it");
            let data = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
            aya::Btf::parse(&data, endian)
        }
    };
    parsed.with_context(|| format!("parsing {VMLINUX_BTF} for the program loader"))
}

/// Parsed kernel BTF: vmlinux plus optional module split BTF.
pub struct KernelBtf {
    vmlinux: Btf,
    modules: Vec<Btf>,
}

impl KernelBtf {
    /// Loads `/sys/kernel/btf/vmlinux` and the split BTF of `modules` that exist
    /// (`/sys/kernel/btf/<module>`; absent when the module is built in or not loaded).
    ///
    /// # Errors
    /// [`BtfError::Missing`] without kernel BTF, [`BtfError::Parse`] when unreadable.
    pub fn load(modules: &[&str]) -> Result<Self, BtfError> {
        if !Path::new(VMLINUX_BTF).exists() {
            return Err(BtfError::Missing);
        }
        // Mmap parses only what is looked up; kernels before ~6.16 cannot mmap the sysfs BTF
        // file (ENODEV), so fall back to a full parse there.
        let vmlinux = Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(VMLINUX_BTF))
            .map_err(|source| BtfError::Parse { path: VMLINUX_BTF.into(), source })?;
        let mut split = Vec::new();
        for module in modules {
            let path = format!("/sys/kernel/btf/{module}");
            if Path::new(&path).exists() {
                let btf = Btf::from_split_file(&path, &vmlinux)
                    .map_err(|source| BtfError::Parse { path: path.clone(), source })?;
                split.push(btf);
            }
        }
        Ok(Self { vmlinux, modules: split })
    }

    fn sources(&self) -> impl Iterator<Item = &Btf> {
        std::iter::once(&self.vmlinux).chain(self.modules.iter())
    }

    /// True when the kernel has a function (`BTF_KIND_FUNC`) of that name: the probe-point test
    /// used to pick fentry/kprobe targets (no kernel version checks).
    pub fn has_function(&self, name: &str) -> bool {
        self.sources().any(|btf| {
            btf.resolve_types_by_name(name)
                .map(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
                .unwrap_or(false)
        })
    }

    /// Value of an enumerator (e.g. `INET_FLAGS_PKTINFO`), if any enum defines it.
    pub fn enum_value(&self, name: &str) -> Option<u64> {
        for btf in self.sources() {
            let mut types = btf.type_iter();
            while let Ok(Some(ty)) = types.next() {
                match &ty {
                    Type::Enum(e) => {
                        for m in &e.members {
                            if btf.resolve_name(m).ok().as_deref() == Some(name) {
                                return Some(m.val() as u64);
                            }
                        }
                    }
                    Type::Enum64(e) => {
                        for m in &e.members {
                            if btf.resolve_name(m).ok().as_deref() == Some(name) {
                                return Some(m.val());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Bit offset and bitfield size of a member path inside a struct (`"sock_common"`,
    /// `"skc_daddr"` or `"ns.inum"`), descending through anonymous structs and unions.
    pub fn member_bits(&self, strukt: &str, path: &str) -> Option<(u32, Option<u32>)> {
        self.sources().find_map(|btf| member_bits_in(btf, strukt, path))
    }

    /// Byte offset of a member path, or [`OFFSET_NONE`] when absent.
    pub fn offset(&self, strukt: &str, path: &str) -> u32 {
        self.member_bits(strukt, path).map_or(OFFSET_NONE, |(bits, _)| bits / 8)
    }

    /// Size in bytes of a member's type (after typedefs/qualifiers), if known.
    pub fn member_size(&self, strukt: &str, path: &str) -> Option<usize> {
        self.sources().find_map(|btf| {
            let ty = member_type_in(btf, strukt, path)?;
            type_size(btf, &ty)
        })
    }

    /// Size in bytes of a struct, if the BTF has it.
    pub fn struct_size(&self, name: &str) -> Option<usize> {
        self.sources().find_map(|btf| find_struct(btf, name).map(|s| s.size()))
    }

    /// Every offset ifsock's programs use.
    ///
    /// # Errors
    /// [`BtfError::Required`] when a field the socket iterators depend on is missing.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let o = |s: &str, p: &str| self.offset(s, p);
        let mut k = KernelOffsets::NONE;
        k.skc_daddr = o("sock_common", "skc_daddr");
        k.skc_rcv_saddr = o("sock_common", "skc_rcv_saddr");
        k.skc_dport = o("sock_common", "skc_dport");
        k.skc_num = o("sock_common", "skc_num");
        k.skc_family = o("sock_common", "skc_family");
        k.skc_state = o("sock_common", "skc_state");
        k.skc_bound_dev_if = o("sock_common", "skc_bound_dev_if");
        k.skc_net = o("sock_common", "skc_net");
        k.skc_v6_daddr = o("sock_common", "skc_v6_daddr");
        k.skc_v6_rcv_saddr = o("sock_common", "skc_v6_rcv_saddr");
        k.sk_socket = o("sock", "sk_socket");
        k.sk_rcvq_len = o("sock", "sk_receive_queue.qlen");
        k.sk_drops = o("sock", "sk_drops");
        // inet_sock.inet_flags bit INET_FLAGS_PKTINFO (>= 6.5); inet_sock.cmsg_flags bit 0 before.
        if let (Some((bits, _)), Some(bit)) =
            (self.member_bits("inet_sock", "inet_flags"), self.enum_value("INET_FLAGS_PKTINFO"))
        {
            k.inet_pktinfo_word = bits / 8;
            k.inet_pktinfo_size = self.member_size("inet_sock", "inet_flags").unwrap_or(8) as u32;
            k.inet_pktinfo_bit = bit as u32;
        } else if let Some((bits, field)) = self.member_bits("inet_sock", "cmsg_flags") {
            k.inet_pktinfo_word = bits / 8;
            k.inet_pktinfo_size = match field {
                Some(_) => 1,
                None => self.member_size("inet_sock", "cmsg_flags").unwrap_or(1) as u32,
            };
            k.inet_pktinfo_bit = bits % 8;
        }
        k.inet_pinet6 = o("inet_sock", "pinet6");
        if let (Some((rxopt, _)), Some((rxinfo, _))) = (
            self.member_bits("ipv6_pinfo", "rxopt"),
            self.member_bits("ipv6_pinfo", "rxopt.bits.rxinfo"),
        ) {
            k.ipv6_rxopt = rxopt / 8;
            k.ipv6_rxinfo_bit = rxinfo - rxopt;
        }
        k.socket_sk = o("socket", "sk");
        let (sock_at, inode_at) = (o("socket_alloc", "socket"), o("socket_alloc", "vfs_inode"));
        if sock_at != OFFSET_NONE && inode_at != OFFSET_NONE {
            k.socket_to_inode = inode_at - sock_at;
        }
        k.inode_i_ino = o("inode", "i_ino");
        k.inode_i_mode = o("inode", "i_mode");
        k.inode_i_rdev = o("inode", "i_rdev");
        k.net_ns_inum = o("net", "ns.inum");
        k.task_tgid = o("task_struct", "tgid");
        k.task_pid = o("task_struct", "pid");
        k.task_comm = o("task_struct", "comm");
        k.task_files = o("task_struct", "files");
        k.task_nsproxy = o("task_struct", "nsproxy");
        k.nsproxy_net_ns = o("nsproxy", "net_ns");
        k.files_fdt = o("files_struct", "fdt");
        k.fdt_max_fds = o("fdtable", "max_fds");
        k.fdt_fd = o("fdtable", "fd");
        k.file_f_inode = o("file", "f_inode");
        k.file_private_data = o("file", "private_data");
        k.tfile_tun = o("tun_file", "tun");
        k.tfile_queue_index = o("tun_file", "queue_index");
        k.tfile_detached = o("tun_file", "detached");
        k.tfile_tx_ring = o("tun_file", "tx_ring");
        k.ring_producer = o("ptr_ring", "producer");
        k.ring_consumer_head = o("ptr_ring", "consumer_head");
        k.ring_size = o("ptr_ring", "size");
        k.ring_queue = o("ptr_ring", "queue");
        k.tun_flags = o("tun_struct", "flags");
        k.tun_numqueues = o("tun_struct", "numqueues");
        k.tun_numdisabled = o("tun_struct", "numdisabled");
        k.tun_dev = o("tun_struct", "dev");
        k.tun_owner = o("tun_struct", "owner");
        k.tun_group = o("tun_struct", "group");
        k.dev_ifindex = o("net_device", "ifindex");
        k.dev_name = o("net_device", "name");
        k.dev_close_list = o("net_device", "close_list");
        k.dev_nd_net = o("net_device", "nd_net.net");
        k.skb_len = o("sk_buff", "len");
        // sock errors
        k.sk_err = o("sock", "sk_err");
        // sock.sk_protocol is a u16 since 5.6 (bf9765145b85); before, a bitfield the programs
        // cannot read at a byte offset (the tracepoint it serves only exists from 5.14 anyway).
        k.sk_protocol = match self.member_bits("sock", "sk_protocol") {
            // A bitfield size of 0 marks a plain member of a struct that has bitfields.
            Some((bits, None | Some(0))) if bits % 8 == 0 && self.member_size("sock", "sk_protocol") == Some(2) => bits / 8,
            _ => OFFSET_NONE,
        };
        k.inet_sport = o("inet_sock", "inet_sport");
        // Wait queues (the waiter walk). `sock.sk_wq` (`struct socket_wq __rcu *`, read on 6.1
        // and 6.18; NULL once `sock_orphan()` ran), `socket_wq.wait` a
        // `wait_queue_head_t {lock, head}`, `wait_queue_entry {flags, private, func, entry}`
        // (include/linux/wait.h, since 4.13). fs/select.c `poll_wqueues.polling_task`,
        // fs/eventpoll.c `eppoll_entry {next, base, wait, whead}`, `epitem.{ep, ffd.fd}`,
        // `eventpoll.{wq, poll_wait}`: private structs, present in vmlinux BTF on 6.1 and 6.18.
        k.sk_wq = o("sock", "sk_wq");
        k.sk_wq_head = o("socket_wq", "wait.head");
        k.wqe_private = o("wait_queue_entry", "private");
        k.wqe_func = o("wait_queue_entry", "func");
        k.wqe_entry = o("wait_queue_entry", "entry");
        k.pwq_polling_task = o("poll_wqueues", "polling_task");
        k.epe_base = o("eppoll_entry", "base");
        k.epe_wait = o("eppoll_entry", "wait");
        k.epi_ep = o("epitem", "ep");
        k.epi_fd = o("epitem", "ffd.fd");
        k.ep_wq_head = o("eventpoll", "wq.head");
        k.ep_poll_wait_head = o("eventpoll", "poll_wait.head");
        k.task_stack = o("task_struct", "stack");
        // Back-pointers that prove an entry is still on the queue being walked (see the walk).
        k.wqh_head = o("wait_queue_head", "head");
        k.pte_wait = o("poll_table_entry", "wait");
        k.pte_wait_address = o("poll_table_entry", "wait_address");
        k.epe_whead = o("eppoll_entry", "whead");
        let in_regs = |field: &str| match (thread_size(), self.struct_size("pt_regs"), self.offset("pt_regs", field)) {
            (Some(stack), Some(regs), at) if at != OFFSET_NONE && regs < stack as usize => stack - regs as u32 + at,
            _ => OFFSET_NONE,
        };
        // x86-64 `struct pt_regs`: `orig_ax` holds the syscall number, `di` the first argument.
        k.stack_syscall_nr = in_regs("orig_ax");
        k.stack_syscall_arg0 = in_regs("di");

        let required = [
            (k.skc_family, "sock_common.skc_family"),
            (k.skc_num, "sock_common.skc_num"),
            (k.skc_rcv_saddr, "sock_common.skc_rcv_saddr"),
            (k.skc_bound_dev_if, "sock_common.skc_bound_dev_if"),
            (k.skc_net, "sock_common.skc_net"),
            (k.sk_socket, "sock.sk_socket"),
            (k.socket_to_inode, "socket_alloc.vfs_inode"),
            (k.inode_i_ino, "inode.i_ino"),
            (k.inode_i_mode, "inode.i_mode"),
            (k.net_ns_inum, "net.ns.inum"),
            (k.task_tgid, "task_struct.tgid"),
            (k.task_files, "task_struct.files"),
            (k.file_f_inode, "file.f_inode"),
            (k.file_private_data, "file.private_data"),
        ];
        if let Some((_, name)) = required.iter().find(|(v, _)| *v == OFFSET_NONE) {
            return Err(BtfError::Required(name));
        }
        Ok(k)
    }
}

/// The kernel stack size of x86-64 (`THREAD_SIZE`, arch/x86/include/asm/page_64_types.h:
/// `PAGE_SIZE << (2 + KASAN_STACK_ORDER)`: 16 KiB, 32 KiB with `CONFIG_KASAN` or `CONFIG_KMSAN`),
/// from the kernel's config in `/boot` when it is readable (16 KiB, the distributions' build,
/// otherwise). `None` on other architectures: the waiter walk then reads no syscall number.
fn thread_size() -> Option<u32> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let config = std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default();
    let sanitized = config.lines().any(|l| l == "CONFIG_KASAN=y" || l == "CONFIG_KMSAN=y");
    Some(if sanitized { 32768 } else { 16384 })
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t).ok()?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => btf.resolve_chained_type(t).ok()?,
            Type::TypeTag(t) => btf.resolve_chained_type(t).ok()?,
            _ => return Some(ty),
        };
    }
    None
}

fn type_size(btf: &Btf, ty: &Type) -> Option<usize> {
    match strip(btf, ty.clone())? {
        Type::Int(i) => Some(i.size()),
        Type::Ptr(_) => Some(8),
        Type::Struct(s) | Type::Union(s) => Some(s.size()),
        Type::Enum(e) => Some(e.size()),
        _ => None,
    }
}

fn find_struct(btf: &Btf, name: &str) -> Option<btf_rs::Struct> {
    btf.resolve_types_by_name(name).ok()?.into_iter().find_map(|t| match t {
        Type::Struct(s) => Some(s),
        _ => None,
    })
}

/// Finds `name` among the members of `s`, descending into anonymous members.
/// Returns (bit offset, bitfield size, member type).
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str, depth: u32) -> Option<(u32, Option<u32>, Type)> {
    if depth > 8 {
        return None;
    }
    for m in &s.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some((m.bit_offset(), m.bitfield_size(), btf.resolve_chained_type(m).ok()?));
        }
        if mname.is_empty() {
            if let Some(Type::Struct(inner) | Type::Union(inner)) =
                btf.resolve_chained_type(m).ok().and_then(|t| strip(btf, t))
            {
                if let Some((bits, size, ty)) = find_member(btf, &inner, name, depth + 1) {
                    return Some((m.bit_offset() + bits, size, ty));
                }
            }
        }
    }
    None
}

fn walk(btf: &Btf, strukt: &str, path: &str) -> Option<(u32, Option<u32>, Type)> {
    let mut current = find_struct(btf, strukt)?;
    let mut total = 0;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (bits, size, ty) = find_member(btf, &current, part, 0)?;
        total += bits;
        if i + 1 == parts.len() {
            return Some((total, size, ty));
        }
        current = match strip(btf, ty)? {
            Type::Struct(s) | Type::Union(s) => s,
            _ => return None,
        };
    }
    None
}

fn member_bits_in(btf: &Btf, strukt: &str, path: &str) -> Option<(u32, Option<u32>)> {
    walk(btf, strukt, path).map(|(bits, size, _)| (bits, size))
}

fn member_type_in(btf: &Btf, strukt: &str, path: &str) -> Option<Type> {
    walk(btf, strukt, path).map(|(_, _, ty)| ty)
}

/// Kernel functions that name the BPF iterator targets ifsock loads, in this order: `iter/udp`,
/// `iter/tcp`, `iter/task_file` (`DEFINE_BPF_ITER_FUNC` in net/ipv4/udp.c, net/ipv4/tcp_ipv4.c,
/// kernel/bpf/task_iter.c). An iterator program's `attach_btf_id` is the BTF id of its target's
/// `BTF_KIND_FUNC`.
pub const ITER_TARGET_FUNCS: [&str; 3] = ["bpf_iter_udp", "bpf_iter_tcp", "bpf_iter_task_file"];

/// BTF type ids of [`ITER_TARGET_FUNCS`] in vmlinux, cached per boot beside the offsets
/// (`/run/ifsock/iter-ids-<boot_id>-<release>.bin`, three native-endian u32). vmlinux BTF cannot
/// change while the kernel runs, so the ids hold until reboot. With them the iterators load
/// without aya parsing all of vmlinux's BTF (~10 ms of a one-shot `sockets` on 6.18, 64k types).
///
/// # Errors
/// No kernel BTF, or a target function is absent (BPF iterators need Linux 5.9 for udp/tcp).
pub fn cached_iter_func_ids() -> anyhow::Result<[u32; 3]> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let path = Path::new(OFFSETS_CACHE_DIR).join(format!("iter-ids-{}-{release}.bin", boot_id.trim()));
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == 12 && !boot_id.is_empty() {
            let id = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            return Ok([id(0), id(4), id(8)]);
        }
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(BtfError::Missing.into());
    }
    let btf = Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(VMLINUX_BTF))
        .map_err(|source| BtfError::Parse { path: VMLINUX_BTF.into(), source })?;
    let mut ids = [0u32; 3];
    for (slot, name) in ids.iter_mut().zip(ITER_TARGET_FUNCS) {
        *slot = func_id(&btf, name)
            .ok_or_else(|| anyhow::anyhow!("kernel BTF has no function {name}: this kernel lacks that BPF iterator"))?;
    }
    if !boot_id.is_empty() && std::fs::create_dir_all(OFFSETS_CACHE_DIR).is_ok() {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_ne_bytes()).collect();
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(ids)
}

/// The id of the `BTF_KIND_FUNC` named `name`, if there is one.
fn func_id(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .ok()?
        .into_iter()
        .find(|id| matches!(btf.resolve_type_by_id(*id), Ok(Type::Func(_))))
}

/// Identity of the offsets' format: a hash of the sources that define [`KernelOffsets`]
/// (ifsock-common) and fill it (this file). Part of the cache file name, so a binary whose
/// struct or filling code differs (another branch, a fix, an upgrade) never reads a cache
/// written by another one, even when the struct size happens to be the same.
pub const OFFSETS_FORMAT: u64 = {
    let a = fnv1a(0xcbf2_9ce4_8422_2325, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ifsock-common/src/lib.rs")));
    fnv1a(a, include_bytes!("btf.rs"))
};

const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Where [`cached_kernel_offsets`] keeps its per-boot cache (tmpfs: gone at reboot).
pub const OFFSETS_CACHE_DIR: &str = "/run/ifsock";

/// [`KernelBtf::kernel_offsets`] of the running kernel, cached per boot in
/// `/run/ifsock/offsets-<boot_id>-<release>-<format>.bin` (the layout cannot change without a
/// reboot; computing it scans all of vmlinux's BTF enums, ~60 ms; `<format>` is
/// [`OFFSETS_FORMAT`]). A cache that cannot be written is not an error.
///
/// # Errors
/// As [`KernelBtf::load`] and [`KernelBtf::kernel_offsets`] on a cache miss.
pub fn cached_kernel_offsets() -> Result<KernelOffsets, BtfError> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let path = Path::new(OFFSETS_CACHE_DIR).join(format!("offsets-{}-{release}-{OFFSETS_FORMAT:016x}.bin", boot_id.trim()));
    let size = std::mem::size_of::<KernelOffsets>();
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == size && !boot_id.is_empty() {
            if let Some(k) = ifsock_common::read_record::<KernelOffsets>(&bytes) {
                return Ok(k);
            }
        }
    }
    let offsets = KernelBtf::load(&["tun"])?.kernel_offsets()?;
    if !boot_id.is_empty() && std::fs::create_dir_all(OFFSETS_CACHE_DIR).is_ok() {
        // SAFETY: reading the bytes of a repr(C) POD value.
        let bytes = unsafe { std::slice::from_raw_parts((&offsets as *const KernelOffsets).cast::<u8>(), size) };
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs only where the kernel has BTF (every CI machine does); asserts layouts that hold on
    /// all supported kernels (sock_common starts struct sock; net.ns.inum is resolvable).
    #[test]
    fn running_kernel_offsets_are_consistent() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF} on this kernel (needs CONFIG_DEBUG_INFO_BTF)");
            return;
        }
        let btf = KernelBtf::load(&["tun"]).expect("parse BTF");
        let k = btf.kernel_offsets().expect("required offsets");
        assert_eq!(btf.offset("sock", "__sk_common"), 0);
        assert!(k.skc_num > k.skc_daddr, "skc_portpair follows skc_addrpair");
        assert!(k.inet_pktinfo_size == 8 || k.inet_pktinfo_size <= 2);
        assert_ne!(k.ipv6_rxopt, OFFSET_NONE);
        assert!(k.ipv6_rxinfo_bit < 16);
        assert!(btf.has_function("skb_recv_datagram") || btf.has_function("__skb_recv_datagram"));
        assert!(!btf.has_function("no_such_kernel_function_ifsock"));
        assert_ne!(k.sk_err, OFFSET_NONE, "sock.sk_err exists on every kernel");
        let ids = cached_iter_func_ids().expect("iterator target ids");
        assert!(ids[0] != 0 && ids[0] != ids[1] && ids[1] != ids[2], "three distinct BTF ids: {ids:?}");
        assert_eq!(cached_iter_func_ids().expect("cached"), ids, "the cache returns what was computed");
        for (v, name) in [(k.sk_wq, "sk_wq"), (k.sk_wq_head, "socket_wq.wait.head"), (k.wqe_func, "func"), (k.wqe_entry, "entry"),
            (k.pwq_polling_task, "polling_task"), (k.epe_base, "base"), (k.epe_wait, "wait"), (k.epi_ep, "ep"), (k.epi_fd, "ffd.fd"),
            (k.ep_wq_head, "wq.head"), (k.ep_poll_wait_head, "poll_wait.head")] {
            assert_ne!(v, OFFSET_NONE, "{name} is in vmlinux BTF");
        }
        assert_eq!(k.wqe_private, 8, "wait_queue_entry {{ unsigned int flags; void *private; ... }}");
        assert_ne!(k.sk_protocol, OFFSET_NONE, "sock.sk_protocol is a u16 wherever inet_sk_error_report exists (>= 5.14)");
    }
}
