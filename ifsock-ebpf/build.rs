//! Build script of the eBPF crate: reruns when bpf-linker changes.
use which::which;

/// Rebuild when bpf-linker changes: it is the linker of this crate's BPF objects.
fn main() {
    if let Ok(path) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
