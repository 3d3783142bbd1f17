//! A UDP server that notices when its address goes away and rebinds when it comes back; no
//! root, no BPF.
//!
//! ```text
//! cargo run -p ifsock --example self_heal_udp -- 10.0.0.1:5300
//! ```
//! Prints one line per event: `bound ADDR`, `received N bytes from PEER`, `stranded REASON`
//! (the address left every interface: the kernel keeps the socket open and silent), and
//! `rebound ADDR` once the address is back. Linux would deliver to the old socket again too;
//! a daemon rebuilds its socket (and whatever it keeps per socket) at that point, and this
//! one does so to show where.
use std::net::SocketAddr;

use ifsock::{Health, SocketHealth};
use tokio::net::UdpSocket;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args().nth(1).ok_or("usage: self_heal_udp ADDR:PORT")?.parse()?;
    let mut health = SocketHealth::new().await?;
    let mut socket = UdpSocket::bind(addr).await?;
    let (mut id, now) = health.add(&socket).await?;
    println!("bound {addr} ({})", now.as_str());
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = received?;
                println!("received {n} bytes from {peer}");
            }
            transition = health.recv() => {
                let Some(t) = transition else { return Err("the interface watcher ended".into()) };
                let t = t?;
                if t.socket != id {
                    continue;
                }
                if t.to == Health::Healthy {
                    // Close first: the new socket takes the same address and port.
                    health.remove(id);
                    drop(socket);
                    socket = UdpSocket::bind(addr).await?;
                    id = health.add(&socket).await?.0;
                    println!("rebound {addr}");
                } else {
                    println!("stranded {}", t.to.as_str());
                }
            }
        }
    }
}
