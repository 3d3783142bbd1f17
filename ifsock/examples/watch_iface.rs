//! Prints every interface change of the current network namespace as a JSON line; no root, no
//! BPF. The first line is `{"type":"ready",...}` with the interfaces at start, then one
//! `{"type":"change",...}` per change (the fields of [`ifsock::LinkChange`]).
//!
//! ```text
//! cargo run -p ifsock --example watch_iface -- [--iface NAME] [--rcvbuf BYTES] [--reconcile SECONDS]
//! ```
//! `--iface`: only that interface (also after its rename, deletion or recreation);
//! `--rcvbuf`: the subscription's receive buffer in bytes (small: bursts overflow it and come
//! back as `resync` changes); `--reconcile`: re-dump period in seconds, 0 = off (default 30).
use std::time::Duration;

use ifsock::LinkWatcher;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = LinkWatcher::builder();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        builder = match arg.as_str() {
            "--iface" => builder.interface(value),
            "--rcvbuf" => builder.rcvbuf(value.parse()?),
            "--reconcile" => builder.reconcile_every(Duration::from_secs(value.parse()?)),
            _ => return Err(format!("unknown option {arg} (--iface NAME, --rcvbuf BYTES, --reconcile SECONDS)").into()),
        };
    }
    let mut watcher = builder.start().await?;
    let ready = serde_json::json!({"type": "ready", "netns": watcher.netns(), "rcvbuf": watcher.rcvbuf(), "links": watcher.initial()});
    println!("{ready}");
    while let Some(change) = watcher.recv().await {
        let mut line = serde_json::to_value(change?)?;
        line["type"] = "change".into();
        println!("{line}");
    }
    Ok(())
}
