//! Provider send APIs: Telegram Bot API, LINE Messaging API, Slack Web API.
//!
//! Every call returns a [`SendOutcome`]; nothing here retries (the delivery worker decides,
//! honouring `retry_after` / `Retry-After`). Tokens go only into the request (URL path for
//! Telegram, `Authorization` for LINE and Slack) and never into errors or logs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::format::TelegramMode;
use super::{ProviderUrls, Secret};
use awooop_contracts::ChannelProvider;

/// Fallback wait when a 429 carries no retry hint.
pub const DEFAULT_RETRY_MS: u64 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Sent {
        provider_id: Option<String>,
        status: u16,
    },
    /// Transient: 429, 5xx, timeout, connection error.
    Retry {
        after_ms: Option<u64>,
        status: Option<u16>,
        reason: &'static str,
    },
    /// Permanent: the provider rejected the request.
    Rejected { status: Option<u16>, reason: String },
}

/// A send with its latency.
pub struct Timed {
    pub outcome: SendOutcome,
    pub latency: Duration,
}

/// The LINE `X-Line-Retry-Key` of one part of a message: a UUID derived from the message id
/// and part, so a retry of the same part carries the same key and LINE does not send twice.
pub fn line_retry_key(message_id: Uuid, part: usize) -> Uuid {
    let d = Sha256::digest(format!("{message_id}:{part}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

fn retry_after_header(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000))
}

async fn call(
    http: &reqwest::Client,
    req: reqwest::RequestBuilder,
    read: impl FnOnce(u16, &Value) -> SendOutcome,
) -> Timed {
    let _ = http;
    let started = Instant::now();
    let outcome = match req.send().await {
        Err(e) => SendOutcome::Retry {
            after_ms: None,
            status: None,
            reason: if e.is_timeout() {
                "timeout"
            } else {
                "unreachable"
            },
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let header_hint = retry_after_header(&r);
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if status == 429 {
                let hint = body
                    .pointer("/parameters/retry_after")
                    .and_then(Value::as_u64)
                    .map(|s| s * 1000)
                    .or(header_hint);
                SendOutcome::Retry {
                    after_ms: hint,
                    status: Some(429),
                    reason: "rate_limited",
                }
            } else if status >= 500 {
                SendOutcome::Retry {
                    after_ms: header_hint,
                    status: Some(status),
                    reason: "server_error",
                }
            } else {
                read(status, &body)
            }
        }
    };
    Timed {
        outcome,
        latency: started.elapsed(),
    }
}

fn rejected(status: u16, body: &Value, field: &str) -> SendOutcome {
    SendOutcome::Rejected {
        status: Some(status),
        reason: body
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("rejected")
            .chars()
            .take(200)
            .collect(),
    }
}

/// Send one message (Telegram/Slack: one text; LINE: up to five texts in one request).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    http: &reqwest::Client,
    urls: &ProviderUrls,
    provider: ChannelProvider,
    token: &Secret,
    conversation: &str,
    texts: &[String],
    retry_key: Uuid,
    line_reply_token: Option<&str>,
    buttons: &[Button],
) -> Timed {
    match provider {
        ChannelProvider::Telegram => {
            let url = format!("{}/bot{}/sendMessage", urls.telegram, token.expose());
            let mut body = json!({
                "chat_id": conversation, "text": texts.concat(),
                "parse_mode": TelegramMode::Html.parse_mode(),
            });
            if !buttons.is_empty() {
                // Inline keyboard: a click comes back as a callback_query with `data`.
                body["reply_markup"] = json!({"inline_keyboard": [buttons
                    .iter()
                    .map(|b| json!({"text": b.label, "callback_data": b.data}))
                    .collect::<Vec<_>>()]});
            }
            let req = http.post(url).json(&body);
            call(http, req, |status, body| {
                if body.get("ok") == Some(&Value::Bool(true)) {
                    SendOutcome::Sent {
                        provider_id: body.pointer("/result/message_id").map(|v| v.to_string()),
                        status,
                    }
                } else {
                    rejected(status, body, "description")
                }
            })
            .await
        }
        ChannelProvider::Line => {
            let mut messages: Vec<Value> = texts
                .iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            if !buttons.is_empty() {
                // A buttons template with postback actions (clicks come back as `postback`);
                // LINE takes five messages per request, the template is one of them.
                messages.truncate(4);
                messages.push(json!({
                    "type": "template",
                    "altText": "Approve or reject",
                    "template": {"type": "buttons", "text": "Decide", "actions": buttons
                        .iter()
                        .map(|b| json!({"type": "postback", "label": b.label, "data": b.data}))
                        .collect::<Vec<_>>()}
                }));
            }
            let req = match line_reply_token {
                Some(rt) => http
                    .post(format!("{}/v2/bot/message/reply", urls.line))
                    .json(&json!({"replyToken": rt, "messages": messages})),
                None => http
                    .post(format!("{}/v2/bot/message/push", urls.line))
                    .header("X-Line-Retry-Key", retry_key.to_string())
                    .json(&json!({"to": conversation, "messages": messages})),
            };
            let req = req.bearer_auth(token.expose());
            call(http, req, |status, body| match status {
                200 => SendOutcome::Sent {
                    provider_id: body
                        .pointer("/sentMessages/0/id")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    status,
                },
                // The retry key was already accepted: the earlier attempt was delivered.
                409 => SendOutcome::Sent {
                    provider_id: None,
                    status,
                },
                _ => rejected(status, body, "message"),
            })
            .await
        }
        ChannelProvider::Slack => {
            let req = http
                .post(format!("{}/chat.postMessage", urls.slack))
                .bearer_auth(token.expose())
                .json(&slack_body(conversation, &texts.concat(), buttons));
            call(http, req, slack_read).await
        }
        ChannelProvider::Api | ChannelProvider::Email => Timed {
            outcome: SendOutcome::Sent {
                provider_id: None,
                status: 0,
            },
            latency: Duration::ZERO,
        },
    }
}

/// A button of an outbound message (approval requests): its label and the data a click
/// sends back (Telegram `callback_data`, Slack `value`, LINE postback `data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    pub label: String,
    pub data: String,
}

/// The buttons of a message body (`{"text", "buttons": [{"label", "data"}]}`).
pub fn buttons_of(body: &Value) -> Vec<Button> {
    body.get("buttons")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    Some(Button {
                        label: b.get("label")?.as_str()?.chars().take(20).collect(),
                        data: b.get("data")?.as_str()?.chars().take(64).collect(),
                    })
                })
                .take(5)
                .collect()
        })
        .unwrap_or_default()
}

fn slack_body(conversation: &str, text: &str, buttons: &[Button]) -> Value {
    let mut body = json!({"channel": conversation, "text": text, "mrkdwn": true});
    if !buttons.is_empty() {
        // Block Kit: the text, then an actions block; a click is a block_actions interaction.
        body["blocks"] = json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "elements": buttons.iter().enumerate().map(|(i, b)| json!({
                "type": "button", "action_id": format!("awooop-{i}"),
                "text": {"type": "plain_text", "text": b.label}, "value": b.data,
            })).collect::<Vec<_>>()}
        ]);
    }
    body
}

fn slack_read(status: u16, body: &Value) -> SendOutcome {
    if body.get("ok") == Some(&Value::Bool(true)) {
        SendOutcome::Sent {
            provider_id: body.get("ts").and_then(Value::as_str).map(str::to_string),
            status,
        }
    } else if body.get("error").and_then(Value::as_str) == Some("ratelimited") {
        SendOutcome::Retry {
            after_ms: None,
            status: Some(status),
            reason: "rate_limited",
        }
    } else {
        rejected(status, body, "error")
    }
}

/// Edit a status message in place (Telegram `editMessageText`, Slack `chat.update`). LINE has
/// no edit: its progress uses the loading animation ([`line_loading`]).
pub async fn edit(
    http: &reqwest::Client,
    urls: &ProviderUrls,
    provider: ChannelProvider,
    token: &Secret,
    conversation: &str,
    message_id: &str,
    text: &str,
) -> Timed {
    match provider {
        ChannelProvider::Telegram => {
            let url = format!("{}/bot{}/editMessageText", urls.telegram, token.expose());
            let id: Value = message_id
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(message_id));
            let req = http.post(url).json(&json!({
                "chat_id": conversation, "message_id": id, "text": text,
                "parse_mode": TelegramMode::Html.parse_mode(),
            }));
            call(http, req, |status, body| {
                let unchanged = body
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.contains("message is not modified"));
                if body.get("ok") == Some(&Value::Bool(true)) || unchanged {
                    SendOutcome::Sent {
                        provider_id: Some(message_id.to_string()),
                        status,
                    }
                } else {
                    rejected(status, body, "description")
                }
            })
            .await
        }
        ChannelProvider::Slack => {
            let req = http
                .post(format!("{}/chat.update", urls.slack))
                .bearer_auth(token.expose())
                .json(&json!({"channel": conversation, "ts": message_id, "text": text}));
            call(http, req, slack_read).await
        }
        _ => Timed {
            outcome: SendOutcome::Rejected {
                status: None,
                reason: "provider has no message edit".into(),
            },
            latency: Duration::ZERO,
        },
    }
}

/// LINE loading animation (one-to-one chats), shown for `seconds` (5..=60, multiple of 5).
pub async fn line_loading(
    http: &reqwest::Client,
    urls: &ProviderUrls,
    token: &Secret,
    chat: &str,
    seconds: u32,
) -> Timed {
    let seconds = (seconds.clamp(5, 60) / 5) * 5;
    let req = http
        .post(format!("{}/v2/bot/chat/loading/start", urls.line))
        .bearer_auth(token.expose())
        .json(&json!({"chatId": chat, "loadingSeconds": seconds}));
    call(http, req, |status, body| match status {
        200 | 202 => SendOutcome::Sent {
            provider_id: None,
            status,
        },
        _ => rejected(status, body, "message"),
    })
    .await
}

/// Telegram `setWebhook` with a secret token (used by `awooop channel register`).
pub async fn telegram_set_webhook(
    http: &reqwest::Client,
    urls: &ProviderUrls,
    token: &Secret,
    url: &str,
    secret_token: &str,
) -> Timed {
    let req = http
        .post(format!(
            "{}/bot{}/setWebhook",
            urls.telegram,
            token.expose()
        ))
        .json(&json!({
            "url": url, "secret_token": secret_token,
            "allowed_updates": ["message", "edited_message", "channel_post", "callback_query"],
        }));
    call(http, req, |status, body| {
        if body.get("ok") == Some(&Value::Bool(true)) {
            SendOutcome::Sent {
                provider_id: None,
                status,
            }
        } else {
            rejected(status, body, "description")
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_keys_are_stable_per_part_and_valid_uuids() {
        let m = Uuid::now_v7();
        assert_eq!(line_retry_key(m, 0), line_retry_key(m, 0));
        assert_ne!(line_retry_key(m, 0), line_retry_key(m, 1));
        assert_eq!(line_retry_key(m, 0).get_version_num(), 4);
    }

    #[test]
    fn approval_buttons_become_block_kit_actions_and_are_bounded() {
        let body = json!({"text": "t", "buttons": [
            {"label": "Approve", "data": "apr:x:a"}, {"label": "Reject", "data": "apr:x:r"},
            {"label": 1}, {"data": "no label"}
        ]});
        let b = buttons_of(&body);
        assert_eq!(b.len(), 2, "malformed buttons are dropped");
        assert_eq!(b[0].data, "apr:x:a");
        let long = json!({"buttons": [{"label": "x".repeat(100), "data": "d".repeat(100)}]});
        let b2 = buttons_of(&long);
        assert_eq!((b2[0].label.len(), b2[0].data.len()), (20, 64));
        assert!(buttons_of(&json!("plain")).is_empty());
        let slack = slack_body("C1", "t", &b);
        assert_eq!(slack["blocks"][1]["type"], "actions");
        assert_eq!(slack["blocks"][1]["elements"][1]["value"], "apr:x:r");
        assert!(slack_body("C1", "t", &[]).get("blocks").is_none());
    }
}
