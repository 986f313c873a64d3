//! Reading a run's events (written by the triggers of migration 0050; see
//! [`awooop_store::events`] for how new ones are announced).

pub mod feed;

use uuid::Uuid;

use awooop_api::{RunEvent, RunEventKind};
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::tenancy::Db;

/// The events of `run` after `after`, oldest first, at most `limit`, with the run's state at
/// the time of reading. In the current tenant's scope: another project's run is not found
/// (`E-RUN-001`), exactly like an unknown one.
pub async fn read(db: &Db, run: Uuid, after: i64, limit: i64) -> Result<(String, Vec<RunEvent>)> {
    let mut tx = db.tenant().await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE run_id = $1")
        .bind(run)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(state) = state else {
        return Err(Error::new(ErrorCode::RunNotFound, "run not found"));
    };
    let rows: Vec<(
        i64,
        String,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT seq, kind, data, at FROM run_events WHERE run_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
    )
    .bind(run)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let events = rows
        .into_iter()
        .map(|(seq, kind, data, at)| RunEvent {
            seq,
            kind: serde_json::from_value(serde_json::Value::String(kind))
                .unwrap_or(RunEventKind::Other),
            data,
            at,
        })
        .collect();
    Ok((state, events))
}

/// Parse a `Last-Event-ID`: the `seq` of the last event the client saw (`E-EVENTS-001`).
pub fn parse_cursor(h: Option<&str>) -> Result<i64> {
    match h.map(str::trim) {
        None | Some("") => Ok(0),
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::new(
                ErrorCode::EventsBadCursor,
                "Last-Event-ID must be a non-negative integer",
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(None).unwrap(), 0);
        assert_eq!(parse_cursor(Some(" 12 ")).unwrap(), 12);
        for bad in ["-1", "x", "1.5", "99999999999999999999"] {
            assert_eq!(
                parse_cursor(Some(bad)).unwrap_err().code,
                ErrorCode::EventsBadCursor
            );
        }
    }
}
