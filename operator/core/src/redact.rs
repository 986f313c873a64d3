//! The one redaction engine, used by the audit sink, the (future) MCP gateway and logs.
//!
//! Contract: [`Redactor::redact_str`] replaces every match of the built-in pattern classes with a
//! typed marker `[REDACTED:<class>]`; [`Redactor::redact_json`] walks nested JSON and redacts
//! object keys and string values, and replaces the whole value of secret-looking keys
//! (`password`, `api_key`, `*_token`, …). [`ExactSecrets`] removes known credential values
//! (raw or encoded: see [`exact`]) that no pattern could recognise. Redaction is
//! idempotent: markers never match a pattern again.
//!
//! Order matters: whole PEM blocks and JWTs go first (they contain text other patterns would
//! nibble at), URL userinfo before e-mail (`user:pw@host` is not an address), provider keys
//! before the generic key/value rule, payment cards before phone numbers (a Luhn-valid 13–19
//! digit run is far more likely a card). Candidates that need a checksum (Luhn, SSN ranges,
//! Taiwanese ID check digit) are verified in code; failures are left untouched.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex, RegexSet};
use serde_json::Value;

/// The pattern classes and their marker names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternClass {
    PrivateKey,
    Jwt,
    UrlCredentials,
    BearerToken,
    ApiKey,
    SecretKeyValue,
    Email,
    PaymentCard,
    NationalId,
    Phone,
}

impl PatternClass {
    pub const ALL: [PatternClass; 10] = [
        Self::PrivateKey,
        Self::Jwt,
        Self::UrlCredentials,
        Self::BearerToken,
        Self::ApiKey,
        Self::SecretKeyValue,
        Self::Email,
        Self::PaymentCard,
        Self::NationalId,
        Self::Phone,
    ];

    pub fn marker(self) -> &'static str {
        match self {
            Self::PrivateKey => "private_key",
            Self::Jwt => "jwt",
            Self::UrlCredentials => "url_credentials",
            Self::BearerToken => "bearer",
            Self::ApiKey => "api_key",
            Self::SecretKeyValue => "secret",
            Self::Email => "email",
            Self::PaymentCard => "card",
            Self::NationalId => "national_id",
            Self::Phone => "phone",
        }
    }
}

type Replace = fn(&Captures<'_>) -> Option<String>;

struct Rule {
    re: Regex,
    /// Replacement for a match; `None` leaves the match unchanged (checksum failed, …).
    replace: Replace,
}

pub struct Redactor {
    set: RegexSet,
    /// Every rule as one alternation: where the leftmost match of any rule starts.
    any: Regex,
    rules: Vec<Rule>,
}

fn marker(c: PatternClass) -> String {
    format!("[REDACTED:{}]", c.marker())
}

/// `key` `separator` `value` → the value replaced (a value already redacted is left alone).
fn secret_value(c: &Captures<'_>) -> Option<String> {
    if c[3].starts_with("[REDACTED") {
        return None;
    }
    Some(format!(
        "{}{}{}",
        &c[1],
        &c[2],
        marker(PatternClass::SecretKeyValue)
    ))
}

/// Word boundaries are ASCII (`(?-u:\b)`): a word is a run of ASCII letters, digits and `_`,
/// and every other character, CJK included, separates words. Two reasons. Chinese and Japanese
/// put no space between words, so with Unicode boundaries `手機0912-345-678` or
/// `信箱ops@example.com` had no boundary before the value and were not redacted. And a Unicode
/// boundary makes the regex engine's lazy DFA give up on any non-ASCII byte and fall back to
/// its slowest engine: 1 KiB of Chinese took ≈ 300 times as long as 1 KiB of English
/// (docs/benchmarks.md, "Session 14").
const RULES: &[(PatternClass, &str, Replace)] = &[
    (
        PatternClass::PrivateKey,
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        |_| Some(marker(PatternClass::PrivateKey)),
    ),
    (
        PatternClass::Jwt,
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        |_| Some(marker(PatternClass::Jwt)),
    ),
    (
        PatternClass::UrlCredentials,
        r"(?i)(?-u:\b)([a-z][a-z0-9+.-]{1,20}://)([^\s:/@\[\]]+):([^\s@/\[\]]+)@",
        |c| {
            Some(format!(
                "{}{}@",
                &c[1],
                marker(PatternClass::UrlCredentials)
            ))
        },
    ),
    (
        PatternClass::UrlCredentials,
        r"(?i)([?&](?:token|access_token|api_key|apikey|key|secret|password|sig|signature)=)([^\s&#\[]+)",
        |c| Some(format!("{}{}", &c[1], marker(PatternClass::SecretKeyValue))),
    ),
    (
        PatternClass::BearerToken,
        r"(?i)(?-u:\b)(bearer)\s+([A-Za-z0-9._~+/=-]{8,})",
        |c| Some(format!("{} {}", &c[1], marker(PatternClass::BearerToken))),
    ),
    (
        PatternClass::BearerToken,
        r"(?i)(authorization\s*[:=]\s*basic)\s+([A-Za-z0-9+/=]{8,})",
        |c| Some(format!("{} {}", &c[1], marker(PatternClass::BearerToken))),
    ),
    (
        PatternClass::ApiKey,
        concat!(
            r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{20,}",
            r"|(?-u:\b)sk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}",
            r"|(?-u:\b)(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}",
            r"|(?-u:\b)github_pat_[A-Za-z0-9_]{22,}",
            r"|(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
            r"|(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
            r"|(?-u:\b)xapp-[A-Za-z0-9-]{10,}",
            r"|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+",
            r"|(?-u:\b)\d{8,10}:[A-Za-z0-9_-]{35}(?-u:\b)",
            r"|(?-u:\b)AIza[0-9A-Za-z_-]{35}(?-u:\b)",
        ),
        |_| Some(marker(PatternClass::ApiKey)),
    ),
    (
        PatternClass::SecretKeyValue,
        r#"(?i)(?-u:\b)((?:[a-z0-9]+[_-])*(?:password|passwd|pwd|secret|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|auth[_-]?token|token|client[_-]?secret|private[_-]?key|secret[_-]?key|credentials?))(\s*"?\s*[:=]\s*["']?)([^\s"'&,;}\]]+)"#,
        secret_value,
    ),
    (
        // The same in Chinese and Japanese (`密碼：hunter2`, `API金鑰=…`, `パスワード: …`),
        // with full-width separators and quotes: tool results and chat messages in those
        // languages name secrets in their own words. Only an explicit `:`/`=` separator counts
        // (`密碼是必填的`, "the password is required", is prose, not a value).
        PatternClass::SecretKeyValue,
        r#"(密碼|密码|口令|金鑰|密鑰|密钥|私鑰|私钥|令牌|權杖|权杖|パスワード|暗証番号|トークン|秘密鍵)(\s*[:=：＝]\s*["'「『]?)([^\s"'&,;}\]」』，。、；]+)"#,
        secret_value,
    ),
    (
        PatternClass::Email,
        r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?-u:\b)",
        |_| Some(marker(PatternClass::Email)),
    ),
    (
        PatternClass::PaymentCard,
        r"(?-u:\b)\d(?:[ -]?\d){12,18}(?-u:\b)",
        |c| luhn_ok(&c[0]).then(|| marker(PatternClass::PaymentCard)),
    ),
    (
        PatternClass::NationalId,
        r"(?-u:\b)(\d{3})-(\d{2})-(\d{4})(?-u:\b)",
        |c| {
            let (area, group, serial) = (&c[1], &c[2], &c[3]);
            let valid = area != "000"
                && area != "666"
                && !area.starts_with('9')
                && group != "00"
                && serial != "0000";
            valid.then(|| marker(PatternClass::NationalId))
        },
    ),
    (
        PatternClass::NationalId,
        r"(?-u:\b)[A-Z][12]\d{8}(?-u:\b)",
        |c| taiwan_id_ok(&c[0]).then(|| marker(PatternClass::NationalId)),
    ),
    (
        PatternClass::Phone,
        concat!(
            r"\+\d{1,3}[ -]?\(?\d{1,4}\)?(?:[ -]?\d{2,4}){1,4}(?-u:\b)",
            r"|\(\d{3}\)\s?\d{3}-\d{4}(?-u:\b)",
            r"|(?-u:\b)\d{3}-\d{3}-\d{4}(?-u:\b)",
            r"|(?-u:\b)09\d{2}-?\d{3}-?\d{3}(?-u:\b)",
        ),
        |c| {
            let digits = c[0].bytes().filter(u8::is_ascii_digit).count();
            (8..=15)
                .contains(&digits)
                .then(|| marker(PatternClass::Phone))
        },
    ),
];

fn luhn_ok(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Taiwanese national ID: letter (mapped to 10..35 in the official order), then 9 digits with
/// weights 1,9,8,7,6,5,4,3,2,1 (letter tens/units first), sum divisible by 10.
fn taiwan_id_ok(s: &str) -> bool {
    const ORDER: &str = "ABCDEFGHJKLMNPQRSTUVXYWZIO";
    let b = s.as_bytes();
    let Some(pos) = ORDER.find(b[0] as char) else {
        return false;
    };
    let code = 10 + pos as u32;
    let mut sum = (code / 10) + (code % 10) * 9;
    for (i, &d) in b[1..].iter().enumerate() {
        let d = (d - b'0') as u32;
        let w = if i == 8 { 1 } else { 8 - i as u32 };
        sum += d * w;
    }
    sum.is_multiple_of(10)
}

static GLOBAL: LazyLock<Redactor> = LazyLock::new(Redactor::new);

impl Redactor {
    fn new() -> Self {
        let rules: Vec<Rule> = RULES
            .iter()
            .map(|(_, pat, replace)| Rule {
                re: Regex::new(pat).expect("redaction pattern compiles"),
                replace: *replace,
            })
            .collect();
        let set = RegexSet::new(RULES.iter().map(|(_, p, _)| *p)).expect("pattern set compiles");
        let any = RULES
            .iter()
            .map(|(_, p, _)| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        let any = Regex::new(&any).expect("pattern union compiles");
        Self { set, any, rules }
    }

    /// The rules that match somewhere in `s`; `None` when none does (one forward search).
    ///
    /// The overlapping set search that names the rules is the costly part, and most text
    /// matches nothing. So the union of the rules is searched first: no match, nothing to do;
    /// a match starting at `i`, and no rule matches anything starting before `i` (the
    /// leftmost match of the union starts where the earliest match of any rule starts), so the
    /// set search runs from `i` only, with the text before it as context for `\b`. Measured
    /// on 1 KiB (docs/benchmarks.md, "Session 12"): 14–18 % less time than a full set search
    /// on clean text and on text with a match at its end, 4 % with a match at its start.
    fn hits(&self, s: &str) -> Option<regex::SetMatches> {
        let first = self.any.find(s)?;
        Some(self.set.matches_at(s, first.start()))
    }

    /// Each rule's class and pattern, in the order they are applied (`awooop bench redact`
    /// times them one by one: the slowest alone bounds what the union's one search costs).
    pub fn rules() -> impl Iterator<Item = (PatternClass, &'static str)> {
        RULES.iter().map(|(c, p, _)| (*c, *p))
    }

    /// The process-wide engine (compiled once).
    pub fn global() -> &'static Redactor {
        &GLOBAL
    }

    /// The classes a string would be redacted for (for tests and metrics).
    pub fn classes(&self, s: &str) -> Vec<PatternClass> {
        let out = self.redact_str(s);
        PatternClass::ALL
            .into_iter()
            .filter(|c| out.contains(&marker(*c)))
            .collect()
    }

    /// Redact a string; borrowed when nothing matched (one scan for clean input).
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let Some(hits) = self.hits(s) else {
            return Cow::Borrowed(s);
        };
        let mut cur: Cow<'a, str> = Cow::Borrowed(s);
        for i in hits.iter() {
            let rule = &self.rules[i];
            let replaced = rule.re.replace_all(&cur, |c: &Captures<'_>| {
                (rule.replace)(c).unwrap_or_else(|| c[0].to_string())
            });
            if let Cow::Owned(o) = replaced {
                cur = Cow::Owned(o);
            }
        }
        cur
    }

    /// Redact JSON in place: keys and string values, nested; whole values of secret-looking
    /// keys. Returns the number of replaced keys and values.
    pub fn redact_json(&self, v: &mut Value) -> usize {
        walk_json(v, &|s| self.redact_str(s), true)
    }
}

/// Walk JSON, rewriting keys and string values with `redact`; with `secret_keys`, the whole
/// scalar value of a secret-looking key is replaced. Returns the number of replacements.
fn walk_json(
    v: &mut Value,
    redact: &dyn for<'a> Fn(&'a str) -> Cow<'a, str>,
    secret_keys: bool,
) -> usize {
    match v {
        Value::String(s) => match redact(s) {
            Cow::Borrowed(_) => 0,
            Cow::Owned(o) => {
                *s = o;
                1
            }
        },
        Value::Array(a) => a
            .iter_mut()
            .map(|x| walk_json(x, redact, secret_keys))
            .sum(),
        Value::Object(m) => {
            // Keys are almost never rewritten: then the values are redacted in place, without
            // taking the map apart and inserting every key again (an allocation and a rehash
            // per object, twice per tool result). The predicate is the one the rebuild below
            // uses, so both paths give the same object.
            if m.keys().all(|k| matches!(redact(k), Cow::Borrowed(_))) {
                return m
                    .iter_mut()
                    .map(|(key, val)| walk_entry(key, val, redact, secret_keys))
                    .sum();
            }
            let mut n = 0;
            for (k, mut val) in std::mem::take(m) {
                let key = match redact(&k) {
                    Cow::Borrowed(_) => k,
                    Cow::Owned(o) => {
                        n += 1;
                        o
                    }
                };
                n += walk_entry(&key, &mut val, redact, secret_keys);
                m.insert(key, val);
            }
            n
        }
        _ => 0,
    }
}

/// The value of object entry `key` (already redacted): with `secret_keys`, a scalar under a
/// secret-looking key is replaced whole; anything else is walked.
fn walk_entry(
    key: &str,
    val: &mut Value,
    redact: &dyn for<'a> Fn(&'a str) -> Cow<'a, str>,
    secret_keys: bool,
) -> usize {
    let scalar = matches!(val, Value::String(_) | Value::Number(_));
    if secret_keys && scalar && is_secret_key(key) {
        if val.as_str().is_none_or(|s| !s.starts_with("[REDACTED")) {
            *val = Value::String(marker(PatternClass::SecretKeyValue));
            return 1;
        }
        0
    } else {
        walk_json(val, redact, secret_keys)
    }
}

/// Keys whose value is a secret whatever it looks like. Exact names after dropping `-`/`_`
/// and case, or names ending in one of them (`db_password`, `slack_bot_token`, `新密碼`). `token_count`
/// or `max_output_tokens` are not secrets: the secret word must end the key.
pub fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    const EXACT: &[&str] = &[
        "authorization",
        "cookie",
        "setcookie",
        "credential",
        "credentials",
        "pwd",
    ];
    const SUFFIX: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "apikey",
        "token",
        "privatekey",
        "secretkey",
        "accesskey",
        // Chinese (traditional and simplified) and Japanese: password, key, private key, token.
        "密碼",
        "密码",
        "口令",
        "金鑰",
        "密鑰",
        "密钥",
        "私鑰",
        "私钥",
        "令牌",
        "權杖",
        "权杖",
        "パスワード",
        "暗証番号",
        "トークン",
        "秘密鍵",
    ];
    EXACT.contains(&k.as_str()) || SUFFIX.iter().any(|s| k.ends_with(s))
}

/// Exact-value redaction lives in [`exact`] (decoded views, base64 at any offset, values
/// split across strings).
pub mod exact;
pub use exact::ExactSecrets;

/// [`walk_json`] without the secret-key rule, for [`ExactSecrets::redact_json`].
pub(super) fn walk_json_with(
    v: &mut Value,
    redact: &dyn for<'a> Fn(&'a str) -> Cow<'a, str>,
) -> usize {
    walk_json(v, redact, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(s: &str) -> String {
        Redactor::global().redact_str(s).into_owned()
    }

    /// The rules [`Redactor::hits`] names are the rules a full set search names.
    #[track_caller]
    fn same_hits(s: &str) {
        let g = Redactor::global();
        let full: Vec<usize> = g.set.matches(s).into_iter().collect();
        let fast: Vec<usize> = g
            .hits(s)
            .map(|h| h.into_iter().collect())
            .unwrap_or_default();
        assert_eq!(fast, full, "{s:?}");
    }

    /// Each positive must be redacted to its marker with the secret gone; each negative must be
    /// left exactly as it is (and every input names the same rules through [`Redactor::hits`]).
    #[track_caller]
    fn corpus(class: PatternClass, positives: &[(&str, &str)], negatives: &[&str]) {
        let m = format!("[REDACTED:{}]", class.marker());
        for s in positives
            .iter()
            .map(|(i, _)| *i)
            .chain(negatives.iter().copied())
        {
            same_hits(s);
            same_hits(&r(s));
        }
        for (input, secret) in positives {
            let out = r(input);
            assert!(out.contains(&m), "{class:?}: {input:?} -> {out:?}");
            assert!(
                !out.contains(secret),
                "{class:?}: {secret:?} survived in {out:?}"
            );
            assert_eq!(r(&out), out, "not idempotent: {input:?}");
        }
        for input in negatives {
            assert_eq!(r(input), *input, "{class:?}: false positive");
        }
    }

    /// Several rules in one text, at every position relative to each other and to word
    /// boundaries: the search from the first match names every rule a full search names.
    #[test]
    fn the_search_from_the_first_match_names_every_matching_rule() {
        let parts = [
            "ops@example.com",
            "4111 1111 1111 1111",
            "Bearer abcdefgh12345678",
            "password=hunter22",
            "https://user:pw@host/x",
            "+1 415 555 0100",
            "AKIAABCDEFGHIJKLMNOP",
            "123-45-6789",
            "A123456789",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlMTIz",
            "plain words",
            "x",
            "",
        ];
        for a in parts {
            for b in parts {
                for sep in ["", " ", "_", "\n", "@", "-"] {
                    same_hits(&format!("{a}{sep}{b}"));
                    same_hits(&format!("lead {a}{sep}{b} tail"));
                }
            }
        }
        assert!(Redactor::global().hits("nothing to see here").is_none());
    }

    #[test]
    fn emails() {
        corpus(
            PatternClass::Email,
            &[
                (
                    "contact alice.smith+ops@example.co.uk now",
                    "alice.smith+ops@example.co.uk",
                ),
                ("<bob@awoooi.io>", "bob@awoooi.io"),
            ],
            &[
                "user@localhost",
                "@alice on Slack",
                "version 1.2.3",
                "a@b",
                "git@github",
            ],
        );
    }

    #[test]
    fn phones() {
        corpus(
            PatternClass::Phone,
            &[
                ("call +886 912 345 678", "912 345 678"),
                ("+1-415-555-0100", "415-555-0100"),
                ("(555) 123-4567", "123-4567"),
                ("555-123-4567", "555-123-4567"),
                ("手機 0912-345-678", "0912-345-678"),
                ("0912345678", "0912345678"),
            ],
            &[
                "2026-11-24",
                "12:30:45",
                "v1.2.3",
                "port 8080",
                "550e8400-e29b-41d4-a716-446655440000",
                "10.0.0.12",
                "+1",
            ],
        );
    }

    #[test]
    fn payment_cards() {
        corpus(
            PatternClass::PaymentCard,
            &[
                ("card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
                ("5500-0000-0000-0004", "5500-0000-0000-0004"),
                ("378282246310005", "378282246310005"),
            ],
            &[
                "order 4111111111111112",
                "1234567890123456",
                "0000000000000000",
                "ts 1732450000000",
            ],
        );
    }

    #[test]
    fn national_ids() {
        corpus(
            PatternClass::NationalId,
            &[
                ("ssn 123-45-6789", "123-45-6789"),
                ("身分證 A123456789", "A123456789"),
            ],
            &[
                "000-12-3456",
                "666-12-3456",
                "900-12-3456",
                "123-00-4567",
                "A123456788",
                "Z999999999",
                "AB12345678",
            ],
        );
    }

    #[test]
    fn jwts() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        corpus(
            PatternClass::Jwt,
            &[(&format!("token {jwt} end"), jwt)],
            &["eyJ", "eyJhbGci.short", "a.b.c"],
        );
    }

    #[test]
    fn bearer_tokens() {
        corpus(
            PatternClass::BearerToken,
            &[
                (
                    "Authorization: Bearer abcdef0123456789xyz",
                    "abcdef0123456789xyz",
                ),
                (
                    "authorization=basic dXNlcjpwYXNzd29yZA==",
                    "dXNlcjpwYXNzd29yZA==",
                ),
            ],
            &[
                "Bearer",
                "the bearer of bad news",
                "basic understanding of things",
            ],
        );
    }

    #[test]
    fn provider_api_keys() {
        let keys = [
            "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx",
            "sk-AbCdEfGhIjKlMnOpQrStUvWxYz012345",
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "AKIAIOSFODNN7EXAMPLE",
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp",
            "xapp-1-A0123456789-0123456789012-abcdef",
            "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
            "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ",
            "AIzaSyA0123456789abcdefghijklmnopqrstuv",
        ];
        let positives: Vec<(String, &str)> =
            keys.iter().map(|k| (format!("key={k};"), *k)).collect();
        for (input, secret) in &positives {
            let out = r(input);
            assert!(!out.contains(secret), "{input} -> {out}");
            assert!(out.contains("[REDACTED:"), "{out}");
        }
        for k in keys {
            assert!(
                r(&format!("value {k} here")).contains("[REDACTED:api_key]"),
                "{k}"
            );
        }
        for neg in [
            "task-list-for-today",
            "sk-short",
            "ghp_x",
            "AKIA",
            "xoxb",
            "12345:abc",
            "risk-assessment-123456789012345678901",
        ] {
            assert_eq!(r(neg), neg);
        }
    }

    #[test]
    fn private_keys() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\nabc\n-----END RSA PRIVATE KEY-----";
        let pem2 = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----";
        corpus(
            PatternClass::PrivateKey,
            &[
                (&format!("key:\n{pem}\nrest"), "MIIEowIBAAKCAQEAx"),
                (pem2, "MIGHAgEAMBMGByqGSM49"),
            ],
            &[
                "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQ\n-----END PUBLIC KEY-----",
                "-----BEGIN CERTIFICATE-----",
            ],
        );
    }

    #[test]
    fn url_credentials() {
        corpus(
            PatternClass::UrlCredentials,
            &[
                ("postgres://app:s3cr3t-pw@db:5432/x", "s3cr3t-pw"),
                ("redis://default:hunter22@cache:6379", "hunter22"),
            ],
            &[
                "https://example.com/path?q=1",
                "http://host:8080/",
                "mailto:someone",
            ],
        );
        assert_eq!(
            r("postgres://app:pw12345@db:5432/x"),
            "postgres://[REDACTED:url_credentials]@db:5432/x"
        );
        let out = r("https://api.example.com/v1?token=abcdef123&x=1");
        assert_eq!(
            out,
            "https://api.example.com/v1?token=[REDACTED:secret]&x=1"
        );
    }

    #[test]
    fn secret_key_values() {
        corpus(
            PatternClass::SecretKeyValue,
            &[
                ("password=hunter2!", "hunter2!"),
                ("DB_PASSWORD: 'p@ss w'", "p@ss"),
                ("api_key = abc123xyz", "abc123xyz"),
                ("client_secret=zzz999", "zzz999"),
                (r#"{"password": "inline-json"}"#, "inline-json"),
                ("access_token=tok123&next=1", "tok123"),
            ],
            &[
                "password_policy=strict",
                "token_count=42",
                "max_output_tokens: 4096",
                "no secrets here",
                "passwordless login",
            ],
        );
    }

    #[test]
    fn secret_key_values_in_chinese_and_japanese() {
        corpus(
            PatternClass::SecretKeyValue,
            &[
                ("管理員密碼：Abc12345", "Abc12345"),
                ("资料库密码=p4ssw0rd，请妥善保管", "p4ssw0rd"),
                ("API金鑰: sk_live_abcdef", "sk_live_abcdef"),
                ("存取權杖＝「tok-998877」", "tok-998877"),
                ("パスワード：hunter22。", "hunter22"),
                ("暗証番号: 4321", "4321"),
            ],
            &[
                "請輸入密碼",
                "密碼是必填的",
                "密碼長度：8",
                "忘記密碼？",
                "令牌桶演算法",
                "トークン数：4096",
            ],
        );
        let mut v = json!({"新密碼": "hunter22", "密碼長度": 8, "API金鑰": "abc", "說明": "無"});
        assert_eq!(Redactor::global().redact_json(&mut v), 2);
        assert_eq!(v["新密碼"], "[REDACTED:secret]");
        assert_eq!(v["API金鑰"], "[REDACTED:secret]");
        assert_eq!(v["密碼長度"], 8);
        assert_eq!(v["說明"], "無");
    }

    #[test]
    fn nested_json_keys_and_values() {
        let mut v = json!({
            "user": {"email": "alice@example.com", "tags": ["call +1-415-555-0100"]},
            "headers": {"Authorization": "Bearer abcdefghijklmnop", "X-Api-Key": "plainvalue", "db_password": 12345},
            "alice@example.com": "key is an email",
            "token_count": 42,
            "list": [{"nested": {"secret": "s"}}]
        });
        let n = Redactor::global().redact_json(&mut v);
        let text = v.to_string();
        for leaked in [
            "alice@example.com",
            "abcdefghijklmnop",
            "plainvalue",
            "12345",
            "555-0100",
        ] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        assert_eq!(v["token_count"], 42);
        assert_eq!(v["list"][0]["nested"]["secret"], "[REDACTED:secret]");
        assert!(v.get("[REDACTED:email]").is_some());
        assert!(n >= 7, "{n}");
        // idempotent
        let again = v.clone();
        Redactor::global().redact_json(&mut v);
        assert_eq!(v, again);
    }

    /// Objects whose keys are all clean are redacted in place, the others rebuilt: both keep
    /// the key order, count the same replacements, and a key redacted into another one's
    /// marker keeps the position and last value, as the rebuild always did.
    #[test]
    fn json_objects_keep_their_order_whichever_path_redacts_them() {
        let mut clean =
            json!({"z": "mail bob@example.com", "a": {"password": "x", "b": [1, "ok"]}, "m": 3});
        assert_eq!(Redactor::global().redact_json(&mut clean), 2);
        let keys: Vec<&String> = clean.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "m"]);
        assert_eq!(clean["z"], "mail [REDACTED:email]");
        assert_eq!(clean["a"]["password"], "[REDACTED:secret]");
        assert_eq!(clean["a"]["b"], json!([1, "ok"]));
        let mut dirty =
            json!({"z": 1, "a@example.com": "first", "y": 2, "b@example.com": "second"});
        assert_eq!(Redactor::global().redact_json(&mut dirty), 2);
        assert_eq!(
            dirty.to_string(),
            r#"{"z":1,"[REDACTED:email]":"second","y":2}"#
        );
    }

    #[test]
    fn exact_secrets_in_every_encoding() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = "s3cr3t/value+with=chars?";
        let ex = ExactSecrets::new([secret, "abc"]);
        let forms = [
            secret.to_string(),
            STANDARD.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            secret
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>(),
        ];
        for f in &forms {
            let input = format!("x {f} y");
            assert_eq!(ex.redact_str(&input), "x [REDACTED:credential] y", "{f}");
        }
        // short secrets are ignored
        assert_eq!(ex.redact_str("abc abc"), "abc abc");
        let mut v =
            json!({"result": {format!("k-{secret}"): [secret, {"deep": STANDARD.encode(secret)}]}});
        assert_eq!(ex.redact_json(&mut v), 3);
        assert!(!v.to_string().contains(secret));
        // overlapping secrets: the longest wins
        let ex = ExactSecrets::new(["password", "password123"]);
        assert_eq!(ex.redact_str("password123"), "[REDACTED:credential]");
        assert!(ExactSecrets::new(Vec::<String>::new()).is_empty());
    }

    /// Chinese and Japanese put no space between words: a value written right after (or
    /// before) CJK text is still a value. With Unicode word boundaries none of these was
    /// redacted (a CJK character is a word character, so there was no boundary).
    #[test]
    fn values_next_to_cjk_text_are_redacted() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlMTIz";
        let cases = [
            (
                PatternClass::Email,
                "聯絡信箱ops@example.com謝謝",
                "ops@example.com",
            ),
            (
                PatternClass::Phone,
                "手機0912-345-678請回電",
                "0912-345-678",
            ),
            (PatternClass::Phone, "電話0912345678", "0912345678"),
            (
                PatternClass::Phone,
                "お電話は555-123-4567まで",
                "555-123-4567",
            ),
            (PatternClass::NationalId, "身分證A123456789號", "A123456789"),
            (
                PatternClass::NationalId,
                "社會安全碼123-45-6789",
                "123-45-6789",
            ),
            (
                PatternClass::PaymentCard,
                "信用卡4111111111111111到期",
                "4111111111111111",
            ),
            (
                PatternClass::ApiKey,
                "金鑰AKIAABCDEFGHIJKLMNOP已更新",
                "AKIAABCDEFGHIJKLMNOP",
            ),
            (PatternClass::Jwt, &format!("令牌{jwt}"), jwt),
            (
                PatternClass::BearerToken,
                "標頭Bearer abcdef0123456789xyz",
                "abcdef0123456789xyz",
            ),
        ];
        for (class, input, secret) in cases {
            let out = r(input);
            assert!(
                out.contains(&marker(class)) && !out.contains(secret),
                "{class:?}: {input:?} -> {out:?}"
            );
            assert_eq!(r(&out), out, "not idempotent: {input:?}");
            same_hits(input);
        }
        // CJK text with numbers that are not values stays as it is.
        for clean in [
            "訂單 48213 已出貨，金額 NT$1,990，預計 11/30 送達。",
            "第2026年11月29日，共3件",
            "版本1.2.3已發布",
        ] {
            assert_eq!(r(clean), clean);
        }
    }

    /// Every rule, alone and in the union that is searched first, runs on the regex engine's
    /// lazy DFA for any text: a Unicode word boundary made the DFA give up at the first
    /// non-ASCII byte, and the search fell back to an engine ≈ 300 times slower (CJK text, or
    /// a hostile tool result made of it, cost 0.6 ms per KiB). The DFA is built here the way
    /// the meta engine builds it (Unicode boundaries allowed, as a give-up on non-ASCII), so a
    /// Unicode `\b` in any rule fails the search below instead of the build.
    #[test]
    fn every_rule_searches_non_ascii_text_without_falling_back() {
        use regex_automata::{Input, hybrid};
        let text =
            "訂單 48213 已出貨，商品：無線藍牙耳機（黑色），配送至台北市。é ü 🙂 ".repeat(20);
        let union = RULES
            .iter()
            .map(|(_, p, _)| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        let patterns = RULES.iter().map(|(_, p, _)| p.to_string()).chain([union]);
        for p in patterns {
            let re = hybrid::regex::Regex::builder()
                .dfa(hybrid::dfa::Config::new().unicode_word_boundary(true))
                .build(&p)
                .expect("the rule builds as a lazy DFA");
            let mut cache = re.create_cache();
            let found = re.try_search(&mut cache, &Input::new(&text));
            assert!(found.is_ok(), "{p}: the lazy DFA gave up: {found:?}");
        }
    }

    #[test]
    fn clean_text_is_borrowed() {
        let s = "all quiet on the western front ".repeat(500);
        assert!(matches!(
            Redactor::global().redact_str(&s),
            Cow::Borrowed(_)
        ));
    }
}
