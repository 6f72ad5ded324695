//! The official `openai` Python SDK (installed by `.ci/run`) through the proxy and directly against the
//! simulator: same reasoning and answer text, same usage, and a stream without `include_usage` stays
//! without a usage chunk even though the proxy asked for one upstream.

use crate::helpers::*;
use deepseek_meter::config::Upstream;
use deepseek_meter::sim::{SimOptions, SimServer};
use deepseek_meter::usage::UsageSource;

#[tokio::test]
async fn openai_sdk_sees_the_same_text_through_the_proxy() {
    let sim = SimServer::start(SimOptions::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let direct = format!("http://{}", sim.addr);
    let t = TestApp::start(Upstream::Url(direct.parse().unwrap())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_peer.py");
    let out = crate::helpers::bin::output_of(
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(&direct)
            .arg(format!("http://{}", t.app.proxy_addr)),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK peer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let proxied = v["proxied"].as_object().unwrap();
    assert_eq!(proxied.len(), 9);
    assert!(
        !proxied["deepseek-r1/plain"]["reasoning"]
            .as_str()
            .unwrap()
            .is_empty(),
        "r1 thinks"
    );
    assert!(
        proxied["deepseek-v3/plain"]["reasoning"]
            .as_str()
            .unwrap()
            .is_empty(),
        "v3 never thinks"
    );
    for (name, call) in proxied {
        if name.ends_with("include_usage=False") {
            assert_eq!(
                call["usage_chunks"], 0,
                "{name}: no usage chunk the client did not ask for"
            );
        } else if name.ends_with("include_usage=True") {
            assert_eq!(call["usage_chunks"], 1, "{name}");
        }
    }
    // Every proxied call has a record with reported usage, streams without include_usage included.
    let records = tokio::time::timeout(std::time::Duration::from_secs(10), t.records.wait_for(9))
        .await
        .expect("nine records");
    assert_eq!(records.len(), 9);
    assert!(records
        .iter()
        .all(|r| r.usage_source == UsageSource::Reported && r.output_tokens > 0));
    assert!(records
        .iter()
        .all(|r| r.key_hint.as_deref() == Some("sk-…0042")));
    sim.shutdown().await;
}

/// The official SDKs of the two newer protocols — `openai`'s `responses.create` (whole and streamed) and
/// `anthropic`'s `messages.create` and `messages.stream` — through the proxy with only the base URL changed:
/// the same text and usage as directly against the simulator, and every call metered in its protocol.
#[tokio::test]
async fn responses_and_anthropic_sdks_work_unchanged_through_the_proxy() {
    use deepseek_meter::usage::Protocol;
    let sim = SimServer::start(SimOptions::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let direct = format!("http://{}", sim.addr);
    let t = TestApp::start(Upstream::Url(direct.parse().unwrap())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/peers_2026.py");
    let out = crate::helpers::bin::output_of(
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(&direct)
            .arg(format!("http://{}", t.app.proxy_addr)),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK peers failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let proxied = v["proxied"].as_object().unwrap();
    assert_eq!(proxied.len(), 8);
    for (name, call) in proxied {
        assert!(!call["text"].as_str().unwrap().is_empty(), "{name}");
    }
    let stream = &proxied["responses/deepseek-v4-pro/stream"];
    assert_eq!(
        (&stream["first"], &stream["last"]),
        (
            &serde_json::json!("response.created"),
            &serde_json::json!("response.completed")
        )
    );
    assert!(
        !proxied["anthropic/deepseek-v4-flash/stream"]["thinking"]
            .as_str()
            .unwrap()
            .is_empty(),
        "V4 thinks by default"
    );
    let records = tokio::time::timeout(std::time::Duration::from_secs(10), t.records.wait_for(8))
        .await
        .expect("eight records");
    assert!(records
        .iter()
        .all(|r| r.usage_source == UsageSource::Reported && r.output_tokens > 0));
    let of = |p: Protocol| records.iter().filter(move |r| r.protocol == p);
    assert_eq!(of(Protocol::Responses).count(), 4);
    assert_eq!(of(Protocol::Anthropic).count(), 4);
    // What the meter booked is what the SDKs were told (their usage objects, summed per protocol); the
    // Anthropic API's input_tokens leaves the cache out, and these calls have none.
    let told = |prefix: &str, i: usize| -> u64 {
        proxied
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, c)| c["usage"][i].as_u64().unwrap())
            .sum()
    };
    let booked = |p: Protocol, f: fn(&deepseek_meter::record::CallRecord) -> u64| -> u64 {
        of(p).map(f).sum()
    };
    assert_eq!(
        booked(Protocol::Responses, |r| r.input_tokens),
        told("responses/", 0)
    );
    assert_eq!(
        booked(Protocol::Responses, |r| r.output_tokens),
        told("responses/", 1)
    );
    assert_eq!(
        booked(Protocol::Responses, |r| r.reasoning_tokens),
        told("responses/", 2)
    );
    assert_eq!(
        booked(Protocol::Anthropic, |r| r.input_tokens),
        told("anthropic/", 0)
    );
    assert_eq!(
        booked(Protocol::Anthropic, |r| r.output_tokens),
        told("anthropic/", 1)
    );
    // The anthropic SDK sends its key as x-api-key: read all the same.
    assert!(of(Protocol::Anthropic).all(|r| r.key_hint.as_deref() == Some("sk-…0044")));
    assert!(of(Protocol::Responses).all(|r| r.key_hint.as_deref() == Some("sk-…0043")));
    sim.shutdown().await;
}
