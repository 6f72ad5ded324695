//! The metered response body: forwards each upstream frame as it arrives and tees it into the tap.
//!
//! One upstream read becomes one client write, unchanged. The exception is strip mode (an OpenAI-compatible
//! stream whose client did not ask for usage, so the proxy asked for it): there the body cuts the stream at
//! event boundaries, drops the usage-only chunk, and holds back only the bytes of an event that has not
//! completed yet.
//!
//! The call's record is produced exactly once, by whichever comes first: the upstream's end of body, an
//! upstream error or idle timeout, or `Drop` (the client went away, or the server aborted the connection at
//! the drain deadline). Dropping the body drops the upstream response too, which cancels the upstream call.

use super::call::CallContext;
use super::Proxy;
use crate::usage::sse::EventSplitter;
use crate::usage::tap::StreamEnd;
use crate::usage::{self, ResponseTap};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream went silent for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream idle for longer than {0:?}")]
pub struct IdleTimeout(std::time::Duration);

pub struct MeteredBody<B> {
    inner: B,
    /// `Some` until the call is finished.
    call: Option<(ResponseTap, CallContext)>,
    proxy: Proxy,
    splitter: Option<EventSplitter>,
    idle: Pin<Box<tokio::time::Sleep>>,
    first_token: Option<Instant>,
    /// Bytes to send before ending the client's stream (strip mode's last partial event, or the last frame
    /// held back for a strict-durability ack).
    tail: Option<Bytes>,
    /// Strict durability: the call's end waits until its record is fsynced.
    ack: Option<tokio::sync::oneshot::Receiver<()>>,
    ended: bool,
}

impl<B> MeteredBody<B> {
    pub fn new(
        inner: B,
        tap: ResponseTap,
        ctx: CallContext,
        proxy: Proxy,
        strip_usage_chunk: bool,
    ) -> Self {
        let idle = Box::pin(tokio::time::sleep(proxy.idle_timeout()));
        MeteredBody {
            inner,
            call: Some((tap, ctx)),
            proxy,
            splitter: strip_usage_chunk.then(EventSplitter::default),
            idle,
            first_token: None,
            tail: None,
            ack: None,
            ended: false,
        }
    }

    fn finish(&mut self, end: StreamEnd) {
        if let Some((tap, ctx)) = self.call.take() {
            let body = ctx.request_body.clone();
            let protocol = ctx.protocol;
            let concluded = tap.conclude(end);
            let prompt = || usage::estimate_prompt_tokens(protocol, &body);
            let report = if concluded.counts_tokens() {
                super::call::counting(|| concluded.report(prompt))
            } else {
                concluded.report(prompt)
            };
            let state = self.proxy.state();
            state
                .metrics
                .instance
                .tap_trouble(report.parse_errors, report.usage_clamped);
            let trace = ctx.trace;
            self.ack = state
                .meter
                .finish(ctx.into_facts(report, self.first_token), trace);
        }
    }

    fn tap(&mut self, bytes: &[u8]) -> usage::TapSignal {
        let Some((tap, _)) = self.call.as_mut() else {
            return usage::TapSignal::default();
        };
        let signal = tap.feed(bytes);
        if signal.first_token && self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        signal
    }

    /// What the client gets of one upstream frame (`None`: nothing yet).
    fn on_data(&mut self, data: Bytes) -> Option<Bytes> {
        let Some(splitter) = self.splitter.as_mut() else {
            self.tap(&data);
            return Some(data);
        };
        let events = splitter.push(&data);
        let mut kept: Option<BytesMut> = None;
        let mut single: Option<Bytes> = None;
        for event in events {
            if is_only_usage(self.tap(&event)) {
                continue;
            }
            match (&mut kept, single.take()) {
                (Some(k), _) => k.extend_from_slice(&event),
                (None, None) => single = Some(event),
                (None, Some(first)) => {
                    let mut k = BytesMut::from(&first[..]);
                    k.extend_from_slice(&event);
                    kept = Some(k);
                }
            }
        }
        kept.map(BytesMut::freeze).or(single)
    }
}

/// The piece was exactly the usage-only event the proxy asked for (never a piece that holds more: a stream
/// the splitter could not cut into events reaches the client whole).
fn is_only_usage(signal: usage::TapSignal) -> bool {
    signal.usage_only_chunk && signal.events == 1
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(ack) = this.ack.as_mut() {
                // Strict durability: nothing more reaches the client until the record is on disk. A dropped
                // sender (the writer stopped) releases the call too: the record is then counted unrecorded.
                if Pin::new(ack).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.ack = None;
            }
            if let Some(tail) = this.tail.take() {
                return Poll::Ready(Some(Ok(Frame::data(tail))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.proxy.idle_timeout();
                    this.idle.as_mut().reset(deadline);
                    let out = match frame.into_data() {
                        Ok(data) => this.on_data(data).map(Frame::data),
                        Err(trailers) => Some(trailers),
                    };
                    if this.splitter.is_none() && this.inner.is_end_stream() {
                        // A sized body can be complete before the library polls for its end. Its last
                        // frame waits for a strict ack like the end of a stream does.
                        this.ended = true;
                        this.finish(StreamEnd::Complete);
                        if this.ack.is_some() {
                            this.tail = out.and_then(|f| f.into_data().ok());
                            continue;
                        }
                    }
                    if let Some(frame) = out {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish(StreamEnd::UpstreamFailed);
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if let Some(rest) = this.splitter.as_mut().and_then(EventSplitter::finish) {
                        if !is_only_usage(this.tap(&rest)) {
                            this.tail = Some(rest);
                        }
                    }
                    this.finish(StreamEnd::Complete);
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.finish(StreamEnd::UpstreamFailed);
                        this.ended = true;
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(
                            this.proxy.idle_timeout(),
                        )))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.tail.is_none() && self.ack.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.splitter.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.finish(StreamEnd::ClientGone);
    }
}
