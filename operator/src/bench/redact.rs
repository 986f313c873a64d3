//! `awooop bench redact`: the redaction engine (`Redactor::redact_str`, the pattern rules every
//! tool result, audit detail and log line goes through) on 1 KiB texts, in process, no
//! database. Texts: the gateway benchmark's `blob` (one repeated byte), log lines with numbers,
//! paths and an IP and no secret, and the same log lines with an e-mail address at the end or
//! at the start (what a search that stops at the first match, or scans on after it, pays),
//! and an order log in Traditional Chinese, clean and with an e-mail address written right
//! after the Chinese (the rules must scan non-ASCII text on the regex engine's fast path and
//! find a value with no space before it). The clean texts again at 16 KiB (`_16k`: the
//! gateway benchmark's larger result). Last line: `<text>_us=` per redaction, then
//! `slowest_rule_16k_us` and `slowest_rule`: each rule searched alone over the 16 KiB log
//! text, the slowest of them (the rules without a literal the search can skip to are scanned
//! byte by byte by the regex engine's DFA, and the union of all rules, which `redact_str`
//! searches first, costs one such scan: docs/benchmarks.md, "Session 26"), then `exact_us` and
//! `exact_16k_us`: the credential search (`ExactSecrets::find_ranges`, one injected value) over
//! the log text, then `result_json_16k_serde_us` and `result_json_16k_us`: a 16 KiB tool result
//! written as JSON text by `serde_json` and by `awooop_core::json_text` (what the gateway
//! uses).

use std::hint::black_box;
use std::time::Instant;

use awooop_core::redact::{ExactSecrets, Redactor};

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

/// Microseconds per call of `f`, over `n` calls after `n / 20` to warm up.
fn time<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    for _ in 0..n / 20 {
        black_box(f());
    }
    let t = Instant::now();
    for _ in 0..n {
        black_box(f());
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
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
        ("blob_16k", "x".repeat(16 * 1024)),
        ("log_16k", log(16 * 1024)),
        ("cjk_16k", repeat(CJK, 16 * 1024)),
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
        // The same bytes per text: 16 KiB texts are redacted a sixteenth as often.
        let n = (iters * 1024 / text.len()).max(100);
        let us = time(n, || r.redact_str(black_box(text)));
        eprintln!("{name}: {us:.2} µs per redaction of {} bytes", text.len());
        fields.push(format!("{name}_us={us:.2}"));
    }
    // Each rule alone over 16 KiB of log lines: a rule with a literal to skip to costs well
    // under a microsecond; one without is scanned byte by byte, and that scan is what the
    // union costs (clean text gets one search of the union and nothing else).
    let text = log(16 * 1024);
    let mut slowest = ("none", 0.0f64);
    for (class, pattern) in Redactor::rules() {
        let re = regex::Regex::new(pattern)?;
        let us = time((iters / 16).max(100), || {
            re.find(black_box(&text)).map(|m| m.start())
        });
        eprintln!("rule {:<16} {us:8.2} µs per 16 KiB", class.marker());
        if us > slowest.1 {
            slowest = (class.marker(), us);
        }
    }
    fields.push(format!("slowest_rule_16k_us={:.2}", slowest.1));
    fields.push(format!("slowest_rule={}", slowest.0));
    // The credential search of every tool result: one injected value, clean log text.
    let exact = ExactSecrets::new(["bench-upstream-secret-7f3a9c"]);
    for (name, text) in [("exact", log(1024)), ("exact_16k", log(16 * 1024))] {
        anyhow::ensure!(exact.find_ranges(&text).is_empty(), "{name}: a false match");
        let n = (iters * 1024 / text.len()).max(100);
        let us = time(n, || exact.find_ranges(black_box(&text)));
        eprintln!(
            "{name}: {us:.2} µs per credential search of {} bytes",
            text.len()
        );
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
        let us = time(iters / 4, || write(black_box(&result)));
        eprintln!("{name}: {us:.2} µs per 16 KiB result");
        fields.push(format!("{name}_us={us:.2}"));
    }
    println!("{}", fields.join(" "));
    Ok(())
}
