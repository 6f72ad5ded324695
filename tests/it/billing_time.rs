//! Billing time through the front door, on a clock the test sets: a call's billing hour and the price entry
//! in force are read from one finish time, in the billing time zone — `effective_from` dates included.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use deepseek_meter::clock::Clock;
use deepseek_meter::config::{FileConfig, ServeArgs, Settings};
use rust_decimal::Decimal;

const BOOK: &str = r#"
currency = "CNY"

[[model]]
name = "deepseek-v3"
effective_from = 2026-01-01
input = 2
output = 8

[[model]]
name = "deepseek-v3"
effective_from = 2026-06-01
input = 1
output = 4
"#;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The sidecar as `serve --prices FILE --billing-timezone Asia/Kolkata` resolves it, on the simulator.
/// Kolkata is UTC+05:30: its midnight is not Shanghai's, and its hours do not start on UTC's.
async fn kolkata_app(book: &std::path::Path, upstream: &str, clock: Clock) -> TestApp {
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.into()),
        prices: Some(book.display().to_string()),
        billing_timezone: Some("Asia/Kolkata".into()),
        ..ServeArgs::default()
    };
    let settings = Settings::resolve(args, FileConfig::default()).unwrap();
    TestApp::start_on(
        Settings {
            ledger: None,
            ..settings
        },
        clock,
    )
    .await
}

#[tokio::test]
async fn a_price_file_is_used_from_midnight_in_the_billing_zone_and_the_hour_is_that_zones_hour() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("prices.toml");
    std::fs::write(&book, BOOK).unwrap();
    // 17:00 UTC on 31 May: already 1 June 01:00 in Shanghai, still 31 May 22:30 in Kolkata.
    let t = kolkata_app(&book, "sim", Clock::manual(at("2026-05-31T17:00:00Z"))).await;
    let body = r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#;

    let before = t.post_for_record(COMPAT_PATH, body).await;
    assert_eq!(before.finished_at, at("2026-05-31T17:00:00Z"));
    assert_eq!(
        before.billing_hour,
        at("2026-05-31T16:30:00Z"),
        "22:00 in Kolkata"
    );
    assert_eq!(
        before.price_version.as_deref(),
        Some("deepseek-v3@2026-01-01"),
        "1 June has not begun in the billing zone"
    );
    let tokens = |r: &deepseek_meter::record::CallRecord| {
        (
            Decimal::from(r.input_tokens),
            Decimal::from(r.output_tokens),
        )
    };
    let (input, output) = tokens(&before);
    assert!(input > Decimal::ZERO && output > Decimal::ZERO);
    assert_eq!(
        before.cost_total,
        Some(
            ((input * Decimal::from(2) + output * Decimal::from(8)) / Decimal::from(1_000_000))
                .normalize()
        ),
        "the January price, from the file"
    );

    // 18:31 UTC: 00:01 on 1 June in Kolkata.
    t.advance_clock(chrono::Duration::minutes(91));
    let after = t.post_for_record(COMPAT_PATH, body).await;
    assert_eq!(
        after.billing_hour,
        at("2026-05-31T18:30:00Z"),
        "00:00 in Kolkata"
    );
    assert_eq!(
        after.price_version.as_deref(),
        Some("deepseek-v3@2026-06-01")
    );
    let (input, output) = tokens(&after);
    assert_eq!(
        after.cost_total,
        Some(
            ((input * Decimal::from(1) + output * Decimal::from(4)) / Decimal::from(1_000_000))
                .normalize()
        ),
        "the June price"
    );
}

#[tokio::test]
async fn a_call_is_billed_in_the_hour_it_finished_not_the_hour_it_started() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("prices.toml");
    std::fs::write(&book, BOOK).unwrap();
    let up = ScriptedUpstream::start().await;
    let mut script = Script::sse(events(captures::COMPAT_V32_SSE));
    script.gated = true;
    up.push(script);
    // 21:59:59.5 in Kolkata. The upstream holds the rest of the stream until the clock has passed 22:00.
    let clock = Clock::manual(at("2026-05-31T16:29:59.500Z"));
    let t = kolkata_app(&book, &format!("http://{}", up.addr), clock).await;
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .body(r#"{"model":"deepseek-v3.2-exp","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let id = call_id(&resp);
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    t.advance_clock(chrono::Duration::seconds(1));
    up.gate.add_permits(100);
    while stream.next().await.is_some() {}
    let r = t.record_of(&id).await;
    assert_eq!(r.started_at, at("2026-05-31T16:29:59.500Z"));
    assert_eq!(r.finished_at, at("2026-05-31T16:30:00.500Z"));
    assert_eq!(
        r.billing_hour,
        at("2026-05-31T16:30:00Z"),
        "22:00 in Kolkata"
    );
}
