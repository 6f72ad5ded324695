//! Incremental Server-Sent-Events framing, shared by both protocols.
//!
//! Bytes go in as they arrive (any split, `\n` or `\r\n` line ends); complete events come out. The two
//! dialects differ only in details this parser normalises: OpenAI-compatible streams write `data: ` with a
//! space and end with `data: [DONE]`; native DashScope streams write `data:` without one, add `id:` and
//! `event:` lines and a `:HTTP_STATUS/NNN` comment, and have no terminator. A new `id:` line after data also
//! ends an event, because some native captures omit the blank separator.
//!
//! Invariant: the events produced do not depend on how the byte stream was split. The only buffer is the
//! current partial line and the current event's data, both bounded by [`MAX_EVENT_BYTES`]: an event larger
//! than that is dropped (counted in `oversized_events`), never buffered without limit.

/// Largest event (all its `data:` lines together) the tap will buffer for parsing. Bigger events still pass
/// through to the client untouched; they are just not inspected.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One complete SSE event, borrowed from the parser's buffers.
#[derive(Debug, Clone, Copy)]
pub struct SseEvent<'a> {
    /// `event:` field; `None` means the default (`message` / `result`).
    pub event: Option<&'a [u8]>,
    /// `data:` lines joined with `\n`.
    pub data: &'a [u8],
    /// Status from a native `:HTTP_STATUS/NNN` comment line, if the event had one.
    pub http_status: Option<u16>,
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    line_overflow: bool,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    has_fields: bool,
    http_status: Option<u16>,
    skip_lf: bool,
    pub oversized_events: u64,
}

impl SseParser {
    /// Feeds the next bytes; calls `on_event` for each event they complete.
    pub fn push(&mut self, mut bytes: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.skip_lf && !bytes.is_empty() {
            // The previous read ended in `\r`; a `\n` now belongs to that line end (an empty read says nothing).
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.skip_lf = false;
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', bytes) {
            let (head, tail) = bytes.split_at(pos);
            let crlf = tail[0] == b'\r';
            bytes = &tail[1..];
            if crlf {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            if self.line.is_empty() && !self.line_overflow {
                self.process_line(head, on_event);
            } else {
                self.append_line(head);
                let line = std::mem::take(&mut self.line);
                if !std::mem::take(&mut self.line_overflow) {
                    self.process_line(&line, on_event);
                } else {
                    self.oversized_events += 1;
                    self.reset_event();
                }
                self.line = line;
                self.line.clear();
            }
        }
        self.append_line(bytes);
    }

    /// Ends the stream: an event without its trailing blank line still counts (native streams may end so).
    pub fn finish(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if !self.line.is_empty() && !self.line_overflow {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, on_event);
        }
        self.line.clear();
        self.dispatch(on_event);
    }

    fn append_line(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > MAX_EVENT_BYTES {
            self.line_overflow = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            // Comment. Native streams carry the event's real status here.
            if let Some(code) = line.strip_prefix(b":HTTP_STATUS/") {
                self.http_status = std::str::from_utf8(code)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                self.has_fields = true;
            }
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    self.oversized_events += 1;
                    self.reset_event();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                self.has_fields = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.has_fields = true;
            }
            b"id" => {
                if self.has_data {
                    self.dispatch(on_event);
                }
                self.has_fields = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.has_data {
            on_event(SseEvent {
                event: (!self.event.is_empty()).then_some(&self.event[..]),
                data: &self.data,
                http_status: self.http_status,
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.has_fields = false;
        self.http_status = None;
    }
}

/// Splits a byte stream into whole raw events (each ending with its blank line), keeping a partial tail.
///
/// Used only when the proxy must drop an event from what the client sees (the usage-only chunk it asked
/// for on the client's behalf): an event can only be judged once it is complete, so its bytes are held
/// until then. Everything else passes chunk for chunk.
#[derive(Debug, Default)]
pub struct EventSplitter {
    held: bytes::BytesMut,
}

impl EventSplitter {
    /// Appends `chunk` and returns the complete raw events now available, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<bytes::Bytes> {
        self.held.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.held) {
            out.push(self.held.split_to(end).freeze());
        }
        out
    }

    /// The bytes of an incomplete last event, at the end of the stream.
    pub fn finish(&mut self) -> Option<bytes::Bytes> {
        (!self.held.is_empty()).then(|| self.held.split().freeze())
    }
}

/// End offset (exclusive) of the first complete event: the position after a blank line. Lines end in `\n`,
/// `\r\n` or a lone `\r` (all three are SSE line ends); a blank line is a line end right after another.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', &buf[from..]) {
        let at = from + i;
        // The end of this line end, or None if a `\r` is the last byte (a `\n` may follow).
        let line_end = |p: usize| match buf[p] {
            b'\r' => match buf.get(p + 1) {
                Some(b'\n') => Some(p + 2),
                Some(_) => Some(p + 1),
                None => None,
            },
            _ => Some(p + 1),
        };
        let after = line_end(at)?;
        match buf.get(after) {
            Some(b'\n') => return Some(after + 1),
            Some(b'\r') => {
                // Blank line ended by `\r\n` or a lone `\r`; a lone `\r` as the last byte is complete too
                // (a `\n` after it would be one more, empty, line).
                return Some(line_end(after).unwrap_or(after + 1));
            }
            _ => from = after,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(Option<String>, String, Option<u16>)> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let mut f = |e: SseEvent<'_>| {
            out.push((
                e.event.map(|b| String::from_utf8_lossy(b).into_owned()),
                String::from_utf8_lossy(e.data).into_owned(),
                e.http_status,
            ))
        };
        for c in chunks {
            p.push(c, &mut f);
        }
        p.finish(&mut f);
        out
    }

    #[test]
    fn compat_framing_with_space_and_done() {
        let ev = events(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(
            ev,
            vec![
                (None, "{\"a\":1}".into(), None),
                (None, "[DONE]".into(), None)
            ]
        );
    }

    #[test]
    fn native_framing_with_status_comment_and_no_terminator() {
        let ev = events(&[b"id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"X\"}"]);
        assert_eq!(
            ev,
            vec![(Some("error".into()), "{\"code\":\"X\"}".into(), Some(400))]
        );
    }

    #[test]
    fn crlf_split_between_reads() {
        let ev = events(&[b"data: 1\r", b"\n\r", b"\ndata: 2\r\n\r\n"]);
        assert_eq!(ev, vec![(None, "1".into(), None), (None, "2".into(), None)]);
    }

    #[test]
    fn new_id_line_ends_an_event_without_blank_separator() {
        let ev = events(&[b"id:1\nevent:result\ndata:a\nid:2\nevent:result\ndata:b\n"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].1, "b");
    }

    #[test]
    fn oversized_event_is_dropped_not_buffered() {
        let mut p = SseParser::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        let mut n = 0;
        p.push(b"data: ", &mut |_| n += 1);
        p.push(&big, &mut |_| n += 1);
        p.push(b"\n\ndata: ok\n\n", &mut |_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(p.oversized_events, 1);
    }

    #[test]
    fn splitter_keeps_partial_tail() {
        let mut s = EventSplitter::default();
        let out = s.push(b"data: a\n\ndata: b\r\n\r\ndata: c");
        assert_eq!(out, vec![&b"data: a\n\n"[..], &b"data: b\r\n\r\n"[..]]);
        assert_eq!(s.push(b"\n\n"), vec![&b"data: c\n\n"[..]]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_accepts_cr_only_line_ends() {
        let mut s = EventSplitter::default();
        let out = s.push(b"data: a\r\rdata: b\r\n\ndata: c\r");
        assert_eq!(out, vec![&b"data: a\r\r"[..], &b"data: b\r\n\n"[..]]);
        assert_eq!(s.push(b"\r"), vec![&b"data: c\r\r"[..]]);
        // Any split of the same bytes yields the same concatenation, with nothing lost.
        let all = b"data: 1\r\rdata: 2\r\n\r\ndata: 3\n\ndata: 4\r";
        for cut in 0..all.len() {
            let mut s = EventSplitter::default();
            let mut got: Vec<u8> = s.push(&all[..cut]).concat();
            got.extend(s.push(&all[cut..]).concat());
            got.extend(s.finish().unwrap_or_default());
            assert_eq!(got, all.to_vec(), "cut at {cut}");
        }
    }
}
#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn every_two_cut_split_of_a_native_error_event_is_the_same() {
        let body = b"id:1\r\nevent:error\r\n:HTTP_STATUS/400\r\ndata:{\"code\":\"X\"}";
        let collect = |chunks: &[&[u8]]| {
            let mut p = SseParser::default();
            let mut out = Vec::new();
            let mut f = |e: SseEvent<'_>| {
                out.push((e.event.map(<[u8]>::to_vec), e.data.to_vec(), e.http_status))
            };
            for c in chunks {
                p.push(c, &mut f);
            }
            p.finish(&mut f);
            out
        };
        let whole = collect(&[body]);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                assert_eq!(
                    collect(&[&body[..i], &body[i..j], &body[j..]]),
                    whole,
                    "cuts {i} {j}"
                );
            }
        }
    }
}
