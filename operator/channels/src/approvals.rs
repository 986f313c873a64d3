//! Approval buttons: the [`ActionHandler`] that turns a verified Approve/Reject click (Telegram
//! `callback_query`, Slack `block_actions`, LINE `postback`) into a decision on an approval
//! request. The click has already passed the hub's verification and idempotent storage (a
//! replayed callback is a duplicate and never reaches this handler); a chat user counts only
//! when the active Project contract maps them to an approver principal (`acl.chat_approvers`).
//! Every click gets a polite answer in the chat; late clicks change nothing.

use async_trait::async_trait;
use serde_json::json;
use uuid::Uuid;

use super::{ActionHandler, DefaultActions, EventKind, Normalized, Route};
use awooop_contracts::Channel;
use awooop_core::error::{ErrorCode, Result};
use awooop_runtime::approvals::{self, ApprovalService, Decision};
use awooop_runtime::outbound::ReplyTo;
use awooop_store::tenancy::{self, ProjectId};

pub struct ApprovalActions {
    service: ApprovalService,
    fallback: DefaultActions,
}

impl ApprovalActions {
    pub fn new(service: ApprovalService) -> Self {
        Self {
            service,
            fallback: DefaultActions,
        }
    }

    /// Decide, and say in the chat what the click did.
    async fn click(
        &self,
        channel: &Channel,
        event: &Normalized,
        id: Uuid,
        decision: Decision,
    ) -> Result<()> {
        let Ok(request) = self.service.get(id).await else {
            // Not a request of this project: nothing to answer to (no run to attach to).
            return Ok(());
        };
        let principal = match &event.sender {
            Some(user) => {
                self.service
                    .chat_principal(channel.name.as_str(), user)
                    .await?
            }
            None => None,
        };
        let via = format!("chat:{}", channel.name.as_str());
        let text = match principal {
            None => "Your click was not counted: this chat user is not mapped to an approver of the project.".to_string(),
            Some(p) => match self.service.decide(&p, &via, id, decision, None).await {
                Ok(r) if !r.counted => format!("{p}, you already decided on this request; it counts once."),
                Ok(r) => match r.request.state.as_str() {
                    "pending" => format!(
                        "{p} approved ({} of {} needed).",
                        r.request
                            .decisions
                            .as_array()
                            .map_or(0, |d| d.iter().filter(|x| x["decision"] == "approve").count()),
                        r.request.required_approvals
                    ),
                    // Approved/rejected: the service already told the chat.
                    _ => return Ok(()),
                },
                Err(e) if e.code == ErrorCode::ApprovalAlreadyDecided => format!(
                    "This request is already {}; your click changes nothing.",
                    e.details
                        .as_ref()
                        .and_then(|d| d["state"].as_str())
                        .unwrap_or("decided")
                ),
                Err(e) if e.code == ErrorCode::ApprovalNotEligible => {
                    format!("{p} is not an eligible approver of this request; the click was not counted.")
                }
                Err(e) => return Err(e),
            },
        };
        let project = tenancy::require()?;
        let mut tx = self.service.control().db().tenant().await?;
        approvals::chat(
            &mut tx,
            project.as_str(),
            request.run_id,
            &ReplyTo {
                channel: channel.name.as_str().to_string(),
                conversation: event.conversation.clone(),
            },
            &json!({"text": text}),
            &request.trace_id,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ActionHandler for ApprovalActions {
    fn route(&self, channel: &Channel, event: &Normalized) -> Route {
        self.fallback.route(channel, event)
    }

    async fn handle(
        &self,
        project: &ProjectId,
        channel: &Channel,
        event_id: Uuid,
        event: &Normalized,
    ) -> Result<()> {
        let parsed = (event.kind == EventKind::Postback)
            .then(|| event.text.as_deref().and_then(approvals::parse_chat_data))
            .flatten();
        let Some((id, decision)) = parsed else {
            return self
                .fallback
                .handle(project, channel, event_id, event)
                .await;
        };
        tenancy::scope(project.clone(), self.click(channel, event, id, decision)).await
    }
}
