use ifsock::{LinkChangeKind, LinkWatcher};

/// Your tunnel: what to do when its interface goes and comes back.
pub trait Tunnel {
    /// (Re)start on the interface with this ifindex.
    fn start(&mut self, ifindex: u32);
    /// Stop: the interface is gone (deleted, renamed or moved away).
    fn stop(&mut self);
}

/// Keeps `tunnel` on the interface named `name` ("wg0") until the watcher fails; then the
/// caller restarts this function, as netbird's engine does.
pub async fn supervise(name: &str, tunnel: &mut impl Tunnel) -> Result<(), ifsock::Error> {
    // Subscribed before the dump: a deletion racing with the start is reported, not lost.
    let mut watcher = LinkWatcher::builder().interface(name).start().await?;
    if let Some(link) = watcher.initial().first() {
        tunnel.start(link.ifindex);
    }
    while let Some(change) = watcher.recv().await {
        let change = change?;
        match change.kind {
            LinkChangeKind::Deleted | LinkChangeKind::MovedOut => tunnel.stop(),
            LinkChangeKind::Renamed if change.name != name => tunnel.stop(),
            // `recreated` carries old_ifindex too; the new one is what matters here.
            LinkChangeKind::Created | LinkChangeKind::Recreated | LinkChangeKind::MovedIn | LinkChangeKind::Renamed => tunnel.start(change.ifindex),
            _ => {}
        }
    }
    Ok(())
}
