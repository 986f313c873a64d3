//! Layer-1 redaction and truncation of tool results, before anything reaches a model.
//!
//! Contract: [`sanitize_result`] keeps only the MCP `CallToolResult` fields a client needs
//! (`content`, `structuredContent`, `isError`; upstream `_meta` and unknown fields are
//! dropped), then removes the exact values of every credential used in the call (raw or
//! encoded, also split across text items, via [`ExactSecrets`]) and everything the audit sink's patterns match,
//! in every string and object key at any depth, and only then truncates (so a cut can never
//! leave half a secret behind). No credential value survives a marker either: a marker can
//! spell one with the text around it (`Pq7!` + `[REDACTED:email]` is the value `Pq7![`), so
//! the credential search runs again over what the patterns or the truncation changed, and it
//! searches its own output until it finds nothing (`ExactSecrets::redact_str`). Text is truncated on character boundaries to the tool's limit
//! (16,384 characters by default) across all text items, with a marker saying how much was
//! cut; a `structuredContent` larger than the limit is replaced by a marker.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use awooop_core::redact::{ExactSecrets, Redactor};

/// A sanitized tool result and what was done to it.
#[derive(Debug, Clone)]
pub struct Sanitized {
    pub result: Value,
    pub is_error: bool,
    /// Characters removed by truncation.
    pub truncated_chars: usize,
}

/// Redact a string with the exact values first, then the patterns; a string the patterns
/// changed is searched for the values once more, because a pattern's marker can complete one
/// with the text around it (`Pq7!` + `ops@example.com` → `Pq7![REDACTED:email]` spells the
/// value `Pq7![`). The result holds no value either way (`ExactSecrets::redact_str` searches
/// its own output until it finds none).
pub fn redact_text(s: &str, exact: &ExactSecrets) -> String {
    let once = exact.redact_str(s);
    match Redactor::global().redact_str(&once) {
        Cow::Borrowed(_) => once.into_owned(),
        Cow::Owned(twice) => exact.redact_str(&twice).into_owned(),
    }
}

/// Redact JSON in place with the exact values first, then the patterns, then (only when the
/// patterns replaced something) the exact values again: see [`redact_text`].
pub fn redact_json(v: &mut Value, exact: &ExactSecrets) {
    exact.redact_json(v);
    if Redactor::global().redact_json(v) > 0 {
        exact.redact_json(v);
    }
}

/// The `text` strings of a result's content items, in order.
fn text_items(content: &mut Value) -> Vec<&mut String> {
    match content {
        Value::Array(items) => items
            .iter_mut()
            .filter_map(|item| match item.get_mut("text") {
                Some(Value::String(t)) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Cut `s` to at most `max` characters (UTF-8 safe). Returns the number of characters cut.
pub fn truncate_chars(s: &mut String, max: usize) -> usize {
    match s.char_indices().nth(max) {
        None => 0,
        Some((byte, _)) => {
            let cut = s[byte..].chars().count();
            s.truncate(byte);
            cut
        }
    }
}

pub fn marker(cut: usize, total: usize) -> String {
    format!("\n[truncated by the AwoooP gateway: {cut} of {total} characters removed]")
}

pub fn sanitize_result(raw: Value, exact: &ExactSecrets, max_chars: usize) -> Sanitized {
    let mut raw = match raw {
        Value::Object(m) => m,
        other => {
            // Not a CallToolResult: present it as text so nothing unchecked slips through.
            let mut m = Map::new();
            m.insert(
                "content".into(),
                json!([{"type": "text", "text": other.to_string()}]),
            );
            m
        }
    };
    let is_error = raw.get("isError").and_then(Value::as_bool).unwrap_or(false);
    let mut content = match raw.remove("content") {
        Some(Value::Array(a)) => Value::Array(a),
        _ => Value::Array(vec![]),
    };
    let mut structured = raw.remove("structuredContent");
    redact_json(&mut content, exact);
    // A value split across text items ("sk-ab" + "cdef…") is found in their concatenation. One
    // text item is its own concatenation, and `redact_json` left no value in it.
    if text_items(&mut content).len() > 1 {
        exact.redact_joined(&mut text_items(&mut content));
    }
    if let Some(s) = structured.as_mut() {
        redact_json(s, exact);
    }
    // Truncation: one character budget across the text items, in order.
    let mut budget = max_chars;
    let mut truncated_chars = 0;
    if let Value::Array(items) = &mut content {
        for item in items.iter_mut() {
            if let Some(Value::String(text)) = item.get_mut("text") {
                let total = text.chars().count();
                // A text of at most `budget` bytes has at most `budget` characters: nothing to
                // cut, and no walk through its characters to find where a cut would go.
                if text.len() <= budget {
                    budget -= total;
                    continue;
                }
                let cut = truncate_chars(text, budget);
                budget -= total - cut;
                if cut > 0 {
                    text.push_str(&marker(cut, total));
                    truncated_chars += cut;
                }
            }
        }
    }
    if let Some(s) = &structured {
        let text = s.to_string();
        let total = text.chars().count();
        if total > max_chars {
            truncated_chars += total;
            structured = None;
            if let Value::Array(items) = &mut content {
                items.push(json!({"type": "text", "text": format!(
                    "[structuredContent removed by the AwoooP gateway: {total} characters exceed the limit of {max_chars}]"
                )}));
            }
        }
    }
    // The truncation's markers are text too, and can complete a value with the text in front
    // of them (a cut text ending in `abcd`, the value `abcd\n[tr`): searched once more, only
    // when something was cut.
    if truncated_chars > 0 {
        exact.redact_joined(&mut text_items(&mut content));
    }
    let mut out = Map::new();
    out.insert("content".into(), content);
    if let Some(s) = structured {
        out.insert("structuredContent".into(), s);
    }
    out.insert("isError".into(), Value::Bool(is_error));
    Sanitized {
        result: Value::Object(out),
        is_error,
        truncated_chars,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &str = "s3cr3t-V4lue/with+chars=";

    fn exact() -> ExactSecrets {
        ExactSecrets::new([SECRET])
    }

    fn all_text(v: &Value) -> String {
        v.to_string()
    }

    #[test]
    fn exact_values_and_encodings_are_removed_everywhere() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let url = "s3cr3t-V4lue%2Fwith%2Bchars%3D";
        let raw = json!({
            "content": [
                {"type": "text", "text": format!("token is {SECRET}")},
                {"type": "text", "text": format!("b64 {b64} url {url}")}
            ],
            "structuredContent": {"nested": {"deeper": [SECRET, {"k": format!("x{SECRET}x")}]}, SECRET: 1},
            "isError": false,
            "_meta": {"upstream": "internal config"}
        });
        let s = sanitize_result(raw, &exact(), 16_384);
        let text = all_text(&s.result);
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(&b64), "{text}");
        assert!(!text.contains(url), "{text}");
        assert!(text.contains("[REDACTED:credential]"));
        assert!(s.result.get("_meta").is_none());
        assert_eq!(s.truncated_chars, 0);
    }

    #[test]
    fn patterns_apply_too() {
        let raw = json!({"content": [{"type": "text", "text": "key sk-ant-abcdefghijklmnopqrstuvwxyz012345 and password=hunter2"}]});
        let s = sanitize_result(raw, &ExactSecrets::new(Vec::<String>::new()), 16_384);
        let text = all_text(&s.result);
        assert!(!text.contains("sk-ant-abcdef"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn truncation_is_utf8_safe_and_marked() {
        let long: String = "é漢🙂a".repeat(10_000); // 40,000 characters, multi-byte
        let raw =
            json!({"content": [{"type": "text", "text": long}, {"type": "text", "text": "tail"}]});
        let s = sanitize_result(raw, &exact(), 16_384);
        let first = s.result["content"][0]["text"].as_str().unwrap();
        assert!(first.starts_with("é漢🙂a"));
        assert!(
            first.contains("23616 of 40000 characters removed"),
            "{}",
            &first[first.len() - 100..]
        );
        // the budget is spent: the second item is cut entirely
        let second = s.result["content"][1]["text"].as_str().unwrap();
        assert!(second.contains("4 of 4 characters removed"));
        assert_eq!(s.truncated_chars, 23_616 + 4);
        // a secret straddling the cut is redacted before the cut, so no prefix of it survives
        let text = format!("{}{SECRET}", "a".repeat(16_380));
        let s = sanitize_result(
            json!({"content": [{"type": "text", "text": text}]}),
            &exact(),
            16_384,
        );
        assert!(!all_text(&s.result).contains("s3cr"));
    }

    /// Around the byte-length shortcut: texts that fit in bytes, fit only in characters, or
    /// do not fit, spend the one budget in order.
    #[test]
    fn truncation_budget_at_its_edges() {
        let items = |texts: &[String]| json!({"content": texts.iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>()});
        // 10 ASCII bytes, then 10 two-byte characters (20 bytes), then 5 more: limit 20.
        let texts = ["a".repeat(10), "é".repeat(10), "b".repeat(5)];
        let s = sanitize_result(items(&texts), &exact(), 20);
        assert_eq!(s.result["content"][0]["text"], "a".repeat(10));
        assert_eq!(s.result["content"][1]["text"], "é".repeat(10));
        let third = s.result["content"][2]["text"].as_str().unwrap();
        assert!(third.contains("5 of 5 characters removed"), "{third}");
        assert_eq!(s.truncated_chars, 5);
        // exactly at the limit: nothing cut
        let s = sanitize_result(items(&["c".repeat(20)]), &exact(), 20);
        assert_eq!(s.truncated_chars, 0);
        assert_eq!(s.result["content"][0]["text"], "c".repeat(20));
        let s = sanitize_result(items(&["c".repeat(21)]), &exact(), 20);
        assert_eq!(s.truncated_chars, 1);
    }

    #[test]
    fn oversized_structured_content_is_replaced_and_non_results_become_text() {
        let big = json!({"rows": vec!["x".repeat(100); 400]});
        let s = sanitize_result(
            json!({"content": [], "structuredContent": big, "isError": true}),
            &exact(),
            1_000,
        );
        assert!(s.result.get("structuredContent").is_none());
        assert!(s.is_error);
        assert!(
            s.result["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("structuredContent removed")
        );
        let s = sanitize_result(json!(["weird", SECRET]), &exact(), 1_000);
        assert!(!all_text(&s.result).contains(SECRET));
        let mut t = String::from("abc");
        assert_eq!(truncate_chars(&mut t, 5), 0);
        assert_eq!(truncate_chars(&mut t, 1), 2);
        assert_eq!(t, "a");
    }

    /// What the patterns or the truncation put into a text can complete a credential value
    /// with the text around it: `Pq7!` + `ops@example.com` becomes `Pq7![REDACTED:email]`,
    /// which spells the value `Pq7![`; a cut text ends in front of `\n[truncated…`. Wherever
    /// that happens (a text item, another string of the content, `structuredContent`), the
    /// value is searched for again and removed.
    #[test]
    fn values_completed_by_markers_do_not_survive() {
        let value = "Pq7![";
        let e = ExactSecrets::new([value]);
        let planted = "Pq7!ops@example.com and Pq7!Pq7!Pq7![ end";
        let raw = json!({
            "content": [
                {"type": "text", "text": planted},
                {"type": "resource", "resource": {"uri": "mem://x", "text": planted}}
            ],
            "structuredContent": {"note": planted, "list": [planted]},
        });
        let s = sanitize_result(raw, &e, 16_384);
        let text = all_text(&s.result);
        assert!(!text.contains(value), "{text}");
        // A single text item, and two.
        for items in [vec![planted], vec!["Pq7!Pq7!", "Pq7![ tail"]] {
            let raw = json!({"content": items.iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>()});
            let s = sanitize_result(raw, &e, 16_384);
            let text: String = s.result["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["text"].as_str().unwrap_or_default())
                .collect();
            assert!(!text.contains(value), "{items:?}: {text}");
        }
        // The truncation marker: the value `abcd\n[tr` is the cut text's end and the marker's
        // start.
        let value = "abcd\n[tr";
        let e = ExactSecrets::new([value]);
        let raw =
            json!({"content": [{"type": "text", "text": format!("xxxxxxabcd{}", "y".repeat(50))}]});
        let s = sanitize_result(raw, &e, 10);
        let text = all_text(&s.result);
        assert!(s.truncated_chars > 0);
        assert!(
            !s.result["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains(value),
            "{text}"
        );
    }
}
