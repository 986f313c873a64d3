//! Compact JSON text of a [`Value`], byte for byte what `serde_json::to_string` writes, with
//! the string escaping done a block at a time.
//!
//! Why: the gateway serialises every sanitised tool result once (the `/mcp` answer is that
//! text, and the audited `bytes_out` its length). `serde_json` decides per byte whether to
//! escape (a table lookup and a branch for each of a 16 KiB result's bytes: about a quarter
//! of the gateway's instructions per call at that size, docs/benchmarks.md "Session 14").
//! Tool text almost never needs an escape, so [`next_escape`] tests 32 bytes at a time with
//! comparisons the compiler turns into vector instructions and copies clean runs whole.
//!
//! Contract: [`to_string`] equals `serde_json::to_string` for every `Value` (objects in their
//! map order, numbers as `serde_json` prints them; tested against it on generated values);
//! [`len`] is that text's length, counted without building it. The escapes are JSON's
//! minimal set, the same RFC 8785 uses ([`crate::canonical`] shares [`escape_into`]): `"`,
//! `\`, short forms for `\b \t \n \f \r`, lowercase `\u00xx` for the other control
//! characters; everything else, DEL and non-ASCII included, is written as is.

use serde_json::Value;

/// Does byte `b` need an escape inside a JSON string?
#[inline(always)]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Bytes tested together: written as a fold without early exit over a fixed-size array so the
/// compiler vectorises it (two 16-byte compares on baseline x86-64).
const BLOCK: usize = 32;

/// The index of the first byte at or after `from` that needs an escape.
pub fn next_escape(bytes: &[u8], mut from: usize) -> Option<usize> {
    while let Some(block) = bytes.get(from..from + BLOCK) {
        let block: &[u8; BLOCK] = block.try_into().expect("BLOCK bytes");
        if block.iter().fold(false, |any, &b| any | needs_escape(b)) {
            break;
        }
        from += BLOCK;
    }
    bytes[from..]
        .iter()
        .position(|&b| needs_escape(b))
        .map(|i| from + i)
}

/// The escape of byte `b` (one [`needs_escape`] says yes to).
fn escape(b: u8) -> Escape {
    match b {
        b'"' => Escape::Short("\\\""),
        b'\\' => Escape::Short("\\\\"),
        0x08 => Escape::Short("\\b"),
        0x09 => Escape::Short("\\t"),
        0x0a => Escape::Short("\\n"),
        0x0c => Escape::Short("\\f"),
        0x0d => Escape::Short("\\r"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            Escape::Unicode([
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ])
        }
    }
}

enum Escape {
    Short(&'static str),
    Unicode([u8; 6]),
}

impl Escape {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Escape::Short(s) => s.as_bytes(),
            Escape::Unicode(u) => u,
        }
    }
}

/// Append `s` as a quoted JSON string to `out`, through `push` (so `String` and `Vec<u8>`
/// writers share it). Every piece pushed is ASCII or a slice of `s` cut at ASCII bytes, so
/// each is valid UTF-8.
pub fn escape_into(s: &str, out: &mut impl Sink) {
    let bytes = s.as_bytes();
    out.push_str("\"");
    let mut start = 0;
    while let Some(i) = next_escape(bytes, start) {
        out.push_str(&s[start..i]);
        out.push_ascii(escape(bytes[i]).as_bytes());
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push_str("\"");
}

/// Where JSON text goes: a `String` or a byte buffer.
pub trait Sink {
    fn push_str(&mut self, s: &str);
    /// ASCII bytes (an escape sequence).
    fn push_ascii(&mut self, b: &[u8]);
}

impl Sink for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
    fn push_ascii(&mut self, b: &[u8]) {
        // Only escape sequences come here: ASCII, so each byte is one `char`.
        self.extend(b.iter().map(|&c| c as char));
    }
}

impl Sink for Vec<u8> {
    fn push_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    fn push_ascii(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// Compact JSON text of `v`: `serde_json::to_string(v)`, faster for long strings.
pub fn to_string(v: &Value) -> String {
    let mut out = String::with_capacity(size_hint(v));
    write_value(v, &mut out);
    out
}

/// [`to_string`]'s text of `v` between `head` and `tail`, in one buffer: a response that
/// frames a large value (a JSON-RPC envelope around a 16 KiB tool result) is written once
/// instead of being built and then copied into the frame.
pub fn framed(head: &str, v: &Value, tail: &str) -> String {
    let mut out = String::with_capacity(head.len() + size_hint(v) + tail.len());
    out.push_str(head);
    write_value(v, &mut out);
    out.push_str(tail);
    out
}

/// The length of [`to_string`]'s text, counted without building it.
pub fn len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => string_len(s),
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(len).sum::<usize>(),
        Value::Object(m) => {
            2 + m.len().saturating_sub(1)
                + m.iter()
                    .map(|(k, v)| string_len(k) + 1 + len(v))
                    .sum::<usize>()
        }
    }
}

/// Length of `s` quoted and escaped.
fn string_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut n = s.len() + 2;
    let mut at = 0;
    while let Some(i) = next_escape(bytes, at) {
        n += escape(bytes[i]).as_bytes().len() - 1;
        at = i + 1;
    }
    n
}

/// A capacity that fits the text unless strings need escapes (no byte is scanned).
fn size_hint(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.len() + a.iter().map(size_hint).sum::<usize>(),
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 4 + size_hint(v))
                .sum::<usize>()
        }
    }
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // `Number`'s Display is its JSON form (itoa for integers, ryu for floats): the same
        // digits `serde_json`'s serializer writes (tested below).
        Value::Number(n) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => escape_into(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                escape_into(k, out);
                out.push(':');
                write_value(x, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn same(v: &Value) {
        let want = serde_json::to_string(v).unwrap();
        assert_eq!(to_string(v), want);
        assert_eq!(len(v), want.len(), "{want}");
    }

    /// Every byte that can appear in a string, alone and at every offset of a block (so the
    /// block test and the tail test both see it), in keys and values.
    #[test]
    fn every_character_escapes_like_serde_json() {
        for b in 0u8..=0x7f {
            let c = b as char;
            for pad in [0, 1, 31, 32, 33, 63, 64, 100] {
                let s = format!("{}{c}{}", "a".repeat(pad), "z".repeat(pad % 7));
                same(&json!(s));
                same(&json!({ s.clone(): s }));
            }
        }
        for s in [
            "",
            "é漢🙂",
            "\u{7f}\u{80}\u{ffff}\u{10ffff}",
            "\u{2028}\u{2029}",
            &"訂單已出貨".repeat(40),
            &format!("{}\"", "x".repeat(16_384)),
            &"\\\"\n\t".repeat(50),
        ] {
            same(&json!(s));
        }
    }

    #[test]
    fn numbers_and_structure_like_serde_json() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-0.0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(0.1),
            json!(1e300),
            json!(-2.5e-308),
            json!(123456789.125),
            json!([]),
            json!({}),
            json!([[], {}, [null], {"": ""}]),
            json!({"z": 1, "a": [1, 2.0, "x"], "m": {"n": {"o": []}}}),
        ] {
            same(&v);
        }
    }

    /// Generated documents (a fixed-seed xorshift, so a failure reproduces): strings drawn from
    /// an alphabet rich in escapes, CJK and emoji, nested arrays and objects, numbers of every
    /// kind.
    #[test]
    fn generated_documents_match_serde_json() {
        struct Rng(u64);
        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
            fn below(&mut self, n: u64) -> u64 {
                self.next() % n
            }
        }
        const ALPHABET: &[&str] = &[
            "a", "Z", "0", " ", "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{0}", "\u{1f}",
            "\u{7f}", "/", "é", "漢", "🙂", "\u{2028}",
        ];
        fn string(r: &mut Rng) -> String {
            let n = match r.below(4) {
                0 => r.below(4),
                1 => r.below(40),
                _ => r.below(300),
            };
            (0..n)
                .map(|_| {
                    // Mostly plain letters, as real text is, so clean blocks occur.
                    if r.below(8) == 0 {
                        ALPHABET[r.below(ALPHABET.len() as u64) as usize]
                    } else {
                        "m"
                    }
                })
                .collect()
        }
        fn value(r: &mut Rng, depth: u32) -> Value {
            match r.below(if depth > 3 { 6 } else { 8 }) {
                0 => Value::Null,
                1 => Value::Bool(r.below(2) == 0),
                2 => json!(r.next()),
                3 => json!(-(r.below(1 << 40) as i64)),
                4 => json!((r.next() >> 11) as f64 / (1u64 << r.below(60)) as f64),
                5 => Value::String(string(r)),
                6 => Value::Array((0..r.below(6)).map(|_| value(r, depth + 1)).collect()),
                _ => Value::Object(
                    (0..r.below(6))
                        .map(|_| (string(r), value(r, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..3_000 {
            same(&value(&mut r, 0));
        }
    }

    #[test]
    fn next_escape_finds_the_first_in_any_block() {
        let mut s = vec![b'x'; 200];
        assert_eq!(next_escape(&s, 0), None);
        for at in [0, 5, 31, 32, 33, 64, 150, 199] {
            s[at] = b'"';
            assert_eq!(next_escape(&s, 0), Some(at));
            assert_eq!(next_escape(&s, at + 1), None);
            s[at] = b'x';
        }
    }
}
