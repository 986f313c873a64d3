//! Strangler-fig migration modes of a project and the pure rule for moving between them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// shadow → canary → read_only → suggest → auto_remediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum MigrationMode {
    /// Mirror events; audit and trace only; no user response, no side effects.
    Shadow,
    /// Selected low-risk user-visible responses; no side effects.
    Canary,
    /// Read-only queries and business chat.
    ReadOnly,
    /// Analysis and recommendations; approval still external.
    Suggest,
    /// Write/execute tools behind gateway approval.
    AutoRemediate,
}

impl MigrationMode {
    pub const ALL: [MigrationMode; 5] = [
        Self::Shadow,
        Self::Canary,
        Self::ReadOnly,
        Self::Suggest,
        Self::AutoRemediate,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Result<Self> {
        s.parse().map_err(|_| {
            Error::new(
                ErrorCode::ReqInvalidParam,
                "mode must be one of shadow, canary, read_only, suggest, auto_remediate",
            )
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// May a project move from `from` to `to`? One step forward or back at a time; anything else
/// only when forced with a non-empty reason (which is recorded in the history).
pub fn check_transition(
    from: MigrationMode,
    to: MigrationMode,
    force: bool,
    reason: Option<&str>,
) -> Result<()> {
    let reason_given = reason.is_some_and(|r| !r.trim().is_empty());
    if force && !reason_given {
        return Err(Error::new(
            ErrorCode::MigrationReasonRequired,
            "a forced mode change needs a reason",
        ));
    }
    if from == to {
        return Err(Error::new(
            ErrorCode::MigrationIllegalStep,
            format!("project is already in mode {}", from.as_str()),
        ));
    }
    let distance = from.index().abs_diff(to.index());
    if distance > 1 && !force {
        return Err(Error::new(
            ErrorCode::MigrationIllegalStep,
            format!(
                "cannot move from {} to {} in one step (force with a reason to skip)",
                from.as_str(),
                to.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MigrationMode::*;
    use super::*;

    #[test]
    fn transition_table() {
        type Case = (
            MigrationMode,
            MigrationMode,
            bool,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (Shadow, Canary, false, None, None),
            (Canary, ReadOnly, false, None, None),
            (ReadOnly, Suggest, false, None, None),
            (Suggest, AutoRemediate, false, None, None),
            (Canary, Shadow, false, None, None),
            (Shadow, ReadOnly, false, None, Some("E-MIGRATION-001")),
            (Shadow, AutoRemediate, false, None, Some("E-MIGRATION-001")),
            (Shadow, AutoRemediate, true, Some("incident 42"), None),
            (Shadow, AutoRemediate, true, None, Some("E-MIGRATION-002")),
            (
                Shadow,
                AutoRemediate,
                true,
                Some("  "),
                Some("E-MIGRATION-002"),
            ),
            (Shadow, Shadow, false, None, Some("E-MIGRATION-001")),
            (AutoRemediate, Shadow, true, Some("rollback"), None),
        ];
        for (from, to, force, reason, want) in cases {
            let got = check_transition(*from, *to, *force, *reason)
                .err()
                .map(|e| e.code.as_str());
            assert_eq!(got, *want, "{from:?} -> {to:?} force={force}");
        }
    }
}
