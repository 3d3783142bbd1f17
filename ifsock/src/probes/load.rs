//! Loading the eBPF object (globals set to the running kernel's BTF offsets) and verifying the
//! iterator programs, with the small ids-only BTF that spares parsing all of vmlinux.
use anyhow::{anyhow, Context as _, Result};
use aya::{programs::Iter, Btf, Ebpf, EbpfLoader};
use ifsock_common::{
    GLOBAL_OFFSETS, GLOBAL_RECV_REPORT_MIN_NS, MAP_ABORT_WATCH, MAP_EVENTS, MAP_INFLIGHT, MAP_INFLIGHT_SLOTS, MAP_RECV_ERR_PTR,
    MAP_SEND_FD,
};

use super::{inflight, Probes, ITER_TASK_SOCKETS, ITER_TCP, ITER_UDP};
use crate::kernel::system;

/// The compiled eBPF object, built by `aya-build` from `ifsock-ebpf`.
#[cfg(feature = "probes")]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ifsock"));
/// Built without the `probes` feature: no object ([`Probes::load`] says so).
#[cfg(not(feature = "probes"))]
static EBPF_OBJECT: &[u8] = &[];

impl Probes {
    /// Checks privileges and BTF, mounts tracefs/bpffs when missing, reads offsets from BTF,
    /// and loads the object. `recv_report_min_ns`: receives in flight at least this long emit
    /// an event at return (`u64::MAX`: never).
    ///
    /// # Errors
    /// Not root / no CAP_BPF, no BTF, or the kernel refused the object (the message says which).
    pub fn load(recv_report_min_ns: u64) -> Result<Self> {
        Self::load_with(recv_report_min_ns, false)
    }

    /// [`Probes::load`] for commands that only run the iterators (`sockets`, `tun`): the maps
    /// no iterator touches (the event ring buffer, the in-flight receive, send and wake maps)
    /// are created with the smallest size the kernel accepts, since creating them preallocated
    /// at full size (`htab_map_alloc`, 16,384 entries each; a 1 MiB ring) was ~2 ms of a
    /// one-shot run. Attaching a kernel probe on such a `Probes` is a mistake: the probe would
    /// find its map full at once.
    ///
    /// # Errors
    /// As [`Probes::load`].
    pub fn load_for_snapshots() -> Result<Self> {
        Self::load_with(u64::MAX, true)
    }

    fn load_with(recv_report_min_ns: u64, snapshots_only: bool) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            anyhow::bail!("this ifsock was built without the `probes` cargo feature, so it carries no eBPF object: build it with default features");
        }
        system::require_root()?;
        system::ensure_mounts()?;
        let t = std::time::Instant::now();
        let offsets = crate::kernel::btf::cached_kernel_offsets()?;
        tracing::debug!("kernel offsets at {:?}", t.elapsed());
        let iter_funcs: Vec<(&'static str, u32)> = match crate::kernel::btf::cached_iter_func_ids() {
            Ok(ids) => crate::kernel::btf::ITER_TARGET_FUNCS.into_iter().zip(ids).collect(),
            Err(e) => {
                tracing::debug!("iterator target ids unavailable ({e:#}); the iterators will use parsed vmlinux BTF");
                Vec::new()
            }
        };
        let iter_btf = (!iter_funcs.is_empty())
            .then(|| {
                let funcs = iter_funcs.clone();
                std::thread::Builder::new().name("ifsock-btf-ids".into()).spawn(move || btf_with_func_ids(&funcs)).ok()
            })
            .flatten();
        // No `.btf()`: the loader parses target BTF only for CO-RE relocations or typed ksyms,
        // which the Rust object has none of (offsets come in as `GLOBAL_OFFSETS` instead).
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_OFFSETS, &offsets, true)
            .override_global(GLOBAL_RECV_REPORT_MIN_NS, &recv_report_min_ns, true);
        if snapshots_only {
            for map in [MAP_INFLIGHT, MAP_INFLIGHT_SLOTS, MAP_RECV_ERR_PTR, MAP_SEND_FD, MAP_ABORT_WATCH] {
                loader.map_max_entries(map, 1);
            }
            // A ring buffer's size is a power-of-two multiple of the page size.
            loader.map_max_entries(MAP_EVENTS, page_size());
        } else {
            loader.map_max_entries(MAP_INFLIGHT_SLOTS, inflight::slot_count()?);
        }
        let ebpf = loader.load(EBPF_OBJECT).context("loading ifsock's eBPF object into the kernel")?;
        tracing::debug!("object loaded at {:?}", t.elapsed());
        Ok(Probes {
            ebpf,
            btf: None,
            iter_btf,
            iter_funcs,
            kept_iter_btf: snapshots_only.then_some(None),
            iters_loaded: Vec::new(),
            attached: Vec::new(),
            unavailable: Vec::new(),
        })
    }

    pub(super) fn iter_mut(&mut self, name: &str) -> Result<&mut Iter> {
        iter_in(&mut self.ebpf, name)
    }

    /// Loads the three iterator programs of a socket snapshot (`iter/udp`, `iter/tcp`, and
    /// `iter/task_file` for socket fds only), each on its own thread: the kernel verifies
    /// privileged programs concurrently, and verification is most of a one-shot command's
    /// start-up (~2–5 ms per program on 6.18).
    ///
    /// # Errors
    /// The kernel lacks BPF iterators (< 5.9 for tcp/udp) or the verifier refused a program.
    pub fn load_iterators(&mut self) -> Result<()> {
        self.load_iters(&[(ITER_UDP, "udp"), (ITER_TCP, "tcp"), (ITER_TASK_SOCKETS, "task_file")])
    }

    /// Loads those of `wanted` (program name, iterator target) not loaded yet, in parallel.
    pub(super) fn load_iters(&mut self, wanted: &[(&'static str, &'static str)]) -> Result<()> {
        let mut pending: Vec<(&'static str, &'static str)> = wanted.iter().copied().filter(|(n, _)| !self.iters_loaded.contains(n)).collect();
        if pending.is_empty() {
            return Ok(());
        }
        // The ids alone, cached per boot, spare the full vmlinux parse; a program refused with
        // them is retried below with the fully parsed BTF.
        let kept = self.kept_iter_btf.as_mut().and_then(Option::take);
        let small_btf: Option<Btf> = match (kept, self.iter_btf.take()) {
            (Some(b), _) => Some(b),
            (None, Some(h)) => h.join().ok(),
            (None, None) => (!self.iter_funcs.is_empty()).then(|| btf_with_func_ids(&self.iter_funcs)),
        };
        let loaded: Vec<&'static str> = pending.iter().map(|(n, _)| *n).collect();
        if let Some(small) = &small_btf {
            let mut progs: Vec<(&'static str, &'static str, &mut Iter)> = Vec::new();
            for (name, prog) in self.ebpf.programs_mut() {
                if let Some(&(n, target)) = pending.iter().find(|(n, _)| *n == name) {
                    progs.push((n, target, prog.try_into()?));
                }
            }
            let found: Vec<&'static str> = progs.iter().map(|(n, _, _)| *n).collect();
            let refused: Vec<&'static str> = std::thread::scope(|scope| {
                let running: Vec<_> = progs
                    .into_iter()
                    .map(|(name, target, prog)| {
                        let verify = move || {
                            let t = std::time::Instant::now();
                            let loaded = prog.load(target, small);
                            tracing::debug!("{name} (iter/{target}) verified in {:?}", t.elapsed());
                            loaded
                        };
                        (name, target, scope.spawn(verify))
                    })
                    .collect();
                running
                    .into_iter()
                    .filter_map(|(name, target, handle)| match handle.join() {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => {
                            tracing::debug!("iter/{target} with cached BTF ids: {e}; retrying with parsed BTF");
                            Some(name)
                        }
                        Err(_) => Some(name),
                    })
                    .collect()
            });
            // Refused ones, and any not found (`iter_in` below names it in the error).
            pending.retain(|(name, _)| refused.contains(name) || !found.contains(name));
        }
        for (name, target) in pending {
            let btf = parsed_btf(&mut self.btf)?;
            iter_in(&mut self.ebpf, name)?
                .load(target, btf)
                .with_context(|| format!("loading iterator iter/{target} ({name})"))?;
        }
        self.iters_loaded.extend(loaded);
        if let Some(slot) = self.kept_iter_btf.as_mut() {
            *slot = small_btf;
        }
        tracing::debug!("iterators verified and loaded");
        Ok(())
    }
}

pub(super) fn iter_in<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Iter> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`; 4096 when it cannot be read).
fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |v| v as u32)
}

/// A BTF holding only the named functions, each at its kernel type id (`BTF_KIND_FUNC`), with
/// pointer placeholders below. Program loads that need a target (`Iter::load`) only look a name up
/// in the BTF they are given and pass the id to `BPF_PROG_LOAD` as `attach_btf_id`, so this
/// replaces parsing all of vmlinux when the ids are known. Memory: one placeholder per lower id
/// (72 bytes each, 4.6 MB for 64k types on 6.18), dropped after the load; ~2 ms to build.
fn btf_with_func_ids(funcs: &[(&str, u32)]) -> Btf {
    use aya_obj::btf::{BtfType, Func, FuncLinkage, Ptr};
    let mut btf = Btf::new();
    let mut sorted = funcs.to_vec();
    sorted.sort_by_key(|(_, id)| *id);
    let mut next = 1u32;
    for (name, id) in sorted {
        if id < next {
            continue; // duplicate id: the first name keeps it
        }
        while next < id {
            next = btf.add_type(BtfType::Ptr(Ptr::new(0, 0))) + 1;
        }
        let name_offset = btf.add_string(name);
        next = btf.add_type(BtfType::Func(Func::new(name_offset, 0, FuncLinkage::Global))) + 1;
    }
    btf
}

/// The parsed vmlinux BTF, parsing it on first use ([`crate::kernel::btf::vmlinux_for_aya`]).
pub(super) fn parsed_btf(slot: &mut Option<Btf>) -> Result<&Btf> {
    if slot.is_none() {
        let t = std::time::Instant::now();
        *slot = Some(crate::kernel::btf::vmlinux_for_aya()?);
        tracing::debug!("aya BTF parsed in {:?}", t.elapsed());
    }
    slot.as_ref().ok_or_else(|| anyhow!("vmlinux BTF not parsed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_btf_of_ids_alone_finds_each_function_at_its_kernel_id() {
        use aya_obj::btf::BtfKind;
        let btf = btf_with_func_ids(&[("bpf_iter_tcp", 900), ("bpf_iter_udp", 7), ("bpf_iter_task_file", 901)]);
        assert_eq!(btf.id_by_type_name_kind("bpf_iter_udp", BtfKind::Func).unwrap(), 7);
        assert_eq!(btf.id_by_type_name_kind("bpf_iter_tcp", BtfKind::Func).unwrap(), 900);
        assert_eq!(btf.id_by_type_name_kind("bpf_iter_task_file", BtfKind::Func).unwrap(), 901);
        assert!(btf.id_by_type_name_kind("bpf_iter_unix", BtfKind::Func).is_err());
    }
}
