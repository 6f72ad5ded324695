//! The simulator through the proxy: model semantics, both protocols, every scripted fault, determinism.

use crate::helpers::*;
use deepseek_meter::config::Upstream;
use deepseek_meter::sim::{SimOptions, SimServer};
use deepseek_meter::usage::{CallStatus, UsageSource};
use serde_json::Value;

fn compat_req(model: &str, stream: bool, thinking: bool) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "请问 1+1 是多少？"}],
                       "stream": stream, "enable_thinking": thinking})
    .to_string()
}

fn native_req(model: &str, thinking: bool, incremental: bool) -> String {
    serde_json::json!({"model": model, "input": {"messages": [{"role": "user", "content": "请问 1+1 是多少？"}]},
                       "parameters": {"enable_thinking": thinking, "incremental_output": incremental, "result_format": "message"}})
    .to_string()
}

async fn send(
    t: &TestApp,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> (reqwest::Response, String) {
    let mut rb = t.http.post(t.url(path)).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    let id = call_id(&resp);
    (resp, id)
}

#[tokio::test]
async fn thinking_follows_the_platform_per_model() {
    let t = TestApp::start(Upstream::Sim).await;
    for (model, flag, thinks) in [
        ("deepseek-v3", true, false),
        ("deepseek-r1", false, true),
        ("deepseek-r1-0528", false, true),
        ("deepseek-r1-distill-qwen-7b", false, true),
        ("deepseek-v3.1", false, false),
        ("deepseek-v3.1", true, true),
        ("deepseek-v3.2-exp", false, false),
        ("deepseek-v3.2-exp", true, true),
    ] {
        let (resp, id) = send(
            &t,
            COMPAT_PATH,
            compat_req(model, false, flag),
            &[("x-sim-chunks", "5")],
        )
        .await;
        let body: Value = resp.json().await.unwrap();
        let reasoning = body["choices"][0]["message"]["reasoning_content"]
            .as_str()
            .unwrap_or("");
        assert_eq!(
            !reasoning.is_empty(),
            thinks,
            "{model} enable_thinking={flag}"
        );
        let r = t.record_of(&id).await;
        assert_eq!(r.reasoning_tokens, if thinks { 5 } else { 0 }, "{model}");
        assert_eq!(r.answer_tokens, 5);
        assert_eq!(body["usage"]["completion_tokens"], r.output_tokens);
        assert_eq!(body["usage"]["prompt_tokens"], r.input_tokens);
    }
}

#[tokio::test]
async fn both_protocols_stream_and_not_agree_on_usage() {
    let t = TestApp::start(Upstream::Sim).await;
    let sse = [("x-dashscope-sse", "enable"), ("x-sim-chunks", "7")];
    let plain = [("x-sim-chunks", "7")];
    let calls = [
        send(
            &t,
            COMPAT_PATH,
            compat_req("deepseek-r1", false, false),
            &plain,
        )
        .await,
        send(
            &t,
            COMPAT_PATH,
            compat_req("deepseek-r1", true, false),
            &plain,
        )
        .await,
        send(
            &t,
            NATIVE_PATH,
            native_req("deepseek-r1", false, true),
            &plain,
        )
        .await,
        send(
            &t,
            NATIVE_PATH,
            native_req("deepseek-r1", false, true),
            &sse,
        )
        .await,
        send(
            &t,
            NATIVE_PATH,
            native_req("deepseek-r1", false, false),
            &sse,
        )
        .await,
    ];
    for (i, (resp, id)) in calls.into_iter().enumerate() {
        let text = resp.text().await.unwrap();
        let r = t.record_of(&id).await;
        assert_eq!(
            (r.status, r.usage_source),
            (CallStatus::Ok, UsageSource::Reported),
            "call {i}: {text}"
        );
        assert_eq!(
            (r.output_tokens, r.reasoning_tokens, r.answer_tokens),
            (14, 7, 7),
            "call {i}"
        );
        assert!(r.upstream_request_id.is_some(), "call {i}");
        assert!(
            !text.contains("\"choices\":[]"),
            "call {i}: no usage-only chunk the client did not ask for"
        );
    }
}

#[tokio::test]
async fn cached_tokens_and_tool_calls() {
    let t = TestApp::start(Upstream::Sim).await;
    let mut body: Value = serde_json::from_str(&compat_req("deepseek-v3.1", true, false)).unwrap();
    body["tools"] = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);
    let (resp, id) = send(
        &t,
        COMPAT_PATH,
        body.to_string(),
        &[("x-sim-cached-tokens", "3")],
    )
    .await;
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("get_weather") && text.contains("\"finish_reason\":\"tool_calls\""),
        "{text}"
    );
    let r = t.record_of(&id).await;
    assert_eq!((r.cached_tokens, r.output_tokens), (3, 3));
    assert!(r.ttft_ms.is_some(), "a tool call counts as the first token");
}

/// Every byte the client received, up to the end of the body or the error that cut it.
async fn received(resp: reqwest::Response) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        got.extend_from_slice(&chunk);
    }
    got
}

/// (output, reasoning, answer) as the bytes the client received say, read here independently of the tap:
/// the last usage object the upstream sent (`reported`); or the estimate from the texts it streamed
/// (`estimated`: each text's estimated tokens, plus the hidden tokens every completion has); or none.
fn tokens_the_client_saw(body: &[u8], source: UsageSource) -> (u64, u64, u64) {
    use deepseek_meter::usage::estimate::{Transcript, COMPLETION_OVERHEAD};
    let events: Vec<Value> = String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    match source {
        UsageSource::None => (0, 0, 0),
        UsageSource::Reported => {
            let usage = events
                .iter()
                .rev()
                .find_map(|e| e.get("usage").filter(|u| u.is_object()))
                .expect("a usage object");
            let output = usage["output_tokens"]
                .as_u64()
                .or(usage["completion_tokens"].as_u64())
                .unwrap();
            let details = usage
                .get("output_tokens_details")
                .or(usage.get("completion_tokens_details"));
            let reasoning = details.map_or(0, |d| d["reasoning_tokens"].as_u64().unwrap_or(0));
            (output, reasoning, output - reasoning)
        }
        UsageSource::Estimated => {
            let (mut reasoning, mut answer) = (String::new(), String::new());
            for delta in events.iter().filter_map(|e| e.pointer("/choices/0/delta")) {
                reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
                answer.push_str(delta["content"].as_str().unwrap_or(""));
            }
            let (r, a) = (
                Transcript::of(&reasoning).tokens(),
                Transcript::of(&answer).tokens(),
            );
            let overhead = if r + a > 0 { COMPLETION_OVERHEAD } else { 0 };
            (r + a + overhead, r, a + overhead)
        }
    }
}

#[tokio::test]
async fn every_scripted_fault_is_metered() {
    let t = TestApp::start_with(Upstream::Sim, |s| {
        s.idle_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    struct Case {
        native: bool,
        stream: bool,
        fault: &'static str,
        http: u16,
        status: CallStatus,
        code: Option<&'static str>,
        source: UsageSource,
    }
    let c = |native, stream, fault, http, status, code, source| Case {
        native,
        stream,
        fault,
        http,
        status,
        code,
        source,
    };
    use CallStatus::*;
    use UsageSource as U;
    let cases = [
        c(
            false,
            false,
            "401",
            401,
            UpstreamError,
            Some("invalid_api_key"),
            U::None,
        ),
        c(
            true,
            false,
            "401",
            401,
            UpstreamError,
            Some("InvalidApiKey"),
            U::None,
        ),
        c(
            false,
            true,
            "429",
            429,
            UpstreamError,
            Some("limit_requests"),
            U::None,
        ),
        c(
            true,
            true,
            "429",
            200,
            UpstreamError,
            Some("Throttling.RateQuota"),
            U::None,
        ),
        c(
            false,
            false,
            "500",
            500,
            UpstreamError,
            Some("internal_error"),
            U::None,
        ),
        c(
            true,
            false,
            "500",
            500,
            UpstreamError,
            Some("InternalError"),
            U::None,
        ),
        c(
            false,
            true,
            "sse-error",
            400,
            UpstreamError,
            Some("invalid_parameter_error"),
            U::None,
        ),
        c(
            true,
            true,
            "sse-error",
            200,
            UpstreamError,
            Some("InvalidParameter"),
            U::None,
        ),
        c(
            false,
            true,
            "moderation",
            200,
            UpstreamError,
            Some("data_inspection_failed"),
            U::Estimated,
        ),
        c(
            true,
            true,
            "moderation",
            200,
            UpstreamError,
            Some("DataInspectionFailed"),
            U::Reported,
        ),
        c(
            false,
            true,
            "reset",
            200,
            UpstreamAborted,
            None,
            U::Estimated,
        ),
        c(true, true, "reset", 200, UpstreamAborted, None, U::Reported),
        c(
            false,
            true,
            "stall",
            200,
            UpstreamAborted,
            None,
            U::Estimated,
        ),
        c(true, true, "stall", 200, UpstreamAborted, None, U::Reported),
        c(false, false, "garbage", 200, Ok, None, U::Estimated),
        c(
            false,
            true,
            "garbage",
            200,
            UpstreamAborted,
            None,
            U::Estimated,
        ),
    ];
    for case in cases {
        let (path, body) = if case.native {
            (NATIVE_PATH, native_req("deepseek-v3.2-exp", true, true))
        } else {
            (
                COMPAT_PATH,
                compat_req("deepseek-v3.2-exp", case.stream, true),
            )
        };
        let mut headers = vec![("x-sim-fault", case.fault)];
        if case.native && case.stream {
            headers.push(("x-dashscope-sse", "enable"));
        }
        let (resp, id) = send(&t, path, body, &headers).await;
        let label = format!(
            "native={} stream={} fault={}",
            case.native, case.stream, case.fault
        );
        assert_eq!(resp.status().as_u16(), case.http, "{label}");
        let got = received(resp).await; // cut streams end in an error; that is the point
        let r = t.record_of(&id).await;
        assert_eq!(r.status, case.status, "{label}");
        assert_eq!(r.error_code.as_deref(), case.code, "{label}");
        assert_eq!(r.usage_source, case.source, "{label}");
        assert_eq!(
            (r.output_tokens, r.reasoning_tokens, r.answer_tokens),
            tokens_the_client_saw(&got, case.source),
            "{label}"
        );
    }
}

#[tokio::test]
async fn same_seed_same_text() {
    let a = SimServer::start(
        SimOptions {
            seed: 7,
            ..SimOptions::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let b = SimServer::start(
        SimOptions {
            seed: 7,
            ..SimOptions::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let c = SimServer::start(
        SimOptions {
            seed: 8,
            ..SimOptions::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let http = test_client();
    let mut texts = Vec::new();
    for s in [&a, &b, &c] {
        let v: Value = http
            .post(format!("http://{}{COMPAT_PATH}", s.addr))
            .body(compat_req("deepseek-r1", false, false))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        texts.push((
            v["choices"][0]["message"]["reasoning_content"].clone(),
            v["choices"][0]["message"]["content"].clone(),
        ));
    }
    assert_eq!(texts[0], texts[1]);
    assert_ne!(texts[0], texts[2]);
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn sim_gzip_stream_passes_through_compressed() {
    let t = TestApp::start(Upstream::Sim).await;
    let (resp, id) = send(
        &t,
        NATIVE_PATH,
        native_req("deepseek-r1", false, true),
        &[
            ("x-dashscope-sse", "enable"),
            ("x-sim-gzip", "1"),
            ("accept-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let gz = resp.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut text)
        .unwrap();
    assert!(text.contains("\"finish_reason\":\"stop\""));
    let r = t.record_of(&id).await;
    assert_eq!(
        (r.status, r.usage_source, r.output_tokens),
        (CallStatus::Ok, UsageSource::Reported, 32)
    );
}
