//! Builds ifsock-ebpf for the BPF target with aya-build (the object `probes::load` embeds).
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// The eBPF toolchain: a nightly with rust-src whose LLVM major equals bpf-linker's (LLVM 22).
/// Keep in sync with xtask's `EBPF_TOOLCHAIN`.
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";

fn main() -> anyhow::Result<()> {
    // Without the `probes` feature (a daemon using only LinkWatcher/SocketHealth) there is no
    // object to embed, and no need for the eBPF toolchain.
    if std::env::var_os("CARGO_FEATURE_PROBES").is_none() {
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "ifsock-ebpf")
        .ok_or_else(|| anyhow!("ifsock-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    let root_dir = manifest_path.parent().ok_or_else(|| anyhow!("no parent for {manifest_path}"))?.as_str();
    let package = Package { name: name.as_str(), root_dir, ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_TOOLCHAIN))
}
