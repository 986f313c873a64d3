//! The three provider wire formats: request bodies and incremental stream decoders.
//!
//! * OpenAI Chat Completions (`/v1/chat/completions`, SSE `data:` chunks with `choices[].delta`
//!   text and `tool_calls` fragments by index, a final usage chunk with
//!   `stream_options.include_usage`, then `data: [DONE]`). Also vLLM, LiteLLM and Ollama's
//!   compatible endpoint.
//! * Anthropic Messages (`/v1/messages`, SSE events `message_start` (input usage),
//!   `content_block_start/delta/stop` (text and `tool_use` with `input_json_delta`),
//!   `message_delta` (stop reason, output usage), `message_stop`, `error`).
//! * Ollama native chat (`/api/chat`, NDJSON lines, `done: true` with `prompt_eval_count` and
//!   `eval_count`; tool calls arrive whole, arguments as an object).
//!
//! Decoders are pure: bytes in, state out, so chunk-boundary and garbage cases are unit-tested.
//! A stream that ends before its terminator is truncated (`E-MODEL-004`); tool-call arguments
//! that are not a JSON object are `E-MODEL-005`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use awooop_contracts::ProviderApi;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_core::sse::{SseError, SseParser};

/// One message of the conversation, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    User {
        content: String,
    },
    Assistant {
        content: String,
        #[serde(default)]
        tool_calls: Vec<ModelToolCall>,
    },
    Tool {
        call_id: String,
        name: String,
        content: String,
    },
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// Provider-neutral request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Whether the provider reported the numbers (else they are the platform's estimate).
    pub reported: bool,
}

/// Provider-neutral response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub text: String,
    pub tool_calls: Vec<ModelToolCall>,
    pub usage: Usage,
    pub stop_reason: Option<String>,
}

/// An upper bound of the prompt's tokens: every token covers at least one byte of the
/// serialised request, plus a per-message allowance for role/template tokens. Deliberately
/// pessimistic: the reservation is a worst case, settlement charges the reported usage.
pub fn prompt_token_bound(req: &ChatRequest) -> u64 {
    let bytes = serde_json::to_vec(req).map(|v| v.len()).unwrap_or(0) as u64;
    bytes + 16 * (req.messages.len() as u64 + 2) + 8 * req.tools.len() as u64
}

/// Estimated tokens of streamed text when the provider has not reported usage yet: one per
/// four bytes, rounded up.
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

/// The URL path of each API.
pub fn endpoint(api: ProviderApi, base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    match api {
        ProviderApi::OpenaiChat if base.ends_with("/v1") => format!("{base}/chat/completions"),
        ProviderApi::OpenaiChat => format!("{base}/v1/chat/completions"),
        ProviderApi::AnthropicMessages if base.ends_with("/v1") => format!("{base}/messages"),
        ProviderApi::AnthropicMessages => format!("{base}/v1/messages"),
        ProviderApi::OllamaChat => format!("{base}/api/chat"),
    }
}

/// The streaming request body of `api`.
pub fn request_body(api: ProviderApi, model: &str, max_tokens: u32, req: &ChatRequest) -> Value {
    match api {
        ProviderApi::OpenaiChat => openai_body(model, max_tokens, req, false),
        ProviderApi::OllamaChat => openai_body(model, max_tokens, req, true),
        ProviderApi::AnthropicMessages => anthropic_body(model, max_tokens, req),
    }
}

fn openai_tools(req: &ChatRequest) -> Vec<Value> {
    req.tools
        .iter()
        .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
        .collect()
}

fn openai_body(model: &str, max_tokens: u32, req: &ChatRequest, ollama: bool) -> Value {
    let mut msgs = Vec::new();
    if let Some(s) = &req.system {
        msgs.push(json!({"role": "system", "content": s}));
    }
    for m in &req.messages {
        msgs.push(match m {
            ChatMessage::User { content } => json!({"role": "user", "content": content}),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut v = json!({"role": "assistant", "content": content});
                if !tool_calls.is_empty() {
                    v["tool_calls"] = Value::Array(
                        tool_calls
                            .iter()
                            .map(|c| {
                                if ollama {
                                    json!({"function": {"name": c.name, "arguments": c.arguments}})
                                } else {
                                    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}})
                                }
                            })
                            .collect(),
                    );
                }
                v
            }
            ChatMessage::Tool {
                call_id,
                name,
                content,
            } => {
                if ollama {
                    json!({"role": "tool", "content": content, "tool_name": name})
                } else {
                    json!({"role": "tool", "tool_call_id": call_id, "content": content})
                }
            }
        });
    }
    let mut body = json!({"model": model, "messages": msgs, "stream": true});
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(openai_tools(req));
    }
    if ollama {
        body["options"] = json!({"num_predict": max_tokens});
    } else {
        body["max_tokens"] = json!(max_tokens);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn anthropic_body(model: &str, max_tokens: u32, req: &ChatRequest) -> Value {
    let mut msgs: Vec<Value> = Vec::new();
    for m in &req.messages {
        match m {
            ChatMessage::User { content } => {
                msgs.push(json!({"role": "user", "content": [{"type": "text", "text": content}]}))
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks = Vec::new();
                if !content.is_empty() {
                    blocks.push(json!({"type": "text", "text": content}));
                }
                for c in tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}));
                }
                msgs.push(json!({"role": "assistant", "content": blocks}));
            }
            ChatMessage::Tool {
                call_id, content, ..
            } => {
                let block =
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content});
                // Consecutive tool results travel in one user message (the API requires it).
                match msgs.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"][0]["type"] == "tool_result" =>
                    {
                        last["content"]
                            .as_array_mut()
                            .expect("content array")
                            .push(block);
                    }
                    _ => msgs.push(json!({"role": "user", "content": [block]})),
                }
            }
        }
    }
    let mut body =
        json!({"model": model, "max_tokens": max_tokens, "messages": msgs, "stream": true});
    if let Some(s) = &req.system {
        body["system"] = json!(s);
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect(),
        );
    }
    body
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ModelBadResponse, msg)
}

/// A tool call being assembled from fragments.
#[derive(Debug, Default, Clone)]
struct PartialCall {
    id: String,
    name: String,
    args: String,
    /// Complete arguments (Ollama, or Anthropic's `input` when no deltas follow).
    whole: Option<Value>,
}

/// Incremental decoder of one streamed response.
#[derive(Debug)]
pub struct Decoder {
    api: ProviderApi,
    /// NDJSON (Ollama): the incomplete line.
    buf: Vec<u8>,
    /// SSE (OpenAI, Anthropic): the core's one parser, strict (a line that is not SSE, e.g.
    /// an HTML error page, fails the stream).
    sse: SseParser,
    text: String,
    calls: Vec<PartialCall>,
    /// Anthropic: content block index → call index.
    block_call: Vec<(u64, usize)>,
    usage: Usage,
    stop: Option<String>,
    done: bool,
    streamed_bytes: u64,
}

impl Decoder {
    pub fn new(api: ProviderApi) -> Self {
        Self {
            api,
            buf: Vec::new(),
            sse: SseParser::strict(),
            text: String::new(),
            calls: Vec::new(),
            block_call: Vec::new(),
            usage: Usage::default(),
            stop: None,
            done: false,
            streamed_bytes: 0,
        }
    }

    /// Output tokens so far: the provider's running count when it has sent one, else the
    /// estimate from streamed bytes (whichever is larger).
    pub fn output_tokens_so_far(&self) -> u64 {
        self.usage
            .output_tokens
            .max(estimate_tokens(self.streamed_bytes))
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed bytes as they arrive.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        if self.api != ProviderApi::OllamaChat {
            return self.feed_sse(chunk);
        }
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = std::str::from_utf8(&line)
                .map_err(|_| bad("stream is not UTF-8"))?
                .trim_end_matches(['\n', '\r'])
                .to_string();
            self.line(&line)?;
        }
        if self.buf.len() > 4 * 1024 * 1024 {
            return Err(bad("stream line longer than 4 MiB"));
        }
        Ok(())
    }

    /// SSE framing (CRLF, LF or lone CR line ends) comes from the core's parser; an event
    /// with empty data carries nothing.
    fn feed_sse(&mut self, chunk: &[u8]) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let events = self.sse.try_push(chunk).map_err(|e| match e {
            SseError::NotUtf8 => bad("stream is not UTF-8"),
            SseError::NotEventStream => bad("stream line is not server-sent events"),
        })?;
        for ev in events {
            if self.done {
                break;
            }
            if !ev.data.is_empty() {
                self.sse_event(&ev.data)?;
            }
        }
        if self.sse.partial_line() > 4 * 1024 * 1024 {
            return Err(bad("stream line longer than 4 MiB"));
        }
        Ok(())
    }

    /// One NDJSON line (Ollama).
    fn line(&mut self, line: &str) -> Result<()> {
        if self.done || line.trim().is_empty() {
            return Ok(());
        }
        let v: Value =
            serde_json::from_str(line).map_err(|_| bad("NDJSON line is not valid JSON"))?;
        self.ollama(&v)
    }

    fn sse_event(&mut self, data: &str) -> Result<()> {
        if self.api == ProviderApi::OpenaiChat && data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value =
            serde_json::from_str(data).map_err(|_| bad("stream event is not valid JSON"))?;
        if let Some(e) = v.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("provider error");
            return Err(bad(format!(
                "provider reported an error in the stream: {}",
                truncate(msg, 200)
            )));
        }
        match self.api {
            ProviderApi::OpenaiChat => self.openai(&v),
            _ => self.anthropic(&v),
        }
    }

    fn openai(&mut self, v: &Value) -> Result<()> {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            self.usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            self.usage.reported = true;
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return if v.get("usage").is_some() {
                Ok(())
            } else {
                Err(bad("chunk without choices"))
            };
        };
        for c in choices {
            let d = &c["delta"];
            if let Some(t) = d.get("content").and_then(Value::as_str) {
                self.text.push_str(t);
                self.streamed_bytes += t.len() as u64;
            }
            if let Some(tcs) = d.get("tool_calls").and_then(Value::as_array) {
                for tc in tcs {
                    let idx = tc["index"].as_u64().unwrap_or(0) as usize;
                    if idx > 128 {
                        return Err(Error::new(
                            ErrorCode::ModelBadToolCall,
                            "tool call index out of range",
                        ));
                    }
                    while self.calls.len() <= idx {
                        self.calls.push(PartialCall::default());
                    }
                    let p = &mut self.calls[idx];
                    if let Some(id) = tc.get("id").and_then(Value::as_str) {
                        p.id = id.to_string();
                    }
                    if let Some(n) = tc["function"].get("name").and_then(Value::as_str) {
                        p.name.push_str(n);
                    }
                    if let Some(a) = tc["function"].get("arguments").and_then(Value::as_str) {
                        p.args.push_str(a);
                        self.streamed_bytes += a.len() as u64;
                    }
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                self.stop = Some(f.to_string());
            }
        }
        Ok(())
    }

    fn anthropic(&mut self, v: &Value) -> Result<()> {
        match v["type"].as_str().unwrap_or_default() {
            "message_start" => {
                let u = &v["message"]["usage"];
                self.usage.input_tokens = u["input_tokens"].as_u64().unwrap_or(0);
                self.usage.output_tokens = u["output_tokens"].as_u64().unwrap_or(0);
            }
            "content_block_start" => {
                let b = &v["content_block"];
                if b["type"] == "tool_use" {
                    self.calls.push(PartialCall {
                        id: b["id"].as_str().unwrap_or_default().to_string(),
                        name: b["name"].as_str().unwrap_or_default().to_string(),
                        args: String::new(),
                        whole: b.get("input").cloned(),
                    });
                    self.block_call
                        .push((v["index"].as_u64().unwrap_or(0), self.calls.len() - 1));
                } else if let Some(t) = b.get("text").and_then(Value::as_str) {
                    self.text.push_str(t);
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str().unwrap_or_default() {
                    "text_delta" => {
                        let t = d["text"].as_str().unwrap_or_default();
                        self.text.push_str(t);
                        self.streamed_bytes += t.len() as u64;
                    }
                    "input_json_delta" => {
                        let idx = v["index"].as_u64().unwrap_or(0);
                        let Some((_, ci)) = self.block_call.iter().find(|(b, _)| *b == idx) else {
                            return Err(Error::new(
                                ErrorCode::ModelBadToolCall,
                                "tool input delta for a block that is not a tool_use",
                            ));
                        };
                        let part = d["partial_json"].as_str().unwrap_or_default();
                        self.calls[*ci].args.push_str(part);
                        self.streamed_bytes += part.len() as u64;
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(s) = v["delta"].get("stop_reason").and_then(Value::as_str) {
                    self.stop = Some(s.to_string());
                }
                if let Some(o) = v["usage"].get("output_tokens").and_then(Value::as_u64) {
                    self.usage.output_tokens = o;
                    self.usage.reported = true;
                }
            }
            "message_stop" => self.done = true,
            "content_block_stop" | "ping" => {}
            _ => {}
        }
        Ok(())
    }

    fn ollama(&mut self, v: &Value) -> Result<()> {
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(bad(format!(
                "provider reported an error: {}",
                truncate(e, 200)
            )));
        }
        let done = v.get("done") == Some(&Value::Bool(true));
        match v.get("message") {
            Some(m) => {
                if let Some(t) = m.get("content").and_then(Value::as_str) {
                    self.text.push_str(t);
                    self.streamed_bytes += t.len() as u64;
                }
                if let Some(tcs) = m.get("tool_calls").and_then(Value::as_array) {
                    for tc in tcs {
                        let f = &tc["function"];
                        let args = f.get("arguments").cloned().unwrap_or(Value::Null);
                        self.streamed_bytes += args.to_string().len() as u64;
                        self.calls.push(PartialCall {
                            id: format!("call_{}", self.calls.len()),
                            name: f["name"].as_str().unwrap_or_default().to_string(),
                            args: String::new(),
                            whole: Some(args),
                        });
                    }
                }
            }
            None if done => {}
            None => return Err(bad("NDJSON line without message")),
        }
        if done {
            self.usage.input_tokens = v["prompt_eval_count"].as_u64().unwrap_or(0);
            self.usage.output_tokens = v["eval_count"].as_u64().unwrap_or(0);
            self.usage.reported =
                v.get("prompt_eval_count").is_some() || v.get("eval_count").is_some();
            self.stop = v["done_reason"].as_str().map(str::to_string);
            self.done = true;
        }
        Ok(())
    }

    /// The complete response; errors when the stream ended early or a tool call is malformed.
    pub fn finish(mut self) -> Result<ChatResponse> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8(rest).map_err(|_| bad("stream is not UTF-8"))?;
            self.line(line.trim_end())?;
        }
        // An SSE stream cut after its last line but before the blank line: the event read
        // so far still counts (as before the parser was shared).
        if self.sse.partial_line() > 0 {
            self.feed_sse(b"\n\n")?;
        }
        if !self.done {
            return Err(bad("stream ended before its terminator (truncated)"));
        }
        let mut tool_calls = Vec::new();
        for (i, p) in self.calls.into_iter().enumerate() {
            if p.name.is_empty() {
                return Err(Error::new(
                    ErrorCode::ModelBadToolCall,
                    "tool call without a name",
                ));
            }
            let args = if !p.args.trim().is_empty() {
                serde_json::from_str::<Value>(&p.args).map_err(|_| {
                    Error::new(
                        ErrorCode::ModelBadToolCall,
                        "tool call arguments are not valid JSON",
                    )
                })?
            } else {
                p.whole.unwrap_or_else(|| Value::Object(Map::new()))
            };
            if !args.is_object() {
                return Err(Error::new(
                    ErrorCode::ModelBadToolCall,
                    "tool call arguments are not a JSON object",
                ));
            }
            tool_calls.push(ModelToolCall {
                id: if p.id.is_empty() {
                    format!("call_{i}")
                } else {
                    p.id
                },
                name: p.name,
                arguments: args,
            });
        }
        let mut usage = self.usage;
        if !usage.reported {
            usage.output_tokens = usage
                .output_tokens
                .max(estimate_tokens(self.streamed_bytes));
        }
        Ok(ChatResponse {
            text: self.text,
            tool_calls,
            usage,
            stop_reason: self.stop,
        })
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(api: ProviderApi, stream: &str, chunk: usize) -> Result<ChatResponse> {
        let mut d = Decoder::new(api);
        for c in stream.as_bytes().chunks(chunk) {
            d.feed(c)?;
        }
        d.finish()
    }

    const OPENAI: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"k8s__get_pods\",\"arguments\":\"{\\\"ns\\\":\"}}]}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"prod\\\"}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"k8s__get_pods\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"ns\\\": \\\"pr\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"od\\\"}\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    const OLLAMA: &str = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n\
{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"lo\",\"tool_calls\":[{\"function\":{\"name\":\"k8s__get_pods\",\"arguments\":{\"ns\":\"prod\"}}}]},\"done\":false}\n\
{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":30,\"eval_count\":5}\n";

    #[test]
    fn decodes_each_format_at_any_chunk_boundary() {
        for (api, s, usage) in [
            (ProviderApi::OpenaiChat, OPENAI, (12, 7)),
            (ProviderApi::AnthropicMessages, ANTHROPIC, (20, 9)),
            (ProviderApi::OllamaChat, OLLAMA, (30, 5)),
        ] {
            for chunk in [1, 3, 7, 64, 100_000] {
                let r = decode(api, s, chunk).unwrap_or_else(|e| panic!("{api:?}/{chunk}: {e}"));
                assert_eq!(r.text, "Hello", "{api:?}/{chunk}");
                assert_eq!(r.tool_calls.len(), 1, "{api:?}");
                assert_eq!(r.tool_calls[0].name, "k8s__get_pods");
                assert_eq!(r.tool_calls[0].arguments, json!({"ns": "prod"}));
                assert_eq!((r.usage.input_tokens, r.usage.output_tokens), usage);
                assert!(r.usage.reported);
            }
        }
    }

    /// Providers may end SSE lines with CRLF or a lone CR (the SSE spec allows both); the
    /// decoder's old LF-only splitter read a CR-only stream as one endless line.
    #[test]
    fn sse_streams_with_cr_and_crlf_line_ends_decode() {
        for (api, s) in [
            (ProviderApi::OpenaiChat, OPENAI),
            (ProviderApi::AnthropicMessages, ANTHROPIC),
        ] {
            for ending in ["\r\n", "\r"] {
                let stream = s.replace('\n', ending);
                for chunk in [1, 2, 5, 100_000] {
                    let r = decode(api, &stream, chunk)
                        .unwrap_or_else(|e| panic!("{api:?} {ending:?}/{chunk}: {e}"));
                    assert_eq!(r.text, "Hello", "{api:?} {ending:?}/{chunk}");
                    assert_eq!(r.tool_calls[0].arguments, json!({"ns": "prod"}));
                }
            }
        }
    }

    #[test]
    fn bad_streams_have_clear_codes() {
        let cut = |s: &str| s[..s.len() / 2].to_string();
        let cases: Vec<(ProviderApi, String, &str)> = vec![
            (ProviderApi::OpenaiChat, cut(OPENAI), "E-MODEL-004"),
            (ProviderApi::AnthropicMessages, cut(ANTHROPIC), "E-MODEL-004"),
            (ProviderApi::OllamaChat, cut(OLLAMA), "E-MODEL-004"),
            (ProviderApi::OpenaiChat, "<html>502 Bad Gateway</html>\n".into(), "E-MODEL-004"),
            (ProviderApi::OllamaChat, "not json\n".into(), "E-MODEL-004"),
            (ProviderApi::AnthropicMessages, "data: {oops\n\n".into(), "E-MODEL-004"),
            (
                ProviderApi::AnthropicMessages,
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into(),
                "E-MODEL-004",
            ),
            (
                ProviderApi::OpenaiChat,
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"t__x\",\"arguments\":\"{not json\"}}]}}]}\n\ndata: [DONE]\n\n".into(),
                "E-MODEL-005",
            ),
            (
                ProviderApi::OpenaiChat,
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"t__x\",\"arguments\":\"[1,2]\"}}]}}]}\n\ndata: [DONE]\n\n".into(),
                "E-MODEL-005",
            ),
            (
                ProviderApi::OllamaChat,
                "{\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"t__x\",\"arguments\":\"str\"}}]},\"done\":true}\n".into(),
                "E-MODEL-005",
            ),
        ];
        for (api, s, code) in cases {
            let e = decode(api, &s, 5).expect_err(&s);
            assert_eq!(e.code.as_str(), code, "{api:?}: {s}");
        }
    }

    #[test]
    fn request_bodies() {
        let req = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![
                ChatMessage::User {
                    content: "hi".into(),
                },
                ChatMessage::Assistant {
                    content: String::new(),
                    tool_calls: vec![ModelToolCall {
                        id: "c1".into(),
                        name: "k8s__get_pods".into(),
                        arguments: json!({"ns": "a"}),
                    }],
                },
                ChatMessage::Tool {
                    call_id: "c1".into(),
                    name: "k8s__get_pods".into(),
                    content: "3".into(),
                },
            ],
            tools: vec![ToolSpec {
                name: "k8s__get_pods".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
        };
        let o = request_body(ProviderApi::OpenaiChat, "m", 100, &req);
        assert_eq!(o["messages"][0]["role"], "system");
        assert_eq!(
            o["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"ns\":\"a\"}"
        );
        assert_eq!(o["messages"][3]["tool_call_id"], "c1");
        assert_eq!(o["stream_options"]["include_usage"], true);
        let a = request_body(ProviderApi::AnthropicMessages, "m", 100, &req);
        assert_eq!(a["system"], "be brief");
        assert_eq!(a["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(a["messages"][2]["content"][0]["tool_use_id"], "c1");
        assert_eq!(a["tools"][0]["input_schema"]["type"], "object");
        let l = request_body(ProviderApi::OllamaChat, "m", 100, &req);
        assert_eq!(l["options"]["num_predict"], 100);
        assert_eq!(
            l["messages"][2]["tool_calls"][0]["function"]["arguments"]["ns"],
            "a"
        );
        assert!(prompt_token_bound(&req) > serde_json::to_vec(&req).unwrap().len() as u64);
        assert_eq!(
            endpoint(ProviderApi::OpenaiChat, "http://x/v1/"),
            "http://x/v1/chat/completions"
        );
        assert_eq!(
            endpoint(ProviderApi::AnthropicMessages, "http://x"),
            "http://x/v1/messages"
        );
        assert_eq!(
            endpoint(ProviderApi::OllamaChat, "http://x"),
            "http://x/api/chat"
        );
    }
}
