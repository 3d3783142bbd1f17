//! The guest kernel: Debian's cloud kernel package fetched with `apt-get download`, unpacked
//! and cached under `target/vm/kernel/`, and the network modules the tests need (with their
//! dependencies from `modinfo`).
use std::{
    collections::{BTreeSet, HashMap},
    fs::{self, File},
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{KERNEL_METAPACKAGE, LOG_PREFIX};

// ---------------------------------------------------------------------------------------------
// Kernel cache

pub(super) struct CachedKernel {
    pub(super) vmlinuz: PathBuf,
    pub(super) modules_dir: PathBuf,
    pub(super) release: String,
}

pub(super) fn find_cached_kernel(dir: &Path) -> Option<CachedKernel> {
    let boot = fs::read_dir(dir.join("boot")).ok()?;
    for e in boot.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(release) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        for base in ["lib/modules", "usr/lib/modules"] {
            let m = dir.join(base).join(release);
            if m.is_dir() {
                return Some(CachedKernel {
                    vmlinuz: e.path(),
                    modules_dir: m,
                    release: release.to_string(),
                });
            }
        }
    }
    None
}

/// The concrete `linux-image-6.1.*-cloud-amd64` package the metapackage depends on.
pub(super) fn resolve_kernel_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_METAPACKAGE])
        .output()
        .context("starting apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image package (stderr: {}); run `apt-get update` (needs Debian bookworm sources)",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

pub(super) fn ensure_kernel(vm_dir: &Path) -> Result<CachedKernel> {
    let dir = vm_dir.join("kernel");
    if let Some(k) = find_cached_kernel(&dir) {
        return Ok(k);
    }
    let pkg = resolve_kernel_package()?;
    println!(
        "{LOG_PREFIX}downloading {pkg} (once; cached in {})",
        dir.display()
    );
    let dl = vm_dir.join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    let st = Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&dl)
        .status()
        .context("starting apt-get download")?;
    if !st.success() {
        bail!("`apt-get download {pkg}` failed ({st}); run `apt-get update` and check the network/apt sources");
    }
    let deb = fs::read_dir(&dl)
        .with_context(|| format!("reading {}", dl.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {pkg} left no .deb in {}", dl.display()))?;
    let partial = vm_dir.join("kernel.partial");
    let _ = fs::remove_dir_all(&partial);
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&partial)
        .status()
        .context("starting dpkg-deb")?;
    if !st.success() {
        bail!(
            "`dpkg-deb -x {} {}` failed ({st})",
            deb.display(),
            partial.display()
        );
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    let _ = fs::remove_dir_all(&dl);
    find_cached_kernel(&dir).with_context(|| {
        format!(
            "{pkg} unpacked into {} but has no boot/vmlinuz-<rel> with lib/modules/<rel>",
            dir.display()
        )
    })
}

/// The release string in a bzImage's setup header (`kernel_version` field).
pub(super) fn bzimage_release(path: &Path) -> Result<String> {
    let mut head = vec![0u8; 0x200 + 0x10000 + 256]; // kernel_version is a u16 offset from 0x200
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = read_up_to(&mut f, &mut head)?;
    head.truncate(n);
    if head.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!("{} is not a bzImage", path.display());
    }
    let off = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let s = head
        .get(off..)
        .context("kernel_version offset out of range")?;
    let end = s
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(s.len());
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}

pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Kernel modules

pub(super) fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name.split(".ko").next()?;
    if !file_name[stem.len()..].starts_with(".ko") {
        return None;
    }
    Some(stem.replace('-', "_"))
}

/// Accepts `lib/modules/<release>` itself or a tree containing exactly one such directory.
pub(super) fn resolve_modules_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join("modules.builtin").is_file() || dir.join("kernel").is_dir() {
        return Ok(dir.to_path_buf());
    }
    for base in ["lib/modules", "usr/lib/modules", ""] {
        let b = dir.join(base);
        let subs: Vec<PathBuf> = fs::read_dir(&b)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("kernel").is_dir())
                    .collect()
            })
            .unwrap_or_default();
        if subs.len() == 1 {
            return Ok(subs[0].clone());
        }
    }
    bail!(
        "modules dir {} has no modules.builtin or kernel/; pass the lib/modules/<release> directory (e.g. from `make modules_install INSTALL_MOD_PATH=...`)",
        dir.display()
    )
}

pub(super) fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk_files(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Reads a module, decompressing `.xz`/`.gz`/`.zst` with the host's command-line tools.
pub(super) fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some(("xz", "xz-utils"))
    } else if name.ends_with(".gz") {
        Some(("gzip", "gzip"))
    } else if name.ends_with(".zst") {
        Some(("zstd", "zstd"))
    } else {
        None
    };
    let Some((tool, pkg)) = tool else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| {
            format!(
                "starting `{tool}` to decompress {}; apt-get install -y {pkg}",
                path.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{tool} -dc {}` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The NUL-separated `key=value` strings of an ELF64 little-endian object's `.modinfo` section.
pub(super) fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    if elf.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not an ELF64 little-endian object");
    }
    let bad = || anyhow!("truncated ELF header");
    let shoff = u64_at(0x28).ok_or_else(bad)?;
    let shentsize = u16_at(0x3a).ok_or_else(bad)?;
    let shnum = u16_at(0x3c).ok_or_else(bad)?;
    let shstrndx = u16_at(0x3e).ok_or_else(bad)?;
    let sh = |i: usize| -> Option<(usize, usize, usize)> {
        let b = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(b)?, u64_at(b + 24)?, u64_at(b + 32)?))
    };
    let (_, stroff, strsize) = sh(shstrndx).ok_or_else(|| anyhow!("bad section header table"))?;
    let strtab = elf
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or_else(|| anyhow!("bad .shstrtab"))?;
    for i in 0..shnum {
        let (name, off, size) = sh(i).ok_or_else(|| anyhow!("bad section header {i}"))?;
        let n = strtab.get(name..).unwrap_or_default();
        let n = &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())];
        if n != b".modinfo" {
            continue;
        }
        let data = elf
            .get(off..off.saturating_add(size))
            .ok_or_else(|| anyhow!("bad .modinfo bounds"))?;
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|s| {
                let s = String::from_utf8_lossy(s);
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect());
    }
    bail!("no .modinfo section")
}

pub(super) struct Module {
    pub(super) name: String,
    pub(super) data: Vec<u8>,
}

pub(super) struct ModulePlan {
    /// In load order (dependencies first).
    pub(super) load: Vec<Module>,
    pub(super) builtin: Vec<String>,
    pub(super) missing: Vec<String>,
}

pub(super) fn plan_modules(modules_dir: &Path, wanted: &[&str]) -> Result<ModulePlan> {
    let dir = resolve_modules_dir(modules_dir)?;
    let builtin: BTreeSet<String> = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect();
    let mut files = Vec::new();
    walk_files(&dir, &mut files)?;
    let index: HashMap<String, PathBuf> = files
        .into_iter()
        .filter_map(|p| {
            let n = module_name(&p.file_name()?.to_string_lossy())?;
            Some((n, p))
        })
        .collect();

    let mut plan = ModulePlan {
        load: Vec::new(),
        builtin: Vec::new(),
        missing: Vec::new(),
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    // Iterative post-order DFS: (name, expanded?).
    for &w in wanted {
        let mut stack = vec![(w.replace('-', "_"), false)];
        let mut loaded: HashMap<String, Vec<u8>> = HashMap::new();
        while let Some((name, expanded)) = stack.pop() {
            if done.contains(&name) {
                continue;
            }
            if builtin.contains(&name) {
                done.insert(name.clone());
                plan.builtin.push(name);
                continue;
            }
            let Some(path) = index.get(&name) else {
                done.insert(name.clone());
                plan.missing.push(name);
                continue;
            };
            if expanded {
                let data = match loaded.remove(&name) {
                    Some(d) => d,
                    None => read_module(path)?,
                };
                done.insert(name.clone());
                plan.load.push(Module { name, data });
                continue;
            }
            let data = read_module(path)?;
            let deps: Vec<String> = modinfo(&data)
                .with_context(|| format!("reading .modinfo of {}", path.display()))?
                .into_iter()
                .filter(|(k, _)| k == "depends")
                .flat_map(|(_, v)| {
                    v.split(',')
                        .map(|d| d.trim().replace('-', "_"))
                        .collect::<Vec<_>>()
                })
                .filter(|d| !d.is_empty())
                .collect();
            loaded.insert(name.clone(), data);
            stack.push((name, true));
            for d in deps.into_iter().rev() {
                if !done.contains(&d) {
                    stack.push((d, false));
                }
            }
        }
    }
    Ok(plan)
}
