//! RFC 8785 JSON Canonicalization Scheme (JCS) and the body hash of contract revisions.
//!
//! Contract: `canonicalize(v)` is the unique byte string RFC 8785 assigns to the JSON value
//! `v`: no insignificant whitespace; object members sorted by key compared as arrays of UTF-16
//! code units; strings with only `"`, `\` and control characters escaped (short forms for
//! \b \t \n \f \r, lowercase `\u00xx` otherwise); numbers as ECMAScript's
//! `Number.prototype.toString` prints the IEEE-754 double. `body_hash` is `sha256:` + hex of
//! SHA-256 over that. Two documents that differ only in key order, whitespace, escapes or
//! number spelling (1.0 vs 1, 1e3 vs 1000) hash the same.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Canonical JSON bytes per RFC 8785.
pub fn canonicalize(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    canonicalize_into(v, &mut out);
    out
}

/// Write into a caller-provided buffer (cleared first) so hot paths can reuse allocations.
pub fn canonicalize_into(v: &Value, out: &mut Vec<u8>) {
    out.clear();
    write_value(v, out);
}

/// `sha256:` + 64 lowercase hex of SHA-256 over `canonicalize(v)`.
pub fn body_hash(v: &Value) -> String {
    sha256_ref(&canonicalize(v))
}

/// `sha256:` + 64 lowercase hex of SHA-256 over `bytes`.
pub fn sha256_ref(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    s.push_str(&hex::encode(digest));
    s
}

/// Is `s` exactly `sha256:` followed by 64 lowercase hex digits?
pub fn is_sha256_ref(s: &str) -> bool {
    s.len() == 71
        && s.starts_with("sha256:")
        && s.as_bytes()[7..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => write_object(m, out),
    }
}

fn write_object(m: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut members: Vec<(&String, &Value)> = m.iter().collect();
    // Keys that are pure ASCII/BMP-below-surrogates compare the same in UTF-8 and UTF-16; only
    // when a key has a character >= U+E000 can the orders differ, so the common case uses the
    // cheap byte comparison.
    if members.iter().all(|(k, _)| utf8_order_is_utf16_order(k)) {
        members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    } else {
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
    out.push(b'{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        write_value(v, out);
    }
    out.push(b'}');
}

/// UTF-8 byte order equals UTF-16 code-unit order unless characters in U+E000..=U+FFFF are
/// compared with supplementary-plane characters (encoded as surrogates D800..DFFF in UTF-16).
fn utf8_order_is_utf16_order(s: &str) -> bool {
    // 0xEE is the first UTF-8 lead byte of U+E000; 0xF0.. are supplementary planes.
    s.bytes().all(|b| b < 0xEE)
}

/// RFC 8785 escapes exactly JSON's minimal set, which [`crate::json_text`] writes.
fn write_string(s: &str, out: &mut Vec<u8>) {
    crate::json_text::escape_into(s, out);
}

/// 2^53: integers up to this magnitude are exact doubles and print as themselves.
const MAX_SAFE: u64 = 1 << 53;

fn write_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(u) = n.as_u64()
        && u <= MAX_SAFE
    {
        out.extend_from_slice(itoa_u64(u).as_bytes());
        return;
    }
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_SAFE
    {
        out.extend_from_slice(i.to_string().as_bytes());
        return;
    }
    // Everything else is what an ECMAScript engine would see: the nearest double.
    let f = n.as_f64().unwrap_or(0.0);
    write_f64(f, out);
}

fn itoa_u64(u: u64) -> String {
    u.to_string()
}

fn write_f64(f: f64, out: &mut Vec<u8>) {
    if f == 0.0 {
        // -0 prints as 0.
        out.push(b'0');
        return;
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(f).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        String::from_utf8(canonicalize(v)).unwrap()
    }

    #[test]
    fn rfc8785_number_examples() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in cases {
            let f = f64::from_bits(*bits);
            let v = Value::Number(Number::from_f64(f).unwrap());
            assert_eq!(canon(&v), *want, "{bits:#x}");
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_print_as_doubles() {
        let v: Value = serde_json::from_str(
            "[9007199254740993, 18446744073709551615, -9007199254740993, 1e21, 100]",
        )
        .unwrap();
        assert_eq!(
            canon(&v),
            "[9007199254740992,18446744073709552000,-9007199254740992,1e+21,100]"
        );
    }

    #[test]
    fn rfc8785_full_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            canon(&v),
            "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis","</script>":"Browser Challenge"}"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let keys: Vec<String> = {
            let c = canon(&v);
            let back: Value = serde_json::from_str(&c).unwrap();
            back.as_object()
                .unwrap()
                .values()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            keys,
            [
                "Carriage Return",
                "One",
                "Browser Challenge",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh"
            ]
        );
    }

    #[test]
    fn equivalent_documents_hash_the_same() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1.0, 1e3, -0.0], "a": {"y": "\u0041", "x": null}}"#)
                .unwrap();
        let b = json!({"a": {"x": null, "y": "A"}, "b": [1, 1000, 0]});
        assert_eq!(canon(&a), r#"{"a":{"x":null,"y":"A"},"b":[1,1000,0]}"#);
        assert_eq!(body_hash(&a), body_hash(&b));
        assert_ne!(body_hash(&a), body_hash(&json!({"a": 1})));
        // Independently computed with python3 -c 'import hashlib; print(hashlib.sha256(
        //   b"{\"a\":{\"x\":null,\"y\":\"A\"},\"b\":[1,1000,0]}").hexdigest())'
        assert_eq!(
            body_hash(&b),
            "sha256:f03e81856230a5f100d537536e797d73cb653e79ce5dda9019f12b02e7c7bbad"
        );
    }

    #[test]
    fn control_characters_and_empty_containers() {
        let v = json!({"s": "\u{1}\u{1f}\u{7f}é/", "e": {}, "a": []});
        assert_eq!(
            canon(&v),
            "{\"a\":[],\"e\":{},\"s\":\"\\u0001\\u001f\u{7f}é/\"}"
        );
    }

    #[test]
    fn sha256_ref_format() {
        let good = format!("sha256:{}", "0a".repeat(32));
        assert!(is_sha256_ref(&good));
        for bad in [
            format!("sha256:{}", "0A".repeat(32)),
            format!("sha256:{}", "0".repeat(63)),
            format!("sha256:{}", "0".repeat(65)),
            "0".repeat(64),
            format!("sha-256:{}", "0".repeat(64)),
            format!(" sha256:{}", "0".repeat(64)),
        ] {
            assert!(!is_sha256_ref(&bad), "{bad}");
        }
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        fn generate(next: &mut dyn FnMut() -> u64, depth: u32) -> Value {
            match next() % if depth > 3 { 4 } else { 6 } {
                0 => Value::Null,
                1 => Value::Bool(next().is_multiple_of(2)),
                2 => json!((next() % 2_000_000) as f64 / 7.0 - 1000.0),
                3 => Value::String(format!("k{}\u{e9}\u{1F600}\n", next() % 100)),
                4 => Value::Array((0..next() % 4).map(|_| generate(next, depth + 1)).collect()),
                _ => Value::Object(
                    (0..next() % 4)
                        .map(|_| {
                            (
                                format!("\u{ff10}{}", next() % 50),
                                generate(next, depth + 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
        for _ in 0..200 {
            let v = generate(&mut next, 0);
            let c = canonicalize(&v);
            let back: Value = serde_json::from_slice(&c).unwrap();
            assert_eq!(canonicalize(&back), c);
        }
    }
}
