//! The eight run states and the one transition table (mirrored by the `runs_state_machine`
//! trigger in migrations/0003_runtime.sql; a test checks they agree).

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum RunState {
    /// Accepted, waiting for a worker.
    Queued,
    /// Leased by a worker that heartbeats.
    Running,
    /// Paused at a wait-approval step; resumes (re-queued) when approved.
    WaitingApproval,
    /// Lost its lease or hit a transient error; back in the queue after a backoff.
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    /// Passed its hard deadline.
    TimedOut,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        Self::Queued,
        Self::Running,
        Self::WaitingApproval,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Result<Self> {
        s.parse()
            .map_err(|_| Error::new(ErrorCode::ReqInvalidParam, "unknown run state"))
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    /// The transition table.
    pub fn can_move_to(self, to: RunState) -> bool {
        use RunState::*;
        matches!(
            (self, to),
            (Queued, Running | Cancelled | TimedOut | Failed)
                | (
                    Running,
                    Succeeded | Failed | Cancelled | TimedOut | WaitingApproval | Retrying
                )
                | (WaitingApproval, Queued | Failed | Cancelled | TimedOut)
                | (Retrying, Running | Failed | Cancelled | TimedOut)
        )
    }

    pub fn check(self, to: RunState) -> Result<()> {
        if self.can_move_to(to) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::RunIllegalTransition,
                format!("a {} run cannot become {}", self.as_str(), to.as_str()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunState::*;
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RunState::ALL {
                assert!(!from.can_move_to(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn table() {
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Succeeded),
            (Running, WaitingApproval),
            (Running, Retrying),
            (WaitingApproval, Queued),
            (Retrying, Running),
            (Retrying, Failed),
        ];
        let denied = [
            (Queued, Succeeded),
            (Queued, WaitingApproval),
            (WaitingApproval, Running),
            (Retrying, Succeeded),
            (Running, Queued),
            (Running, Running),
        ];
        for (a, b) in allowed {
            assert!(a.check(b).is_ok(), "{a:?} -> {b:?}");
        }
        for (a, b) in denied {
            assert_eq!(
                a.check(b).unwrap_err().code.as_str(),
                "E-RUN-002",
                "{a:?} -> {b:?}"
            );
        }
    }
}
