//! The outbound boundary: the only code that writes `outbound_messages`. PostgreSQL itself
//! refuses messages of shadow runs (trigger `outbound_messages_shadow_guard`), so a shadow run
//! cannot reach a user whatever the caller does; here the refusal becomes an audit record.

use serde_json::{Value, json};
use sqlx::{Acquire, PgConnection};
use uuid::Uuid;

use crate::validate::ValidatedOutput;
use awooop_core::error::{ErrorCode, Result};
use awooop_store::audit::{self, Entry};

pub use awooop_api::ReplyTo;

/// Queue the reply of a finished run. Returns false when the message was refused because the
/// run is in shadow mode (recorded in the audit log instead). Only output that passed the
/// agent's output schema can be sent: `body` is a [`ValidatedOutput`], which only the
/// validator constructs.
pub async fn deliver_reply(
    conn: &mut PgConnection,
    project: &str,
    run_id: Uuid,
    reply_to: &ReplyTo,
    body: &ValidatedOutput,
    trace_id: &str,
) -> Result<bool> {
    let body: &Value = body.value();
    let mut sp = conn.begin().await?;
    let res = sqlx::query(
        "INSERT INTO outbound_messages (project_id, message_id, run_id, channel, conversation, kind, body, trace_id) \
         VALUES ($1, $2, $3, $4, $5, 'reply', $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(project)
    .bind(Uuid::now_v7())
    .bind(run_id)
    .bind(&reply_to.channel)
    .bind(&reply_to.conversation)
    .bind(body)
    .bind(trace_id)
    .execute(&mut *sp)
    .await;
    match res {
        Ok(_) => {
            sp.commit().await?;
            Ok(true)
        }
        Err(e) => {
            let err = awooop_core::error::Error::from(e);
            sp.rollback().await?;
            if err.code != ErrorCode::RunShadowOutbound {
                return Err(err);
            }
            audit::record(
                conn,
                Entry {
                    trace_id: Some(trace_id.to_string()),
                    ..Entry::denied(
                        "runtime",
                        "outbound.suppressed",
                        run_id.to_string(),
                        ErrorCode::RunShadowOutbound.as_str(),
                        json!({"channel": reply_to.channel}),
                    )
                },
            )
            .await?;
            Ok(false)
        }
    }
}
