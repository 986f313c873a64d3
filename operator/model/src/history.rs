//! The conversation history of a run started from a channel, under the context firewall.
//!
//! A run the channel hub started is linked to its conversation event
//! (`conversation_events.run_id`); the run input is never trusted for this, so a caller cannot
//! point a run at another conversation's history. When that event's channel asks for history
//! (`history_events` in the Channel contract), the model gets the conversation's earlier
//! messages and the replies sent to it, oldest first, before the new message.
//!
//! The same conversation can reach a project through several channels (one chat, two bots),
//! and each channel carries the context domain of the agent it routes to: a business
//! channel's history is business context. Only channels whose domain the run's agent may read
//! ([`PromptFirewall::admit_history`]) are read at all; events of the others never leave the
//! database for this run (skipped with their code, `E-CONTEXT-002` or `E-CONTEXT-003`, in the
//! log). A channel whose agent has no active contract has no known domain and is skipped too
//! (fail closed, whatever the project's regime).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::context::PromptFirewall;
use super::wire::ChatMessage;
use awooop_contracts::{Contract, ContractKind};
use awooop_control::ControlPlane;
use awooop_core::error::{ErrorCode, Result};

/// The history messages for run `run_id` (empty when it was not started by a channel event
/// or its channel asks for none).
pub async fn assemble(
    control: &ControlPlane,
    run_id: Uuid,
    firewall: &PromptFirewall,
) -> Result<Vec<ChatMessage>> {
    let anchor: Option<(String, String, DateTime<Utc>)> = {
        let mut tx = control.db().tenant().await?;
        let a = sqlx::query_as(
            "SELECT channel, conversation, received_at FROM conversation_events WHERE run_id = $1 \
             ORDER BY received_at LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        a
    };
    let Some((channel, conversation, at)) = anchor else {
        return Ok(vec![]);
    };
    // Every channel of the project's active Channel contracts: its history setting and agent.
    let mut channels: HashMap<String, (u16, String)> = HashMap::new();
    for row in control
        .active_list()
        .await?
        .iter()
        .filter(|r| r.kind == ContractKind::Channel.as_str())
    {
        if let (_, Contract::Channel(c)) = control
            .active_typed(ContractKind::Channel, &row.name)
            .await?
        {
            for ch in c.channels {
                channels
                    .entry(ch.name.0)
                    .or_insert((ch.history_events, ch.agent.0));
            }
        }
    }
    let limit = channels.get(&channel).map_or(0, |c| c.0);
    if limit == 0 {
        return Ok(vec![]);
    }
    let mut domains: HashMap<String, Option<String>> = HashMap::new();
    let mut readable: Vec<String> = Vec::new();
    let mut skipped: Vec<(String, &'static str)> = Vec::new();
    for (name, (_, agent)) in &channels {
        if !domains.contains_key(agent) {
            let d = match control.active_typed(ContractKind::Agent, agent).await {
                Ok((_, Contract::Agent(a))) => Some(a.context_domain.0),
                Ok(_) => None,
                Err(e) if e.code == ErrorCode::ContractNotFound => None,
                Err(e) => return Err(e),
            };
            domains.insert(agent.clone(), d);
        }
        match domains.get(agent).cloned().flatten() {
            None => skipped.push((name.clone(), ErrorCode::ContextDomainUndeclared.as_str())),
            Some(d) => match firewall.admit_history(Some(d.as_str())) {
                Ok(()) => readable.push(name.clone()),
                Err(e) => skipped.push((name.clone(), e.code.as_str())),
            },
        }
    }
    if !skipped.is_empty() {
        skipped.sort();
        tracing::info!(
            %run_id,
            skipped = ?skipped,
            "conversation history of channels of other context domains left out"
        );
    }
    if !readable.contains(&channel) {
        // The run's own channel is of a domain its agent may not read (the channel routes to
        // another agent now): no history at all.
        return Ok(vec![]);
    }
    let rows = {
        let mut tx = control.db().tenant().await?;
        let rows = recent(&mut tx, &conversation, &readable, at, limit).await?;
        tx.commit().await?;
        rows
    };
    // Oldest first, starting with a message of the user's (a provider may refuse a
    // conversation that opens with the assistant).
    Ok(rows
        .into_iter()
        .rev()
        .skip_while(|(role, _, _)| role != "user")
        .map(|(role, text, body)| {
            if role == "user" {
                ChatMessage::User {
                    content: text.unwrap_or_default(),
                }
            } else {
                ChatMessage::Assistant {
                    content: body.as_ref().map(reply_text).unwrap_or_default(),
                    tool_calls: vec![],
                }
            }
        })
        .collect())
}

/// The text of a reply as it was sent: a string, or the `text`/`result` string of an object,
/// else the JSON itself (the channel hub's delivery renders it the same way).
fn reply_text(body: &Value) -> String {
    match body {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("text")
            .or_else(|| o.get("result"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string()),
        other => other.to_string(),
    }
}

/// (role, text, reply body) of the `limit` latest messages of `conversation` on `channels`
/// before `at`, newest first, in the caller's tenant transaction. Both reads go by the
/// conversation's own index entries (migration 0072), newest first, so a chat run reads its
/// conversation's latest messages, not every event its project ever received.
pub async fn recent(
    tx: &mut sqlx::PgConnection,
    conversation: &str,
    channels: &[String],
    at: DateTime<Utc>,
    limit: u16,
) -> Result<Vec<(String, Option<String>, Option<Value>)>> {
    Ok(sqlx::query_as(
        "SELECT role, text, body FROM ( \
           SELECT received_at AS at, 'user' AS role, text, NULL::jsonb AS body \
           FROM conversation_events \
           WHERE conversation = $1 AND channel = ANY($2) AND received_at < $3 \
             AND text IS NOT NULL AND kind IN ('message', 'edited_message', 'command') \
           UNION ALL \
           SELECT created_at, 'assistant', NULL, body FROM outbound_messages \
           WHERE conversation = $1 AND channel = ANY($2) AND created_at < $3 AND kind = 'reply' \
         ) h ORDER BY at DESC LIMIT $4",
    )
    .bind(conversation)
    .bind(channels)
    .bind(at)
    .bind(i64::from(limit))
    .fetch_all(tx)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_read_as_they_were_sent() {
        assert_eq!(reply_text(&json!("hi")), "hi");
        assert_eq!(reply_text(&json!({"result": "r", "x": 1})), "r");
        assert_eq!(reply_text(&json!({"text": "t", "result": "r"})), "t");
        assert_eq!(reply_text(&json!({"n": 1})), r#"{"n":1}"#);
    }
}
