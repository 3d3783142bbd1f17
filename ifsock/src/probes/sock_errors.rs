//! Kernel-reported socket errors (`sock:inet_sk_error_report`, Linux >= 5.14): the tp_btf
//! program first, the classic tracepoint (its format checked field by field) when tp_btf is
//! refused.
use anyhow::{anyhow, Context as _, Result};
use aya::programs::BtfTracePoint;

use super::{attach::refusal, load::parsed_btf, Attached, ProbeKind, Probes};
pub use crate::model::sock_error::SockErrorProbe;
use crate::{kernel::system, model::sock_error::SOCK_ERROR_TRACEPOINT};

/// tp_btf program on `inet_sk_error_report` (socket errors with the `struct sock *`).
pub const SOCKERR_BTF: &str = "sockerr_btf_error_report";
/// Classic tracepoint program on `sock:inet_sk_error_report` (format fields only).
pub const SOCKERR_TP: &str = "sockerr_tp_error_report";

/// What [`Probes::attach_sock_errors_with`] attached.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SockErrorAttach {
    /// The program in use.
    pub probe: SockErrorProbe,
    /// Why tp_btf was not used, when the classic tracepoint was.
    pub tp_btf_refused: Option<String>,
}

impl Probes {
    /// Attaches kernel-reported socket errors (`sock:inet_sk_error_report`): tp_btf first, the
    /// classic tracepoint when tp_btf is refused.
    ///
    /// # Errors
    /// Neither loads (the tracepoint exists from Linux 5.14); the message gives both reasons.
    pub fn attach_sock_errors(&mut self) -> Result<()> {
        self.attach_sock_errors_with(None).map(|_| ())
    }

    /// As [`Probes::attach_sock_errors`], or only `forced`. Says which program attached and,
    /// for the classic fallback, why tp_btf was refused. Attaching twice is a no-op.
    ///
    /// # Errors
    /// As [`Probes::attach_sock_errors`], or the forced program was refused.
    pub fn attach_sock_errors_with(&mut self, forced: Option<SockErrorProbe>) -> Result<SockErrorAttach> {
        let done = match forced {
            None => self.sock_error_probe(),
            Some(p) => self.sock_error_probes().any(|a| a == p).then_some(p),
        };
        if let Some(probe) = done {
            return Ok(SockErrorAttach { probe, tp_btf_refused: None });
        }
        let mut tp_btf_refused = None;
        if forced != Some(SockErrorProbe::Tracepoint) {
            match self.attach_btf_tracepoint(SOCKERR_BTF, SOCK_ERROR_TRACEPOINT) {
                Ok(()) => {
                    tracing::info!("socket errors: {}", SockErrorProbe::TpBtf);
                    return Ok(SockErrorAttach { probe: SockErrorProbe::TpBtf, tp_btf_refused: None });
                }
                Err(e) if forced.is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!("tp_btf {SOCK_ERROR_TRACEPOINT} refused: {e:#}");
                    tp_btf_refused = Some(refusal(&e));
                }
            }
        }
        let classic = check_sock_error_format()
            .and_then(|()| self.attach_tracepoint(SOCKERR_TP, "sock", SOCK_ERROR_TRACEPOINT));
        match (classic, tp_btf_refused) {
            (Ok(()), refused) => {
                tracing::info!(
                    "socket errors: {}{}",
                    SockErrorProbe::Tracepoint,
                    refused.as_deref().map(|r| format!(" (tp_btf refused: {r})")).unwrap_or_default()
                );
                Ok(SockErrorAttach { probe: SockErrorProbe::Tracepoint, tp_btf_refused: refused })
            }
            (Err(e), None) => Err(e),
            (Err(e), Some(refused)) => Err(e.context(format!(
                "socket errors unavailable: tp_btf {SOCK_ERROR_TRACEPOINT} refused ({refused}) and the classic tracepoint too (sock:{SOCK_ERROR_TRACEPOINT} exists from Linux 5.14)"
            ))),
        }
    }

    /// The socket-error program attached first, if any.
    pub fn sock_error_probe(&self) -> Option<SockErrorProbe> {
        self.sock_error_probes().next()
    }

    fn sock_error_probes(&self) -> impl Iterator<Item = SockErrorProbe> + '_ {
        self.attached.iter().filter_map(|a| match a.program {
            SOCKERR_BTF => Some(SockErrorProbe::TpBtf),
            SOCKERR_TP => Some(SockErrorProbe::Tracepoint),
            _ => None,
        })
    }

    fn attach_btf_tracepoint(&mut self, program: &'static str, tracepoint: &str) -> Result<()> {
        let btf = parsed_btf(&mut self.btf)?;
        let prog: &mut BtfTracePoint = self.ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing"))?.try_into()?;
        if prog.fd().is_err() {
            prog.load(tracepoint, btf).with_context(|| format!("loading tp_btf on {tracepoint}"))?;
        }
        prog.attach().with_context(|| format!("attaching tp_btf on {tracepoint}"))?;
        self.attached.push(Attached { kind: ProbeKind::TpBtf, target: tracepoint.to_string(), program });
        Ok(())
    }
}

/// Checks that the classic `sock:inet_sk_error_report` record has the field offsets the
/// program reads ([`ifsock_common::inet_sk_error_report_format`]).
fn check_sock_error_format() -> Result<()> {
    let path = format!("{}/events/sock/{SOCK_ERROR_TRACEPOINT}/format", system::TRACEFS);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}: no sock:{SOCK_ERROR_TRACEPOINT} tracepoint (it exists from Linux 5.14)"))?;
    let fields = format_offsets(&text);
    for (name, want) in ifsock_common::inet_sk_error_report_format::FIELDS {
        match fields.iter().find(|(n, _)| n == name) {
            Some((_, got)) if *got == want => {}
            Some((_, got)) => {
                return Err(anyhow!("{path}: field {name} at offset {got}, the program reads it at {want}: this kernel's record layout is not supported"));
            }
            None => return Err(anyhow!("{path}: no field {name}: this kernel's record layout is not supported")),
        }
    }
    Ok(())
}

/// (name, offset) of every `field:TYPE NAME[N]; offset:O;` line of a tracepoint format file.
fn format_offsets(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .filter_map(|line| {
            let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
            let name = decl.split_whitespace().last()?.split('[').next()?.to_string();
            let offset = line.split("offset:").nth(1)?.split(';').next()?.trim().parse().ok()?;
            Some((name, offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_tracepoint_format_offsets_are_parsed() {
        let text = "name: inet_sk_error_report\nID: 2286\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:int error;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:__u8 saddr_v6[16];\toffset:28;\tsize:16;\tsigned:0;\n\nprint fmt: \"family=%s\"";
        assert_eq!(
            format_offsets(text),
            vec![("common_type".to_string(), 0), ("error".to_string(), 8), ("saddr_v6".to_string(), 28)]
        );
    }
}
