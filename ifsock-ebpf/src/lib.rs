#![no_std]
//! Library target so the userspace crate can build-depend on this package (aya-build builds the bins).
