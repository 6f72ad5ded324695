//! Today's platform (reference `bailian-2026.md`) through the front door: the real app on port 0 against the
//! simulator, every protocol × streaming × thinking, and rows whose money is computed here by hand from the
//! reference's prices (CNY per million tokens), never by the price book under test.

use crate::helpers::*;
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Upstream;
use deepseek_meter::record::CallRecord;
use deepseek_meter::sim::{SimOptions, SimServer};
use deepseek_meter::usage::{CallStatus, Protocol, UsageSource};
use rust_decimal::Decimal;

const RESPONSES_PATH: &str = "/compatible-mode/v1/responses";
const ANTHROPIC_PATH: &str = "/apps/anthropic/v1/messages";
const PROMPT: &str = "你是谁？请用一句话介绍你自己，以及你能帮我做些什么事情。";

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// Money of a row by hand: each class at its price (CNY per million tokens).
fn by_hand(r: &CallRecord, input: &str, cached: &str, write: &str, output: &str) -> Decimal {
    let uncached = r.input_tokens - r.cached_tokens - r.cache_creation_tokens;
    (Decimal::from(uncached) * d(input)
        + Decimal::from(r.cached_tokens) * d(cached)
        + Decimal::from(r.cache_creation_tokens) * d(write)
        + Decimal::from(r.output_tokens) * d(output))
        / Decimal::from(1_000_000)
}

/// A call to `model` in `protocol`'s own shape: its path, body and headers. `thinking`: `None` leaves the
/// model's default; `Some(false)` switches thinking off the protocol's way.
fn request(
    protocol: Protocol,
    model: &str,
    stream: bool,
    thinking: Option<bool>,
) -> (&'static str, String, Vec<(&'static str, &'static str)>) {
    let msgs = serde_json::json!([{"role": "user", "content": PROMPT}]);
    let mut headers = vec![];
    let (path, mut body) = match protocol {
        Protocol::OpenAi => (
            COMPAT_PATH,
            serde_json::json!({"model": model, "messages": msgs, "stream": stream}),
        ),
        Protocol::DashScope => {
            if stream {
                headers.push(("x-dashscope-sse", "enable"));
            }
            (
                NATIVE_PATH,
                serde_json::json!({"model": model, "input": {"messages": msgs},
                                   "parameters": {"incremental_output": true}}),
            )
        }
        Protocol::Responses => (
            RESPONSES_PATH,
            serde_json::json!({"model": model, "input": PROMPT, "stream": stream}),
        ),
        Protocol::Anthropic => (
            ANTHROPIC_PATH,
            serde_json::json!({"model": model, "max_tokens": 4096, "messages": msgs, "stream": stream}),
        ),
    };
    match (protocol, thinking) {
        (_, None) => {}
        (Protocol::OpenAi, Some(t)) => body["enable_thinking"] = t.into(),
        (Protocol::DashScope, Some(t)) => body["parameters"]["enable_thinking"] = t.into(),
        (Protocol::Responses, Some(t)) => {
            body["reasoning"] = serde_json::json!({"effort": if t { "high" } else { "none" }})
        }
        (Protocol::Anthropic, Some(t)) => {
            body["thinking"] = serde_json::json!({"type": if t { "enabled" } else { "disabled" }, "budget_tokens": 2048})
        }
    }
    (path, body.to_string(), headers)
}

/// Makes the call, reads it to its end, returns the response body and the record.
async fn call(
    t: &TestApp,
    (path, body, headers): (&str, String, Vec<(&str, &str)>),
    extra: &[(&str, &str)],
) -> (String, CallRecord) {
    let mut rb = t
        .http
        .post(t.url(path))
        .bearer_auth("sk-platform-2026-7777")
        .body(body);
    for (k, v) in headers.iter().chain(extra) {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let id = call_id(&resp);
    let text = resp.text().await.unwrap();
    (text, t.record_of(&id).await)
}

#[tokio::test]
async fn every_protocol_streaming_or_not_thinking_or_not_is_metered_at_v4_flash_prices() {
    let t = TestApp::start(Upstream::Sim).await;
    let mut inputs = std::collections::BTreeSet::new();
    for protocol in Protocol::ALL {
        for stream in [false, true] {
            for thinking in [None, Some(false)] {
                let case = format!("{protocol:?} stream={stream} thinking={thinking:?}");
                let (_, r) = call(
                    &t,
                    request(protocol, "deepseek-v4-flash", stream, thinking),
                    &[],
                )
                .await;
                assert_eq!((r.protocol, r.stream), (protocol, stream), "{case}");
                assert_eq!(
                    (r.status, r.usage_source),
                    (CallStatus::Ok, UsageSource::Reported),
                    "{case}"
                );
                // V4 thinks unless the request switches it off, in every protocol's own way.
                assert_eq!(r.reasoning_tokens > 0, thinking.is_none(), "{case}");
                assert!(r.answer_tokens > 0 && r.input_tokens > 10, "{case}");
                // deepseek-v4-flash: 1 CNY input, 2 CNY output (thinking included).
                assert_eq!(
                    r.cost_total,
                    Some(by_hand(&r, "1", "0.2", "1.25", "2")),
                    "{case}"
                );
                assert_eq!(
                    r.price_version.as_deref(),
                    Some("deepseek-v4-flash@2026-01-01")
                );
                assert_eq!(r.price_period, None);
                // Only the Anthropic API leaves the reasoning share to be estimated.
                assert_eq!(
                    r.reasoning_estimated,
                    protocol == Protocol::Anthropic && thinking.is_none(),
                    "{case}"
                );
                assert_eq!(r.key_hint.as_deref(), Some("sk-…7777"));
                inputs.insert(r.input_tokens);
            }
        }
    }
    // The simulator counts the same prompt the same in every protocol (Anthropic's too, reported the
    // Anthropic way and read back as every input token).
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert_eq!(t.records.records().len(), 16);
}

#[tokio::test]
async fn v4_pro_at_12_and_24_with_cache_reads_and_writes_at_their_prices() {
    let t = TestApp::start(Upstream::Sim).await;
    let (_, plain) = call(
        &t,
        request(Protocol::OpenAi, "deepseek-v4-pro", false, None),
        &[],
    )
    .await;
    assert_eq!(
        plain.cost_total,
        Some(by_hand(&plain, "12", "0", "0", "24"))
    );
    let cache = [
        ("x-sim-cached-tokens", "5"),
        ("x-sim-cache-creation-tokens", "8"),
    ];
    for protocol in Protocol::ALL {
        let (_, r) = call(&t, request(protocol, "deepseek-v4-pro", true, None), &cache).await;
        assert_eq!(
            (r.input_tokens, r.cached_tokens, r.cache_creation_tokens),
            (plain.input_tokens, 5, 8),
            "{protocol:?}: reads and writes are parts of the same input"
        );
        // Cache reads at 2.4 (20 % of 12) and writes at 15 (125 %): the book's marked assumptions for V4.
        assert_eq!(
            r.cost_total,
            Some(by_hand(&r, "12", "2.4", "15", "24")),
            "{protocol:?}"
        );
        // The input part of the money, apart (what the platform's bill shows as input_token).
        let uncached = r.input_tokens - 13;
        let input = (Decimal::from(uncached) * d("12") + d("5") * d("2.4") + d("8") * d("15"))
            / Decimal::from(1_000_000);
        assert_eq!(r.cost_input, Some(input), "{protocol:?}");
    }
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains(
            "deepseek_meter_tokens_total{model=\"deepseek-v4-pro\",type=\"cache_creation_input\"} 32"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "deepseek_meter_cost_yuan_total{model=\"deepseek-v4-pro\",type=\"cache_creation_input\"} 0.00048"
    ));
}

#[tokio::test]
async fn v4_flash_0731_is_off_peak_at_07_59_59_and_peak_at_08_00_00_beijing() {
    let mut settings = deepseek_meter::config::Settings::for_tests();
    settings.upstream = Upstream::Sim;
    // 2026-11-25 07:59:59 Beijing.
    let clock = Clock::manual("2026-11-24T23:59:59Z".parse().unwrap());
    let t = TestApp::start_on(settings, clock).await;
    let req = || request(Protocol::Responses, "deepseek-v4-flash-0731", false, None);
    let (_, off) = call(&t, req(), &[]).await;
    t.advance_clock(chrono::Duration::seconds(1));
    let (_, peak) = call(&t, req(), &[]).await;
    assert_eq!(off.tokens(), peak.tokens(), "the same call twice");
    assert_eq!(off.price_period.as_deref(), Some("off-peak"));
    assert_eq!(
        off.cost_total,
        Some(by_hand(&off, "1.5", "0.3", "1.875", "4.5"))
    );
    assert_eq!(peak.price_period.as_deref(), Some("peak"));
    assert_eq!(
        peak.cost_total,
        Some(by_hand(&peak, "3", "0.6", "3.75", "9"))
    );
    assert_eq!(
        peak.cost_total.unwrap(),
        off.cost_total.unwrap() * Decimal::TWO
    );
    assert_eq!(
        (off.billing_hour, peak.billing_hour),
        (
            "2026-11-24T23:00:00Z".parse().unwrap(),
            "2026-11-25T00:00:00Z".parse().unwrap()
        )
    );
}

#[tokio::test]
async fn provider_models_are_priced_and_a_retired_model_is_priced_and_counted() {
    let mut settings = deepseek_meter::config::Settings::for_tests();
    settings.upstream = Upstream::Sim;
    // After the announced retirement of deepseek-r1 (2026-10-10).
    let t = TestApp::start_on(
        settings,
        Clock::manual("2026-11-25T05:00:00Z".parse().unwrap()),
    )
    .await;
    let cached = [("x-sim-cached-tokens", "8")];
    let (_, vanchin) = call(
        &t,
        request(Protocol::OpenAi, "vanchin/deepseek-v4-pro", false, None),
        &cached,
    )
    .await;
    // Vanchin: 12 input, implicit hits at 8.33 % (1 CNY), 24 output.
    assert_eq!(vanchin.cached_tokens, 8);
    assert_eq!(
        vanchin.cost_total,
        Some(by_hand(&vanchin, "12", "1", "15", "24"))
    );
    let (_, r1) = call(
        &t,
        request(Protocol::DashScope, "deepseek-r1", true, None),
        &[],
    )
    .await;
    assert!(r1.reasoning_tokens > 0, "r1 always thinks");
    assert_eq!(r1.cost_total, Some(by_hand(&r1, "4", "0.8", "5", "16")));
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains("deepseek_meter_retired_model_requests_total{model=\"deepseek-r1\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("retired_model_requests_total{model=\"vanchin"));
}

#[tokio::test]
async fn an_upstream_address_connects_there_with_the_upstreams_own_host() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(
        200,
        r#"{"choices":[{"message":{"content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
    ));
    let host = "llm-ws7q.cn-beijing.maas.aliyuncs.com";
    let t = TestApp::start_with(
        Upstream::Url(format!("http://{host}").parse().unwrap()),
        |s| s.upstream_address = Some(up.addr),
    )
    .await;
    let (_, r) = call(
        &t,
        request(Protocol::OpenAi, "deepseek-v4-flash", false, None),
        &[],
    )
    .await;
    assert_eq!(up.last_seen().header("host"), Some(host));
    assert_eq!(r.workspace.as_deref(), Some("llm-ws7q"));
}

#[tokio::test]
async fn a_per_workspace_host_gives_every_row_its_workspace() {
    let sim = SimServer::start(SimOptions::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let t = TestApp::start_with(
        Upstream::Url(
            "http://llm-ws7q.cn-beijing.maas.aliyuncs.com"
                .parse()
                .unwrap(),
        ),
        |s| s.upstream_address = Some(sim.addr),
    )
    .await;
    // The host decides, whatever the header says.
    let header = [("x-dashscope-workspace", "llm-other")];
    for protocol in Protocol::ALL {
        let (_, r) = call(
            &t,
            request(protocol, "deepseek-v4-flash", false, None),
            &header,
        )
        .await;
        assert_eq!(r.workspace.as_deref(), Some("llm-ws7q"), "{protocol:?}");
    }
    // On the shared host the header is the workspace.
    let shared = TestApp::start_with(
        Upstream::Url(format!("http://{}", sim.addr).parse().unwrap()),
        |_| {},
    )
    .await;
    let (_, r) = call(
        &shared,
        request(Protocol::OpenAi, "deepseek-v4-flash", false, None),
        &header,
    )
    .await;
    assert_eq!(r.workspace.as_deref(), Some("llm-other"));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_new_protocols_reach_the_client_byte_for_byte() {
    let sim = SimServer::start(SimOptions::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let direct = format!("http://{}", sim.addr);
    let t = TestApp::start(Upstream::Url(direct.parse().unwrap())).await;
    let plain = test_client();
    for protocol in [Protocol::Responses, Protocol::Anthropic] {
        for stream in [false, true] {
            let (path, body, headers) = request(protocol, "deepseek-v4-pro", stream, None);
            let (through, _) = call(&t, (path, body.clone(), headers), &[]).await;
            let straight = plain
                .post(format!("{direct}{path}"))
                .bearer_auth("sk-platform-2026-7777")
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            // Ids and timestamps differ per call; every other byte is the upstream's.
            let mask = |s: &str| {
                let mut out = String::with_capacity(s.len());
                let mut rest = s;
                while let Some(i) = ["resp_", "rs_", "msg_", "sim-", "\"created_at\":"]
                    .iter()
                    .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
                    .min()
                    .map(|(i, len)| i + len)
                {
                    out.push_str(&rest[..i]);
                    rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_alphanumeric());
                    out.push('#');
                }
                out.push_str(rest);
                out
            };
            assert_eq!(
                mask(&through),
                mask(&straight),
                "{protocol:?} stream={stream}"
            );
            assert!(through.len() > 200);
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn the_anthropic_api_takes_its_key_from_x_api_key_and_refuses_in_its_own_shape() {
    let t = TestApp::start_with(Upstream::Sim, |s| {
        s.max_body_bytes = 2048;
        s.client_token = Some("let-me-use-the-key".into());
        s.dashscope_api_key = Some("sk-injected-0000".into());
    })
    .await;
    let (path, body, _) = request(Protocol::Anthropic, "deepseek-v4-flash", false, None);
    let resp = t
        .http
        .post(t.url(path))
        .header("x-api-key", "sk-anthropic-style-5678")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = t.record_of(&call_id(&resp)).await;
    // The same key as a Bearer token has the same fingerprint.
    let bearer = deepseek_meter::usage::key_identity("Bearer sk-anthropic-style-5678").unwrap();
    assert_eq!(
        (r.key_fingerprint.clone(), r.key_hint.as_deref()),
        (Some(bearer.0), Some("sk-…5678"))
    );
    // No key of its own and no client token: 401 in Anthropic's shape.
    let resp = t.http.post(t.url(path)).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (&e["type"], &e["error"]["type"], &e["error"]["code"]),
        (
            &serde_json::json!("error"),
            &serde_json::json!("authentication_error"),
            &serde_json::json!("MeterClientTokenInvalid")
        )
    );
    // Too large: 413 in Anthropic's shape.
    let big = format!(
        r#"{{"model":"deepseek-v4-flash","max_tokens":8,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let resp = t
        .http
        .post(t.url(path))
        .header("x-api-key", "sk-anthropic-style-5678")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "request_too_large");
    // Other Anthropic paths are forwarded (counted, not metered).
    let resp = t
        .http
        .post(t.url("/apps/anthropic/v1/messages/count_tokens"))
        .header("x-api-key", "sk-anthropic-style-5678")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "the simulator has no such path; the proxy forwarded it"
    );
    assert!(resp.text().await.unwrap().contains("NotFound"));
}

/// The Anthropic API's own key header counts as the client's key: the injected key is not added beside it;
/// a client with no key of its own (and the client token) gets the injected one as `Authorization`.
#[tokio::test]
async fn the_injected_key_goes_only_to_clients_without_a_key_of_their_own() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(
        200,
        r#"{"type":"message","content":[{"type":"text","text":"ok"}],"usage":{"input_tokens":3,"output_tokens":1}}"#,
    ));
    let t = TestApp::start_with(up.upstream(), |s| {
        s.dashscope_api_key = Some("sk-injected-0000".into());
        s.client_token = Some("let-me-use-the-key".into());
    })
    .await;
    let (path, body, _) = request(Protocol::Anthropic, "deepseek-v4-flash", false, None);
    let resp = t
        .http
        .post(t.url(path))
        .header("x-api-key", "sk-anthropic-style-5678")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = t.record_of(&call_id(&resp)).await;
    assert_eq!(r.key_hint.as_deref(), Some("sk-…5678"));
    let seen = up.last_seen();
    assert_eq!(seen.header("x-api-key"), Some("sk-anthropic-style-5678"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "no injected key beside the client's"
    );
    let resp = t
        .http
        .post(t.url(path))
        .header("x-meter-client-token", "let-me-use-the-key")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = t.record_of(&call_id(&resp)).await;
    assert_eq!(r.key_hint.as_deref(), Some("sk-…0000"));
    let seen = up.last_seen();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-injected-0000")
    );
    assert_eq!(seen.header("x-meter-client-token"), None, "never forwarded");
    // Other Anthropic paths are forwarded, counted, and not metered.
    let before = t.records.records().len();
    let resp = t
        .http
        .post(t.url("/apps/anthropic/v1/messages/count_tokens"))
        .header("x-api-key", "sk-anthropic-style-5678")
        .body("{}")
        .send()
        .await
        .unwrap();
    let _ = resp.bytes().await;
    assert_eq!(
        up.last_seen().request_line.split(' ').nth(1),
        Some("/apps/anthropic/v1/messages/count_tokens")
    );
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains("deepseek_meter_forwarded_unmetered_total 1"),
        "{metrics}"
    );
    assert_eq!(t.records.records().len(), before, "not metered");
}

/// The bill and its report by price period: v4-flash-0731 calls on both sides of 08:00 Beijing land in two
/// hours of the bill with their periods, and `by=model,period` shows peak costing twice off-peak.
#[tokio::test]
async fn the_bill_and_its_report_show_peak_and_off_peak_spend() {
    let clock = Clock::manual("2026-11-24T23:30:00Z".parse().unwrap());
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), |_| {}).await;
    let body = request(Protocol::OpenAi, "deepseek-v4-flash-0731", false, None).1;
    for at in ["2026-11-24T23:30:00Z", "2026-11-25T00:30:00Z"] {
        clock.set(at.parse().unwrap());
        let (status, _, _) = t.call(COMPAT_PATH, &body, &[]).await;
        assert_eq!(status, 200);
    }
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    let pool = t.db.pool().await;
    let periods: Vec<(Option<String>, Decimal)> =
        sqlx::query_as("SELECT price_period, cost_total FROM hourly_bill ORDER BY billing_hour")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(periods.len(), 2);
    assert_eq!(
        (periods[0].0.as_deref(), periods[1].0.as_deref()),
        (Some("off-peak"), Some("peak"))
    );
    assert_eq!(periods[1].1, periods[0].1 * Decimal::TWO);
    let report = get_json(
        &t.http,
        &t.admin_url(
            "/v1/bill/hourly?from=2026-11-25&to=2026-11-26&by=model,period&granularity=day",
        ),
    )
    .await;
    let rows = report["rows"].as_array().unwrap();
    let cost = |period: &str| {
        rows.iter()
            .find(|r| r["price_period"] == period)
            .map(|r| d(r["cost_total"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{period} in {report}"))
    };
    assert_eq!(cost("peak"), cost("off-peak") * Decimal::TWO);
    t.audit(&[]).await;
}

#[tokio::test]
async fn failed_with_http_200_and_cut_short_calls_of_the_new_protocols() {
    let t = TestApp::start(Upstream::Sim).await;
    let failed = [("x-sim-fault", "failed")];
    let (body, r) = call(
        &t,
        request(Protocol::Responses, "deepseek-v4-pro", false, None),
        &failed,
    )
    .await;
    assert!(body.contains("\"status\":\"failed\""));
    assert_eq!(
        (r.status, r.http_status, r.error_code.as_deref()),
        (
            CallStatus::UpstreamError,
            Some(200),
            Some("rate_limit_exceeded")
        )
    );
    assert_eq!(r.cost_total, Some(Decimal::ZERO), "nothing generated");
    for protocol in [Protocol::Responses, Protocol::Anthropic] {
        let (_, r) = call(
            &t,
            request(protocol, "deepseek-v4-pro", true, None),
            &failed,
        )
        .await;
        assert_eq!(r.status, CallStatus::UpstreamError, "{protocol:?}");
        assert!(
            r.output_tokens > 0,
            "{protocol:?}: the text before the failure is estimated"
        );
        let resp = t
            .http
            .post(t.url(request(protocol, "deepseek-v4-pro", true, None).0))
            .bearer_auth("sk-platform-2026-7777")
            .header("x-sim-fault", "reset")
            .body(request(protocol, "deepseek-v4-pro", true, None).1)
            .send()
            .await
            .unwrap();
        let id = call_id(&resp);
        let _ = resp.bytes().await;
        let r = t.record_of(&id).await;
        assert_eq!(r.status, CallStatus::UpstreamAborted, "{protocol:?}");
        assert!(r.output_tokens > 0 && r.input_tokens > 0, "{protocol:?}");
    }
}
