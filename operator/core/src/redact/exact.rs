//! Exact-value redaction: removes credential values known at call time (the gateway injects
//! them, so it knows them) from text a hostile tool server controls.
//!
//! Contract of [`ExactSecrets`]: a value of at least [`MIN_SECRET_CHARS`] characters is found
//!
//! * raw, and inside any mixture of per-character encodings, decoded up to two layers deep
//!   (so `%5Cu0073` = percent-encoded JSON escape works): percent-encoding in upper or lower
//!   case (`%2f`, `%2F`), JSON/JavaScript escapes (`\u0073`, `\x73`, `\/`, `\"`, `\n`, …),
//!   HTML character references (`&#115;`, `&#x73;`, `&amp;`, `&lt;`, `&gt;`, `&quot;`,
//!   `&apos;`). The text is decoded into a byte view that remembers where each byte came from,
//!   the values are searched there, and the original span is replaced;
//! * hex-encoded in any letter case (`733363…`, `733363…` upper or mixed);
//! * base64-encoded (standard and URL-safe alphabets, padded or not) *at any offset* inside a
//!   longer base64 text: for each of the three byte alignments the characters determined only
//!   by the value's own bits are searched (values of at least [`MIN_B64_OFFSET_BYTES`] bytes,
//!   so the searched core is at least 10 characters and ordinary base64 is not redacted by
//!   chance);
//! * split across several strings, when the caller joins them ([`ExactSecrets::find_ranges`]
//!   over the concatenation, as the gateway does for a result's text items).
//!
//! Out of reach, by construction: any transformation that is not a fixed encoding of the
//! bytes in order: reversal, case changes of the value itself, ROT13/XOR/encryption,
//! interleaving with other characters, a value spread over separate JSON fields or over
//! several tool calls, base64 broken by line wraps inside the value, compression, or text that
//! asks the model to reassemble pieces. A tool server that holds a credential can always
//! exfiltrate it somehow; exact-value redaction is a second layer behind not giving tools
//! credentials they do not need (see docs/security.md).

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine;
use regex::Regex;
use regex::bytes::Regex as BytesRegex;

/// Values shorter than this (in characters) are ignored: they would redact ordinary text.
pub const MIN_SECRET_CHARS: usize = 4;
/// Values shorter than this (in bytes) are only searched as whole base64 encodings, not at
/// every offset inside longer base64 text.
pub const MIN_B64_OFFSET_BYTES: usize = 8;
/// Layers of nested encodings decoded.
const DECODE_ROUNDS: usize = 2;

const MARKER: &str = "[REDACTED:credential]";
/// The marker for a set of values one of which the usual marker contains (`credential`,
/// `REDACTED`): shorter than [`MIN_SECRET_CHARS`] and with no escape character, so no value
/// and no encoding of one fits in it.
const SHORT_MARKER: &str = "[*]";
/// Searches of a redacted text for values its markers completed (see [`ExactSecrets::redact_str`])
/// before the whole text is replaced by the marker.
const RESEARCHES: usize = 8;

/// Known credential values, compiled for searching.
pub struct ExactSecrets {
    /// The raw values, searched in the decoded view.
    raw: Option<BytesRegex>,
    /// Encoded forms searched in the original text: whole base64, base64 cores at each offset,
    /// hex (case-insensitive).
    encoded: Option<Regex>,
    /// What replaces a value: [`MARKER`], unless a value is found inside it.
    marker: &'static str,
}

impl ExactSecrets {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(secrets: I) -> Self {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let mut raw: Vec<String> = Vec::new();
        let mut encoded: Vec<String> = Vec::new();
        for s in secrets {
            let s = s.as_ref();
            if s.chars().count() < MIN_SECRET_CHARS {
                continue;
            }
            raw.push(regex::escape(s));
            for e in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                encoded.push(regex::escape(&e.encode(s.as_bytes())));
            }
            if s.len() >= MIN_B64_OFFSET_BYTES {
                for offset in 0..3 {
                    for e in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                        encoded.push(regex::escape(&b64_core(e, s.as_bytes(), offset)));
                    }
                }
            }
            encoded.push(format!("(?i:{})", hex::encode(s.as_bytes())));
        }
        // Longest first, so an overlapping longer value wins over its prefix.
        let build = |mut v: Vec<String>| {
            v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            v.dedup();
            (!v.is_empty()).then(|| v.join("|"))
        };
        let mut exact = Self {
            raw: build(raw).map(|alt| BytesRegex::new(&alt).expect("escaped literals compile")),
            encoded: build(encoded).map(|alt| Regex::new(&alt).expect("escaped literals compile")),
            marker: MARKER,
        };
        if !exact.find_ranges(MARKER).is_empty() {
            exact.marker = SHORT_MARKER;
        }
        exact
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_none()
    }

    /// Byte ranges of `s` that carry a value (in any supported encoding), sorted and merged;
    /// each starts and ends on a character boundary.
    pub fn find_ranges(&self, s: &str) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        if let Some(re) = &self.encoded {
            out.extend(re.find_iter(s).map(|m| m.range()));
        }
        if let Some(re) = &self.raw {
            out.extend(re.find_iter(s.as_bytes()).map(|m| m.range()));
            // Decoding only matters when the text has an escape character at all.
            // (memchr: a vectorised scan; every string of every result passes here.)
            if memchr::memchr3(b'%', b'\\', b'&', s.as_bytes()).is_none() {
                return merge(s, out);
            }
            // Each round decodes the previous view (round 0, the text itself, is done above).
            let mut view = View::identity(s.as_bytes());
            for round in 0..=DECODE_ROUNDS {
                if round > 0 {
                    for m in re.find_iter(&view.bytes) {
                        if m.start() < m.end() {
                            out.push(view.spans[m.start()].start..view.spans[m.end() - 1].end);
                        }
                    }
                }
                if round < DECODE_ROUNDS {
                    match view.decode() {
                        Some(next) => view = next,
                        None => break,
                    }
                }
            }
        }
        merge(s, out)
    }

    /// `s` with every value replaced by the marker; borrowed when there was none (one search
    /// for clean text).
    ///
    /// The result holds no value: it is searched again after each replacement. The marker can
    /// complete a value with the text in front of it or after it: the value `Pq7!z[` in
    /// `Pq7!zPq7!z[` is replaced, and `Pq7!z` + `[REDACTED…` spells it again; a tool server
    /// that knows the value can repeat its head as often as it likes, each search peeling one
    /// copy. A value found again overlaps a marker (the marker alone holds none:
    /// [`SHORT_MARKER`]); after [`RESEARCHES`] searches that still find one, the whole text is
    /// replaced by the marker instead, so the searches always end.
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let ranges = self.find_ranges(s);
        if ranges.is_empty() {
            return Cow::Borrowed(s);
        }
        let mut out = self.replace(s, &ranges);
        for _ in 0..RESEARCHES {
            let ranges = self.find_ranges(&out);
            if ranges.is_empty() {
                return Cow::Owned(out);
            }
            out = self.replace(&out, &ranges);
        }
        Cow::Owned(self.marker.to_string())
    }

    fn replace(&self, s: &str, ranges: &[Range<usize>]) -> String {
        let mut out = String::with_capacity(s.len());
        let mut at = 0;
        for r in ranges {
            out.push_str(&s[at..r.start]);
            out.push_str(self.marker);
            at = r.end;
        }
        out.push_str(&s[at..]);
        out
    }

    pub fn redact_json(&self, v: &mut serde_json::Value) -> usize {
        super::walk_json_with(v, &|s| self.redact_str(s))
    }

    /// Redact values split across consecutive strings (e.g. the text items of one tool result):
    /// the strings are searched as one concatenation; every range crossing a boundary is cut
    /// out of each string it touches (the marker goes where the range starts). Returns the
    /// number of strings changed.
    pub fn redact_joined(&self, parts: &mut [&mut String]) -> usize {
        if self.is_empty() {
            // No value to find (`find_ranges` would find nothing): skip building the join.
            return 0;
        }
        if let [only] = parts {
            // One string is its own concatenation: searched in place, not copied first.
            return match self.redact_str(only) {
                Cow::Borrowed(_) => 0,
                Cow::Owned(o) => {
                    **only = o;
                    1
                }
            };
        }
        // Searched again after each round of cuts, as `redact_str` does: a marker can complete
        // a value with the text around it, here also across the strings' boundaries.
        let mut changed = vec![false; parts.len()];
        for _ in 0..=RESEARCHES {
            let mut joined = String::new();
            let mut bounds = Vec::with_capacity(parts.len());
            for p in parts.iter() {
                let start = joined.len();
                joined.push_str(p);
                bounds.push(start..joined.len());
            }
            let ranges = self.find_ranges(&joined);
            if ranges.is_empty() {
                return changed.iter().filter(|c| **c).count();
            }
            for (i, b) in bounds.iter().enumerate() {
                let mut cuts: Vec<(Range<usize>, bool)> = Vec::new();
                for r in &ranges {
                    let (start, end) = (r.start.max(b.start), r.end.min(b.end));
                    if start < end {
                        cuts.push(((start - b.start)..(end - b.start), r.start >= b.start));
                    }
                }
                if cuts.is_empty() {
                    continue;
                }
                let old = std::mem::take(&mut *parts[i]);
                let mut out = String::with_capacity(old.len());
                let mut at = 0;
                for (r, starts_here) in cuts {
                    out.push_str(&old[at..r.start]);
                    if starts_here {
                        out.push_str(self.marker);
                    }
                    at = r.end;
                }
                out.push_str(&old[at..]);
                *parts[i] = out;
                changed[i] = true;
            }
        }
        // Still finding values after every search: nothing of these strings is kept.
        for p in parts.iter_mut() {
            **p = self.marker.to_string();
        }
        parts.len()
    }
}

/// The base64 characters determined only by `value`'s bits when it starts `offset` bytes
/// (0..3) into a longer base64-encoded text.
fn b64_core(engine: &base64::engine::GeneralPurpose, value: &[u8], offset: usize) -> String {
    let mut buf = vec![0u8; offset];
    buf.extend_from_slice(value);
    let enc = engine.encode(&buf);
    let first = (8 * offset).div_ceil(6);
    let last = (8 * (offset + value.len())) / 6; // exclusive: the next char mixes in later bits
    enc.get(first..last).unwrap_or("").to_string()
}

/// Sort, widen to character boundaries and merge overlapping or touching ranges.
fn merge(s: &str, mut v: Vec<Range<usize>>) -> Vec<Range<usize>> {
    for r in v.iter_mut() {
        while r.start > 0 && !s.is_char_boundary(r.start) {
            r.start -= 1;
        }
        while r.end < s.len() && !s.is_char_boundary(r.end) {
            r.end += 1;
        }
    }
    v.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out: Vec<Range<usize>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// A decoded view of a text: `bytes[i]` came from `spans[i]` of the original.
struct View {
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl View {
    fn identity(b: &[u8]) -> Self {
        Self {
            bytes: b.to_vec(),
            spans: (0..b.len()).map(|i| i..i + 1).collect(),
        }
    }

    /// One layer of decoding; `None` when nothing decoded (no further round is useful).
    fn decode(&self) -> Option<View> {
        let b = &self.bytes;
        let mut out = View {
            bytes: Vec::with_capacity(b.len()),
            spans: Vec::with_capacity(b.len()),
        };
        let mut any = false;
        let mut i = 0;
        while i < b.len() {
            match unit(b, i) {
                Some((len, decoded)) => {
                    let span = self.spans[i].start..self.spans[i + len - 1].end;
                    for byte in decoded.as_bytes() {
                        out.bytes.push(byte);
                        out.spans.push(span.clone());
                    }
                    any = true;
                    i += len;
                }
                None => {
                    out.bytes.push(b[i]);
                    out.spans.push(self.spans[i].clone());
                    i += 1;
                }
            }
        }
        any.then_some(out)
    }
}

/// Decoded bytes of one encoding unit at `i`: (length in the input, the bytes).
enum Decoded {
    Byte(u8),
    Char(char),
}

impl Decoded {
    fn as_bytes(&self) -> Vec<u8> {
        match self {
            Decoded::Byte(b) => vec![*b],
            Decoded::Char(c) => c.to_string().into_bytes(),
        }
    }
}

fn hex_val(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn unit(b: &[u8], i: usize) -> Option<(usize, Decoded)> {
    match b[i] {
        b'%' => {
            let v = hex_val(b.get(i + 1..i + 3)?)?;
            Some((3, Decoded::Byte(v as u8)))
        }
        b'\\' => match *b.get(i + 1)? {
            b'u' => {
                let hi = hex_val(b.get(i + 2..i + 6)?)?;
                if (0xD800..0xDC00).contains(&hi) {
                    // A surrogate pair: \uD83D\uDE00.
                    if b.get(i + 6..i + 8) == Some(b"\\u")
                        && let Some(lo) = b.get(i + 8..i + 12).and_then(hex_val)
                        && (0xDC00..0xE000).contains(&lo)
                    {
                        let c = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?;
                        return Some((12, Decoded::Char(c)));
                    }
                    return None;
                }
                Some((6, Decoded::Char(char::from_u32(hi)?)))
            }
            b'x' => {
                let v = hex_val(b.get(i + 2..i + 4)?)?;
                Some((4, Decoded::Byte(v as u8)))
            }
            c @ (b'"' | b'\\' | b'/' | b'\'') => Some((2, Decoded::Byte(c))),
            b'n' => Some((2, Decoded::Byte(b'\n'))),
            b't' => Some((2, Decoded::Byte(b'\t'))),
            b'r' => Some((2, Decoded::Byte(b'\r'))),
            b'b' => Some((2, Decoded::Byte(8))),
            b'f' => Some((2, Decoded::Byte(12))),
            _ => None,
        },
        b'&' => {
            let rest = b.get(i + 1..(i + 12).min(b.len()))?;
            let semi = rest.iter().position(|&c| c == b';')?;
            let name = &rest[..semi];
            let len = semi + 2;
            let c = match name {
                b"amp" => '&',
                b"lt" => '<',
                b"gt" => '>',
                b"quot" => '"',
                b"apos" => '\'',
                [b'#', b'x' | b'X', hex @ ..] => char::from_u32(hex_val(hex)?)?,
                [b'#', dec @ ..] => {
                    let s = std::str::from_utf8(dec).ok()?;
                    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    char::from_u32(s.parse().ok()?)?
                }
                _ => return None,
            };
            Some((len, Decoded::Char(c)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    const SECRET: &str = "s3cr3t/value+with=chars?";

    fn ex() -> ExactSecrets {
        ExactSecrets::new([SECRET, "abc"])
    }

    #[track_caller]
    fn gone(input: &str) {
        let out = ex().redact_str(input).into_owned();
        assert!(out.contains(MARKER), "not redacted: {input:?} -> {out:?}");
        assert!(!out.contains(SECRET), "{out:?}");
    }

    fn pct(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn every_encoding() {
        gone(&format!("x {SECRET} y"));
        gone(&format!("x {} y", STANDARD.encode(SECRET)));
        gone(&format!("x {} y", URL_SAFE_NO_PAD.encode(SECRET)));
        gone(&format!("x {} y", pct(SECRET, true)));
        gone(&format!("x {} y", pct(SECRET, false)));
        // only some characters encoded, mixed case
        gone("x s3cr3t%2fvalue%2Bwith%3dchars%3F y");
        gone(&hex::encode(SECRET));
        gone(&hex::encode(SECRET).to_uppercase());
        // JSON / JS escapes, every character or some
        let json_all: String = SECRET
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        gone(&json_all);
        gone(&SECRET.replace('/', "\\/"));
        gone(
            &SECRET
                .chars()
                .map(|c| format!("\\x{:02X}", c as u32))
                .collect::<String>(),
        );
        // HTML references, decimal and hex, mixed with literal characters
        gone("s3cr3t&#47;value&#x2B;with&#61;chars&#63;");
        // two layers: percent-encoded JSON escapes
        let two: String = SECRET
            .chars()
            .map(|c| format!("%5Cu{:04x}", c as u32))
            .collect();
        gone(&two);
    }

    #[test]
    fn base64_at_any_offset() {
        for prefix in ["", "t", "to", "tok", "token=", "Authorization: Bearer "] {
            for suffix in ["", "!", "\n--", "xyz"] {
                let blob = format!("{prefix}{SECRET}{suffix}");
                for e in [STANDARD, URL_SAFE_NO_PAD] {
                    let enc = e.encode(blob.as_bytes());
                    let out = ex().redact_str(&enc).into_owned();
                    assert!(out.contains(MARKER), "{prefix:?}{suffix:?}: {enc} -> {out}");
                    // what remains cannot be decoded back into the value
                    assert!(!out.contains(&b64_core(&e, SECRET.as_bytes(), prefix.len() % 3)));
                }
            }
        }
    }

    #[test]
    fn split_across_strings() {
        let e = ex();
        let (a, b) = SECRET.split_at(9);
        let mut x = format!("first part: {a}");
        let mut y = format!("{b} and the rest");
        assert_eq!(e.redact_str(&x), x.as_str(), "halves alone are not secrets");
        assert_eq!(e.redact_joined(&mut [&mut x, &mut y]), 2);
        assert_eq!(x, format!("first part: {MARKER}"));
        assert_eq!(y, " and the rest");
        // one character per string
        let mut parts: Vec<String> = SECRET.chars().map(String::from).collect();
        let mut refs: Vec<&mut String> = parts.iter_mut().collect();
        e.redact_joined(&mut refs);
        assert_eq!(parts.concat(), MARKER);
    }

    /// One string, and no values at all, take shortcuts; the answers are the general ones.
    #[test]
    fn joined_shortcuts_answer_like_the_join() {
        let e = ex();
        let none = ExactSecrets::new(Vec::<String>::new());
        let pct: String = SECRET.bytes().map(|b| format!("%{b:02x}")).collect();
        for text in [
            format!("a {SECRET} b {SECRET}"),
            format!("x{pct}y"),
            "nothing here".to_string(),
            String::new(),
        ] {
            let mut one = text.clone();
            let changed = e.redact_joined(&mut [&mut one]);
            // The general path: the same text split in two, with an empty second part.
            let (mut a, mut b) = (text.clone(), String::new());
            e.redact_joined(&mut [&mut a, &mut b]);
            assert_eq!(one, a, "{text}");
            assert_eq!(changed, usize::from(one != text), "{text}");
            assert_eq!(one, e.redact_str(&text), "{text}");
            let mut untouched = text.clone();
            assert_eq!(none.redact_joined(&mut [&mut untouched]), 0);
            assert_eq!(untouched, text);
        }
    }

    #[test]
    fn no_false_positives_and_idempotent() {
        let e = ex();
        for clean in [
            "abc abc",
            "%41%42",
            "\\u0041 &amp; &#65;",
            "plain text with s3cr3t and value",
            "&#xZZ; %G0 \\uZZZZ \\",
        ] {
            assert_eq!(e.redact_str(clean), clean);
        }
        let once = e.redact_str(&format!("a {SECRET} b")).into_owned();
        assert_eq!(e.redact_str(&once), once.as_str());
        // overlapping values: the longest wins
        let e = ExactSecrets::new(["password", "password123"]);
        assert_eq!(e.redact_str("password123"), MARKER);
        assert!(ExactSecrets::new(Vec::<String>::new()).is_empty());
        // multi-byte text around a value keeps its characters
        let e = ExactSecrets::new(["pässwörd-42"]);
        assert_eq!(e.redact_str("ü pässwörd-42 ü"), format!("ü {MARKER} ü"));
        assert_eq!(
            e.redact_str("ü p%C3%A4ssw%c3%b6rd-42 ü"),
            format!("ü {MARKER} ü")
        );
    }

    /// A value that ends with the marker's first characters (`…[`) is spelled again by the text
    /// before a removed copy and the marker that replaces it: `Pq7!zPq7!z[` → `Pq7!z` + `[RED…`.
    /// A hostile tool server that knows the value repeats its head as often as it likes, so
    /// one search after another is not enough: the output is searched until nothing is found.
    #[test]
    fn a_value_completed_by_the_marker_is_removed_too() {
        let value = "Pq7!z[";
        let e = ExactSecrets::new([value]);
        for n in [1, 2, 3, 8, 40] {
            let text = format!("{}{value} tail", "Pq7!z".repeat(n));
            let out = e.redact_str(&text).into_owned();
            assert!(!out.contains(value), "{n}: {out:?}");
            assert!(e.find_ranges(&out).is_empty(), "{n}: {out:?}");
            // Split across strings: the same in the concatenation.
            let (a, b) = text.split_at(text.len() / 2);
            let (mut a, mut b) = (a.to_string(), b.to_string());
            e.redact_joined(&mut [&mut a, &mut b]);
            let joined = format!("{a}{b}");
            assert!(!joined.contains(value), "{n}: {joined:?}");
            assert!(e.find_ranges(&joined).is_empty(), "{n}: {joined:?}");
        }
        // A value inside the marker itself: another marker is used, and the search ends.
        for inner in ["credential", "REDACTED", "[REDACTED:credential]"] {
            let e = ExactSecrets::new([inner]);
            let out = e.redact_str(&format!("a {inner} b {inner}")).into_owned();
            assert!(!out.contains(inner), "{inner}: {out:?}");
            assert!(e.find_ranges(&out).is_empty(), "{inner}: {out:?}");
        }
    }
}
