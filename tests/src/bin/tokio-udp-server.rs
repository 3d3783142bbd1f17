//! A multi-threaded tokio UDP echo server for the stranded-socket tests: the shape of many Rust
//! services (one runtime, the socket registered in tokio's epoll instance, worker threads parked).
//!
//! Usage: `tokio-udp-server ADDR:PORT [DEVICE] [WORKERS]`. Binds `ADDR:PORT`, optionally with
//! `SO_BINDTODEVICE` to `DEVICE` (`-` for none), runs `WORKERS` (default 4) worker threads, and
//! prints `ready PORT FD` on stdout once the socket is registered with the runtime.
use std::{io::Write, net::UdpSocket, os::fd::AsRawFd};

use anyhow::{bail, Context as _, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().context("usage: tokio-udp-server ADDR:PORT [DEVICE|-] [WORKERS]")?;
    let device = args.next().filter(|d| d != "-");
    let workers: usize = args.next().map_or(Ok(4), |w| w.parse()).context("WORKERS must be a number")?;
    let std_sock = UdpSocket::bind(&addr).with_context(|| format!("binding {addr}"))?;
    if let Some(dev) = &device {
        ifsock_tests::bind_to_device(&std_sock, dev)?;
    }
    std_sock.set_nonblocking(true)?;
    let port = std_sock.local_addr()?.port();
    let fd = std_sock.as_raw_fd();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_io().build()?;
    rt.block_on(async move {
        let sock = tokio::net::UdpSocket::from_std(std_sock)?;
        let mut out = std::io::stdout();
        writeln!(out, "ready {port} {fd}")?;
        out.flush()?;
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await?;
            if sock.send_to(&buf[..n], from).await? != n {
                bail!("short send");
            }
        }
    })
}
