//! OpenTelemetry export through the front door: the sidecar on port 0 with `--otlp-endpoint` pointing at a
//! real OTLP/HTTP receiver (`tests/sdk/otlp_receiver.py`, decoding with the official `opentelemetry-proto`
//! bindings), a scripted upstream that shows what it received, real HTTP clients.

use crate::helpers::*;
use deepseek_meter::otel::OtelSettings;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// Its hint (`sk-…` and the last 4) is not hex, so it cannot turn up in an id by chance.
const KEY: &str = "sk-otel-canary-zyxw";

/// A chat completion with reasoning and cache reads (the upstream's own figures).
const ANSWER: &str = r#"{"id":"chatcmpl-otel-1","object":"chat.completion","created":1,"model":"deepseek-v4-pro","choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"think"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":300,"total_tokens":1300,"prompt_tokens_details":{"cached_tokens":600,"cache_creation_input_tokens":100},"completion_tokens_details":{"reasoning_tokens":200}}}"#;

/// The receiver as a child process: what it decoded, one export request per line.
struct Receiver {
    _child: tokio::process::Child,
    /// Holding the child's stdin open keeps it running; it exits when the test drops this.
    _stdin: tokio::process::ChildStdin,
    port: u16,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/otlp_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(status.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the receiver");
        let stdin = child.stdin.take().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("the receiver starts within 30 s")
            .unwrap()
            .expect("the receiver prints its port");
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .unwrap() as u16;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver {
            _child: child,
            _stdin: stdin,
            port,
            lines,
        }
    }

    fn settings(&self) -> OtelSettings {
        OtelSettings {
            traces_endpoint: format!("http://127.0.0.1:{}/v1/traces", self.port)
                .parse()
                .unwrap(),
            headers: deepseek_meter::otel::parse_headers("x-collector-key=c0ll%3Dctor").unwrap(),
            timeout: Duration::from_secs(5),
            schedule_delay: Duration::from_millis(500),
            resource: vec![
                ("service.name".into(), "meter-under-test".into()),
                ("deployment.environment".into(), "ci".into()),
            ],
            gen_ai_system: true,
        }
    }

    /// Export requests until `n` spans have arrived (bounded: 20 s), with every span's request.
    async fn spans(&mut self, n: usize) -> Vec<(Value, Value)> {
        let mut spans = Vec::new();
        while spans.len() < n {
            let export = tokio::time::timeout(Duration::from_secs(20), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("{n} spans within 20 s; got {}", spans.len()))
                .expect("receiver running");
            assert!(
                export.get("error").is_none(),
                "undecodable export: {export}"
            );
            for rs in export["request"]["resource_spans"].as_array().unwrap() {
                for ss in rs["scope_spans"].as_array().unwrap() {
                    for span in ss["spans"].as_array().unwrap() {
                        spans.push((export.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }

    /// Nothing more arrives within `quiet`.
    async fn nothing_more(&mut self, quiet: Duration) {
        if let Ok(Some(export)) = tokio::time::timeout(quiet, self.lines.recv()).await {
            panic!("unexpected export: {export}");
        }
    }
}

/// A span's attributes as key → the JSON mapping's value (`{"string_value": …}`, `{"int_value": "…"}`).
fn attributes(span: &Value) -> HashMap<String, Value> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv["key"].as_str().unwrap().to_owned(), kv["value"].clone()))
        .collect()
}

fn s(v: &str) -> Value {
    serde_json::json!({ "string_value": v })
}

fn i(v: u64) -> Value {
    serde_json::json!({ "int_value": v.to_string() })
}

async fn chat(t: &TestApp, traceparent: Option<&str>) -> reqwest::Response {
    let mut rb = t
        .http
        .post(t.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-meter-project", "otel-project")
        .header("tracestate", "vendor=opaque")
        .body(r#"{"model":"deepseek-v4-pro","messages":[{"role":"user","content":"hi"}]}"#);
    if let Some(tp) = traceparent {
        rb = rb.header("traceparent", tp);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn a_call_is_one_genai_client_span_under_the_clients_trace_and_the_upstream_continues_it() {
    let mut rx = Receiver::start(200).await;
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, ANSWER));
    let otel = rx.settings();
    let t = TestApp::start_with(up.upstream(), |s| s.otel = Some(otel)).await;
    let resp = chat(&t, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))).await;
    assert_eq!(resp.status(), 200);
    let id = call_id(&resp);
    assert_eq!(resp.text().await.unwrap(), ANSWER, "the body is unchanged");
    let record = t.record_of(&id).await;

    // The upstream got the client's trace with this call's span as the parent, and the client's tracestate.
    let seen = up.last_seen();
    let sent = seen.header("traceparent").unwrap().to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", CLIENT_TRACE, "01"));
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the upstream's parent is the call's span"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=opaque"));

    let spans = rx.spans(1).await;
    assert_eq!(spans.len(), 1);
    rx.nothing_more(Duration::from_millis(1500)).await;
    let (export, span) = &spans[0];
    assert_eq!(export["path"], "/v1/traces");
    assert_eq!(export["content_type"], "application/x-protobuf");
    assert_eq!(export["headers"]["x-collector-key"], "c0ll=ctor");
    assert_eq!(
        export["same_bytes_back"], true,
        "the bindings write the same bytes back"
    );
    let resource: HashMap<String, Value> = export["request"]["resource_spans"][0]["resource"]
        ["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv["key"].as_str().unwrap().to_owned(), kv["value"].clone()))
        .collect();
    assert_eq!(resource["service.name"], s("meter-under-test"));
    assert_eq!(resource["deployment.environment"], s("ci"));
    assert_eq!(
        export["request"]["resource_spans"][0]["scope_spans"][0]["scope"]["name"],
        "deepseek-meter"
    );

    assert_eq!(span["name"], "chat deepseek-v4-pro");
    assert_eq!(span["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(span["trace_id"], CLIENT_TRACE);
    assert_eq!(span["parent_span_id"], CLIENT_SPAN);
    assert_eq!(span["span_id"], parts[2]);
    assert_eq!(span["flags"], 0x301, "sampled, with a remote parent");
    assert!(
        span.get("status").is_none(),
        "unset for a call that went well: {span}"
    );
    let nanos = |t: chrono::DateTime<chrono::Utc>| t.timestamp_nanos_opt().unwrap().to_string();
    assert_eq!(span["start_time_unix_nano"], nanos(record.started_at));
    assert_eq!(span["end_time_unix_nano"], nanos(record.finished_at));

    let a = attributes(span);
    let cost = record.cost_total.unwrap().normalize().to_string();
    let expected: Vec<(&str, Value)> = vec![
        ("gen_ai.operation.name", s("chat")),
        ("gen_ai.provider.name", s("alibaba_cloud")),
        ("gen_ai.system", s("alibaba_cloud")),
        ("gen_ai.request.model", s("deepseek-v4-pro")),
        ("gen_ai.response.model", s("deepseek-v4-pro")),
        // The platform's request id (the chat shape's `chatcmpl-` prefix taken off, as the ledger has it).
        ("gen_ai.response.id", s("otel-1")),
        (
            "gen_ai.response.finish_reasons",
            serde_json::json!({"array_value": {"values": [{"string_value": "stop"}]}}),
        ),
        ("gen_ai.usage.input_tokens", i(1000)),
        ("gen_ai.usage.output_tokens", i(300)),
        ("gen_ai.usage.reasoning.output_tokens", i(200)),
        ("gen_ai.usage.cache_read.input_tokens", i(600)),
        ("gen_ai.usage.cache_creation.input_tokens", i(100)),
        ("server.address", s("127.0.0.1")),
        ("server.port", i(u64::from(up.addr.port()))),
        ("http.response.status_code", i(200)),
        ("deepseek_meter.call_id", s(&id)),
        ("deepseek_meter.protocol", s("openai")),
        ("deepseek_meter.status", s("ok")),
        (
            "deepseek_meter.stream",
            serde_json::json!({"bool_value": false}),
        ),
        ("deepseek_meter.usage_source", s("reported")),
        (
            "deepseek_meter.priced",
            serde_json::json!({"bool_value": true}),
        ),
        ("deepseek_meter.cost_cny", s(&cost)),
        (
            "deepseek_meter.price_version",
            s(record.price_version.as_deref().unwrap()),
        ),
        ("deepseek_meter.project", s("otel-project")),
    ];
    for (k, v) in &expected {
        assert_eq!(a.get(*k), Some(v), "{k} in {span}");
    }
    assert!(!a.contains_key("error.type"));
    // The cost is the ledger's, exactly: 400 uncached + 600 read + 100 written input, 300 output.
    assert!(record.cost_total.unwrap() > rust_decimal::Decimal::ZERO);
    // Never the key, nor its fingerprint or hint.
    let text = export.to_string();
    for secret in [
        KEY,
        &KEY[KEY.len() - 4..],
        record.key_fingerprint.as_deref().unwrap(),
    ] {
        assert!(!text.contains(secret), "{secret} in the export");
    }
    t.app.shutdown().await;
}

#[tokio::test]
async fn a_call_without_a_trace_starts_one_an_unsampled_trace_is_not_exported_and_errors_say_their_type(
) {
    let mut rx = Receiver::start(200).await;
    let up = ScriptedUpstream::start().await;
    let otel = rx.settings();
    let t = TestApp::start_with(up.upstream(), |s| s.otel = Some(otel)).await;

    // Not sampled by the client: followed upstream (flags 00), never exported.
    up.push(Script::json(200, ANSWER));
    let resp = chat(&t, Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))).await;
    assert_eq!(resp.status(), 200);
    let unsampled = up.last_seen().header("traceparent").unwrap().to_owned();
    assert!(unsampled.starts_with(&format!("00-{CLIENT_TRACE}-")) && unsampled.ends_with("-00"));

    // No traceparent (or an invalid one): the call starts a trace, named by its call id.
    up.push(Script::json(200, ANSWER));
    let resp = chat(&t, Some("00-not-a-trace-01")).await;
    let first = call_id(&resp);
    let started = up.last_seen().header("traceparent").unwrap().to_owned();
    let first_trace = first.replace('-', "");
    assert!(
        started.starts_with(&format!("00-{first_trace}-")),
        "{started}"
    );
    assert!(started.ends_with("-01"));
    assert_eq!(
        up.last_seen().header("tracestate"),
        None,
        "the client's tracestate belongs to the trace it came with, not to a new one"
    );

    // An upstream error: the span says so.
    let throttled = r#"{"error":{"message":"Requests rate limit exceeded","type":"requests","param":null,"code":"Throttling.RateQuota"}}"#;
    up.push(Script::json(429, throttled));
    let resp = chat(&t, None).await;
    assert_eq!(resp.status(), 429);
    let second = call_id(&resp);
    assert_eq!(resp.text().await.unwrap(), throttled);

    let spans = rx.spans(2).await;
    let by_call: HashMap<String, Value> = spans
        .into_iter()
        .map(|(_, span)| {
            let call = attributes(&span)["deepseek_meter.call_id"]["string_value"]
                .as_str()
                .unwrap()
                .to_owned();
            (call, span)
        })
        .collect();
    let started_span = &by_call[&first];
    assert_eq!(started_span["trace_id"], first_trace);
    assert!(started_span.get("parent_span_id").is_none());
    assert_eq!(
        started_span["flags"], 0x101,
        "sampled, parent known to be none"
    );
    assert_eq!(started_span["span_id"], started.split('-').nth(2).unwrap());

    let failed = &by_call[&second];
    // No traceparent at all: a trace of its own, named by the call id.
    assert_eq!(failed["trace_id"], second.replace('-', ""));
    assert!(failed.get("parent_span_id").is_none());
    let a = attributes(failed);
    assert_eq!(a["error.type"], s("Throttling.RateQuota"));
    assert_eq!(a["http.response.status_code"], i(429));
    assert_eq!(a["deepseek_meter.status"], s("upstream_error"));
    assert_eq!(
        failed["status"],
        serde_json::json!({"code": "STATUS_CODE_ERROR", "message": "Throttling.RateQuota"})
    );
    assert_eq!(by_call.len(), 2, "the unsampled call was not exported");
    rx.nothing_more(Duration::from_secs(1)).await;
    t.app.shutdown().await;
}

#[tokio::test]
async fn spans_queued_at_shutdown_are_sent_before_the_sidecar_exits() {
    let mut rx = Receiver::start(200).await;
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, ANSWER));
    // A batch waits a minute for more: only the shutdown's drain can send these spans.
    let otel = OtelSettings {
        schedule_delay: Duration::from_secs(60),
        ..rx.settings()
    };
    let t = TestApp::start_with(up.upstream(), |s| s.otel = Some(otel)).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let resp = chat(&t, None).await;
        ids.insert(call_id(&resp));
    }
    let metrics = t.app.state.metrics.clone();
    t.app.shutdown().await;
    // The shutdown waited for the export.
    assert!(
        metrics
            .render()
            .contains("deepseek_meter_otel_spans_total{outcome=\"exported\"} 5"),
        "{}",
        metrics.render()
    );
    let got: std::collections::HashSet<String> = rx
        .spans(5)
        .await
        .iter()
        .map(|(_, span)| {
            attributes(span)["deepseek_meter.call_id"]["string_value"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn an_unreachable_or_failing_collector_loses_spans_never_calls() {
    let (_held, closed) = refusing_port();
    let mut failing = Receiver::start(503).await;
    // A collector that takes the connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    for endpoint in [
        format!("http://{closed}/v1/traces"),
        format!("http://127.0.0.1:{}/v1/traces", failing.port),
        format!("http://{silent_addr}/v1/traces"),
    ] {
        let up = ScriptedUpstream::start().await;
        up.answer_always(Script::json(200, ANSWER));
        let t = LedgerApp::start(up.upstream(), |s| {
            s.otel = Some(OtelSettings {
                traces_endpoint: endpoint.parse().unwrap(),
                headers: vec![],
                timeout: Duration::from_secs(2),
                schedule_delay: Duration::from_millis(500),
                resource: vec![("service.name".into(), "x".into())],
                gen_ai_system: false,
            })
        })
        .await;
        let mut calls = 0;
        for _ in 0..20 {
            // Each call is answered while the export fails or hangs (its bound here: 2 s).
            let (status, _, _) = tokio::time::timeout(
                Duration::from_secs(10),
                t.call(
                    "/compatible-mode/v1/chat/completions",
                    r#"{"model":"deepseek-v4-pro","messages":[]}"#,
                    &[],
                ),
            )
            .await
            .expect("a call never waits for the collector");
            assert_eq!(status, 200, "{endpoint}");
            calls += 1;
        }
        // Every call has its row.
        let audit = t.audit(&[]).await;
        assert_eq!(audit.len(), calls, "{endpoint}");
        // The spans are counted as failed, once the batch has been tried.
        let mut failed = 0.0;
        for _ in 0..100 {
            let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
            failed = metrics
                .lines()
                .find(|l| l.starts_with("deepseek_meter_otel_spans_total{outcome=\"failed\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if failed >= calls as f64 {
                assert!(!metrics.contains("deepseek_meter_otel_spans_total{outcome=\"exported\"}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            failed, calls as f64,
            "{endpoint}: every span counted as lost"
        );
        t.stop().await;
    }
    // The failing receiver did get the exports (and answered 503).
    assert!(!failing.spans(1).await.is_empty());
}

#[tokio::test]
async fn without_an_endpoint_the_trace_headers_pass_unchanged_and_none_is_added() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, ANSWER));
    let t = TestApp::start(up.upstream()).await;
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    chat(&t, Some(&client)).await;
    assert_eq!(up.last_seen().header("traceparent"), Some(client.as_str()));
    assert_eq!(up.last_seen().header("tracestate"), Some("vendor=opaque"));
    chat(&t, None).await;
    assert_eq!(up.last_seen().header("traceparent"), None);
    assert_eq!(up.last_seen().header("tracestate"), Some("vendor=opaque"));
    assert!(!get_text(&t.http, &t.admin_url("/metrics"))
        .await
        .contains("deepseek_meter_otel_spans_total{"));
    t.app.shutdown().await;
}
