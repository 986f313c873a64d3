//! Server-Sent Events framing: the one incremental parser, used by the MCP upstream client
//! (`awooop-gateway`, Streamable HTTP responses) and the model wire formats (`awooop-model`,
//! OpenAI and Anthropic streams).
//!
//! It follows the WHATWG "event stream interpretation" for the fields both use: a line ends
//! in CRLF, LF or a lone CR (a CR at the end of one chunk and a LF at the start of the next
//! are one line end); `data` lines are joined with LF; one space after the colon is dropped;
//! comment lines (`:`) are skipped; an empty line dispatches the event, and an event without
//! any `data` line is dropped.
//!
//! Two modes: [`SseParser::default`] ignores unknown fields and decodes invalid UTF-8 lossily
//! (the spec's behaviour); [`SseParser::strict`] refuses a line that is not one of the spec's
//! fields (`data`, `event`, `id`, `retry`) or a comment, and one that is not UTF-8, so that a
//! peer answering with something else (an HTML error page) fails at once.

/// One dispatched event (the fields AwoooP uses; `retry` is read and ignored).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Why a strict parser refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line that is neither a field of the spec nor a comment.
    NotEventStream,
    /// A line that is not UTF-8.
    NotUtf8,
}

/// Incremental SSE parser: feed chunks as they arrive, get complete events back.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_data: bool,
    /// A CR ended the previous chunk: a LF starting the next one belongs to it.
    pending_cr: bool,
    strict: bool,
}

impl SseParser {
    /// A parser that refuses lines that are not SSE (see the module comment).
    pub fn strict() -> Self {
        Self {
            strict: true,
            ..Self::default()
        }
    }

    /// Bytes held but not yet dispatched: the incomplete line plus the data of the event
    /// being read.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.cur.data.len()
    }

    /// Length of the incomplete line at the end of the input so far.
    pub fn partial_line(&self) -> usize {
        self.buf.len()
    }

    /// Feed a chunk (lenient parsers never fail; a strict one stops at the first bad line).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        // A lenient parser has no error to report.
        let _ = self.feed(chunk, &mut out);
        out
    }

    /// Feed a chunk; a strict parser refuses a line that is not SSE.
    pub fn try_push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        self.feed(chunk, &mut out)?;
        Ok(out)
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut chunk = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        let mut i = 0;
        let mut res = Ok(());
        while i < buf.len() {
            let b = buf[i];
            if b == b'\n' || b == b'\r' {
                // The line is everything before its first terminator byte.
                let line = &buf[start..i];
                if b == b'\r' {
                    if i + 1 < buf.len() {
                        if buf[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                }
                start = i + 1;
                res = self.line(line, out);
                if res.is_err() {
                    break;
                }
            }
            i += 1;
        }
        self.buf = buf[start..].to_vec();
        res
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.cur));
            } else {
                self.cur = SseEvent::default();
            }
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = match std::str::from_utf8(line) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) if self.strict => return Err(SseError::NotUtf8),
            Err(_) => String::from_utf8_lossy(line),
        };
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.cur.data.push('\n');
                }
                self.cur.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.cur.event = Some(value.to_string()),
            "id" => self.cur.id = Some(value.to_string()),
            "retry" => {}
            _ if self.strict => return Err(SseError::NotEventStream),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
            id: None,
        }
    }

    fn run(p: &mut SseParser, chunks: &[&[u8]]) -> Vec<SseEvent> {
        chunks.iter().flat_map(|c| p.push(c)).collect()
    }

    #[test]
    fn line_endings_and_fields_table() {
        // (chunks, expected events)
        let cases: Vec<(Vec<&[u8]>, Vec<SseEvent>)> = vec![
            (
                vec![b"event: message\ndata: {\"a\":1}\n\n"],
                vec![ev(Some("message"), "{\"a\":1}")],
            ),
            // split across chunks, CRLF line ends, CR split from LF
            (
                vec![b"event: mess", b"age\r", b"\ndata: x\r\n", b"\r\n"],
                vec![ev(Some("message"), "x")],
            ),
            // multi-line data, comment, priming event without data, no space after colon
            (
                vec![b": keepalive\n\nid: 7\n\ndata:a\ndata: b\n\n"],
                vec![ev(None, "a\nb")],
            ),
            // two events in one chunk, bare CR line endings
            (
                vec![b"data: 1\r\rdata: 2\r\r"],
                vec![ev(None, "1"), ev(None, "2")],
            ),
            // CR then CRLF: one empty line between, not two
            (vec![b"data: 1\r\r\n"], vec![ev(None, "1")]),
            // mixed terminators inside one event
            (
                vec![b"data: a\rdata: b\r\ndata: c\n\r"],
                vec![ev(None, "a\nb\nc")],
            ),
            // a data line without colon is an empty data line; only one leading space dropped
            (vec![b"data\ndata:  x\n\n"], vec![ev(None, "\n x")]),
            // retry and unknown fields are ignored by a lenient parser
            (
                vec![b"retry: 10\nfoo: bar\ndata: z\n\n"],
                vec![ev(None, "z")],
            ),
            // incomplete event stays buffered
            (vec![b"data: 1\n"], vec![]),
        ];
        for (chunks, want) in cases {
            let mut p = SseParser::default();
            assert_eq!(run(&mut p, &chunks), want, "chunks {chunks:?}");
            // Byte by byte gives the same events.
            let bytes: Vec<u8> = chunks.concat();
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            let mut p = SseParser::strict();
            let got = run(&mut p, &singles);
            if !chunks.concat().windows(4).any(|w| w == b"foo:") {
                assert_eq!(got, want, "byte by byte {chunks:?}");
            }
        }
    }

    #[test]
    fn event_ids_are_kept() {
        let mut p = SseParser::default();
        let got = p.push(b"id: 42\ndata: {}\n\n");
        assert_eq!(got[0].id.as_deref(), Some("42"));
    }

    #[test]
    fn strict_parser_refuses_what_is_not_sse() {
        let mut p = SseParser::strict();
        assert_eq!(
            p.try_push(b"<html>502 Bad Gateway</html>\n"),
            Err(SseError::NotEventStream)
        );
        let mut p = SseParser::strict();
        assert_eq!(p.try_push(b"data: \xff\n"), Err(SseError::NotUtf8));
        let mut p = SseParser::strict();
        assert_eq!(
            p.try_push(b"event: e\nid: 1\nretry: 5\n: c\ndata: ok\r\r"),
            Ok(vec![SseEvent {
                event: Some("e".into()),
                data: "ok".into(),
                id: Some("1".into()),
            }])
        );
        // A lenient parser keeps going.
        let mut p = SseParser::default();
        assert_eq!(p.push(b"<html>\ndata: y\n\n"), vec![ev(None, "y")]);
    }

    #[test]
    fn buffered_counts_the_partial_line_and_pending_data() {
        let mut p = SseParser::default();
        p.push(b"data: abc\ndata: de");
        assert_eq!(p.partial_line(), "data: de".len());
        assert_eq!(p.buffered(), "abc".len() + "data: de".len());
    }
}
