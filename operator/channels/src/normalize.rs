//! Provider payloads → normalized conversation events (pure; runs only on verified bodies).
//!
//! Each provider's format is read just far enough to fill [`Normalized`]; anything else in the
//! body is ignored and never stored (the hub keeps the SHA-256 of the raw body, not the body).

use serde::Deserialize;
use serde_json::Value;

use awooop_contracts::ChannelProvider;
use awooop_core::error::{Error, ErrorCode, Result};

/// Longest normalized text kept (characters); longer texts are cut at a character boundary.
pub const MAX_TEXT_CHARS: usize = 16_384;

/// Kind of a normalized event; the strings are `channel_events.kind` (migration 0016's CHECK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::EnumString, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    Message,
    EditedMessage,
    Command,
    Postback,
    Join,
    Leave,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One inbound event, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The provider's id of this delivery (Telegram `update_id`, LINE `webhookEventId`, Slack
    /// `event_id` / interaction `trigger_id`, API `event_id`): the idempotency key.
    pub external_id: String,
    /// Chat / group / channel id replies go to.
    pub conversation: String,
    pub sender: Option<String>,
    pub kind: EventKind,
    pub text: Option<String>,
    /// LINE reply token (valid for about a minute).
    pub reply_token: Option<String>,
    /// The provider marked this a redelivery (LINE `deliveryContext.isRedelivery`, Slack
    /// `X-Slack-Retry-Num`); informational, idempotency does not depend on it.
    pub redelivery: bool,
}

/// What a verified body contains.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub events: Vec<Normalized>,
    /// Slack `url_verification`: answer with this challenge.
    pub challenge: Option<String>,
    /// Event types that were present but are not handled (each audited, none stored).
    pub unsupported: Vec<String>,
}

fn malformed(msg: &str) -> Error {
    Error::new(ErrorCode::ChannelMalformed, msg.to_string())
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn id_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parse a verified body. `retry` is the provider's redelivery marker from the headers.
pub fn parse(provider: ChannelProvider, body: &[u8], retry: bool) -> Result<Parsed> {
    let text =
        std::str::from_utf8(body).map_err(|_| malformed("webhook body is not valid UTF-8"))?;
    match provider {
        ChannelProvider::Telegram => telegram(&json(text)?),
        ChannelProvider::Line => line(&json(text)?),
        ChannelProvider::Slack => slack(text, retry),
        ChannelProvider::Api => api(text),
        ChannelProvider::Email => Err(Error::new(
            ErrorCode::ChannelNotFound,
            "the hub does not serve email channels",
        )),
    }
}

fn json(text: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text).map_err(|_| malformed("webhook body is not JSON"))?;
    if !v.is_object() {
        return Err(malformed("webhook body is not a JSON object"));
    }
    Ok(v)
}

fn unsupported(kind: &str) -> Parsed {
    Parsed {
        unsupported: vec![kind.chars().take(64).collect()],
        ..Parsed::default()
    }
}

// --- Telegram Bot API Update -------------------------------------------------------------------

fn telegram(u: &Value) -> Result<Parsed> {
    let update_id = u
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("Telegram update without update_id"))?;
    let external_id = update_id.to_string();
    let (msg, edited) = if let Some(m) = u.get("message") {
        (m, false)
    } else if let Some(m) = u.get("edited_message") {
        (m, true)
    } else if let Some(m) = u.get("channel_post") {
        (m, false)
    } else if let Some(m) = u.get("edited_channel_post") {
        (m, true)
    } else if let Some(q) = u.get("callback_query") {
        let sender = q.pointer("/from/id").and_then(id_str);
        let conversation = q
            .pointer("/message/chat/id")
            .and_then(id_str)
            .or_else(|| sender.clone())
            .ok_or_else(|| malformed("Telegram callback_query without a chat"))?;
        return Ok(Parsed {
            events: vec![Normalized {
                external_id,
                conversation,
                sender,
                kind: EventKind::Postback,
                text: q.get("data").and_then(Value::as_str).map(cut),
                reply_token: None,
                redelivery: false,
            }],
            ..Parsed::default()
        });
    } else {
        let kind = u
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "update_id").cloned())
            .unwrap_or_else(|| "empty".into());
        return Ok(unsupported(&format!("telegram:{kind}")));
    };
    let conversation = msg
        .pointer("/chat/id")
        .and_then(id_str)
        .ok_or_else(|| malformed("Telegram message without chat.id"))?;
    // Channel posts have no `from`; the chat is the sender then.
    let sender = msg
        .pointer("/from/id")
        .and_then(id_str)
        .or_else(|| msg.pointer("/sender_chat/id").and_then(id_str))
        .or_else(|| Some(conversation.clone()));
    let text = msg
        .get("text")
        .or_else(|| msg.get("caption"))
        .and_then(Value::as_str)
        .map(cut);
    let kind = if msg.get("new_chat_members").is_some() {
        EventKind::Join
    } else if msg.get("left_chat_member").is_some() {
        EventKind::Leave
    } else if edited {
        EventKind::EditedMessage
    } else if text.as_deref().is_some_and(|t| t.starts_with('/')) {
        EventKind::Command
    } else {
        EventKind::Message
    };
    Ok(Parsed {
        events: vec![Normalized {
            external_id,
            conversation,
            sender,
            kind,
            text,
            reply_token: None,
            redelivery: false,
        }],
        ..Parsed::default()
    })
}

// --- LINE Messaging API webhook ----------------------------------------------------------------

fn line(v: &Value) -> Result<Parsed> {
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("LINE webhook without events"))?;
    let mut out = Parsed::default();
    for e in events {
        let ty = e.get("type").and_then(Value::as_str).unwrap_or("");
        let kind = match ty {
            "message" => EventKind::Message,
            "postback" => EventKind::Postback,
            "follow" | "join" | "memberJoined" => EventKind::Join,
            "unfollow" | "leave" | "memberLeft" => EventKind::Leave,
            other => {
                out.unsupported.push(format!(
                    "line:{}",
                    other.chars().take(48).collect::<String>()
                ));
                continue;
            }
        };
        let external_id = e
            .get("webhookEventId")
            .and_then(id_str)
            .ok_or_else(|| malformed("LINE event without webhookEventId"))?;
        let source = e.get("source").unwrap_or(&Value::Null);
        let sender = source.get("userId").and_then(id_str);
        let conversation = source
            .get("groupId")
            .or_else(|| source.get("roomId"))
            .and_then(id_str)
            .or_else(|| sender.clone())
            .ok_or_else(|| malformed("LINE event without a source"))?;
        let text = match kind {
            EventKind::Message => e.pointer("/message/text").and_then(Value::as_str).map(cut),
            EventKind::Postback => e.pointer("/postback/data").and_then(Value::as_str).map(cut),
            _ => None,
        };
        let kind =
            if kind == EventKind::Message && text.as_deref().is_some_and(|t| t.starts_with('/')) {
                EventKind::Command
            } else {
                kind
            };
        out.events.push(Normalized {
            external_id,
            conversation,
            sender,
            kind,
            text,
            reply_token: e
                .get("replyToken")
                .and_then(Value::as_str)
                .filter(|t| t.len() <= 256)
                .map(str::to_string),
            redelivery: e
                .pointer("/deliveryContext/isRedelivery")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    Ok(out)
}

// --- Slack Events API, interactivity and slash commands -----------------------------------------

/// The value of `key` in an `application/x-www-form-urlencoded` body.
pub fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == key)
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn slack(text: &str, retry: bool) -> Result<Parsed> {
    if text.trim_start().starts_with('{') {
        return slack_event(&json(text)?, retry);
    }
    // Form-encoded: interactivity (payload=JSON) or a slash command (command=/x&text=...).
    if let Some(payload) = form_value(text, "payload") {
        let p: Value =
            serde_json::from_str(&payload).map_err(|_| malformed("Slack payload is not JSON"))?;
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "block_actions" {
            return Ok(unsupported(&format!("slack:{ty}")));
        }
        let external_id = p
            .get("trigger_id")
            .and_then(id_str)
            .ok_or_else(|| malformed("Slack interaction without trigger_id"))?;
        let sender = p.pointer("/user/id").and_then(id_str);
        let conversation = p
            .pointer("/channel/id")
            .and_then(id_str)
            .or_else(|| sender.clone())
            .ok_or_else(|| malformed("Slack interaction without a channel"))?;
        let action = p.pointer("/actions/0").unwrap_or(&Value::Null);
        let data = action
            .get("value")
            .or_else(|| action.get("action_id"))
            .and_then(Value::as_str)
            .map(cut);
        return Ok(Parsed {
            events: vec![Normalized {
                external_id,
                conversation,
                sender,
                kind: EventKind::Postback,
                text: data,
                reply_token: None,
                redelivery: retry,
            }],
            ..Parsed::default()
        });
    }
    if let Some(command) = form_value(text, "command") {
        let external_id = form_value(text, "trigger_id")
            .ok_or_else(|| malformed("Slack command without trigger_id"))?;
        let sender = form_value(text, "user_id");
        let conversation = form_value(text, "channel_id")
            .or_else(|| sender.clone())
            .ok_or_else(|| malformed("Slack command without a channel"))?;
        let args = form_value(text, "text").unwrap_or_default();
        return Ok(Parsed {
            events: vec![Normalized {
                external_id,
                conversation,
                sender,
                kind: EventKind::Command,
                text: Some(cut(format!("{command} {args}").trim_end())),
                reply_token: None,
                redelivery: retry,
            }],
            ..Parsed::default()
        });
    }
    Err(malformed("Slack body is neither JSON nor a known form"))
}

fn slack_event(v: &Value, retry: bool) -> Result<Parsed> {
    match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "url_verification" => {
            let c = v
                .get("challenge")
                .and_then(Value::as_str)
                .filter(|c| c.len() <= 512)
                .ok_or_else(|| malformed("url_verification without challenge"))?;
            Ok(Parsed {
                challenge: Some(c.to_string()),
                ..Parsed::default()
            })
        }
        "event_callback" => {
            let external_id = v
                .get("event_id")
                .and_then(id_str)
                .ok_or_else(|| malformed("Slack event_callback without event_id"))?;
            let e = v.get("event").unwrap_or(&Value::Null);
            let ty = e.get("type").and_then(Value::as_str).unwrap_or("");
            let subtype = e.get("subtype").and_then(Value::as_str);
            // Messages from bots (including the platform's own replies) never start runs.
            if e.get("bot_id").is_some() || subtype == Some("bot_message") {
                return Ok(unsupported("slack:bot_message"));
            }
            let (kind, text, sender) = match (ty, subtype) {
                ("message" | "app_mention", None) => {
                    let t = e.get("text").and_then(Value::as_str).map(cut);
                    let k = if t.as_deref().is_some_and(|t| t.starts_with('/')) {
                        EventKind::Command
                    } else {
                        EventKind::Message
                    };
                    (k, t, e.get("user").and_then(id_str))
                }
                ("message", Some("message_changed")) => (
                    EventKind::EditedMessage,
                    e.pointer("/message/text").and_then(Value::as_str).map(cut),
                    e.pointer("/message/user").and_then(id_str),
                ),
                ("member_joined_channel", _) => {
                    (EventKind::Join, None, e.get("user").and_then(id_str))
                }
                ("member_left_channel", _) => {
                    (EventKind::Leave, None, e.get("user").and_then(id_str))
                }
                (other, st) => {
                    let name = match st {
                        Some(st) => format!("slack:{other}/{st}"),
                        None => format!("slack:{other}"),
                    };
                    return Ok(unsupported(&name));
                }
            };
            let conversation = e
                .get("channel")
                .and_then(id_str)
                .or_else(|| sender.clone())
                .ok_or_else(|| malformed("Slack event without a channel"))?;
            Ok(Parsed {
                events: vec![Normalized {
                    external_id,
                    conversation,
                    sender,
                    kind,
                    text,
                    reply_token: None,
                    redelivery: retry,
                }],
                ..Parsed::default()
            })
        }
        other => Ok(unsupported(&format!("slack:{other}"))),
    }
}

// --- API channel --------------------------------------------------------------------------------

/// `POST /v1/platform/conversations/{channel}/events` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiEvent {
    event_id: String,
    conversation: String,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default = "default_kind")]
    kind: EventKind,
    #[serde(default)]
    text: Option<String>,
}

fn default_kind() -> EventKind {
    EventKind::Message
}

fn api(text: &str) -> Result<Parsed> {
    let e: ApiEvent = serde_json::from_str(text).map_err(|e| {
        Error::new(
            ErrorCode::ChannelMalformed,
            format!(
                "event body: {}",
                e.to_string().chars().take(200).collect::<String>()
            ),
        )
    })?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 256;
    if !ok(&e.event_id) || !ok(&e.conversation) || e.sender.as_deref().is_some_and(|s| !ok(s)) {
        return Err(malformed(
            "event_id, conversation and sender must be 1 to 256 bytes",
        ));
    }
    Ok(Parsed {
        events: vec![Normalized {
            external_id: e.event_id,
            conversation: e.conversation,
            sender: e.sender,
            kind: e.kind,
            text: e.text.as_deref().map(cut),
            reply_token: None,
            redelivery: false,
        }],
        ..Parsed::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tg(v: Value) -> Result<Parsed> {
        parse(ChannelProvider::Telegram, v.to_string().as_bytes(), false)
    }

    #[test]
    fn telegram_kinds() {
        let p = tg(
            json!({"update_id": 7, "message": {"message_id": 1, "date": 0,
            "chat": {"id": -100, "type": "group"}, "from": {"id": 42}, "text": "hello"}}),
        )
        .unwrap();
        assert_eq!(p.events[0].external_id, "7");
        assert_eq!(p.events[0].conversation, "-100");
        assert_eq!(p.events[0].sender.as_deref(), Some("42"));
        assert_eq!(p.events[0].kind, EventKind::Message);
        let p = tg(json!({"update_id": 8, "edited_message": {"chat": {"id": 1}, "from": {"id": 2}, "text": "x"}})).unwrap();
        assert_eq!(p.events[0].kind, EventKind::EditedMessage);
        let p = tg(json!({"update_id": 9, "message": {"chat": {"id": 1}, "from": {"id": 2}, "text": "/status now"}})).unwrap();
        assert_eq!(p.events[0].kind, EventKind::Command);
        let p = tg(json!({"update_id": 10, "channel_post": {"chat": {"id": -5}, "text": "post"}}))
            .unwrap();
        assert_eq!(p.events[0].sender.as_deref(), Some("-5"));
        let p = tg(
            json!({"update_id": 11, "callback_query": {"id": "q", "from": {"id": 3},
            "data": "approve:1", "message": {"chat": {"id": 4}}}}),
        )
        .unwrap();
        assert_eq!(p.events[0].kind, EventKind::Postback);
        assert_eq!(p.events[0].conversation, "4");
        let p = tg(json!({"update_id": 12, "poll": {"id": "p"}})).unwrap();
        assert!(p.events.is_empty());
        assert_eq!(p.unsupported, vec!["telegram:poll".to_string()]);
        assert_eq!(
            tg(json!({"message": {}})).unwrap_err().code,
            ErrorCode::ChannelMalformed
        );
        assert_eq!(
            parse(ChannelProvider::Telegram, b"{\"update_id\":1,\xff}", false)
                .unwrap_err()
                .code,
            ErrorCode::ChannelMalformed
        );
    }

    #[test]
    fn line_several_events_and_unknown_ones() {
        let body = json!({"destination": "U", "events": [
            {"type": "message", "webhookEventId": "E1", "replyToken": "r1",
             "deliveryContext": {"isRedelivery": true}, "source": {"type": "user", "userId": "U1"},
             "message": {"type": "text", "text": "hi"}},
            {"type": "postback", "webhookEventId": "E2", "source": {"type": "group", "groupId": "G1", "userId": "U2"},
             "postback": {"data": "a=1"}},
            {"type": "beacon", "webhookEventId": "E3", "source": {"type": "user", "userId": "U1"}}
        ]});
        let p = parse(ChannelProvider::Line, body.to_string().as_bytes(), false).unwrap();
        assert_eq!(p.events.len(), 2);
        assert!(p.events[0].redelivery);
        assert_eq!(p.events[0].reply_token.as_deref(), Some("r1"));
        assert_eq!(p.events[1].conversation, "G1");
        assert_eq!(p.events[1].kind, EventKind::Postback);
        assert_eq!(p.unsupported, vec!["line:beacon".to_string()]);
    }

    #[test]
    fn slack_forms_and_events() {
        let p = parse(
            ChannelProvider::Slack,
            br#"{"type":"url_verification","challenge":"abc"}"#,
            false,
        )
        .unwrap();
        assert_eq!(p.challenge.as_deref(), Some("abc"));
        let body = json!({"type": "event_callback", "event_id": "Ev1",
            "event": {"type": "message", "user": "U1", "channel": "C1", "text": "hi & <b>"}});
        let p = parse(ChannelProvider::Slack, body.to_string().as_bytes(), true).unwrap();
        assert_eq!(p.events[0].external_id, "Ev1");
        assert!(p.events[0].redelivery);
        let bot = json!({"type": "event_callback", "event_id": "Ev2",
            "event": {"type": "message", "bot_id": "B1", "channel": "C1", "text": "loop"}});
        let p = parse(ChannelProvider::Slack, bot.to_string().as_bytes(), false).unwrap();
        assert!(p.events.is_empty());
        let form = "payload=%7B%22type%22%3A%22block_actions%22%2C%22trigger_id%22%3A%22T1%22%2C%22user%22%3A%7B%22id%22%3A%22U1%22%7D%2C%22channel%22%3A%7B%22id%22%3A%22C1%22%7D%2C%22actions%22%3A%5B%7B%22value%22%3A%22approve%22%7D%5D%7D";
        let p = parse(ChannelProvider::Slack, form.as_bytes(), false).unwrap();
        assert_eq!(p.events[0].kind, EventKind::Postback);
        assert_eq!(p.events[0].text.as_deref(), Some("approve"));
        let cmd = "command=%2Fstatus&text=prod+db&trigger_id=T2&user_id=U1&channel_id=C9";
        let p = parse(ChannelProvider::Slack, cmd.as_bytes(), false).unwrap();
        assert_eq!(p.events[0].text.as_deref(), Some("/status prod db"));
        assert_eq!(p.events[0].conversation, "C9");
    }

    #[test]
    fn api_events_are_strict() {
        let p = parse(
            ChannelProvider::Api,
            br#"{"event_id":"e1","conversation":"c1","text":"x"}"#,
            false,
        )
        .unwrap();
        assert_eq!(p.events[0].kind, EventKind::Message);
        let e = parse(
            ChannelProvider::Api,
            br#"{"event_id":"e1","conversation":"c1","extra":1}"#,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelMalformed);
        let e = parse(
            ChannelProvider::Api,
            br#"{"event_id":"","conversation":"c1"}"#,
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::ChannelMalformed);
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_CHARS + 10);
        assert_eq!(cut(&long).chars().count(), MAX_TEXT_CHARS);
    }
}
