//! The response tap: follows one upstream response as it streams past and says what the call used.
//!
//! The proxy hands every chunk to [`ResponseTap::feed`] on its way to the client and calls
//! [`ResponseTap::finish`] once, with how the stream ended. The tap never changes or delays bytes; it keeps
//! only what the record needs (ids, the latest usage, error code, running text tallies for the estimator)
//! plus, for non-streaming bodies, the body itself up to [`MAX_JSON_BODY`].
//!
//! Each protocol's objects are read by its own reader (`compat` for chat and native, `responses`,
//! `anthropic`) into one [`Observed`]; framing, decoding and the conclusion are shared.
//!
//! Shapes handled (reference §1–§2, §7; `bailian-2026.md` §4 for Responses and Anthropic): compat JSON and SSE (`data: ` + `[DONE]`, usage-only chunk with
//! `choices: []`, `reasoning_content` as `""`/`null`/absent, tool calls, in-band `{"error":…}` chunks, flat
//! `{code,message}` error events, SSE-framed 4xx bodies); native JSON and SSE (`data:` without space,
//! `:HTTP_STATUS/NNN`, `event:error` with HTTP 200, cumulative usage, `finish_reason: "null"`, incremental
//! and full-text output); gzip, deflate (zlib or raw), br and zstd bodies ([`super::decode`]); a UTF-8 BOM; a
//! JSON body labelled `text/event-stream` (read by what it is: its first byte); unknown fields anywhere.
//!
//! A response the tap cannot understand never fails the call, and a successful call is never booked at zero:
//! when no readable usage arrived, the record says `usage_source = estimated` (prompt from the request, output
//! from the text that streamed) and `parse_errors` counts what was skipped. Only an upstream error with
//! nothing generated is `none`.

pub use super::anthropic::InputConvention;
use super::decode::BodyDecoder;
use super::estimate::{Transcript, COMPLETION_OVERHEAD};
use super::observed::Observed;
use super::sse::{SseEvent, SseParser};
use super::wire::{parse_wire, BOM};
use super::{anthropic, compat, responses, Protocol, RequestInfo, Tokens, UsageSource};

/// Largest non-streaming body the tap buffers to read its usage. Larger bodies are forwarded untouched and
/// recorded with `usage_source = none`.
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// How a call ended. Stored as `status`; a `rejected` call never reaches the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Ok,
    UpstreamError,
    ClientAborted,
    UpstreamAborted,
    Rejected,
    ProxyError,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::UpstreamError => "upstream_error",
            CallStatus::ClientAborted => "client_aborted",
            CallStatus::UpstreamAborted => "upstream_aborted",
            CallStatus::Rejected => "rejected",
            CallStatus::ProxyError => "proxy_error",
        }
    }
}

/// How the byte stream ended, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished its body.
    Complete,
    /// The upstream reset, stalled past the idle timeout, or sent a broken body.
    UpstreamFailed,
    /// The client went away first.
    ClientGone,
}

/// What the tap learned from feeding one piece of the stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TapSignal {
    /// This piece held the call's first generated token (reasoning, answer or tool call).
    pub first_token: bool,
    /// This piece held an OpenAI-compatible usage-only chunk (`"choices": []` with a usage object).
    pub usage_only_chunk: bool,
    /// Events this piece completed (strip mode drops a piece only if it was that one usage-only event).
    pub events: u32,
}

/// Everything the tap concluded about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub status: CallStatus,
    /// The HTTP status, or the in-band `:HTTP_STATUS/NNN` of a native error event sent with HTTP 200.
    pub http_status: u16,
    pub error_code: Option<String>,
    pub upstream_request_id: Option<String>,
    /// The `model` the response echoed (compat), used when the request named none.
    pub response_model: Option<String>,
    /// Why the response ended, as the upstream said (each reason once; empty if it did not say).
    pub finish_reasons: Vec<String>,
    /// The response was an event stream.
    pub stream: bool,
    pub tokens: Tokens,
    pub usage_source: UsageSource,
    /// Events or bodies the tap could not parse (the client still got them).
    pub parse_errors: u64,
    /// The upstream's usage was inconsistent (cached > input or reasoning > output) and was clamped.
    pub usage_clamped: bool,
    /// The upstream reported the output but not how much of it was reasoning: the split between reasoning and
    /// answer was estimated from the two texts (the total stays exact).
    pub reasoning_estimated: bool,
}

/// How the objects of one response are read: its protocol and the request's facts that change the reading.
#[derive(Debug, Clone, Copy)]
struct Reader {
    protocol: Protocol,
    /// Native: each event carries only its new text (otherwise the whole text so far).
    incremental: bool,
    anthropic_input: InputConvention,
}

impl Reader {
    /// One JSON object (`whole`: a whole body; otherwise an event's data). `error_event`: it came as an
    /// `event:error` SSE event.
    fn absorb(
        self,
        obs: &mut Observed,
        data: &[u8],
        whole: bool,
        error_event: bool,
        signal: &mut TapSignal,
    ) {
        match self.protocol {
            Protocol::OpenAi | Protocol::DashScope => match parse_wire(data) {
                Some((w, partial)) => {
                    obs.parse_errors += u64::from(partial);
                    compat::absorb(obs, self.protocol, self.incremental, w, error_event, signal);
                    if whole {
                        obs.terminal = true;
                    }
                }
                None => obs.parse_errors += 1,
            },
            Protocol::Responses => responses::absorb(obs, data, whole),
            Protocol::Anthropic => anthropic::absorb(obs, data, whole),
        }
    }
}

/// How the tap reads the decoded body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Labelled an event stream, nothing but whitespace (or a BOM) seen yet: the first byte decides.
    Sniff,
    Sse,
    /// A whole body (JSON, or an error that arrived SSE-framed), read at the end.
    Body,
}

pub struct ResponseTap {
    http_status: u16,
    /// The response was labelled `text/event-stream`.
    labelled_sse: bool,
    mode: Mode,
    reader: Reader,
    /// `None`: an encoding the tap cannot read, or a body that failed to decode; nothing more is inspected.
    decoder: Option<BodyDecoder>,
    /// The encoded body ended before its encoding's end (a gzip stream without its trailer).
    truncated: bool,
    plain: Vec<u8>,
    /// Leading bytes that may be the start of a BOM (at most two), while sniffing.
    lead: Vec<u8>,
    parser: SseParser,
    body: Vec<u8>,
    body_overflow: bool,
    obs: Observed,
}

impl ResponseTap {
    /// Starts following a response from its status and the two headers that decide how to read it.
    pub fn new(
        protocol: Protocol,
        request: &RequestInfo,
        http_status: u16,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Self {
        let labelled_sse =
            content_type.is_some_and(|c| c.to_ascii_lowercase().contains("text/event-stream"));
        ResponseTap {
            http_status,
            labelled_sse,
            mode: if labelled_sse {
                Mode::Sniff
            } else {
                Mode::Body
            },
            reader: Reader {
                protocol,
                incremental: request.incremental_output,
                anthropic_input: InputConvention::default(),
            },
            decoder: BodyDecoder::for_encoding(content_encoding),
            truncated: false,
            plain: Vec::new(),
            lead: Vec::new(),
            parser: SseParser::default(),
            body: Vec::new(),
            body_overflow: false,
            obs: Observed::new(),
        }
    }

    /// What Anthropic's `input_tokens` counts (`--anthropic-input-tokens`); ignored by the other protocols.
    pub fn with_anthropic_input(mut self, convention: InputConvention) -> Self {
        self.reader.anthropic_input = convention;
        self
    }

    /// Reads the next piece of the response body, exactly as it is forwarded. Every byte the piece decodes to
    /// is read before this returns: the tap never lags what the client has been given.
    pub fn feed(&mut self, chunk: &[u8]) -> TapSignal {
        let saw_token = self.obs.saw_token;
        let mut signal = TapSignal::default();
        if matches!(self.decoder, Some(BodyDecoder::Identity)) {
            // Most bodies: read in place, no copy.
            self.consume(chunk, &mut signal);
        } else if let Some(decoder) = self.decoder.as_mut() {
            let mut plain = std::mem::take(&mut self.plain);
            let decoded = decoder.push(chunk, &mut plain);
            self.consume(&plain, &mut signal);
            plain.clear();
            self.plain = plain;
            if decoded.is_err() {
                self.unreadable();
            }
        }
        signal.first_token = !saw_token && self.obs.saw_token;
        signal
    }

    /// The rest of the body cannot be decoded: stop inspecting it.
    fn unreadable(&mut self) {
        self.obs.parse_errors += 1;
        self.decoder = None;
    }

    fn consume(&mut self, mut bytes: &[u8], signal: &mut TapSignal) {
        if self.mode == Mode::Sniff {
            bytes = self.sniff(bytes);
            if self.mode == Mode::Sniff {
                return;
            }
        }
        match self.mode {
            Mode::Sse | Mode::Sniff => {
                let Self {
                    parser,
                    obs,
                    reader,
                    ..
                } = self;
                parser.push(bytes, &mut |ev| {
                    signal.events += 1;
                    on_event(obs, *reader, ev, signal)
                });
            }
            Mode::Body if !self.body_overflow => {
                if self.body.len() + bytes.len() > MAX_JSON_BODY {
                    self.body_overflow = true;
                    self.body = Vec::new();
                } else {
                    self.body.extend_from_slice(bytes);
                }
            }
            Mode::Body => {}
        }
    }

    /// Skips a BOM and leading whitespace of a body labelled as an event stream; the first other byte decides
    /// how it is read (`{`: a JSON body after all). Returns the bytes still to consume.
    fn sniff<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let mut rest = bytes;
        while let Some(&b) = rest.first() {
            if !self.lead.is_empty() || b == BOM[0] {
                // Inside a possible BOM.
                self.lead.push(b);
                rest = &rest[1..];
                if !BOM.starts_with(&self.lead) {
                    // Not a BOM after all: those bytes are the body's start.
                    self.mode = Mode::Sse;
                    let lead = std::mem::take(&mut self.lead);
                    let mut signal = TapSignal::default();
                    self.consume(&lead, &mut signal);
                    return rest;
                }
                if self.lead.len() == BOM.len() {
                    self.lead.clear();
                }
                continue;
            }
            if b.is_ascii_whitespace() {
                rest = &rest[1..];
                continue;
            }
            self.mode = if b == b'{' { Mode::Body } else { Mode::Sse };
            return rest;
        }
        rest
    }

    /// Ends the call. `prompt_estimate` is only called when usage has to be estimated.
    pub fn finish(self, end: StreamEnd, prompt_estimate: impl FnOnce() -> u64) -> UsageReport {
        self.conclude(end).report(prompt_estimate)
    }

    /// Ends the call, short of counting any token: the caller learns whether the report will have to count
    /// ([`Concluded::counts_tokens`]) before asking for it.
    pub fn conclude(mut self, end: StreamEnd) -> Concluded {
        let mut signal = TapSignal::default();
        if end == StreamEnd::Complete {
            if let Some(decoder) = self.decoder.as_mut() {
                let mut plain = std::mem::take(&mut self.plain);
                let ended = decoder.finish(&mut plain);
                self.consume(&plain, &mut signal);
                if ended.is_err() {
                    self.truncated = true;
                    self.obs.parse_errors += 1;
                }
            }
            match self.mode {
                Mode::Sse => {
                    let Self {
                        parser,
                        obs,
                        reader,
                        ..
                    } = &mut self;
                    parser.finish(&mut |ev| on_event(obs, *reader, ev, &mut signal));
                }
                Mode::Body if !self.body.is_empty() => self.read_body(&mut signal),
                Mode::Body | Mode::Sniff => {}
            }
        }
        if self.parser.oversized_events > 0 || self.body_overflow {
            self.obs.parse_errors += self.parser.oversized_events + u64::from(self.body_overflow);
        }
        self.concluded(end)
    }

    /// A non-streaming body: JSON, or an error body that arrived SSE-framed.
    fn read_body(&mut self, signal: &mut TapSignal) {
        let body = std::mem::take(&mut self.body);
        let start = super::wire::skip_bom(body.trim_ascii_start());
        let first = start.first().copied();
        if first == Some(b'{') {
            self.reader
                .absorb(&mut self.obs, &body, true, false, signal);
        } else if first.is_some() {
            let Self { obs, reader, .. } = self;
            let mut parser = SseParser::default();
            let mut f = |ev: SseEvent<'_>| on_event(obs, *reader, ev, signal);
            parser.push(start, &mut f);
            parser.finish(&mut f);
            if !self.obs.errored && self.obs.usage.is_none() && !self.obs.usage_unreadable {
                self.obs.parse_errors += 1;
            }
        }
    }

    fn concluded(self, end: StreamEnd) -> Concluded {
        // A body the tap could not decode says nothing about how it ended.
        let unreadable = self.decoder.is_none();
        let stream = self.mode == Mode::Sse || (self.mode == Mode::Sniff && self.labelled_sse);
        let mut obs = self.obs;
        if unreadable {
            obs.terminal = true;
            obs.parse_errors = obs.parse_errors.max(1);
        }
        let status = if obs.errored || self.http_status >= 400 {
            CallStatus::UpstreamError
        } else if let Some(reason) = obs.incomplete.take() {
            // The upstream stopped the response short and said so (Responses `incomplete`).
            obs.error_code = Some(reason);
            CallStatus::UpstreamAborted
        } else {
            match end {
                StreamEnd::ClientGone => CallStatus::ClientAborted,
                StreamEnd::UpstreamFailed => CallStatus::UpstreamAborted,
                // The upstream ended its body, but the body itself is cut: its encoding's end, or (a
                // stream) its last event never came.
                StreamEnd::Complete if self.truncated => CallStatus::UpstreamAborted,
                StreamEnd::Complete if stream && !obs.terminal => CallStatus::UpstreamAborted,
                StreamEnd::Complete => CallStatus::Ok,
            }
        };
        // An Anthropic stream cut before `message_delta` has only `message_start`'s output so far: its input
        // is exact, its output is estimated from the text that streamed.
        let output_partial = self.reader.protocol == Protocol::Anthropic
            && !obs.terminal
            && status != CallStatus::Ok;
        Concluded {
            status,
            http_status: obs.inband_status.unwrap_or(self.http_status),
            stream,
            input_excludes_cache: self.reader.protocol == Protocol::Anthropic
                && self.reader.anthropic_input == InputConvention::ExcludesCache,
            output_partial,
            obs,
        }
    }
}

/// A call the tap followed to its end, before any token is counted.
pub struct Concluded {
    status: CallStatus,
    http_status: u16,
    stream: bool,
    /// The usage's input field leaves out cache reads and writes (Anthropic's convention).
    input_excludes_cache: bool,
    /// The reported output is not the final count (see [`ResponseTap::conclude`]).
    output_partial: bool,
    obs: Observed,
}

impl Concluded {
    fn produced(&self) -> bool {
        !self.obs.reasoning.is_empty() || !self.obs.answer.is_empty()
    }

    /// Usage never arrived (or could not be read) and the call used tokens: it is estimated. An upstream error
    /// that generated nothing billed nothing.
    fn estimated(&self) -> bool {
        self.obs.usage.is_none() && (self.produced() || self.status != CallStatus::UpstreamError)
    }

    /// The reported output needs the text's count: it is partial, or its reasoning share is not reported.
    fn splits(&self) -> bool {
        let unsplit = self.obs.usage.is_some_and(|w| w.reasoning.is_none());
        (unsplit || self.output_partial) && self.produced()
    }

    /// Whether [`Concluded::report`] will count tokens (with the tokenizer): for an estimate, or to split an
    /// upstream total between reasoning and answer. Most calls report their usage and count nothing.
    pub fn counts_tokens(&self) -> bool {
        self.splits() || self.estimated()
    }

    /// What the call used. `prompt_estimate` is only called when usage has to be estimated.
    pub fn report(self, prompt_estimate: impl FnOnce() -> u64) -> UsageReport {
        let (produced, estimated) = (self.produced(), self.estimated());
        let obs = self.obs;
        let mut usage_clamped = false;
        let mut reasoning_estimated = false;
        // The text's own count: reasoning, and all output (with the closing tokens a completion adds).
        let text_tokens = || {
            let reasoning = obs.reasoning.tokens();
            let overhead = if produced { COMPLETION_OVERHEAD } else { 0 };
            (reasoning, reasoning + obs.answer.tokens() + overhead)
        };
        let (tokens, usage_source) = match obs.usage {
            Some(w) => {
                let (cached, cache_creation) =
                    (w.cached.unwrap_or(0), w.cache_creation.unwrap_or(0));
                let mut input = w.input.unwrap_or(0);
                if self.input_excludes_cache {
                    input = input.saturating_add(cached).saturating_add(cache_creation);
                }
                let (mut output, mut reasoning) = (w.output.unwrap_or(0), w.reasoning);
                let mut source = UsageSource::Reported;
                if self.output_partial && produced {
                    let (r, o) = text_tokens();
                    if o > output {
                        (output, reasoning, source) = (o, Some(r), UsageSource::Estimated);
                    }
                }
                let reasoning = reasoning.unwrap_or_else(|| {
                    reasoning_estimated = !obs.reasoning.is_empty();
                    split_reasoning(output, &obs.reasoning, &obs.answer)
                });
                let (t, clamped) = Tokens {
                    input,
                    cached,
                    cache_creation,
                    output,
                    reasoning,
                }
                .clamp();
                usage_clamped = clamped;
                (t, source)
            }
            None if estimated => {
                let (reasoning, output) = text_tokens();
                let t = Tokens {
                    input: prompt_estimate(),
                    output,
                    reasoning,
                    ..Tokens::default()
                };
                (t.clamp().0, UsageSource::Estimated)
            }
            None => (Tokens::default(), UsageSource::None),
        };
        UsageReport {
            status: self.status,
            http_status: self.http_status,
            error_code: obs.error_code,
            upstream_request_id: obs.request_id,
            response_model: obs.model,
            finish_reasons: obs.finish_reasons,
            stream: self.stream,
            tokens,
            usage_source,
            parse_errors: obs.parse_errors,
            usage_clamped,
            reasoning_estimated,
        }
    }
}

/// Reasoning tokens when the upstream reported only the total (2025-era captures): the total is exact, so
/// split it in proportion to the token counts of the two channels' text.
fn split_reasoning(output: u64, reasoning: &Transcript, answer: &Transcript) -> u64 {
    if reasoning.is_empty() {
        return 0;
    }
    let r = reasoning.tokens() as u128;
    let a = answer.tokens() as u128;
    if r == 0 {
        return 0;
    }
    ((output as u128 * r + (r + a) / 2) / (r + a)) as u64
}

fn on_event(obs: &mut Observed, reader: Reader, ev: SseEvent<'_>, signal: &mut TapSignal) {
    match ev.http_status {
        Some(status @ 400..=599) => {
            obs.inband_status = Some(status);
            obs.errored = true;
        }
        // Not an HTTP status (`:HTTP_STATUS/1000`): ignored, and counted.
        Some(status) if !(100..=599).contains(&status) => obs.parse_errors += 1,
        _ => {}
    }
    let error_event = ev.event == Some(&b"error"[..]);
    if error_event {
        obs.errored = true;
    }
    let data = ev.data.trim_ascii();
    if data == b"[DONE]" {
        obs.terminal = true;
        return;
    }
    reader.absorb(obs, data, false, error_event, signal);
    if error_event && obs.error_code.is_none() {
        obs.error_code = Some("unknown".into());
    }
}
