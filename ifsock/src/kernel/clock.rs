//! The two clocks ifsock reads: CLOCK_MONOTONIC (the eBPF side's `bpf_ktime_get_ns`) and
//! the wall clock.

/// CLOCK_MONOTONIC now, ns (the clock of `bpf_ktime_get_ns`); 0 if the clock cannot be read.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Wall-clock now, ns since the Unix epoch; 0 before the epoch.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
