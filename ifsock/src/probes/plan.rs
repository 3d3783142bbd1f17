//! Which probe groups a command needs, and one policy for a group the kernel refuses: a
//! required group fails the command with the kernel's reason; an optional one prints one
//! warning line (what the command will not see) and is recorded in `Probes::unavailable`.
//! A group the user forced (`--probe-set`, `--sock-error-probe`) is required. Receive tracing
//! ([`Group::Recv`]) is attached only when the user asks for it (`--record-receives`): its
//! tracepoints put every receive syscall of the host on the traced path, and the receivers
//! come from the sockets' wait queues without it.
use serde::Serialize;

use super::{select::Selection, ProbeSet, SockErrorAttach, SockErrorProbe};

/// A group of programs attached together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Device close/unregister ([`super::Probes::attach_device`]).
    Device,
    /// Receive tracking ([`super::Probes::attach_recv`]).
    Recv,
    /// Link-change requests ([`super::Probes::attach_link_requests`]).
    LinkRequests,
    /// Link-change requests taken in the rtnetlink and ioctl handlers, fentry or kprobe only
    /// ([`super::Probes::attach_link_request_handlers`]).
    LinkRequestHandlers,
    /// Failed sends ([`super::Probes::attach_send_errors`]).
    SendErrors,
    /// Kernel-reported socket errors ([`super::Probes::attach_sock_errors_with`]).
    SockErrors,
    /// The socket and task-file iterators ([`super::Probes::load_iterators`]).
    Iterators,
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Group::Device => "device probes",
            Group::Recv => "receive probes",
            Group::LinkRequests => "link-request tracepoints",
            Group::LinkRequestHandlers => "link-request handler probes",
            Group::SendErrors => "send-error tracepoints",
            Group::SockErrors => "socket-error probes",
            Group::Iterators => "socket iterators",
        })
    }
}

/// Whether a command can run without a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// The command fails without it.
    Required,
    /// The command runs without it and says what it will not see.
    Optional,
    /// Attached only when the user asked ([`Forced::record_receives`]); then required.
    Requested,
}

/// One group of a plan.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The group.
    pub group: Group,
    /// Required or optional.
    pub need: Need,
    /// What the command loses without it (the warning's tail: `no receiver_stranded events`).
    pub without: &'static str,
}

/// The groups of one command, attached in order.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Command name (for messages).
    pub command: &'static str,
    /// Its groups.
    pub steps: &'static [Step],
}

const fn step(group: Group, need: Need, without: &'static str) -> Step {
    Step { group, need, without }
}

/// `watch`: interfaces and their device events; the rest is evidence.
pub const WATCH: Plan = Plan {
    command: "watch",
    steps: &[
        step(Group::Device, Need::Required, "no device events"),
        step(Group::LinkRequests, Need::Optional, "events will carry no cause"),
        step(Group::Recv, Need::Requested, "no receive start times"),
        step(Group::SockErrors, Need::Optional, "no socket_error events"),
    ],
};

/// `teardown`: everything is observation; the teardown itself needs no probe.
pub const TEARDOWN: Plan = Plan {
    command: "teardown",
    steps: &[
        step(Group::SendErrors, Need::Optional, "failed sends are not observed"),
        step(Group::Recv, Need::Requested, "receive wake-ups are not timed"),
        step(Group::SockErrors, Need::Optional, "kernel-reported socket errors are not observed"),
    ],
};

/// `hung --record-receives` (and `--probe-set`, which implies it): the receive probes give
/// each receive's exact start.
pub const HUNG: Plan = Plan { command: "hung --record-receives", steps: &[step(Group::Recv, Need::Requested, "no receive start times")] };

/// What the agent's change lines lose without the link-request handler probes.
const AGENT_NO_CAUSE: &str = "journal change lines carry no cause (--causes takes it from the syscall tracepoints)";

/// `agent`: socket snapshots, causes where they are cheap, and socket errors. The link-request
/// handler probes (fentry/kprobe on `rtnl_{new,del,set}link`, `dev_ioctl`) run only on link
/// requests; where the kernel refuses them, the link-request tracepoints would fire on every
/// sendmsg/ioctl of the host, a cost the agent pays only when asked ([`AGENT_CAUSES`]). No
/// device probes: changes come from rtnetlink. Socket errors fire only when the kernel reports
/// one (`sk_error_report`).
pub const AGENT: Plan = Plan {
    command: "agent",
    steps: &[
        step(Group::Iterators, Need::Required, "no socket gauges"),
        step(Group::LinkRequestHandlers, Need::Optional, AGENT_NO_CAUSE),
        step(Group::SockErrors, Need::Optional, "no socket_error records are journaled"),
    ],
};

/// `agent --receivers`: [`AGENT`] with receiver scans (from the wait queues), and the
/// receive-path probes with `--record-receives`.
pub const AGENT_RECEIVERS: Plan = Plan {
    command: "agent --receivers",
    steps: &[
        step(Group::Iterators, Need::Required, "no socket gauges"),
        step(Group::LinkRequestHandlers, Need::Optional, AGENT_NO_CAUSE),
        step(Group::Recv, Need::Requested, "no receive start times"),
        step(Group::SockErrors, Need::Optional, "no socket_error records are journaled"),
    ],
};

/// `agent --causes` on a kernel that refused the link-request handler probes: the syscall
/// tracepoints, which the user asked for.
pub const AGENT_CAUSES: Plan = Plan { command: "agent --causes", steps: &[step(Group::LinkRequests, Need::Required, "no causes")] };

/// `doctor`, first: the two paths with a probe-set choice, each only reported (a refusal is
/// doctor's answer, not a failure); doctor lists the programs they attached before
/// [`DOCTOR_EVIDENCE`].
pub const DOCTOR_PATHS: Plan = Plan {
    command: "doctor",
    steps: &[step(Group::Device, Need::Optional, "doctor lists the refusal"), step(Group::Recv, Need::Optional, "doctor lists the refusal")],
};

/// `doctor`, last, forced to the fallback program (`--sock-error-probe tracepoint`): whether
/// the socket-error fallback loads too, before a kernel refuses the first choice.
pub const DOCTOR_SOCK_ERROR_FALLBACK: Plan = Plan { command: "doctor", steps: &[step(Group::SockErrors, Need::Optional, "doctor lists the refusal")] };

/// `doctor`, then: every other group, each only reported.
pub const DOCTOR_EVIDENCE: Plan = Plan {
    command: "doctor",
    steps: &[
        step(Group::Iterators, Need::Optional, "doctor lists the refusal"),
        step(Group::LinkRequests, Need::Optional, "doctor lists the refusal"),
        step(Group::SendErrors, Need::Optional, "doctor lists the refusal"),
        step(Group::SockErrors, Need::Optional, "doctor lists the refusal"),
    ],
};

/// What the user forced on the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forced {
    /// `--probe-set`.
    pub probe_set: Option<ProbeSet>,
    /// `--sock-error-probe`.
    pub sock_error_probe: Option<SockErrorProbe>,
    /// `--record-receives`: attach the [`Need::Requested`] groups (the receive probes).
    pub record_receives: bool,
}

impl Forced {
    fn forces(&self, group: Group) -> bool {
        match group {
            Group::Device | Group::Recv => self.probe_set.is_some(),
            Group::SockErrors => self.sock_error_probe.is_some(),
            _ => false,
        }
    }
}

/// What one group gave when it attached.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A path with a probe-set selection (device, receive).
    Selection(Selection),
    /// The socket-error program in use.
    SockErrors(SockErrorAttach),
    /// Attached; nothing more to say.
    Done,
}

/// A group left out, with the kernel's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The group.
    pub group: Group,
    /// Why (the error chain, `EPERM (lockdown=integrity)` etc.).
    pub reason: String,
}

/// The result of applying a plan.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Device path selection, when attached.
    pub device: Option<Selection>,
    /// Receive path selection, when attached.
    pub recv: Option<Selection>,
    /// Socket-error program, when attached.
    pub sock_errors: Option<SockErrorAttach>,
    /// Groups attached without a selection (link requests, send errors, iterators).
    pub done: Vec<Group>,
    /// Optional groups left out.
    pub skipped: Vec<Skipped>,
}

impl Applied {
    /// True when `group` attached.
    pub fn has(&self, group: Group) -> bool {
        match group {
            Group::Device => self.device.is_some(),
            Group::Recv => self.recv.is_some(),
            Group::SockErrors => self.sock_errors.is_some(),
            g => self.done.contains(&g),
        }
    }
}

/// Applies `plan` with `attach` doing the kernel work per group: the one warn-or-fail policy.
///
/// # Errors
/// A required (or forced) group failed; the error names the command and the group and keeps
/// the kernel's reason in its chain.
pub fn apply(plan: &Plan, forced: Forced, mut attach: impl FnMut(Group) -> anyhow::Result<Outcome>) -> anyhow::Result<Applied> {
    let mut applied = Applied::default();
    for s in plan.steps {
        if s.need == Need::Requested && !forced.record_receives {
            continue;
        }
        match attach(s.group) {
            Ok(Outcome::Selection(sel)) if s.group == Group::Device => applied.device = Some(sel),
            Ok(Outcome::Selection(sel)) => applied.recv = Some(sel),
            Ok(Outcome::SockErrors(a)) => applied.sock_errors = Some(a),
            Ok(Outcome::Done) => applied.done.push(s.group),
            Err(e) if s.need != Need::Optional || forced.forces(s.group) => {
                return Err(e.context(format!("{}: attaching the {} it needs", plan.command, s.group)));
            }
            Err(e) => {
                tracing::warn!("{} unavailable, {}: {e:#}", s.group, s.without);
                applied.skipped.push(Skipped { group: s.group, reason: format!("{e:#}") });
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn sel() -> Selection {
        Selection { chosen: ProbeSet::Tracepoint, refused: Vec::new() }
    }

    #[test]
    fn optional_groups_are_skipped_with_their_reason_and_required_ones_fail() {
        let applied = apply(&WATCH, Forced { record_receives: false, ..Forced::default() }, |g| match g {
            Group::Device => Ok(Outcome::Selection(sel())),
            Group::LinkRequests => Ok(Outcome::Done),
            _ => Err(anyhow!("EPERM (lockdown=integrity)")),
        })
        .unwrap();
        assert!(applied.has(Group::Device) && applied.has(Group::LinkRequests));
        assert!(!applied.has(Group::Recv) && applied.recv.is_none());
        assert_eq!(applied.skipped, vec![Skipped { group: Group::SockErrors, reason: "EPERM (lockdown=integrity)".into() }]);
        let err = apply(&WATCH, Forced::default(), |_| Err(anyhow!("ENOENT"))).unwrap_err();
        assert_eq!(format!("{err:#}"), "watch: attaching the device probes it needs: ENOENT");
    }

    #[test]
    fn a_forced_group_is_required() {
        let forced = Forced { probe_set: Some(ProbeSet::Fentry), sock_error_probe: None, record_receives: true };
        let mut tried = Vec::new();
        let err = apply(&WATCH, forced, |g| {
            tried.push(g);
            match g {
                Group::Recv => Err(anyhow!("probe set Fentry was forced but this kernel refuses it")),
                Group::Device => Ok(Outcome::Selection(sel())),
                _ => Ok(Outcome::Done),
            }
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("receive probes it needs: probe set Fentry was forced"));
        assert_eq!(tried, vec![Group::Device, Group::LinkRequests, Group::Recv], "stops at the first failure");
        // Teardown and doctor never fail on a refused probe.
        let applied = apply(&TEARDOWN, Forced::default(), |_| Err(anyhow!("EPERM"))).unwrap();
        assert_eq!(applied.skipped.len(), 2, "the receive probes are not tried unless asked");
        for (plan, groups) in [(&DOCTOR_PATHS, 2), (&DOCTOR_EVIDENCE, 4)] {
            assert_eq!(apply(plan, Forced::default(), |_| Err(anyhow!("EPERM"))).unwrap().skipped.len(), groups);
        }
    }

    #[test]
    fn the_agent_needs_its_iterators_and_the_receive_probes_only_when_asked() {
        let refuse = |bad: Group| move |g: Group| if g == bad { Err(anyhow!("EPERM")) } else { Ok(Outcome::Done) };
        assert!(apply(&AGENT, Forced::default(), refuse(Group::Iterators)).is_err());
        assert_eq!(apply(&AGENT, Forced::default(), refuse(Group::SockErrors)).unwrap().skipped.len(), 1);
        assert!(!AGENT.steps.iter().any(|s| s.group == Group::Recv || s.group == Group::Device || s.group == Group::LinkRequests));
        // Causes where they are cheap: the handler probes are optional, the tracepoints asked for.
        let no_handlers = apply(&AGENT, Forced::default(), refuse(Group::LinkRequestHandlers)).unwrap();
        assert!(!no_handlers.has(Group::LinkRequestHandlers) && no_handlers.has(Group::Iterators));
        assert!(apply(&AGENT_CAUSES, Forced::default(), refuse(Group::LinkRequests)).is_err());
        assert!(apply(&AGENT_RECEIVERS, Forced::default(), refuse(Group::Recv)).is_ok(), "no receive probes unless asked");
        let asked = Forced { record_receives: true, ..Forced::default() };
        let err = apply(&AGENT_RECEIVERS, asked, refuse(Group::Recv)).unwrap_err();
        assert_eq!(format!("{err:#}"), "agent --receivers: attaching the receive probes it needs: EPERM");
    }

    #[test]
    fn receive_tracing_is_attached_only_when_asked() {
        for plan in [&WATCH, &TEARDOWN, &HUNG, &AGENT_RECEIVERS] {
            let mut tried = Vec::new();
            apply(plan, Forced::default(), |g| {
                tried.push(g);
                Ok(Outcome::Done)
            })
            .unwrap();
            assert!(!tried.contains(&Group::Recv), "{}: {tried:?}", plan.command);
            let mut tried = Vec::new();
            let err = apply(plan, Forced { record_receives: true, ..Forced::default() }, |g| {
                tried.push(g);
                if g == Group::Recv { Err(anyhow!("EPERM")) } else { Ok(Outcome::Done) }
            });
            assert!(tried.contains(&Group::Recv) && err.is_err(), "{}: asked for, a refusal fails the command", plan.command);
        }
        // doctor still tries the receive path (and only reports a refusal).
        let mut tried = Vec::new();
        apply(&DOCTOR_PATHS, Forced::default(), |g| {
            tried.push(g);
            Err(anyhow!("EPERM"))
        })
        .unwrap();
        assert_eq!(tried, vec![Group::Device, Group::Recv]);
    }
}
