//! SIGINT and SIGTERM, handled alike by every long-running command: the first one ends the
//! work cleanly (probes detached, report and counters printed), a second one exits at once.
use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal stopped the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Stop {
    /// SIGINT (Ctrl-C): exit status 130.
    Sigint,
    /// SIGTERM: exit status 143.
    Sigterm,
}

impl Stop {
    /// The shell's exit status for this signal (128 + signal number).
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Sigint => 130,
            Stop::Sigterm => 143,
        }
    }

    /// `SIGINT` / `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Stop::Sigint => "SIGINT",
            Stop::Sigterm => "SIGTERM",
        }
    }
}

/// An interrupted command: carries the signal so `main` exits with 130 or 143 after the
/// command printed what state it left.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", .0.name())]
pub struct Interrupted(pub Stop);

/// Listens for SIGINT and SIGTERM from creation on (a signal that arrives before the first
/// [`Signals::recv`] is not lost: tokio queues it).
pub struct Signals {
    int: Signal,
    term: Signal,
    seen: Option<Stop>,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// The signal handlers could not be installed (no tokio runtime with signals enabled).
    pub fn new() -> Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            seen: None,
        })
    }

    /// Waits for the next SIGINT or SIGTERM. After the first one, a second signal exits the
    /// process at once with its status (the user insists).
    pub async fn recv(&mut self) -> Stop {
        let stop = tokio::select! {
            _ = self.int.recv() => Stop::Sigint,
            _ = self.term.recv() => Stop::Sigterm,
        };
        self.seen = Some(stop);
        // From now on a second SIGINT/SIGTERM takes the default action and ends the process at
        // once, even while the command is busy cleaning up synchronously (the user insists).
        // SAFETY: resetting a disposition to SIG_DFL has no preconditions.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
        stop
    }

    /// The signal received so far, if any.
    pub fn seen(&self) -> Option<Stop> {
        self.seen
    }
}
