//! Device-path probes (fentry / kprobe sets): filled in by the probes issue.
