//! The response tap: follows one upstream response as it streams past and says what the call used.
//!
//! The proxy hands every chunk to [`ResponseTap::feed`] on its way to the client and calls
//! [`ResponseTap::finish`] once, with how the stream ended. The tap never changes or delays bytes; it keeps
//! only what the record needs (ids, the latest usage, error code, running text tallies for the estimator)
//! plus, for non-streaming bodies, the body itself up to [`MAX_JSON_BODY`].
//!
//! Shapes handled (reference §1–§2, §7): compat JSON and SSE (`data: ` + `[DONE]`, usage-only chunk with
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

use super::decode::BodyDecoder;
use super::estimate::{Transcript, COMPLETION_OVERHEAD};
use super::sse::{SseEvent, SseParser};
use super::wire::{
    error_code_of, is_finished, parse_wire, Message, UsageRead, Wire, WireTokens, BOM,
};
use super::{Protocol, RequestInfo, Tokens, UsageSource};
use std::borrow::Cow;

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
    /// The response was an event stream.
    pub stream: bool,
    pub tokens: Tokens,
    pub usage_source: UsageSource,
    /// Events or bodies the tap could not parse (the client still got them).
    pub parse_errors: u64,
    /// The upstream's usage was inconsistent (cached > input or reasoning > output) and was clamped.
    pub usage_clamped: bool,
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

#[derive(Debug, Default)]
struct Observed {
    request_id: Option<String>,
    model: Option<String>,
    usage: Option<WireTokens>,
    /// A usage object arrived whose counts are not counts.
    usage_unreadable: bool,
    error_code: Option<String>,
    errored: bool,
    inband_status: Option<u16>,
    terminal: bool,
    reasoning: Transcript,
    answer: Transcript,
    saw_token: bool,
    parse_errors: u64,
}

pub struct ResponseTap {
    protocol: Protocol,
    http_status: u16,
    /// The response was labelled `text/event-stream`.
    labelled_sse: bool,
    mode: Mode,
    incremental: bool,
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
            protocol,
            http_status,
            labelled_sse,
            mode: if labelled_sse {
                Mode::Sniff
            } else {
                Mode::Body
            },
            incremental: request.incremental_output,
            decoder: BodyDecoder::for_encoding(content_encoding),
            truncated: false,
            plain: Vec::new(),
            lead: Vec::new(),
            parser: SseParser::default(),
            body: Vec::new(),
            body_overflow: false,
            obs: Observed {
                reasoning: Transcript::new(),
                answer: Transcript::new(),
                ..Observed::default()
            },
        }
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
                    protocol,
                    incremental,
                    ..
                } = self;
                parser.push(bytes, &mut |ev| {
                    signal.events += 1;
                    on_event(obs, *protocol, *incremental, ev, signal)
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
                        protocol,
                        incremental,
                        ..
                    } = &mut self;
                    parser
                        .finish(&mut |ev| on_event(obs, *protocol, *incremental, ev, &mut signal));
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
            match parse_wire(&body) {
                Some((w, partial)) => {
                    self.obs.parse_errors += u64::from(partial);
                    absorb(
                        &mut self.obs,
                        self.protocol,
                        self.incremental,
                        w,
                        false,
                        signal,
                    );
                    self.obs.terminal = true;
                }
                None => self.obs.parse_errors += 1,
            }
        } else if first.is_some() {
            let Self {
                obs,
                protocol,
                incremental,
                ..
            } = self;
            let mut parser = SseParser::default();
            let mut f = |ev: SseEvent<'_>| on_event(obs, *protocol, *incremental, ev, signal);
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
        Concluded {
            status,
            http_status: obs.inband_status.unwrap_or(self.http_status),
            stream,
            obs,
        }
    }
}

/// A call the tap followed to its end, before any token is counted.
pub struct Concluded {
    status: CallStatus,
    http_status: u16,
    stream: bool,
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

    /// Whether [`Concluded::report`] will count tokens (with the tokenizer): for an estimate, or to split an
    /// upstream total between reasoning and answer. Most calls report their usage and count nothing.
    pub fn counts_tokens(&self) -> bool {
        let splits =
            self.obs.usage.is_some_and(|w| w.reasoning.is_none()) && !self.obs.reasoning.is_empty();
        splits || self.estimated()
    }

    /// What the call used. `prompt_estimate` is only called when usage has to be estimated.
    pub fn report(self, prompt_estimate: impl FnOnce() -> u64) -> UsageReport {
        let (produced, estimated) = (self.produced(), self.estimated());
        let obs = self.obs;
        let mut usage_clamped = false;
        let (tokens, usage_source) = match obs.usage {
            Some(w) => {
                let reasoning = w
                    .reasoning
                    .unwrap_or_else(|| split_reasoning(w.output, &obs.reasoning, &obs.answer));
                let (t, clamped) = Tokens::clamped(w.input, w.cached, w.output, reasoning);
                usage_clamped = clamped;
                (t, UsageSource::Reported)
            }
            None if estimated => {
                let reasoning = obs.reasoning.tokens();
                let overhead = if produced { COMPLETION_OVERHEAD } else { 0 };
                let output = reasoning + obs.answer.tokens() + overhead;
                let (t, _) = Tokens::clamped(prompt_estimate(), 0, output, reasoning);
                (t, UsageSource::Estimated)
            }
            None => (Tokens::default(), UsageSource::None),
        };
        UsageReport {
            status: self.status,
            http_status: self.http_status,
            error_code: obs.error_code,
            upstream_request_id: obs.request_id,
            response_model: obs.model,
            stream: self.stream,
            tokens,
            usage_source,
            parse_errors: obs.parse_errors,
            usage_clamped,
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

fn on_event(
    obs: &mut Observed,
    protocol: Protocol,
    incremental: bool,
    ev: SseEvent<'_>,
    signal: &mut TapSignal,
) {
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
    match parse_wire(data) {
        Some((w, partial)) => {
            obs.parse_errors += u64::from(partial);
            absorb(obs, protocol, incremental, w, error_event, signal);
        }
        None => obs.parse_errors += 1,
    }
    if error_event && obs.error_code.is_none() {
        obs.error_code = Some("unknown".into());
    }
}

fn absorb(
    obs: &mut Observed,
    protocol: Protocol,
    incremental: bool,
    w: Wire<'_>,
    error_event: bool,
    signal: &mut TapSignal,
) {
    if obs.request_id.is_none() {
        let id = w
            .request_id
            .as_deref()
            .or_else(|| w.id.as_deref().map(|i| i.trim_start_matches("chatcmpl-")));
        obs.request_id = id.filter(|s| !s.is_empty()).map(str::to_owned);
    }
    if obs.model.is_none() {
        obs.model = w.model.map(Cow::into_owned);
    }
    if let Some(error) = w.error.as_ref().filter(|e| !e.is_null()) {
        obs.errored = true;
        obs.error_code = Some(error_code_of(error));
    }
    let flat_code = w
        .code
        .as_ref()
        .and_then(|c| c.as_str())
        .filter(|c| !c.is_empty());
    if let Some(code) = flat_code {
        if error_event || (w.choices.is_none() && w.output.is_none() && w.usage.is_none()) {
            obs.errored = true;
            obs.error_code = Some(code.to_owned());
        }
    }
    let usage = match w.usage.as_ref().map(|u| u.read()) {
        Some(UsageRead::Read(u)) => Some(u),
        Some(UsageRead::Unreadable) => {
            obs.usage_unreadable = true;
            obs.parse_errors += 1;
            None
        }
        Some(UsageRead::Absent) | None => None,
    };
    if let Some(u) = usage {
        // Compat reports once; native reports cumulative totals in every event: the latest wins either way.
        obs.usage = Some(u);
    }
    if let Some(choices) = &w.choices {
        if choices.is_empty() && usage.is_some() {
            signal.usage_only_chunk = true;
        }
        for c in choices {
            tally_message(obs, c.delta.as_ref().or(c.message.as_ref()), true);
            if c.finish_reason.as_deref().is_some_and(is_finished)
                && protocol == Protocol::DashScope
            {
                obs.terminal = true;
            }
        }
    }
    if let Some(out) = &w.output {
        let accumulate = incremental || protocol == Protocol::OpenAi;
        for c in out.choices.iter().flatten() {
            tally_message(obs, c.message.as_ref().or(c.delta.as_ref()), accumulate);
            if c.finish_reason.as_deref().is_some_and(is_finished) {
                obs.terminal = true;
            }
        }
        if let Some(text) = out.text.as_deref().filter(|t| !t.is_empty()) {
            obs.saw_token = true;
            if accumulate {
                obs.answer.add(text);
            } else {
                obs.answer.replace(text);
            }
        }
        if out.finish_reason.as_deref().is_some_and(is_finished) {
            obs.terminal = true;
        }
    }
}

fn tally_message(obs: &mut Observed, message: Option<&Message<'_>>, accumulate: bool) {
    let Some(m) = message else { return };
    let reasoning = m.reasoning_content.as_deref().unwrap_or("");
    let content = m.content.as_deref().unwrap_or("");
    let tools = m
        .tool_calls
        .iter()
        .flatten()
        .filter_map(|t| t.function.as_ref());
    let has_tools = tools.clone().any(|f| {
        f.name.as_deref().is_some_and(|n| !n.is_empty())
            || f.arguments.as_deref().is_some_and(|a| !a.is_empty())
    });
    if !reasoning.is_empty() || !content.is_empty() || has_tools {
        obs.saw_token = true;
    }
    if accumulate {
        obs.reasoning.add(reasoning);
        obs.answer.add(content);
    } else {
        // Full-text mode: each event repeats everything so far.
        if !reasoning.is_empty() {
            obs.reasoning.replace(reasoning);
        }
        if content.is_empty() && !has_tools {
            return;
        }
        obs.answer.replace(content);
    }
    for f in tools {
        obs.answer.add(f.name.as_deref().unwrap_or(""));
        obs.answer.add(f.arguments.as_deref().unwrap_or(""));
    }
}
