//! OpenMetrics text exposition (`application/openmetrics-text; version=1.0.0`) of the agent's
//! [`Metrics`], written with the `prometheus-client` crate's encoder (a custom collector over
//! one snapshot, so each scrape encodes consistent values and never touches live state).
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::engine::metrics::Metrics;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Snapshot(Metrics);

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?.encode_gauge(&(v as i64))?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

fn info_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = Labels>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Info)?;
    for labels in samples {
        m.encode_info(&labels)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        gauge_family(
            &mut enc,
            "ifsock_sockets",
            "TCP and UDP sockets by netns, the interface they are tied to, binding and protocol.",
            m.sockets.iter().map(|(k, &v)| {
                (vec![("netns", k.netns.clone()), ("ifname", k.ifname.clone()), ("binding", k.binding.into()), ("protocol", k.protocol.into())], v)
            }),
        )?;
        gauge_family(
            &mut enc,
            "ifsock_stranded_sockets",
            "Sockets that can no longer receive what they were bound for (address_gone, device_down, device_deleted; a wildcard socket never counts).",
            m.stranded.iter().map(|(k, &v)| (vec![("netns", k.netns.clone()), ("ifname", k.ifname.clone()), ("reason", k.reason.into())], v)),
        )?;
        gauge_family(
            &mut enc,
            "ifsock_blocked_receivers",
            "Threads blocked receiving or accepting on a socket (on its wait queue), by whether the socket is stranded.",
            m.blocked_receivers.iter().map(|((ns, s), &v)| (vec![("netns", ns.clone()), ("stranded", s.to_string())], v)),
        )?;
        counter_family(
            &mut enc,
            "ifsock_link_events",
            "Interface changes seen (created, deleted, up, down, address_removed, ...).",
            m.link_events.iter().map(|(e, &v)| (vec![("event", (*e).to_string())], v)),
        )?;
        counter_family(
            &mut enc,
            "ifsock_events_lost",
            "Events lost before ifsock read them: ring buffer full, or rtnetlink ENOBUFS (each followed by a resync).",
            m.events_lost.iter().map(|(s, &v)| (vec![("source", (*s).to_string())], v)),
        )?;
        counter(&mut enc, "ifsock_resyncs", "Re-dumps of a netns's links after lost rtnetlink events.", m.resyncs)?;
        counter(&mut enc, "ifsock_reconciles", "Periodic reconcile re-dumps (--reconcile-every).", m.reconciles)?;
        counter(
            &mut enc,
            "ifsock_journal_write_errors",
            "Journal records that could not be written (for example a full disk).",
            m.journal_write_errors,
        )?;
        info_family(
            &mut enc,
            "ifsock_probe_set",
            "The program set serving each probe path.",
            m.probe_sets.iter().map(|(p, s)| vec![("path", p.clone()), ("set", s.clone())]),
        )?;
        info_family(&mut enc, "ifsock_build", "ifsock build.", [vec![("version", m.version.to_string())]])
    }
}

/// The OpenMetrics text of `metrics`, ending in `# EOF`.
///
/// # Errors
/// Only a formatting error of the encoder (not expected for in-memory strings).
pub fn encode(metrics: &Metrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(metrics.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::metrics::{Input, LostSource, MetricsEngine, NetnsSnapshot, SocketRow},
        model::{ids::NetnsIno, link::ChangeKind},
    };

    #[test]
    fn exposition_names_units_and_labels() {
        let mut e = MetricsEngine::new();
        e.apply(Input::Snapshot(
            NetnsIno(1),
            NetnsSnapshot {
                netns: "ns1".into(),
                sockets: vec![SocketRow { ifname: "veth0".into(), binding: "none", protocol: "udp", stranded: Some(("veth0".into(), "address_gone")) }],
                blocked_receivers: vec![true],
            },
        ));
        e.apply(Input::LinkEvent(ChangeKind::Deleted));
        e.apply(Input::Lost(LostSource::NetlinkEnobufs, 1));
        e.apply(Input::ProbeSet { path: "iterators".into(), set: "iter".into() });
        let text = encode(&e.values()).unwrap();
        for want in [
            "# TYPE ifsock_sockets gauge\n",
            "ifsock_sockets{netns=\"ns1\",ifname=\"veth0\",binding=\"none\",protocol=\"udp\"} 1\n",
            "ifsock_stranded_sockets{netns=\"ns1\",ifname=\"veth0\",reason=\"address_gone\"} 1\n",
            "ifsock_blocked_receivers{netns=\"ns1\",stranded=\"true\"} 1\n",
            "# TYPE ifsock_link_events counter\n",
            "ifsock_link_events_total{event=\"deleted\"} 1\n",
            "ifsock_events_lost_total{source=\"netlink_enobufs\"} 1\n",
            "ifsock_events_lost_total{source=\"ringbuf\"} 0\n",
            "ifsock_resyncs_total 0\n",
            "ifsock_reconciles_total 0\n",
            "ifsock_journal_write_errors_total 0\n",
            "ifsock_probe_set_info{path=\"iterators\",set=\"iter\"} 1\n",
            &format!("ifsock_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
