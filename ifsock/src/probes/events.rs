//! Ring-buffer events, read through tokio's `AsyncFd` (no polling loop) and decoded.
use anyhow::Result;
use aya::maps::{Map, MapData, RingBuf};
use ifsock_common::{read_record, DeviceEvent, EventKind, LinkRequestEvent, RecvDoneEvent, SendErrorEvent};
use tokio::io::unix::AsyncFd;

/// A decoded ring-buffer event.
#[derive(Clone, Debug)]
pub enum Event {
    /// A task's link-change request (syscall evidence).
    LinkRequest(LinkRequestEvent),
    /// A long receive returned.
    RecvDone(RecvDoneEvent),
    /// A send failed.
    SendError(SendErrorEvent),
    /// A device close/unregister seen at the kernel function (fentry/kprobe sets).
    Device(DeviceEvent),
}

/// Decodes one ring-buffer record by its leading [`EventKind`]; `None` for unknown/short records.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    // SAFETY: every event type is a POD record from ifsock-common.
    unsafe {
        let kind = read_record::<u32>(bytes)?;
        match kind {
            k if k == EventKind::LinkRequest as u32 => read_record(bytes).map(Event::LinkRequest),
            k if k == EventKind::RecvDone as u32 => read_record(bytes).map(Event::RecvDone),
            k if k == EventKind::SendError as u32 => read_record(bytes).map(Event::SendError),
            k if k == EventKind::Device as u32 => read_record(bytes).map(Event::Device),
            _ => None,
        }
    }
}

/// The events ring buffer, readable asynchronously.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub(crate) fn new(map: Map) -> Result<Self> {
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the ring buffer map owns its fd for the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
        Ok(EventStream { fd })
    }

    /// Everything already in the ring buffer, without waiting.
    pub fn drain(&mut self) -> Vec<Event> {
        let ring = self.fd.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item) {
                out.push(ev);
            }
        }
        out
    }

    /// Waits until the ring buffer is readable, then drains it.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(ev) = decode(&item) {
                    out.push(ev);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
