//! The proxy through its front door: the real app on port 0, real HTTP, a scripted upstream replaying the
//! reference's captures (or the simulator), checking both the bytes the client got and the record.

use crate::helpers::captures::*;
use crate::helpers::*;
use deepseek_meter::config::Upstream;
use deepseek_meter::usage::{CallStatus, Protocol, UsageSource};
use futures_util::StreamExt;
use proptest::prelude::*;
use std::time::Duration;

async fn post(t: &TestApp, path: &str, body: &str) -> reqwest::Response {
    t.http
        .post(t.url(path))
        .header("authorization", "Bearer sk-canary-0000abcd")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

const STREAM_REQ: &str = r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"你是谁"}],"stream":true,"enable_thinking":true}"#;
const STREAM_REQ_USAGE: &str = r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"你是谁"}],"stream":true,"stream_options":{"include_usage":true}}"#;

#[tokio::test]
async fn compat_stream_without_include_usage_gets_exact_usage_and_identical_bytes() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    up.push(Script::sse(events(COMPAT_V32_SSE)));
    // The client accepts gzip; the proxy must read the stream to strip a chunk, so it asks for identity.
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .header("accept-encoding", "gzip, deflate")
        .body(STREAM_REQ)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last_seen().header("accept-encoding"),
        Some("identity"),
        "identity forced upstream"
    );
    let id = call_id(&resp);
    let got = resp.bytes().await.unwrap();
    // The client gets the stream minus the usage-only chunk it never asked for.
    let expected: String = COMPAT_V32_SSE
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&got), expected);
    // The upstream was asked for usage; everything else in the body is the client's.
    let seen: serde_json::Value = serde_json::from_slice(&up.last_seen().body).unwrap();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    assert_eq!(seen["enable_thinking"], true);
    let r = t.record_of(&id).await;
    assert_eq!(
        (r.status, r.usage_source),
        (CallStatus::Ok, UsageSource::Reported)
    );
    assert_eq!(
        (
            r.input_tokens,
            r.output_tokens,
            r.reasoning_tokens,
            r.answer_tokens
        ),
        (4, 140, 79, 61)
    );
    assert_eq!(r.model, "deepseek-v3.2-exp");
    assert_eq!(r.protocol, Protocol::OpenAi);
    assert!(r.stream);
    assert_eq!(r.upstream_request_id.as_deref(), Some("1b2c"));
    assert!(r.ttft_ms.is_some());
}

#[tokio::test]
async fn compat_stream_with_include_usage_is_forwarded_byte_for_byte() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    up.push(Script::sse(events(COMPAT_R1_SSE)));
    let resp = post(&t, COMPAT_PATH, STREAM_REQ_USAGE).await;
    let id = call_id(&resp);
    assert_eq!(resp.bytes().await.unwrap(), COMPAT_R1_SSE.as_bytes());
    assert_eq!(
        up.last_seen().body,
        STREAM_REQ_USAGE.as_bytes(),
        "body forwarded unchanged"
    );
    let r = t.record_of(&id).await;
    assert_eq!((r.input_tokens, r.output_tokens), (13, 1436));
}

#[tokio::test]
async fn every_reference_shape_is_forwarded_unchanged_and_recorded() {
    struct Case {
        path: &'static str,
        req: &'static str,
        script: Script,
        status: CallStatus,
        http: u16,
        code: Option<&'static str>,
        tokens: (u64, u64),
        /// Reasoning tokens, from the capture's own numbers or texts.
        reasoning: u64,
        source: UsageSource,
    }
    // Expected splits, computed from the captures' texts (none of them reports reasoning_tokens).
    let message = |json: &str, pointer: &str| {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let m = v.pointer(pointer).unwrap().clone();
        (
            m["reasoning_content"].as_str().unwrap().to_owned(),
            m["content"].as_str().unwrap().to_owned(),
        )
    };
    let (r, a) = message(COMPAT_R1_JSON, "/choices/0/message");
    let compat_r1_reasoning = split_by_text(797, &r, &a);
    let (r, a) = message(NATIVE_R1_JSON, "/output/choices/0/message");
    let native_r1_reasoning = split_by_text(302, &r, &a);
    let (mut r, mut a) = (String::new(), String::new());
    for event in NATIVE_R1_SSE.split("\n\n") {
        if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
            let (er, ea) = message(data, "/output/choices/0/message");
            r.push_str(&er);
            a.push_str(&ea);
        }
    }
    let native_sse_reasoning = split_by_text(406, &r, &a);
    // A stream cut before its usage: estimated from the texts seen ("唔" thought, "DeepSeek" answered, plus
    // the hidden tokens every completion has).
    use deepseek_meter::usage::estimate::{Transcript, COMPLETION_OVERHEAD};
    let moderated_reasoning = Transcript::of("唔").tokens();
    let moderated_input = deepseek_meter::usage::estimate_prompt_tokens(
        deepseek_meter::usage::Protocol::OpenAi,
        STREAM_REQ_USAGE.as_bytes(),
    );
    let moderated_output =
        moderated_reasoning + Transcript::of("DeepSeek").tokens() + COMPLETION_OVERHEAD;
    let native_req = r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"1+1"}]},"parameters":{"incremental_output":true}}"#;
    let compat_req =
        r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"9.9和9.11谁大"}]}"#;
    let flat_err = "event: error\ndata: {\"code\":\"invalid_model_error\",\"message\":\"Unsupported model\",\"request_id\":\"r1\"}\n\n";
    let native_err = "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"InvalidParameter\",\"message\":\"Role must be user or assistant\",\"request_id\":\"7671ecd8\"}\n\n";
    let sse400 = "data: {\"error\":{\"code\":\"invalid_parameter_error\",\"param\":null,\"message\":\"Range of top_logprobs should be [0, 5]\",\"type\":\"invalid_request_error\"},\"id\":\"chatcmpl-54036480\"}\n\n";
    let mut sse400_script = Script::sse(vec![sse400.as_bytes().to_vec()]);
    sse400_script.status = 400;
    let partial: Vec<Vec<u8>> = events(COMPAT_V32_SSE).into_iter().take(2).collect();
    let mut moderated = partial.clone();
    moderated.push(b"data: {\"error\":{\"message\":\"Output data may contain inappropriate content.\",\"type\":\"data_inspection_failed\",\"param\":null,\"code\":\"data_inspection_failed\"}}\n\n".to_vec());
    let cases = vec![
        Case {
            path: COMPAT_PATH,
            req: compat_req,
            script: Script::json(200, COMPAT_R1_JSON),
            status: CallStatus::Ok,
            http: 200,
            code: None,
            tokens: (19, 797),
            reasoning: compat_r1_reasoning,
            source: UsageSource::Reported,
        },
        Case {
            path: NATIVE_PATH,
            req: native_req,
            script: Script::json(200, NATIVE_R1_JSON),
            status: CallStatus::Ok,
            http: 200,
            code: None,
            tokens: (11, 302),
            reasoning: native_r1_reasoning,
            source: UsageSource::Reported,
        },
        Case {
            path: NATIVE_PATH,
            req: native_req,
            script: Script::sse(events(NATIVE_R1_SSE)),
            status: CallStatus::Ok,
            http: 200,
            code: None,
            tokens: (11, 406),
            reasoning: native_sse_reasoning,
            source: UsageSource::Reported,
        },
        Case {
            path: NATIVE_PATH,
            req: native_req,
            script: Script::sse(vec![native_err.as_bytes().to_vec()]),
            status: CallStatus::UpstreamError,
            http: 400,
            code: Some("InvalidParameter"),
            tokens: (0, 0),
            reasoning: 0,
            source: UsageSource::None,
        },
        Case {
            path: COMPAT_PATH,
            req: STREAM_REQ_USAGE,
            script: Script::sse(vec![flat_err.as_bytes().to_vec()]),
            status: CallStatus::UpstreamError,
            http: 200,
            code: Some("invalid_model_error"),
            tokens: (0, 0),
            reasoning: 0,
            source: UsageSource::None,
        },
        Case {
            path: COMPAT_PATH,
            req: STREAM_REQ_USAGE,
            script: sse400_script,
            status: CallStatus::UpstreamError,
            http: 400,
            code: Some("invalid_parameter_error"),
            tokens: (0, 0),
            reasoning: 0,
            source: UsageSource::None,
        },
        Case {
            path: COMPAT_PATH,
            req: STREAM_REQ_USAGE,
            script: Script::sse(moderated),
            status: CallStatus::UpstreamError,
            http: 200,
            code: Some("data_inspection_failed"),
            tokens: (moderated_input, moderated_output),
            reasoning: moderated_reasoning,
            source: UsageSource::Estimated,
        },
        Case {
            path: COMPAT_PATH,
            req: compat_req,
            script: Script::json(
                401,
                r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"b02e047c"}"#,
            ),
            status: CallStatus::UpstreamError,
            http: 401,
            code: Some("invalid_api_key"),
            tokens: (0, 0),
            reasoning: 0,
            source: UsageSource::None,
        },
        Case {
            path: NATIVE_PATH,
            req: native_req,
            script: Script::json(
                429,
                r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later.","request_id":"x"}"#,
            ),
            status: CallStatus::UpstreamError,
            http: 429,
            code: Some("Throttling.RateQuota"),
            tokens: (0, 0),
            reasoning: 0,
            source: UsageSource::None,
        },
    ];
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    for (i, case) in cases.into_iter().enumerate() {
        let sent: Vec<u8> = case.script.chunks.concat();
        up.push(case.script);
        let resp = post(&t, case.path, case.req).await;
        let id = call_id(&resp);
        assert_eq!(resp.bytes().await.unwrap(), sent, "case {i}: client bytes");
        let r = t.record_of(&id).await;
        assert_eq!(r.status, case.status, "case {i}");
        assert_eq!(r.http_status, Some(case.http), "case {i}");
        assert_eq!(r.error_code.as_deref(), case.code, "case {i}");
        assert_eq!((r.input_tokens, r.output_tokens), case.tokens, "case {i}");
        assert_eq!(r.usage_source, case.source, "case {i}");
        assert_eq!(
            (r.reasoning_tokens, r.answer_tokens),
            (case.reasoning, case.tokens.1 - case.reasoning),
            "case {i}"
        );
    }
}

#[tokio::test]
async fn events_reach_the_client_before_the_upstream_sends_the_next() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    let mut script = Script::sse(events(NATIVE_R1_SSE));
    script.gated = true;
    let n = script.chunks.len();
    up.push(script);
    let resp = t
        .http
        .post(t.url(NATIVE_PATH))
        .header("x-dashscope-sse", "enable")
        .body(r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"hi"}]}}"#)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    for i in 0..n {
        // Event i must arrive while the upstream is still holding event i+1.
        let want: usize = events(NATIVE_R1_SSE)[..=i].iter().map(Vec::len).sum();
        while got.len() < want {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("event arrives")
                .unwrap()
                .unwrap();
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), want, "exactly event {i}, nothing more");
        up.gate.add_permits(1);
    }
    assert_eq!(got, NATIVE_R1_SSE.as_bytes());
}

#[tokio::test]
async fn client_abort_mid_stream_cancels_upstream_and_records_client_aborted() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    let mut script = Script::sse(events(COMPAT_V32_SSE));
    script.gated = true;
    // After its events the upstream holds the response open: only the proxy can end the connection.
    script.end = End::Stall;
    up.push(script);
    let resp = post(&t, COMPAT_PATH, STREAM_REQ).await;
    let id = call_id(&resp);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(stream);
    // The upstream notices its reader is gone when a write fails, or when it reads the close.
    up.gate.add_permits(10);
    tokio::time::timeout(Duration::from_secs(5), up.peer_gone.notified())
        .await
        .expect("upstream connection closed");
    let r = t.record_of(&id).await;
    assert_eq!(r.status, CallStatus::ClientAborted);
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert!(r.output_tokens > 0 && r.input_tokens > 0);
}

#[tokio::test]
async fn upstream_reset_and_stall_record_upstream_aborted() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start_with(up.upstream(), |s| {
        s.idle_timeout = Duration::from_millis(300)
    })
    .await;
    for end in [End::Reset, End::Stall] {
        let mut script = Script::sse(events(NATIVE_R1_SSE).into_iter().take(2).collect());
        script.end = end.clone();
        up.push(script);
        let resp = t
            .http
            .post(t.url(NATIVE_PATH))
            .header("x-dashscope-sse", "enable")
            .body(
                r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"hi"}]}}"#,
            )
            .send()
            .await
            .unwrap();
        let id = call_id(&resp);
        // The client sees the cut as a broken body, never as a clean end.
        assert!(resp.bytes().await.is_err(), "{end:?}");
        let r = t.record_of(&id).await;
        assert_eq!(r.status, CallStatus::UpstreamAborted, "{end:?}");
        // Native usage is cumulative: the last event's usage stands.
        assert_eq!(
            (r.usage_source, r.output_tokens),
            (UsageSource::Reported, 4),
            "{end:?}"
        );
    }
}

#[tokio::test]
async fn headers_routing_and_attribution() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start_with(up.upstream(), |s| {
        s.dashscope_api_key = Some("sk-injected-9999".into())
    })
    .await;

    // Client Authorization passes through; X-Meter-* are stripped; hop-by-hop headers are not forwarded.
    up.push(Script::json(200, COMPAT_R1_JSON));
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .header("authorization", "Bearer sk-client-1234")
        .header("x-meter-project", "search")
        .header("x-meter-user", "alice")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("host", "evil.example")
        .body(r#"{"model":"deepseek-r1","messages":[]}"#)
        .send()
        .await
        .unwrap();
    let id = call_id(&resp);
    resp.bytes().await.unwrap();
    let seen = up.last_seen();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-client-1234"));
    assert_eq!(seen.header("x-meter-project"), None);
    assert_eq!(seen.header("x-meter-user"), None);
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(
        seen.header("host"),
        Some(up.addr.to_string().as_str()),
        "forged Host changes nothing"
    );
    assert_eq!(seen.request_line, format!("POST {COMPAT_PATH} HTTP/1.1"));
    let r = t.record_of(&id).await;
    assert_eq!(r.project.as_deref(), Some("search"));
    assert_eq!(r.end_user.as_deref(), Some("alice"));
    assert_eq!(r.key_hint.as_deref(), Some("sk-…1234"));
    assert_eq!(r.key_fingerprint.as_ref().map(String::len), Some(12));
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        !json.contains("sk-client-1234"),
        "the key never reaches the record"
    );

    // No client Authorization: the configured key is injected, and attributed.
    up.push(Script::json(200, COMPAT_R1_JSON));
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .body(r#"{"model":"deepseek-r1"}"#)
        .send()
        .await
        .unwrap();
    let id = call_id(&resp);
    resp.bytes().await.unwrap();
    assert_eq!(
        up.last_seen().header("authorization"),
        Some("Bearer sk-injected-9999")
    );
    assert_eq!(t.record_of(&id).await.key_hint.as_deref(), Some("sk-…9999"));

    // An Authorization the proxy cannot read is still the client's: passed through, nothing injected.
    up.push(Script::json(200, COMPAT_R1_JSON));
    let odd = reqwest::header::HeaderValue::from_bytes(b"Bearer sk-\xff\xfe").unwrap();
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .header("authorization", odd)
        .body(r#"{"model":"deepseek-r1"}"#)
        .send()
        .await
        .unwrap();
    resp.bytes().await.unwrap();
    let head = up.last_seen().raw_head;
    let authorizations: Vec<&[u8]> = head
        .split(|b| *b == b'\n')
        .filter(|l| l.to_ascii_lowercase().starts_with(b"authorization:"))
        .collect();
    assert_eq!(
        authorizations,
        vec![&b"authorization: Bearer sk-\xff\xfe\r"[..]],
        "the client's bytes, and nothing injected"
    );

    // Query strings are kept; unmetered paths are forwarded and not recorded.
    up.push(Script::json(200, r#"{"object":"list","data":[]}"#));
    let before = t.records.records().len();
    let resp = t
        .http
        .get(t.url("/compatible-mode/v1/models?limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-meter-call-id"));
    assert_eq!(
        up.last_seen().request_line,
        "GET /compatible-mode/v1/models?limit=2 HTTP/1.1"
    );
    assert_eq!(t.records.records().len(), before);
}

#[tokio::test]
async fn unknown_and_traversal_paths_are_404_in_openai_shape_and_never_forwarded() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    // Raw bytes over TCP: an HTTP client would normalize the dot segments away before sending.
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/compatible-mode/../admin"),
        ("GET", "/compatible-mode/%2e%2e/admin"),
        ("GET", "/compatible-mode/%2E%2e/admin"),
        ("GET", "/api/v1/../../admin"),
        ("GET", "/compatible-mode/v1%2F..%2Fadmin"),
        ("POST", "/compatible-mode/./v1/chat/completions"),
        ("POST", "/compatible-mode/v1/x/../chat/completions"),
        (
            "POST",
            "/api/v1/services/aigc/%2e%2e/aigc/text-generation/generation",
        ),
        ("GET", "/v1/chat/completions"),
        ("GET", "/"),
    ] {
        let body = r#"{"model":"deepseek-r1","messages":[]}"#;
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_http(t.app.proxy_addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
        // Not a call: nothing is recorded, so no call id that would never find a row.
        assert!(!answer.contains("x-meter-call-id"), "{path}: {answer}");
        let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["error"]["code"], "not_found", "{path}");
        assert!(json.get("request_id").is_none(), "{json}");
    }
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    assert!(
        t.records.records().is_empty(),
        "no record for a path the proxy does not serve"
    );
    // The admin listener's unknown paths: a 404 with a JSON body, too.
    let resp = t
        .http
        .get(t.admin_url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["error"]["code"], "not_found", "{json}");
}

#[tokio::test]
async fn absolute_form_request_uri_goes_to_the_configured_upstream_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    up.push(Script::json(200, COMPAT_R1_JSON));
    let mut s = tokio::net::TcpStream::connect(t.app.proxy_addr)
        .await
        .unwrap();
    let body = r#"{"model":"deepseek-r1"}"#;
    let req = format!(
        "POST http://attacker.invalid:9/compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: attacker.invalid:9\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let seen = up.last_seen();
    assert_eq!(seen.request_line, format!("POST {COMPAT_PATH} HTTP/1.1"));
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
}

#[tokio::test]
async fn oversized_body_is_413_in_the_callers_shape_and_recorded_as_rejected() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start_with(up.upstream(), |s| s.max_body_bytes = 1024).await;
    let big = format!(
        r#"{{"model":"deepseek-r1","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let resp = post(&t, NATIVE_PATH, &big).await;
    assert_eq!(resp.status(), 413);
    let id = call_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "RequestTooLarge", "native error shape");
    let resp = post(&t, COMPAT_PATH, &big).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "RequestTooLarge",
        "openai error shape"
    );
    let r = t.record_of(&id).await;
    assert_eq!((r.status, r.http_status), (CallStatus::Rejected, Some(413)));
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn upstream_unreachable_is_502_and_recorded() {
    let (_held, refusing) = refusing_port();
    let t = TestApp::start(Upstream::Url(format!("http://{refusing}").parse().unwrap())).await;
    let resp = post(&t, COMPAT_PATH, r#"{"model":"deepseek-v3","messages":[]}"#).await;
    assert_eq!(resp.status(), 502);
    let id = call_id(&resp);
    let r = t.record_of(&id).await;
    assert_eq!(
        (r.status, r.error_code.as_deref()),
        (CallStatus::UpstreamAborted, Some("UpstreamUnavailable"))
    );
    assert_eq!(r.usage_source, UsageSource::None);
}

/// The idle timeout also covers the wait for the response head: an upstream that took the request and says
/// nothing is cut at it (not before), answered 504, and metered with the prompt estimated (it may bill it).
#[tokio::test]
async fn an_upstream_silent_before_its_headers_is_cut_at_the_idle_timeout() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start_with(up.upstream(), |s| {
        s.idle_timeout = Duration::from_millis(300)
    })
    .await;
    let mut script = Script::json(200, COMPAT_R1_JSON);
    script.head_delay = Some(Duration::from_secs(10));
    up.push(script);
    let started = std::time::Instant::now();
    let resp = post(
        &t,
        COMPAT_PATH,
        r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"9.9和9.11谁大"}]}"#,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "cut at the idle timeout: {waited:?}"
    );
    let id = call_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UpstreamTimeout");
    assert_eq!(
        up.seen.lock().unwrap().len(),
        1,
        "the request reached the upstream"
    );
    let r = t.record_of(&id).await;
    assert_eq!(
        (r.status, r.error_code.as_deref(), r.usage_source),
        (
            CallStatus::UpstreamAborted,
            Some("UpstreamTimeout"),
            UsageSource::Estimated
        )
    );
    assert!(r.input_tokens > 0, "the prompt is estimated");
}

/// `--connect-timeout-ms`: an upstream that never completes the TCP handshake (its accept queue is full, so
/// the kernel drops the SYN) is given up on at the connect timeout: 502, metered without usage.
#[tokio::test]
async fn an_upstream_that_never_accepts_is_given_up_at_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap(); // never accepts
    let addr = full.local_addr().unwrap();
    // Fill the accept queue; later handshakes get no answer.
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => queued.push(s),
            _ => break,
        }
    }
    let t = TestApp::start_with(
        Upstream::Url(format!("http://{addr}").parse().unwrap()),
        |s| s.connect_timeout = Duration::from_millis(300),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = post(&t, COMPAT_PATH, r#"{"model":"deepseek-v3","messages":[]}"#).await;
    let waited = started.elapsed();
    assert_eq!(resp.status(), 502);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "given up at the connect timeout: {waited:?}"
    );
    let r = t.record_of(&call_id(&resp)).await;
    assert_eq!(
        (r.status, r.error_code.as_deref(), r.usage_source),
        (
            CallStatus::UpstreamAborted,
            Some("UpstreamUnavailable"),
            UsageSource::None
        )
    );
    drop(queued);
}

/// A body without a request id (a bare 429) takes the upstream's `x-request-id` header; a body that has
/// one keeps its own (issue 10, defect 8).
#[tokio::test]
async fn a_body_without_a_request_id_takes_the_response_header() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    let mut bare = Script::json(
        429,
        r#"{"code":"Throttling","message":"Requests throttling triggered."}"#,
    );
    bare.headers.push((
        "x-request-id".into(),
        "a1c0561c-1dfe-98a6-a62f-983577b8bc5e".into(),
    ));
    up.push(bare);
    let mut own = Script::json(200, NATIVE_R1_JSON);
    own.headers
        .push(("x-request-id".into(), "header-id".into()));
    up.push(own);
    let native =
        r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"1+1"}]}}"#;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = post(&t, NATIVE_PATH, native).await;
        ids.push(call_id(&resp));
        resp.bytes().await.unwrap();
    }
    let bare = t.record_of(&ids[0]).await;
    assert_eq!(
        (
            bare.status,
            bare.http_status,
            bare.upstream_request_id.as_deref()
        ),
        (
            CallStatus::UpstreamError,
            Some(429),
            Some("a1c0561c-1dfe-98a6-a62f-983577b8bc5e")
        )
    );
    let own = t.record_of(&ids[1]).await;
    assert_eq!(
        own.upstream_request_id.as_deref(),
        Some("7039d8ff-89e0-9191-b4d3-0d258a7d70e1"),
        "the body's own id"
    );
}

#[tokio::test]
async fn gzip_responses_reach_the_client_compressed_and_are_still_metered() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(NATIVE_R1_JSON.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    let mut script = Script::json(200, "");
    script
        .headers
        .push(("content-encoding".into(), "gzip".into()));
    script.chunks = gz.chunks(50).map(<[u8]>::to_vec).collect();
    up.push(script);
    let resp = t
        .http
        .post(t.url(NATIVE_PATH))
        .header("accept-encoding", "gzip")
        .body(r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"1+1"}]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(up.last_seen().header("accept-encoding"), Some("gzip"));
    let id = call_id(&resp);
    assert_eq!(resp.bytes().await.unwrap(), gz);
    let r = t.record_of(&id).await;
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.usage_source),
        (11, 302, UsageSource::Reported)
    );
}

#[tokio::test]
async fn malformed_request_is_forwarded_and_metered_as_the_upstream_answers() {
    let t = TestApp::start(Upstream::Sim).await;
    let resp = post(&t, COMPAT_PATH, "{not json").await;
    assert_eq!(resp.status(), 400);
    let id = call_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "invalid_parameter_error",
        "the simulator judged it"
    );
    let r = t.record_of(&id).await;
    assert_eq!(
        (r.status, r.model.as_str()),
        (CallStatus::UpstreamError, "unknown")
    );
}

#[tokio::test]
async fn metrics_count_calls_tokens_and_errors() {
    let t = TestApp::start(Upstream::Sim).await;
    let ok = post(
        &t,
        COMPAT_PATH,
        r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    t.record_of(&call_id(&ok)).await;
    let unpriced = post(
        &t,
        COMPAT_PATH,
        r#"{"model":"deepseek-v9-preview","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    t.record_of(&call_id(&unpriced)).await;
    let err = t
        .http
        .post(t.url(COMPAT_PATH))
        .header("x-sim-fault", "429")
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    t.record_of(&call_id(&err)).await;
    let text = get_text(&t.http, &t.admin_url("/metrics")).await;
    for line in [
        r#"deepseek_meter_requests_total{model="deepseek-r1",protocol="openai",status="ok"} 1"#,
        r#"deepseek_meter_requests_total{model="other",protocol="openai",status="ok"} 1"#,
        r#"deepseek_meter_unpriced_requests_total{model="other"} 1"#,
        r#"deepseek_meter_upstream_errors_total{code="limit_requests",model="deepseek-v3"} 1"#,
        r#"deepseek_meter_tokens_total{model="deepseek-r1",type="reasoning"} 16"#,
        r#"deepseek_meter_tokens_total{model="deepseek-r1",type="answer"} 16"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(!text.contains("sk-canary"), "no key in metrics");
}

/// `deepseek_meter_upstream_errors_total` counts the upstream's errors only: our own refusal (413) is a
/// metered call, not an upstream error.
#[tokio::test]
async fn our_own_refusals_are_not_counted_as_upstream_errors() {
    let t = TestApp::start_with(Upstream::Sim, |s| s.max_body_bytes = 80).await;
    let too_large = post(
        &t,
        COMPAT_PATH,
        &format!(
            r#"{{"model":"deepseek-v3","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(100)
        ),
    )
    .await;
    assert_eq!(too_large.status(), 413);
    let refused = t.record_of(&call_id(&too_large)).await;
    assert_eq!(refused.status, CallStatus::Rejected);
    assert_eq!(refused.error_code.as_deref(), Some("RequestTooLarge"));
    let upstream_429 = t
        .http
        .post(t.url(COMPAT_PATH))
        .header("x-sim-fault", "429")
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_429.status(), 429);
    t.record_of(&call_id(&upstream_429)).await;
    let text = get_text(&t.http, &t.admin_url("/metrics")).await;
    let upstream_errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("deepseek_meter_upstream_errors_total{"))
        .collect();
    assert_eq!(
        upstream_errors,
        vec![
            r#"deepseek_meter_upstream_errors_total{code="limit_requests",model="deepseek-v3"} 1"#
        ],
        "{text}"
    );
    assert!(
        text.contains(
            r#"deepseek_meter_requests_total{model="other",protocol="openai",status="rejected"} 1"#
        ),
        "the refusal is still metered\n{text}"
    );
}

#[tokio::test]
async fn admin_token_guards_metrics() {
    let t = TestApp::start_with(Upstream::Sim, |s| s.admin_token = Some("s3cret".into())).await;
    assert_eq!(
        t.http
            .get(t.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = t
        .http
        .get(t.admin_url("/metrics"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        t.http
            .get(t.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

// ---- any split of the upstream's bytes: same client bytes, same record --------------------------------

/// How many bytes the client has once the upstream has sent the first `upstream_sent` bytes of `capture`:
/// all of them, or in strip mode the complete events among them less the usage-only chunk (an event still
/// incomplete is held back until its end arrives).
fn client_bytes_after(capture: &str, upstream_sent: usize, strip: bool) -> usize {
    if !strip {
        return upstream_sent;
    }
    let mut end = 0;
    let mut kept = 0;
    for event in capture.split_inclusive("\n\n") {
        end += event.len();
        if end > upstream_sent {
            break;
        }
        if !event.contains("\"choices\":[]") {
            kept += event.len();
        }
    }
    kept
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_split_of_the_upstream_stream_gives_the_same_client_bytes_and_record(
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        which in 0usize..3,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let (path, req, capture, native) = [
                (COMPAT_PATH, STREAM_REQ, COMPAT_V32_SSE, false),
                (COMPAT_PATH, STREAM_REQ_USAGE, COMPAT_R1_SSE, false),
                (NATIVE_PATH, r#"{"model":"deepseek-r1","input":{"messages":[]}}"#, NATIVE_R1_SSE, true),
            ][which];
            let up = ScriptedUpstream::start().await;
            let t = TestApp::start(up.upstream()).await;
            let strip = path == COMPAT_PATH && req == STREAM_REQ; // the proxy drops the usage-only chunk
            let pieces: Vec<Vec<u8>> = split(capture.as_bytes(), &cuts).into_iter().filter(|c| !c.is_empty()).collect();
            let mut results = Vec::new();
            for (chunks, lockstep) in [(vec![capture.as_bytes().to_vec()], false), (pieces, true)] {
                let n = chunks.len();
                let mut script = Script::sse(chunks.clone());
                script.gated = lockstep;
                up.push(script);
                let mut rb = t.http.post(t.url(path)).body(req);
                if native {
                    rb = rb.header("x-dashscope-sse", "enable");
                }
                let resp = rb.send().await.unwrap();
                let id = call_id(&resp);
                let mut stream = resp.bytes_stream();
                let mut got = Vec::new();
                if lockstep {
                    // The upstream sends piece i+1 only once the client has what piece i gives it: the proxy
                    // sees every piece on its own, and must forward each as it comes.
                    for i in 0..n {
                        let upstream_sent: usize = chunks[..=i].iter().map(Vec::len).sum();
                        let want = client_bytes_after(capture, upstream_sent, strip);
                        while got.len() < want {
                            let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
                                .await
                                .expect("the piece reaches the client")
                                .unwrap()
                                .unwrap();
                            got.extend_from_slice(&frame);
                        }
                        assert_eq!(got.len(), want, "piece {i}: no more than it gives");
                        up.gate.add_permits(1);
                    }
                }
                while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the stream ends") {
                    got.extend_from_slice(&frame.unwrap());
                }
                let mut r = t.record_of(&id).await;
                // Identity and timing differ per call by design; everything metered must not.
                r.call_id = uuid::Uuid::nil();
                r.started_at = chrono::DateTime::UNIX_EPOCH;
                r.finished_at = chrono::DateTime::UNIX_EPOCH;
                r.ttft_ms = None;
                r.duration_ms = 0.0;
                results.push((got, r));
            }
            assert_eq!(results[0], results[1]);
        });
    }
}

#[tokio::test]
async fn slow_clients_are_cut_at_the_header_timeout_and_the_connection_cap_holds() {
    let t = TestApp::start_with(Upstream::Sim, |s| {
        s.max_connections = 2;
        s.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // Two slowloris clients take both slots: half a request head, then nothing.
    let mut closed_at = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(slow_client(t.app.proxy_addr).await);
    }
    // A third client can only be accepted once the server has cut a slow one.
    let resp = post(
        &t,
        COMPAT_PATH,
        r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let served_at = std::time::Instant::now();
    for s in slow {
        let connected_before = s.connected_before;
        let held = s.held_for(Duration::from_secs(10)).await;
        assert!(
            held >= Duration::from_millis(300),
            "cut at the header timeout, not before: held {held:?}"
        );
        closed_at.push(connected_before + held);
    }
    assert!(
        closed_at.iter().min().unwrap() <= &served_at,
        "served only after a slot freed"
    );
}

#[tokio::test]
async fn hostile_upstream_bodies_reach_the_client_unchanged_and_never_fail_the_call() {
    let up = ScriptedUpstream::start().await;
    let t = TestApp::start(up.upstream()).await;
    let five_mib = "x".repeat(5 << 20);
    let cases: Vec<(&str, Script)> = vec![
        // Invalid UTF-8 inside an event, then a valid usage chunk and [DONE].
        ("invalid utf-8", {
            let mut bad = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
            bad.extend_from_slice(&[0xff, 0xfe, 0xfd]);
            bad.extend_from_slice(b"\"}}]}\n\n");
            let mut chunks = vec![bad];
            chunks.extend(events(COMPAT_R1_SSE).into_iter().skip(5));
            Script::sse(chunks)
        }),
        // One SSE line of 5 MiB (over the tap's 4 MiB event limit), then the usage chunk and [DONE].
        ("5 MiB line", {
            let mut chunks: Vec<Vec<u8>> = format!("data: {{\"pad\":\"{five_mib}\"}}\n\n")
                .into_bytes()
                .chunks(64 << 10)
                .map(<[u8]>::to_vec)
                .collect();
            chunks.extend(events(COMPAT_R1_SSE).into_iter().skip(5));
            Script::sse(chunks)
        }),
        // Truncated JSON body.
        (
            "truncated json",
            Script::json(
                200,
                r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"#,
            ),
        ),
        // A non-streaming body far bigger than usual (20 MiB, over the tap's 16 MiB limit).
        ("20 MiB body", {
            let mut s = Script::json(200, "");
            s.chunks = format!(
                "{{\"pad\":\"{}\",\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}}}}",
                "y".repeat(20 << 20)
            )
            .into_bytes()
            .chunks(256 << 10)
            .map(<[u8]>::to_vec)
            .collect();
            s
        }),
    ];
    for (name, script) in cases {
        let sent = script.chunks.concat();
        up.push(script);
        let resp = post(
            &t,
            COMPAT_PATH,
            r#"{"model":"deepseek-r1","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .await;
        let id = call_id(&resp);
        assert_eq!(resp.status(), 200, "{name}");
        assert!(
            resp.bytes().await.unwrap() == sent,
            "{name}: client bytes unchanged"
        );
        let r = t.record_of(&id).await;
        match name {
            // The damaged or oversized event is skipped; the stream's own usage still counts.
            "invalid utf-8" | "5 MiB line" => {
                assert_eq!(
                    (r.status, r.usage_source, r.output_tokens),
                    (CallStatus::Ok, UsageSource::Reported, 1436),
                    "{name}"
                )
            }
            // No readable usage in a successful response: estimated (the prompt at least), never 0.
            _ => {
                assert_eq!(
                    (r.status, r.usage_source),
                    (CallStatus::Ok, UsageSource::Estimated),
                    "{name}"
                );
                assert!(r.input_tokens > 0, "{name}: the prompt is estimated");
            }
        }
    }
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains("deepseek_meter_response_parse_errors_total 4"),
        "{metrics}"
    );
}
