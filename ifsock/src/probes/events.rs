//! Ring-buffer events, read through tokio's `AsyncFd` (no polling loop) and decoded once, here,
//! into model types: nothing past `probes/` reads a raw `ifsock_common` record.
use anyhow::Result;
use aya::maps::{Map, MapData, RingBuf};
use ifsock_common::{read_record, DeviceEvent, EventKind, LinkRequestEvent, RecvDoneEvent, SendErrorEvent, SockErrorEvent};
use tokio::io::unix::AsyncFd;

use crate::model::{
    event::{parse_request, LinkRequest},
    kernel_event::{KernelDeviceEvent, RecvDone, SendError},
    sock_error::SockError,
};

/// A decoded ring-buffer event.
#[derive(Clone, Debug)]
pub enum Event {
    /// A task's link-change request (syscall evidence), parsed.
    LinkRequest(LinkRequest),
    /// A long receive returned.
    RecvDone(RecvDone),
    /// A send failed.
    SendError(SendError),
    /// A device close/unregister seen at the kernel function (fentry/kprobe sets).
    Device(KernelDeviceEvent),
    /// The kernel reported an error on an INET socket (`sock:inet_sk_error_report`).
    SockError(SockError),
}

/// Decodes one ring-buffer record by its leading [`EventKind`]; `None` for unknown or short
/// records and for link requests that are not link changes (`parse_request`).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    let kind = read_record::<u32>(bytes)?;
    match kind {
        k if k == EventKind::LinkRequest as u32 => read_record::<LinkRequestEvent>(bytes).and_then(|r| parse_request(&r)).map(Event::LinkRequest),
        k if k == EventKind::RecvDone as u32 => read_record::<RecvDoneEvent>(bytes).map(|r| Event::RecvDone(RecvDone::from_record(&r))),
        k if k == EventKind::SendError as u32 => read_record::<SendErrorEvent>(bytes).map(|r| Event::SendError(SendError::from_record(&r))),
        k if k == EventKind::Device as u32 => read_record::<DeviceEvent>(bytes).map(|r| Event::Device(KernelDeviceEvent::from_record(&r))),
        k if k == EventKind::SockError as u32 => read_record::<SockErrorEvent>(bytes).map(|r| Event::SockError(SockError::from_event(&r))),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_error_records_decode_by_kind_and_short_ones_are_dropped() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"ping");
        let ev = SockErrorEvent {
            kind: EventKind::SockError as u32, error: 111, ts_ns: 5, sk: 0xffff_8880_0000_1000, ino: 4242,
            netns: 4026531840, bound_dev_if: 3, family: 2, protocol: 17, lport: 40000, rport: 9,
            laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            pid: 7, tid: 8, comm, via: ifsock_common::sock_error_via::TP_BTF, _pad: 0,
        };
        // SAFETY: reading the bytes of a repr(C) POD value.
        let bytes = unsafe { std::slice::from_raw_parts((&ev as *const SockErrorEvent).cast::<u8>(), std::mem::size_of::<SockErrorEvent>()) };
        let Some(Event::SockError(got)) = decode(bytes) else { panic!("not decoded as a socket error") };
        assert_eq!(got, SockError::from_event(&ev));
        assert!(decode(&bytes[..bytes.len() - 1]).is_none(), "a truncated record is dropped");
    }
}
