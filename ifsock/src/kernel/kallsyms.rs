//! Kernel symbol addresses from `/proc/kallsyms` (`kallsyms_show_value()`, kernel/kallsyms.c:
//! real addresses only for readers with `CAP_SYSLOG` under `kernel.kptr_restrict` 0 or 1; zeros
//! otherwise, and always zeros at `kptr_restrict` 2).
use std::collections::HashMap;

use ifsock_common::WakeFuncs;

/// Path of the kernel's symbol table.
pub const KALLSYMS: &str = "/proc/kallsyms";

/// Why the wake functions could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// The file could not be read.
    #[error("cannot read {KALLSYMS}: {0}")]
    Unreadable(std::io::Error),
    /// Every address reads as zero.
    #[error("{KALLSYMS} shows zero addresses (kernel.kptr_restrict={0}, or no CAP_SYSLOG): set `sysctl kernel.kptr_restrict=1` and run as root")]
    Hidden(String),
    /// A wake function every kernel has is missing.
    #[error("{KALLSYMS} has no {0}: this kernel's wait queues are not supported")]
    Missing(&'static str),
}

/// The wake functions of [`WakeFuncs`], and the symbol table's text to name the entries they
/// do not cover (read on first use).
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    /// The addresses the waiter walk classifies by.
    pub wake: WakeFuncs,
    /// The file's text, read only when an entry has another wake function (rare).
    text: std::cell::OnceCell<String>,
}

impl Symbols {
    /// Reads [`KALLSYMS`] (~120k lines; ~40–60 ms of kernel time on 6.18, most of the cost).
    ///
    /// # Errors
    /// [`KallsymsError`]: unreadable, addresses hidden, or `pollwake`/`ep_poll_callback`/
    /// `receiver_wake_function` absent.
    pub fn read() -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(KALLSYMS).map_err(KallsymsError::Unreadable)?;
        Self::parse(text)
    }

    /// [`Symbols::read`], with the addresses cached per boot in
    /// `/run/ifsock/wake-<boot_id>.bin` (kernel text does not move while the kernel runs, and
    /// these functions are all built in). The file is root's alone (mode 0600): the addresses
    /// defeat KASLR. Each run checks that kallsyms still shows addresses to this process
    /// (`kptr_restrict` may have been raised since), by reading its first line.
    ///
    /// # Errors
    /// As [`Symbols::read`] on a cache miss; [`KallsymsError::Hidden`] when kallsyms hides
    /// addresses now.
    pub fn cached() -> Result<Self, KallsymsError> {
        use std::io::{BufRead as _, Write as _};
        use std::os::unix::fs::OpenOptionsExt as _;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let boot_id = boot_id.trim();
        let path = std::path::Path::new(super::btf::OFFSETS_CACHE_DIR).join(format!("wake-{boot_id}.bin"));
        if !boot_id.is_empty() {
            if let Ok(bytes) = std::fs::read(&path) {
                // The first text symbol's address: per-CPU symbols before it sit at 0 even when
                // addresses are shown (`0000000000000000 A fixed_percpu_data` on 6.1).
                let shown = std::fs::File::open(KALLSYMS).is_ok_and(|f| {
                    std::io::BufReader::new(f)
                        .lines()
                        .map_while(Result::ok)
                        .find_map(|l| {
                            let mut w = l.split_whitespace();
                            let (addr, kind) = (w.next()?.to_string(), w.next()?);
                            matches!(kind, "t" | "T").then_some(addr)
                        })
                        .is_some_and(|a| a.chars().any(|c| c != '0'))
                });
                if !shown {
                    let level = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").map_or_else(|_| "?".into(), |s| s.trim().to_string());
                    return Err(KallsymsError::Hidden(level));
                }
                if let Some(wake) = ifsock_common::read_record::<WakeFuncs>(&bytes).filter(|_| bytes.len() == std::mem::size_of::<WakeFuncs>()) {
                    return Ok(Symbols { wake, text: Default::default() });
                }
            }
        }
        let symbols = Self::read()?;
        if !boot_id.is_empty() && std::fs::create_dir_all(super::btf::OFFSETS_CACHE_DIR).is_ok() {
            let w = symbols.wake;
            let words = [w.receiver, w.woken, w.autoremove, w.default, w.pollwake, w.ep_poll_callback, w.io_poll_wake];
            let bytes: Vec<u8> = words.iter().flat_map(|v| v.to_ne_bytes()).collect();
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).and_then(|mut f| f.write_all(&bytes));
            if written.is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            } else {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(symbols)
    }

    /// Parses kallsyms text (`ADDR TYPE NAME [MODULE]` per line).
    ///
    /// # Errors
    /// As [`Symbols::read`] (the `kptr_restrict` value is read for the message).
    pub fn parse(text: String) -> Result<Self, KallsymsError> {
        let mut wanted: HashMap<&'static str, u64> = HashMap::new();
        let mut nonzero = false;
        for (addr, name) in text_symbols(&text) {
            nonzero |= addr != 0;
            if let Some(n) = WANTED.iter().find(|w| **w == name) {
                wanted.entry(n).or_insert(addr);
            }
        }
        if !nonzero {
            let level = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").map_or_else(|_| "?".into(), |s| s.trim().to_string());
            return Err(KallsymsError::Hidden(level));
        }
        let get = |n: &'static str| wanted.get(n).copied().unwrap_or(0);
        let wake = WakeFuncs {
            receiver: get("receiver_wake_function"),
            woken: get("woken_wake_function"),
            autoremove: get("autoremove_wake_function"),
            default: get("default_wake_function"),
            pollwake: get("pollwake"),
            ep_poll_callback: get("ep_poll_callback"),
            io_poll_wake: get("io_poll_wake"),
        };
        for (v, name) in [(wake.receiver, "receiver_wake_function"), (wake.pollwake, "pollwake"), (wake.ep_poll_callback, "ep_poll_callback")] {
            if v == 0 {
                return Err(KallsymsError::Missing(name));
            }
        }
        Ok(Symbols { wake, text: text.into() })
    }

    /// The name of the text symbol that starts at `addr` (`io_poll_wake`, a driver's wake
    /// function…): a wake function pointer points at a function's first byte, so `None` means
    /// `addr` is no function (the entry was torn down under the walk and the word reused).
    pub fn name(&self, addr: u64) -> Option<&str> {
        let text = self.text.get_or_init(|| std::fs::read_to_string(KALLSYMS).unwrap_or_default());
        text_symbols(text).find(|(a, _)| *a == addr).map(|(_, n)| n)
    }
}

/// Wake functions looked up by name (see [`WakeFuncs`]).
const WANTED: [&str; 7] =
    ["receiver_wake_function", "woken_wake_function", "autoremove_wake_function", "default_wake_function", "pollwake", "ep_poll_callback", "io_poll_wake"];

/// (address, name) of each text symbol (`t`/`T`) of kallsyms text.
fn text_symbols(text: &str) -> impl Iterator<Item = (u64, &str)> {
    text.lines().filter_map(|line| {
        let mut f = line.split_whitespace();
        let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
        if !matches!(kind, "t" | "T") {
            return None;
        }
        Some((u64::from_str_radix(addr, 16).ok()?, name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_functions_are_found_and_other_addresses_are_named() {
        let text = "ffffffff813b5770 T default_wake_function\nffffffff816fe700 t pollwake\nffffffff81757e30 t ep_poll_callback\n\
                    ffffffff81757f00 t ep_other\nffffffff81b89290 t io_poll_wake\nffffffff81e93240 t receiver_wake_function\n\
                    ffffffff82000000 d some_data\nffffffffc0000000 t mod_wake\t[mymod]\n";
        let s = Symbols::parse(text.to_string()).unwrap();
        assert_eq!(s.wake.pollwake, 0xffffffff816fe700);
        assert_eq!(s.wake.io_poll_wake, 0xffffffff81b89290);
        assert_eq!(s.wake.woken, 0, "absent: zero, never matched");
        assert_eq!(s.name(0xffffffff81757f00), Some("ep_other"));
        assert_eq!(s.name(0xffffffffc0000000), Some("mod_wake"));
        assert_eq!(s.name(0xffffffff81757f08), None, "inside a function: no wake function pointer");
        assert_eq!(s.name(1), None);
    }

    #[test]
    fn hidden_addresses_are_refused_with_the_fix() {
        let err = Symbols::parse("0000000000000000 T pollwake\n0000000000000000 t ep_poll_callback\n".into()).unwrap_err();
        assert!(matches!(err, KallsymsError::Hidden(_)));
        assert!(err.to_string().contains("kptr_restrict"), "{err}");
        let err = Symbols::parse("ffffffff816fe700 t pollwake\n".into()).unwrap_err();
        assert!(matches!(err, KallsymsError::Missing("receiver_wake_function")), "{err}");
    }
}
