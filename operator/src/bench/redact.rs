//! `awooop bench redact`: the redaction engine (`Redactor::redact_str`, the pattern rules every
//! tool result, audit detail and log line goes through) on 1 KiB texts, in process, no
//! database. Texts: the gateway benchmark's `blob` (one repeated byte), log lines with numbers,
//! paths and an IP and no secret, and the same log lines with an e-mail address at the end or
//! at the start (what a search that stops at the first match, or scans on after it, pays),
//! and an order log in Traditional Chinese, clean and with an e-mail address written right
//! after the Chinese (the rules must scan non-ASCII text on the regex engine's fast path and
//! find a value with no space before it). Last line: `<text>_us=` per redaction, then
//! `result_json_16k_serde_us` and `result_json_16k_us`: a 16 KiB tool result written as JSON
//! text by `serde_json` and by `awooop_core::json_text` (what the gateway uses).

use std::hint::black_box;
use std::time::Instant;

use awooop_core::redact::Redactor;

use crate::config::BenchArgs;

const LOG: &str = "2026-11-29T11:21:37Z INFO pod api-7f9c4d-x2 restarted 3 times, node ip-10-0-3-17, latency p99=231ms, status=200 path=/v1/orders?limit=50 user_id=48213 ";

/// An order log in Traditional Chinese (what EwoooC's tools return): no secret.
const CJK: &str = "訂單 48213 已出貨，商品：無線藍牙耳機（黑色）數量 2，金額 NT$1,990，配送至台北市信義區，預計 11/30 送達。";

/// `len` bytes of `line` repeated, cut on a character boundary.
fn repeat(line: &str, len: usize) -> String {
    let s = line.repeat(len / line.len() + 1);
    let mut end = len;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// `len` bytes of log lines.
fn log(len: usize) -> String {
    repeat(LOG, len)
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let iters = if args.quick { 20_000 } else { 200_000 };
    let texts = [
        ("blob", "x".repeat(1024)),
        ("log", log(1024)),
        ("log_match_end", format!("{} ops@example.com", log(1008))),
        ("log_match_start", format!("ops@example.com {}", log(1008))),
        ("cjk", repeat(CJK, 1024)),
        (
            "cjk_match_end",
            format!("{}聯絡信箱ops@example.com", repeat(CJK, 992)),
        ),
    ];
    let r = Redactor::global();
    let mut fields = Vec::new();
    for (name, text) in &texts {
        let changed = matches!(r.redact_str(text), std::borrow::Cow::Owned(_));
        anyhow::ensure!(
            changed == name.contains("match"),
            "{name}: expected {} redaction",
            if changed { "no" } else { "a" }
        );
        for _ in 0..iters / 20 {
            black_box(r.redact_str(black_box(text)));
        }
        let t = Instant::now();
        for _ in 0..iters {
            black_box(r.redact_str(black_box(text)));
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        eprintln!("{name}: {us:.2} µs per redaction of {} bytes", text.len());
        fields.push(format!("{name}_us={us:.2}"));
    }
    // The sanitized result's JSON text (the `/mcp` answer), 16 KiB of text: serde_json's
    // per-byte escaping against `json_text`'s block-at-a-time one (the same bytes: checked).
    let result = serde_json::json!({"content": [{"type": "text", "text": log(16 * 1024)}], "isError": false});
    anyhow::ensure!(
        awooop_core::json_text::to_string(&result) == serde_json::to_string(&result)?,
        "json_text and serde_json disagree"
    );
    type Writer = fn(&serde_json::Value) -> String;
    let writers: [(&str, Writer); 2] = [
        ("result_json_16k_serde", |v| {
            serde_json::to_string(v).unwrap_or_default()
        }),
        ("result_json_16k", awooop_core::json_text::to_string),
    ];
    for (name, write) in writers {
        let n = iters / 4;
        for _ in 0..n / 20 {
            black_box(write(black_box(&result)));
        }
        let t = Instant::now();
        for _ in 0..n {
            black_box(write(black_box(&result)));
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        eprintln!("{name}: {us:.2} µs per 16 KiB result");
        fields.push(format!("{name}_us={us:.2}"));
    }
    println!("{}", fields.join(" "));
    Ok(())
}
