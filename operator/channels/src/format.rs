//! Per-channel formatting: escaping and splitting of outbound text (pure).
//!
//! Text is escaped first, then split into parts that fit the provider's limit. Splitting works
//! on *atoms*: a character, or the whole escape sequence that stands for one character
//! (`&amp;`, `\.`), so a part never ends inside a UTF-8 character or an escape. A break after
//! whitespace is preferred when one exists in the second half of a part.

use awooop_contracts::ChannelProvider;

/// Telegram `sendMessage`: at most 4,096 characters (counted in UTF-16 code units, as the Bot
/// API does).
pub const TELEGRAM_LIMIT: usize = 4096;
/// LINE text message: at most 5,000 characters.
pub const LINE_LIMIT: usize = 5000;
/// LINE reply/push: at most 5 messages per request.
pub const LINE_MESSAGES_PER_REQUEST: usize = 5;
/// Slack `chat.postMessage` text: longer messages are truncated by Slack at 40,000 characters.
pub const SLACK_LIMIT: usize = 40_000;

/// Telegram parse modes the hub produces, spelled as Telegram's `parse_mode` field wants them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
pub enum TelegramMode {
    #[strum(serialize = "HTML")]
    Html,
    #[strum(serialize = "MarkdownV2")]
    MarkdownV2,
}

impl TelegramMode {
    pub fn parse_mode(self) -> &'static str {
        self.into()
    }
}

/// One indivisible piece of escaped text and its length in the provider's unit.
struct Atom {
    text: String,
    len: usize,
    space: bool,
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// HTML entity escaping for Telegram's HTML parse mode and Slack mrkdwn (both need exactly
/// `&`, `<` and `>` escaped).
fn html_atom(c: char, unit: fn(&str) -> usize) -> Atom {
    let text = match c {
        '&' => "&amp;".to_string(),
        '<' => "&lt;".to_string(),
        '>' => "&gt;".to_string(),
        c => c.to_string(),
    };
    // The provider counts the *rendered* character, but counting the escaped form is never
    // shorter, so parts always fit.
    Atom {
        len: unit(&text),
        text,
        space: c.is_whitespace(),
    }
}

/// Telegram MarkdownV2: these characters must be preceded by a backslash anywhere in text.
const MDV2_SPECIAL: &str = "_*[]()~`>#+-=|{}.!\\";

fn mdv2_atom(c: char) -> Atom {
    let text = if MDV2_SPECIAL.contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    };
    Atom {
        len: utf16_len(&text),
        text,
        space: c.is_whitespace(),
    }
}

fn plain_atom(c: char) -> Atom {
    let text = c.to_string();
    Atom {
        len: utf16_len(&text),
        text,
        space: c.is_whitespace(),
    }
}

/// Split atoms into parts of at most `limit` units each.
fn split(atoms: Vec<Atom>, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur: Vec<Atom> = Vec::new();
    let mut cur_len = 0;
    for a in atoms {
        if cur_len + a.len > limit && !cur.is_empty() {
            // Break after the last whitespace in the second half of the part, if any.
            let cut = cur
                .iter()
                .enumerate()
                .rev()
                .take_while(|(i, _)| *i >= cur.len() / 2)
                .find(|(_, x)| x.space)
                .map(|(i, _)| i + 1)
                .unwrap_or(cur.len());
            let rest = cur.split_off(cut);
            parts.push(cur.iter().map(|x| x.text.as_str()).collect::<String>());
            cur = rest;
            cur_len = cur.iter().map(|x| x.len).sum();
        }
        cur_len += a.len;
        cur.push(a);
    }
    if !cur.is_empty() {
        parts.push(cur.iter().map(|x| x.text.as_str()).collect::<String>());
    }
    parts
}

/// Escape and split `text` for Telegram.
pub fn telegram(text: &str, mode: TelegramMode) -> Vec<String> {
    let atoms = text
        .chars()
        .map(|c| match mode {
            TelegramMode::Html => html_atom(c, utf16_len),
            TelegramMode::MarkdownV2 => mdv2_atom(c),
        })
        .collect();
    split(atoms, TELEGRAM_LIMIT)
}

/// Split `text` for LINE (plain text, no escaping), grouped into requests of at most five
/// messages.
pub fn line(text: &str) -> Vec<Vec<String>> {
    let parts = split(text.chars().map(plain_atom).collect(), LINE_LIMIT);
    parts
        .chunks(LINE_MESSAGES_PER_REQUEST)
        .map(<[String]>::to_vec)
        .collect()
}

/// Escape (`&`, `<`, `>`) and split `text` for Slack mrkdwn.
pub fn slack(text: &str) -> Vec<String> {
    let atoms = text
        .chars()
        .map(|c| html_atom(c, |s| s.chars().count()))
        .collect();
    split(atoms, SLACK_LIMIT)
}

/// The parts of `text` one provider request each sends (LINE: several texts per request).
pub fn parts(provider: ChannelProvider, text: &str) -> Vec<Vec<String>> {
    match provider {
        ChannelProvider::Telegram => telegram(text, TelegramMode::Html)
            .into_iter()
            .map(|p| vec![p])
            .collect(),
        ChannelProvider::Line => line(text),
        ChannelProvider::Slack => slack(text).into_iter().map(|p| vec![p]).collect(),
        ChannelProvider::Api | ChannelProvider::Email => vec![vec![text.to_string()]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_per_provider() {
        assert_eq!(
            telegram("a<b & c>d", TelegramMode::Html),
            vec!["a&lt;b &amp; c&gt;d".to_string()]
        );
        assert_eq!(
            telegram("v1.2 (x_y)!", TelegramMode::MarkdownV2),
            vec!["v1\\.2 \\(x\\_y\\)\\!".to_string()]
        );
        assert_eq!(
            slack("<@U1> & <!here>"),
            vec!["&lt;@U1&gt; &amp; &lt;!here&gt;".to_string()]
        );
        assert_eq!(line("<b>&"), vec![vec!["<b>&".to_string()]]);
    }

    #[test]
    fn telegram_splits_at_4096_without_breaking_escapes_or_characters() {
        // 4095 letters then '&': the escape must move whole into the second part.
        let text = format!("{}&tail", "a".repeat(4095));
        let parts = telegram(&text, TelegramMode::Html);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "a".repeat(4095));
        assert_eq!(parts[1], "&amp;tail");
        // Emoji are two UTF-16 units: never split in the middle, never over the limit.
        let emoji = "😀".repeat(3000);
        let parts = telegram(&emoji, TelegramMode::Html);
        assert!(parts.iter().all(|p| utf16_len(p) <= TELEGRAM_LIMIT));
        assert_eq!(parts.concat(), emoji);
        // MarkdownV2 escapes stay whole.
        let dots = ".".repeat(5000);
        let parts = telegram(&dots, TelegramMode::MarkdownV2);
        assert!(
            parts
                .iter()
                .all(|p| p.len() <= TELEGRAM_LIMIT && p.len() % 2 == 0)
        );
        assert_eq!(parts.concat().len(), 10_000);
    }

    #[test]
    fn prefers_whitespace_breaks() {
        let text = format!("{} {}", "a".repeat(3000), "b".repeat(3000));
        let parts = telegram(&text, TelegramMode::Html);
        assert_eq!(parts[0], format!("{} ", "a".repeat(3000)));
        assert_eq!(parts[1], "b".repeat(3000));
    }

    #[test]
    fn line_limits_texts_and_messages_per_request() {
        let text = "字".repeat(5000 * 6 + 1);
        let reqs = line(&text);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].len(), 5);
        assert_eq!(reqs[1].len(), 2);
        assert!(
            reqs.iter()
                .flatten()
                .all(|m| m.chars().count() <= LINE_LIMIT)
        );
        assert_eq!(reqs.concat().concat(), text);
    }

    #[test]
    fn empty_text_has_no_parts() {
        assert!(telegram("", TelegramMode::Html).is_empty());
        assert!(slack("").is_empty());
    }
}
