//! The zero-delay upstream: a 600-byte OpenAI-compatible chat completion, or a stream of `x-mock-chunks`
//! delta events (default 64) `x-mock-interval-ms` apart (default 0). Each streamed event carries the
//! wall-clock time it was sent (`"content":"t<unix nanos>"`), so a client on this machine can tell how
//! long each event spent in between. Usage comes as on the platform: in the completion, and in a final
//! usage-only chunk only when the request asked for `include_usage`.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

pub const COMPLETION: &str = r#"{"choices":[{"message":{"content":"我是DeepSeek，由深度求索公司开发的智能助手。我可以帮你回答问题、写作、编程、翻译和分析数据。有什么可以帮你的吗？","reasoning_content":"用户问我是谁，我应该简短地介绍自己。","role":"assistant"},"finish_reason":"stop","index":0,"logprobs":null}],"object":"chat.completion","usage":{"prompt_tokens":10,"completion_tokens":61,"total_tokens":71,"completion_tokens_details":{"reasoning_tokens":21},"prompt_tokens_details":{"cached_tokens":0}},"created":1759218000,"system_fingerprint":null,"model":"deepseek-v3.2-exp","id":"chatcmpl-5f1f8ba1-7d0e-9c63-a5b8-3c1c9d5b1e2f"}"#;

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper::service::service_fn(handle),
                )
                .await;
        });
    }
}

fn header_num(req: &Request<Incoming>, name: &str, default: u64) -> u64 {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn handle(req: Request<Incoming>) -> Result<Response<ChannelBody>, Infallible> {
    let chunks = header_num(&req, "x-mock-chunks", 64);
    let interval = Duration::from_millis(header_num(&req, "x-mock-interval-ms", 0));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let has = |needle: &[u8]| memchr::memmem::find(&body, needle).is_some();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    if !has(br#""stream":true"#) {
        let _ = tx.try_send(Bytes::from_static(COMPLETION.as_bytes()));
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(ChannelBody(rx))
            .unwrap_or_default());
    }
    let include_usage = has(br#""include_usage":true"#);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let id = "chatcmpl-5f1f8ba1-7d0e-9c63-a5b8-3c1c9d5b1e2f";
        for i in 0..chunks {
            if !interval.is_zero() {
                tokio::time::sleep_until(start + interval * i as u32).await;
            }
            let event = format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{}\",\"reasoning_content\":null}},\"finish_reason\":null,\"index\":0,\"logprobs\":null}}],\"object\":\"chat.completion.chunk\",\"usage\":null,\"created\":1759218000,\"system_fingerprint\":null,\"model\":\"deepseek-v3.2-exp\",\"id\":\"{id}\"}}\n\n",
                now_nanos()
            );
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
        let mut tail = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"\"}},\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":null}}],\"object\":\"chat.completion.chunk\",\"usage\":null,\"created\":1759218000,\"system_fingerprint\":null,\"model\":\"deepseek-v3.2-exp\",\"id\":\"{id}\"}}\n\n");
        if include_usage {
            tail.push_str(&format!("data: {{\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{chunks},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0}}}},\"created\":1759218000,\"system_fingerprint\":null,\"model\":\"deepseek-v3.2-exp\",\"id\":\"{id}\"}}\n\n", chunks + 10));
        }
        tail.push_str("data: [DONE]\n\n");
        let _ = tx.send(Bytes::from(tail)).await;
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream;charset=UTF-8")
        .body(ChannelBody(rx))
        .unwrap_or_default())
}

/// A body fed by a channel: each message is one frame (one chunk on the wire).
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Default for ChannelBody {
    fn default() -> Self {
        ChannelBody(tokio::sync::mpsc::channel(1).1)
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
