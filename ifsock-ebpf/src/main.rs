//! ifsock's eBPF programs. One module per probe family; maps in `maps.rs`; kernel-structure
//! reads (with offsets from userspace's BTF parse) in `kernel.rs`.
#![no_std]
#![no_main]

mod destroy;
mod device;
mod iter;
mod kernel;
mod maps;
mod recv;
mod sock;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
