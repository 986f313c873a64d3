//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` (libFuzzer, nightly) and by
//! a stable, seeded random harness in this module's tests (so CI without nightly still runs
//! them on thousands of generated inputs). Each function panics when a property is violated.
//!
//! * [`redactor`]: the pattern redactor is idempotent and never panics; exact-value
//!   redaction leaves no trace of a credential embedded raw, in any supported encoding (mixed
//!   per character) or split across strings.
//! * [`request_parsing`]: the JSON-RPC parser, the JSON body extractor and its U+0000 guard,
//!   the Content-Type and URI guards and every credential parser at the HTTP boundary (run
//!   tokens, session ids, approval tokens, API keys) never panic on arbitrary bytes, and a body
//!   the extractor accepts never carries U+0000 into PostgreSQL.

use base64::Engine;
use serde_json::Value;

use awooop_core::redact::{ExactSecrets, Redactor};

const MARKER: &str = "[REDACTED:credential]";

/// Encode `secret` with a per-character choice of encodings driven by `choice`.
pub fn encode_mixed(secret: &str, choice: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in secret.chars().enumerate() {
        let pick = choice.get(i % choice.len().max(1)).copied().unwrap_or(0);
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes().to_vec();
        match pick % 7 {
            0 => out.push(c),
            1 => bytes
                .iter()
                .for_each(|b| out.push_str(&format!("%{b:02x}"))),
            2 => bytes
                .iter()
                .for_each(|b| out.push_str(&format!("%{b:02X}"))),
            3 if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            4 => out.push_str(&format!("&#{};", c as u32)),
            5 => out.push_str(&format!("&#x{:X};", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// Whole-value encodings.
fn encode_whole(secret: &str, how: u8, prefix: &str) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    match how % 4 {
        0 => hex::encode(secret),
        1 => hex::encode(secret).to_uppercase(),
        2 => STANDARD.encode(format!("{prefix}{secret}")),
        _ => URL_SAFE_NO_PAD.encode(format!("{prefix}{secret}!")),
    }
}

/// A credential the properties hold for: long enough, and free of the escape introducers `%`,
/// `\` and `&` (a value that contains them, encoded only in part, can decode ambiguously: `%41`
/// is both three literal characters and `A`; this limit is documented in docs/security.md).
/// Brackets are allowed: a value that the marker `[REDACTED:…]` completes with the text around
/// it is removed too (`ExactSecrets::redact_str` searches its output again).
fn usable_secret(s: &str) -> bool {
    s.chars().count() >= 8
        && !s
            .chars()
            .any(|c| c.is_control() || matches!(c, '%' | '\\' | '&'))
}

fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// Redactor properties on one input.
pub fn redactor(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Patterns: never panic, idempotent.
    let once = Redactor::global().redact_str(&text).into_owned();
    let twice = Redactor::global().redact_str(&once).into_owned();
    assert_eq!(once, twice, "pattern redaction is not idempotent");
    if data.len() < 12 {
        return;
    }
    // Exact values: the first bytes choose a credential, the rest are the surrounding text.
    let k = 8 + usize::from(data[0]) % 24;
    let (head, rest) = data[1..].split_at(k.min(data.len() - 1));
    let secret: String = String::from_utf8_lossy(head)
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '%' | '\\' | '&'))
        .collect();
    if !usable_secret(&secret) {
        return;
    }
    let ex = ExactSecrets::new([secret.as_str()]);
    let around = String::from_utf8_lossy(rest);
    let mid = (0..=around.len() / 2)
        .rev()
        .find(|i| around.is_char_boundary(*i))
        .unwrap_or(0);
    let (pre, post) = around.split_at(mid);
    // the surrounding text is chosen by the fuzzer and may itself end in half an escape
    // (`%4`), which could swallow the first character of an encoding: separate with a space
    let pre = pre.to_string() + " ";
    let post = " ".to_string() + post;
    let forms = [
        secret.clone(),
        encode_mixed(&secret, rest),
        encode_whole(&secret, data[0], &last_chars(&pre, 3)),
    ];
    for form in &forms {
        let input = format!("{pre}{form}{post}");
        let out = ex.redact_str(&input).into_owned();
        assert!(
            !out.contains(&secret),
            "raw value survived: {input:?} -> {out:?}"
        );
        assert!(
            !out.contains(form.as_str()),
            "encoded value survived: {input:?} -> {out:?}"
        );
    }
    // A value ending in the marker's first characters, after copies of its head: each removed
    // copy leaves the head in front of a marker that spells the value again.
    let ending = format!("{secret}{}", &MARKER[..1 + usize::from(data[0]) % 4]);
    let planted = format!(
        "{pre}{}{ending}{post}",
        secret.repeat(1 + usize::from(data[0]) % 5)
    );
    let ex2 = ExactSecrets::new([ending.as_str()]);
    let out = ex2.redact_str(&planted).into_owned();
    assert!(
        !out.contains(&ending),
        "a value the marker completed survived: {planted:?} -> {out:?}"
    );
    // Split across two strings at every position the first byte picks.
    let cut = secret
        .char_indices()
        .nth(1 + usize::from(data[0]) % (secret.chars().count() - 1))
        .map(|(i, _)| i)
        .unwrap_or(1);
    let mut a = format!("{pre}{}", &secret[..cut]);
    let mut b = format!("{}{post}", &secret[cut..]);
    ex.redact_joined(&mut [&mut a, &mut b]);
    assert!(
        !format!("{a}{b}").contains(&secret),
        "split value survived: {a:?} + {b:?}"
    );
}

/// Request-parsing properties on one input.
pub fn request_parsing(data: &[u8]) {
    let _ = crate::gateway::server::parse(data);
    match crate::http::extract::parse_json::<Value>(data) {
        Ok(v) => assert!(!has_nul(&v), "a body with U+0000 passed the guard"),
        Err(e) => assert!(
            matches!(e.code, crate::error::ErrorCode::ReqMalformed),
            "{e}"
        ),
    }
    // Whatever serde accepts with a NUL somewhere, the guard must see.
    if let Ok(v) = serde_json::from_slice::<Value>(data)
        && has_nul(&v)
    {
        assert!(crate::http::guard::json_has_nul(data));
    }
    let text = String::from_utf8_lossy(data);
    let _ = crate::http::guard::is_json_media_type(&text);
    let _ = crate::http::guard::uri_has_nul(&text);
    let key = [7u8; 32];
    let _ = crate::gateway::tokens::verify_run_token(&key, &text, 0);
    let _ = crate::gateway::tokens::verify_session(&key, &text, "c", 0);
    let _ = crate::gateway::approval::verify(
        &key,
        &text,
        crate::gateway::approval::Expected {
            project: "p",
            agent: "a",
            environment: "e",
            run_id: None,
            tool: "t",
            args_sha256: "h",
        },
        0,
    );
    let _ = crate::auth::parse_api_key(&text);
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, x)| k.contains('\0') || has_nul(x)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    //! The stable harness: seeded pseudo-random inputs (structured and raw), so a failure is
    //! reproducible from the seed. `AWOOOP_FUZZ_ITERATIONS` raises the count (scripts/fuzz.sh).
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    use super::*;

    fn iterations() -> usize {
        std::env::var("AWOOOP_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000)
    }

    const ALPHABET: &[u8] = b"abcXYZ019%&#;\\u/+=_-.:\"{}[] \n\xc3\xa4eyJsk-ant-AKIA@";

    fn input(rng: &mut StdRng) -> Vec<u8> {
        let len = rng.random_range(0..200);
        let mut v = vec![0u8; len];
        if rng.random_bool(0.5) {
            rng.fill_bytes(&mut v);
        } else {
            for b in &mut v {
                *b = ALPHABET[rng.random_range(0..ALPHABET.len())];
            }
        }
        v
    }

    #[test]
    fn fuzz_redactor_stable_harness() {
        let mut rng = StdRng::seed_from_u64(0x11_b0b);
        for _ in 0..iterations() {
            redactor(&input(&mut rng));
        }
    }

    #[test]
    fn fuzz_request_parsing_stable_harness() {
        let mut rng = StdRng::seed_from_u64(0x11_b0c);
        let seeds: [&[u8]; 6] = [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            br#"{"a":"\u0000"}"#,
            br#"{"a\u0000":1}"#,
            br#"["\\u0000"]"#,
            b"awr1.eyJ4IjoxfQ.AAAA",
            b"awk.alpha.0123456789abcdef.00",
        ];
        for s in seeds {
            request_parsing(s);
        }
        for _ in 0..iterations() {
            let mut v = input(&mut rng);
            // Splice in a seed now and then so the structured paths are reached.
            if rng.random_bool(0.3) {
                let s = seeds[rng.random_range(0..seeds.len())];
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, s.iter().copied());
            }
            request_parsing(&v);
        }
    }
}
