//! Which probe set this kernel allows, best first: fentry/fexit, kprobe/kretprobe, tracepoints.
//! Decided from what the kernel exposes and what it refuses, never from version numbers.
use serde::Serialize;

/// A family of probe points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProbeSet {
    /// BTF trampolines (`fentry`/`fexit`) on kernel functions.
    Fentry,
    /// `kprobe`/`kretprobe` on kernel functions.
    Kprobe,
    /// Tracepoints only (`syscalls:*`, `sock:*`, `skb:*`) plus BPF iterators.
    Tracepoint,
}

impl ProbeSet {
    /// `fentry`, `kprobe` or `tracepoint`: the spelling of `--probe-set` and of the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ProbeSet::Fentry => "fentry",
            ProbeSet::Kprobe => "kprobe",
            ProbeSet::Tracepoint => "tracepoint",
        }
    }
}

/// What the running kernel allowed when the device probes were attached
/// ([`super::Probes::attach_device`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `Ok` when fentry programs can be loaded; else the refusal.
    pub fentry: Result<(), String>,
    /// `Ok` when kprobes exist; else why not.
    pub kprobe: Result<(), String>,
}

/// The chosen set and why each better one was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// The set in use.
    pub chosen: ProbeSet,
    /// Better sets that were refused, with the reason (`fentry: EPERM (lockdown=integrity)`).
    pub refused: Vec<(ProbeSet, String)>,
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "probe set: {}", self.chosen.name())?;
        for (set, why) in &self.refused {
            write!(f, "; {} refused: {why}", set.name())?;
        }
        Ok(())
    }
}

/// Picks the best set allowed by `caps`, or `forced` when given (refused if unavailable).
///
/// # Errors
/// A forced set the kernel does not allow, with the reason.
pub fn select(caps: &Capabilities, forced: Option<ProbeSet>) -> Result<Selection, String> {
    let order = [ProbeSet::Fentry, ProbeSet::Kprobe, ProbeSet::Tracepoint];
    let status = |set: ProbeSet| match set {
        ProbeSet::Fentry => caps.fentry.clone(),
        ProbeSet::Kprobe => caps.kprobe.clone(),
        ProbeSet::Tracepoint => Ok(()),
    };
    if let Some(set) = forced {
        return status(set)
            .map(|()| Selection { chosen: set, refused: Vec::new() })
            .map_err(|why| format!("probe set {} was forced but this kernel refuses it: {why}", set.name()));
    }
    let mut refused = Vec::new();
    for set in order {
        match status(set) {
            Ok(()) => return Ok(Selection { chosen: set, refused }),
            Err(why) => refused.push((set, why)),
        }
    }
    Ok(Selection { chosen: ProbeSet::Tracepoint, refused })
}

/// Capabilities of a path whose functions were attached one by one: `outcomes` holds, per
/// function, the set that attached it (`None`: no kernel-function probe, the tracepoints cover
/// it). A set counts as allowed only if every function got it or better, so the selection is the
/// weakest set in use; `fentry_err`/`kprobe_err` are the first refusal of each.
pub fn combine(outcomes: &[Option<ProbeSet>], fentry_err: Option<String>, kprobe_err: Option<String>) -> Capabilities {
    let all = |ok: &dyn Fn(ProbeSet) -> bool| outcomes.iter().all(|o| o.is_some_and(ok));
    let fentry_ok = !outcomes.is_empty() && all(&|s| s == ProbeSet::Fentry);
    let kprobe_ok = !outcomes.is_empty() && all(&|s| s != ProbeSet::Tracepoint);
    Capabilities {
        fentry: if fentry_ok { Ok(()) } else { Err(fentry_err.unwrap_or_else(|| "not tried (another set was forced)".into())) },
        kprobe: if kprobe_ok {
            Ok(())
        } else {
            Err(kprobe_err.unwrap_or_else(|| "not every function could be probed".into()))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_function_on_a_weaker_set_makes_the_path_that_set() {
        use ProbeSet::*;
        let sel = select(&combine(&[Some(Fentry), Some(Fentry), Some(Fentry)], None, None), None).unwrap();
        assert_eq!((sel.chosen, sel.refused.len()), (Fentry, 0));
        let sel = select(&combine(&[Some(Fentry), Some(Kprobe)], Some("EINVAL".into()), None), None).unwrap();
        assert_eq!(sel.chosen, Kprobe);
        assert_eq!(sel.refused, vec![(Fentry, "EINVAL".to_string())]);
        let sel = select(&combine(&[Some(Fentry), None], Some("no __skb_recv_datagram in BTF".into()), Some("no __skb_recv_datagram in BTF".into())), None).unwrap();
        assert_eq!(sel.chosen, Tracepoint);
        assert_eq!(sel.refused.len(), 2);
        assert!(sel.refused[1].1.contains("__skb_recv_datagram"));
        let sel = select(&combine(&[None, None], Some("EPERM (lockdown=integrity)".into()), Some("ENOENT".into())), None).unwrap();
        assert_eq!(sel.to_string(), "probe set: tracepoint; fentry refused: EPERM (lockdown=integrity); kprobe refused: ENOENT");
    }

    #[test]
    fn lockdown_kernel_falls_back_to_tracepoints_with_reasons() {
        let caps = Capabilities { fentry: Err("EPERM (lockdown=integrity)".into()), kprobe: Err("no kprobe PMU".into()) };
        let sel = select(&caps, None).unwrap();
        assert_eq!(sel.chosen, ProbeSet::Tracepoint);
        assert_eq!(sel.refused.len(), 2);
        assert_eq!(sel.refused[0], (ProbeSet::Fentry, "EPERM (lockdown=integrity)".to_string()));
        assert!(sel.to_string().contains("fentry refused: EPERM"));
    }

    #[test]
    fn best_allowed_set_wins_and_forcing_an_unavailable_set_fails() {
        let caps = Capabilities { fentry: Err("EPERM".into()), kprobe: Ok(()) };
        assert_eq!(select(&caps, None).unwrap().chosen, ProbeSet::Kprobe);
        let full = Capabilities { fentry: Ok(()), kprobe: Ok(()) };
        assert_eq!(select(&full, None).unwrap().chosen, ProbeSet::Fentry);
        assert_eq!(select(&full, Some(ProbeSet::Kprobe)).unwrap().chosen, ProbeSet::Kprobe);
        assert!(select(&caps, Some(ProbeSet::Fentry)).unwrap_err().contains("forced"));
    }
}
