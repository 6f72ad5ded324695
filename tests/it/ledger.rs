//! The durable ledger through the front door: real app, real Postgres (a database per test), real HTTP.
//! Every test ends with the ledger audited: the rows are exactly the calls its clients saw (less those answered
//! without a record), nothing dead-lettered; the rows' values are checked where the test is about them.

use crate::helpers::captures::*;
use crate::helpers::*;
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Upstream;
use deepseek_meter::journal::OnFull;
use serde_json::Value;

#[tokio::test]
async fn every_shape_gives_its_exact_row() {
    let up = ScriptedUpstream::start().await;
    // Billed in Kolkata (UTC+05:30): its clock hours are not UTC's, so the hour check below can fail.
    let kolkata = chrono_tz::Asia::Kolkata;
    let t = LedgerApp::start(up.upstream(), |s| {
        s.billing_timezone = kolkata;
        s.prices = deepseek_meter::pricing::PriceBook::builtin_in(kolkata).unwrap();
    })
    .await;
    let stream_req = r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"你是谁"}],"stream":true,"enable_thinking":true}"#;

    // Mission example: v3.2-exp, 4 input, 140 output of which 79 reasoning → 4×2 + 79×3 + 61×3 = 428 / 10⁶.
    up.push(Script::sse(events(COMPAT_V32_SSE)));
    let (_, id, _) = t
        .call(COMPAT_PATH, stream_req, &[("x-meter-project", "alpha")])
        .await;
    let row = t.row(&id).await;
    assert_eq!(row["cost_total"], "0.000428");
    assert_eq!(row["price_version"], "deepseek-v3.2-exp@2025-09-29");
    assert_eq!(row["priced"], true);
    assert_eq!(
        (row["input_tokens"].as_i64(), row["output_tokens"].as_i64()),
        (Some(4), Some(140))
    );
    assert_eq!(
        (
            row["reasoning_tokens"].as_i64(),
            row["answer_tokens"].as_i64()
        ),
        (Some(79), Some(61))
    );
    assert_eq!(row["status"], "ok");
    assert_eq!(row["usage_source"], "reported");
    assert_eq!(row["protocol"], "openai");
    assert_eq!(row["stream"], true);
    assert_eq!(row["project"], "alpha");
    assert_eq!(row["key_hint"], "sk-…1234");
    assert_eq!(row["upstream_request_id"], "1b2c");
    assert_eq!(row["call_id"], id);

    // Native r1 JSON: 11 in, 302 out at 4 / 16 → 44 + 4832 = 4876 / 10⁶.
    up.push(Script::json(200, NATIVE_R1_JSON));
    let (_, id, _) = t
        .call(
            NATIVE_PATH,
            r#"{"model":"deepseek-r1","input":{"messages":[]}}"#,
            &[],
        )
        .await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["cost_total"].as_str(), row["protocol"].as_str()),
        (Some("0.004876"), Some("dashscope"))
    );

    // Cached input: v3.1, 3019 in of which 2048 cached, 104 out → 971×4 + 2048×0.8 + 104×12 = 6770.4 / 10⁶.
    up.push(Script::json(200, r#"{"choices":[{"message":{"content":"ok","role":"assistant"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":3019,"completion_tokens":104,"total_tokens":3123,"prompt_tokens_details":{"cached_tokens":2048}},"model":"deepseek-v3.1","id":"chatcmpl-c"}"#));
    let (_, id, _) = t
        .call(
            COMPAT_PATH,
            r#"{"model":"deepseek-v3.1","messages":[]}"#,
            &[],
        )
        .await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["cost_total"].as_str(), row["cached_tokens"].as_i64()),
        (Some("0.0067704"), Some(2048))
    );

    // An upstream error: priced, costs nothing, keeps its code.
    up.push(Script::json(401, r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"r"}"#));
    let (_, id, _) = t
        .call(COMPAT_PATH, r#"{"model":"deepseek-v3","messages":[]}"#, &[])
        .await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["status"].as_str(), row["error_code"].as_str()),
        (Some("upstream_error"), Some("invalid_api_key"))
    );
    assert_eq!(
        (row["http_status"].as_i64(), row["cost_total"].as_str()),
        (Some(401), Some("0"))
    );
    assert_eq!(row["usage_source"], "none");

    // An unknown model: kept, unpriced, no cost (never a zero cost).
    up.push(Script::json(200, r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5},"model":"deepseek-v9"}"#));
    let (_, id, _) = t
        .call(COMPAT_PATH, r#"{"model":"deepseek-v9","messages":[]}"#, &[])
        .await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["priced"].as_bool(), row["cost_total"].is_null()),
        (Some(false), true)
    );
    assert!(row["price_version"].is_null());

    // A cut stream: estimated usage, priced as estimated.
    let mut script = Script::sse(events(COMPAT_V32_SSE).into_iter().take(2).collect());
    script.end = End::Reset;
    up.push(script);
    let (_, id, _) = t.call(COMPAT_PATH, stream_req, &[]).await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["status"].as_str(), row["usage_source"].as_str()),
        (Some("upstream_aborted"), Some("estimated"))
    );
    // DeepSeek's tokenizer (Python `tokenizers` on the same tokenizer.json): the prompt through the chat template
    // `<｜begin▁of▁sentence｜><｜User｜>你是谁<｜Assistant｜>` is 4 tokens (the platform reported 4 too); "唔" is 1 and
    // "DeepSeek" 3, plus 5 hidden: 9 output of which 1 reasoning. 4×2 + 1×3 + 8×3 = 35 → 0.000035.
    assert_eq!(row["cost_total"], "0.000035");

    // Native SSE, cumulative usage: 11 in, 406 out at 4 / 16 → 44 + 6496 = 6540 / 10⁶.
    up.push(Script::sse(events(NATIVE_R1_SSE)));
    let native_req = r#"{"model":"deepseek-r1","input":{"messages":[]},"parameters":{"incremental_output":true}}"#;
    let (_, id, _) = t
        .call(NATIVE_PATH, native_req, &[("x-dashscope-sse", "enable")])
        .await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["cost_total"].as_str(), row["stream"].as_bool()),
        (Some("0.00654"), Some(true))
    );

    // Native error event delivered with HTTP 200: an upstream error with the in-band status.
    let native_err = "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"InvalidParameter\",\"message\":\"Role must be user or assistant\",\"request_id\":\"7671ecd8\"}\n\n";
    up.push(Script::sse(vec![native_err.as_bytes().to_vec()]));
    let (status, id, _) = t
        .call(NATIVE_PATH, native_req, &[("x-dashscope-sse", "enable")])
        .await;
    assert_eq!(status, 200);
    let row = t.row(&id).await;
    assert_eq!(
        (row["status"].as_str(), row["http_status"].as_i64()),
        (Some("upstream_error"), Some(400))
    );
    assert_eq!(
        (row["error_code"].as_str(), row["cost_total"].as_str()),
        (Some("InvalidParameter"), Some("0"))
    );
    assert_eq!(row["upstream_request_id"], "7671ecd8");

    // A compat 400 that arrives SSE-framed.
    let mut sse400 = Script::sse(vec![b"data: {\"error\":{\"code\":\"invalid_parameter_error\",\"param\":null,\"message\":\"Range of top_logprobs should be [0, 5]\",\"type\":\"invalid_request_error\"},\"id\":\"chatcmpl-54036480\"}\n\n".to_vec()]);
    sse400.status = 400;
    up.push(sse400);
    let (_, id, _) = t.call(COMPAT_PATH, stream_req, &[]).await;
    let row = t.row(&id).await;
    assert_eq!(
        (row["error_code"].as_str(), row["http_status"].as_i64()),
        (Some("invalid_parameter_error"), Some(400))
    );
    assert_eq!(row["upstream_request_id"], "54036480");

    // The billing hour is the billing zone's clock hour the call finished in (Postgres computes it here).
    let pool = t.db.pool().await;
    let (rows, bad, on_utc_hours): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE billing_hour <> date_trunc('hour', finished_at AT TIME ZONE 'Asia/Kolkata') AT TIME ZONE 'Asia/Kolkata'),
                count(*) FILTER (WHERE billing_hour = date_trunc('hour', finished_at))
         FROM usage_ledger",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows, bad, on_utc_hours), (9, 0, 0));
    t.audit(&[]).await;
    let unknown = t
        .http
        .get(t.admin_url(&format!("/v1/calls/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    t.app.shutdown().await;
}

#[tokio::test]
async fn simulator_calls_are_priced_from_the_book() {
    let t = LedgerApp::start(Upstream::Sim, |_| {}).await;
    let mut ids = Vec::new();
    for model in [
        "deepseek-r1",
        "deepseek-v3",
        "deepseek-r1-distill-qwen-1.5b",
        "deepseek-r1-distill-qwen-7b",
    ] {
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}"#
        );
        let (status, id, _) = t.call(COMPAT_PATH, &body, &[("x-sim-chunks", "10")]).await;
        assert_eq!(status, 200);
        ids.push((model, id));
    }
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
    for (model, id) in ids {
        let row = t.row(&id).await;
        let (i, o) = (
            row["input_tokens"].as_i64().unwrap(),
            row["output_tokens"].as_i64().unwrap(),
        );
        let (pin, pout) = match model {
            "deepseek-r1" => (d("4"), d("16")),
            "deepseek-v3" => (d("2"), d("8")),
            "deepseek-r1-distill-qwen-1.5b" => (d("0"), d("0")),
            _ => (d("0.5"), d("1")),
        };
        let expected = (pin * rust_decimal::Decimal::from(i)
            + pout * rust_decimal::Decimal::from(o))
            / d("1000000");
        assert_eq!(d(row["cost_total"].as_str().unwrap()), expected, "{model}");
        assert_eq!(row["priced"], true, "{model}: free models are priced at 0");
    }
    t.audit(&[]).await;
    t.app.shutdown().await;
}

#[tokio::test]
async fn records_journaled_without_a_database_are_shipped_after_restart() {
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let (_held, dead) = refusing_port();
    let app = LedgerApp::start_on(&db, journal.path(), Upstream::Sim, |s| {
        s.ledger.as_mut().unwrap().database_url = format!("postgres://postgres@{dead}/{}", db.name);
    })
    .await;
    let http = test_client();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..25 {
        let r = http
            .post(format!("http://{}{COMPAT_PATH}", app.proxy_addr))
            .body(r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        ids.insert(call_id(&r));
        r.bytes().await.unwrap();
    }
    app.shutdown().await; // records stay in the journal
                          // Torn tail: a crash mid-write leaves half a frame at the end of the last segment.
    let last = std::fs::read_dir(journal.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .max()
        .unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&[200, 1, 0, 0, 9, 9])
        .unwrap();

    let app = LedgerApp::start_on(&db, journal.path(), Upstream::Sim, |_| {}).await;
    flush(&app).await;
    db.audit(&ids, journal.path()).await;
    app.shutdown().await;
    // Shipped segments are gone; the checkpoint is at the end.
    let left = std::fs::read_dir(journal.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "journal")
        })
        .count();
    assert!(left <= 2, "shipped segments deleted ({left} left)");
}

/// Replays never duplicate: a journal whose checkpoint is lost (a crash between an insert and the checkpoint
/// write, or a restored backup) ships its records again, and the ledger still holds each call once.
#[tokio::test]
async fn a_journal_replayed_from_its_start_duplicates_nothing() {
    let t = LedgerApp::start(Upstream::Sim, |_| {}).await;
    for i in 0..5 {
        let body =
            format!(r#"{{"model":"deepseek-v3","messages":[{{"role":"user","content":"r{i}"}}]}}"#);
        assert_eq!(t.call(COMPAT_PATH, &body, &[]).await.0, 200);
    }
    flush(&t.app).await;
    let ids = t.seen_ids();
    t.app.shutdown().await;
    std::fs::remove_file(t.journal.path().join("checkpoint")).unwrap();
    let again = LedgerApp::start_on(&t.db, t.journal.path(), Upstream::Sim, |_| {}).await;
    flush(&again).await;
    let metrics = get_text(&t.http, &format!("http://{}/metrics", again.admin_addr)).await;
    assert!(
        metrics.contains("deepseek_meter_ledger_written_total 0"),
        "the replayed rows were already there\n{metrics}"
    );
    again.shutdown().await;
    t.db.audit(&ids, t.journal.path()).await;
}

#[tokio::test]
async fn journal_cap_refuses_new_calls_by_default() {
    let up = ScriptedUpstream::start().await;
    let t = LedgerApp::start(up.upstream(), |s| {
        s.ledger.as_mut().unwrap().journal.max_bytes = 1
    })
    .await;
    flush(&t.app).await;
    // The first call fits (the cap is checked before a call starts; the journal is empty).
    up.push(Script::json(200, COMPAT_R1_JSON));
    let (s1, _, _) = t
        .call(
            COMPAT_PATH,
            r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        )
        .await;
    assert_eq!(s1, 200);
    // Until the shipper deletes its segment... the active segment stays: the cap holds.
    flush(&t.app).await;
    let (s2, refused, body) = t
        .call(
            NATIVE_PATH,
            r#"{"model":"deepseek-v3","input":{"messages":[]}}"#,
            &[],
        )
        .await;
    assert_eq!(s2, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "MeterJournalFull", "native error shape");
    assert_eq!(v["request_id"], refused.as_str());
    assert_eq!(up.seen.lock().unwrap().len(), 1, "nothing forwarded");
    let ready = t.http.get(t.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    t.audit(&[&refused]).await;
    t.app.shutdown().await;
}

#[tokio::test]
async fn journal_cap_in_serve_mode_counts_unrecorded_calls() {
    let t = LedgerApp::start(Upstream::Sim, |s| {
        let j = &mut s.ledger.as_mut().unwrap().journal;
        j.max_bytes = 1;
        j.on_full = OnFull::Serve;
    })
    .await;
    let body = r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#;
    let (s1, _, _) = t.call(COMPAT_PATH, body, &[]).await;
    flush(&t.app).await;
    let (s2, unrecorded, _) = t.call(COMPAT_PATH, body, &[]).await;
    assert_eq!((s1, s2), (200, 200));
    flush(&t.app).await;
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains("deepseek_meter_ledger_unrecorded_calls 1"),
        "{metrics}"
    );
    t.audit(&[&unrecorded]).await;
    t.app.shutdown().await;
}

#[tokio::test]
async fn sigterm_style_shutdown_records_every_open_stream() {
    let up = ScriptedUpstream::start().await;
    let t = LedgerApp::start(up.upstream(), |s| {
        s.drain_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut script = Script::sse(events(COMPAT_V32_SSE));
        script.gated = true; // never released: the drain deadline cuts them
        up.push(script);
        let resp = t
            .http
            .post(t.url(COMPAT_PATH))
            .body(r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"hi"}],"stream":true}"#)
            .send()
            .await
            .unwrap();
        t.saw(&call_id(&resp));
        let mut s = resp.bytes_stream();
        use futures_util::StreamExt;
        s.next().await.unwrap().unwrap();
        streams.push(s);
    }
    let ids = t.seen_ids();
    t.app.shutdown().await;
    let statuses = t.db.audit(&ids, t.journal.path()).await;
    assert_eq!(ids.len(), 5);
    for id in &ids {
        assert_eq!(statuses[id], "client_aborted", "{id}");
    }
    let pool = t.db.pool().await;
    let estimated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_ledger WHERE usage_source = 'estimated' AND input_tokens > 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(estimated, 5, "each cut stream's usage is estimated");
    drop(streams);
}

#[tokio::test]
async fn a_second_sidecar_on_the_same_journal_directory_is_refused() {
    let t = LedgerApp::start(Upstream::Sim, |_| {}).await;
    let mut settings = deepseek_meter::config::Settings::for_tests();
    settings.ledger = Some(ledger_settings(&t.db.url, t.journal.path()));
    let err = deepseek_meter::app::App::start(settings)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("--journal-dir") && text.contains("in use by another"),
        "{text}"
    );
    t.app.shutdown().await;
    // Once the first is gone, the directory is free again, and a call through it lands.
    let again = LedgerApp::start_on(&t.db, t.journal.path(), Upstream::Sim, |_| {}).await;
    let resp = t
        .http
        .post(format!("http://{}{COMPAT_PATH}", again.proxy_addr))
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let ids = [call_id(&resp)].into_iter().collect();
    resp.bytes().await.unwrap();
    flush(&again).await;
    again.shutdown().await;
    t.db.audit(&ids, t.journal.path()).await;
}

/// The `GRANT` statements of the README's writer role (the block after `CREATE ROLE deepseek_meter_writer`).
fn readme_writer_grants() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("CREATE ROLE deepseek_meter_writer")
        .expect("the README's writer role");
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    // Comments off each line first (they may hold a `;`), then one statement per `;`.
    let sql: String = block
        .lines()
        .map(|l| l.split("--").next().unwrap().trim())
        .collect::<Vec<_>>()
        .join(" ");
    let grants: Vec<String> = sql
        .split(';')
        .map(|stmt| stmt.trim().to_owned())
        .filter(|stmt| stmt.starts_with("GRANT"))
        .collect();
    assert!(grants.len() >= 8, "{grants:?}");
    grants
}

/// Creates `role` with the README's SQL for the sidecar's role, as written there, on database `db`.
async fn create_readme_writer(pool: &sqlx::PgPool, role: &TestRole, db: &str) {
    sqlx::query(&format!("CREATE ROLE {} LOGIN", role.0))
        .execute(pool)
        .await
        .unwrap();
    for sql in readme_writer_grants() {
        let sql = sql
            .replace("deepseek_meter_writer", &role.0)
            .replace("DATABASE deepseek_meter", &format!("DATABASE \"{db}\""));
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
}

/// The README's role ships a full batch (binary COPY into a temporary table) and a small one (UNNEST).
#[tokio::test]
async fn the_readme_writer_role_ships_full_and_small_batches() {
    use deepseek_meter::ledger::{Ledger, COPY_FROM};
    let role = TestRole(format!("dm_writer_{}", uuid::Uuid::now_v7().simple()));
    let db = TestDb::new().await;
    let owner = Ledger::create_and_migrate(&db.url).await.unwrap();
    // Only what the README grants: not the TEMPORARY every role has by default.
    sqlx::query(&format!(
        "REVOKE TEMPORARY ON DATABASE \"{}\" FROM PUBLIC",
        db.name
    ))
    .execute(owner.pool())
    .await
    .unwrap();
    create_readme_writer(owner.pool(), &role, &db.name).await;
    let writer =
        Ledger::connect_lazy(&format!("postgres://{}@{}/{}", role.0, pg_addr(), db.name)).unwrap();
    let full: Vec<_> = (0..COPY_FROM).map(a_record).collect();
    assert_eq!(writer.insert(&full).await.unwrap(), COPY_FROM as u64);
    assert_eq!(
        writer.insert(&full).await.unwrap(),
        0,
        "a replay adds nothing"
    );
    let small: Vec<_> = (0..10).map(a_record).collect();
    assert_eq!(writer.insert(&small).await.unwrap(), 10);
    // By COPY: its temporary table is there (a COPY the role could not run would have gone by UNNEST).
    assert!(
        copy_tables(owner.pool()).await >= 1,
        "the full batch went by COPY"
    );
    writer.pool().close().await;
    owner.pool().close().await;
}

/// The COPY path's temporary tables, seen from any session (pg_class lists every session's).
async fn copy_tables(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname = 'ledger_copy' AND relpersistence = 't'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A role of its own, dropped after the test's database (declare it first: it is dropped last).
struct TestRole(String);

impl Drop for TestRole {
    fn drop(&mut self) {
        admin_sql(format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

#[tokio::test]
async fn the_sidecar_runs_as_an_insert_only_role_and_the_ledger_is_append_only() {
    let role = TestRole(format!("dm_writer_{}", uuid::Uuid::now_v7().simple()));
    let owner = LedgerApp::start(Upstream::Sim, |_| {}).await;
    flush(&owner.app).await; // migrated
    let pool = owner.db.pool().await;
    create_readme_writer(&pool, &role, &owner.db.name).await;
    owner.app.shutdown().await;

    // The writer runs the whole sidecar: a call, the bill's rolls (the hour closes), the report's delivery.
    let as_writer = format!("postgres://{}@{}/{}", role.0, pg_addr(), owner.db.name);
    let reports = tempfile::tempdir().unwrap();
    let clock = Clock::manual("2026-11-25T10:30:00Z".parse().unwrap());
    let journal = tempfile::tempdir().unwrap();
    let app = sidecar(
        &owner.db,
        journal.path(),
        Upstream::Sim,
        clock.clone(),
        |s| {
            let l = s.ledger.as_mut().unwrap();
            l.database_url = as_writer.clone();
            l.migrate = false;
            l.report_dir = Some(reports.path().to_owned());
            // An alert budget every call crosses, and a block budget coordinated through Postgres that
            // has no room for any call of project "capped".
            let table: toml::Table = toml::from_str(
                "[[budget]]\nname = \"all\"\nperiod = \"day\"\nlimit_yuan = \"0.000001\"\naction = \"alert\"\n\
                 [[budget]]\nname = \"capped\"\nperiod = \"month\"\nlimit_yuan = \"0.000001\"\nproject = \"capped\"\naction = \"block\"\n",
            )
            .unwrap();
            s.budgets = deepseek_meter::budget::parse(table.get("budget")).unwrap();
            s.budget_coordination = deepseek_meter::budget::coordinated::Coordination::Postgres;
        },
    )
    .await;
    let http = test_client();
    let budgets_url = format!("http://{}/v1/budgets", app.admin_addr);
    let mut coordination = Value::Null;
    for _ in 0..200 {
        let b: Value = get_json(&http, &budgets_url).await;
        coordination = b["coordination"].clone();
        if coordination == "postgres" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        coordination, "postgres",
        "the writer wrote the budgets' definitions"
    );
    let refused = http
        .post(format!("http://{}{COMPAT_PATH}", app.proxy_addr))
        .header("x-meter-project", "capped")
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429, "the writer's admission in Postgres");
    let refused_id = call_id(&refused);
    let resp = http
        .post(format!("http://{}{COMPAT_PATH}", app.proxy_addr))
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let id = call_id(&resp);
    resp.bytes().await.unwrap();
    flush(&app).await;
    let row = get_text(&http, &format!("http://{}/v1/calls/{id}", app.admin_addr)).await;
    assert!(row.contains(&id), "{row}");
    app.roll_bill()
        .await
        .unwrap()
        .expect("the writer rolls the bill");
    clock.set("2026-11-25T11:10:00Z".parse().unwrap());
    app.roll_bill()
        .await
        .unwrap()
        .expect("the writer closes hours");
    let mut delivered = false;
    for _ in 0..100 {
        app.deliver_reports()
            .await
            .expect("the writer delivers reports");
        if reports
            .path()
            .join("bill-2026-11-25T18+0800-r0.json")
            .exists()
        {
            delivered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(delivered, "the closed hour's report was delivered");
    let mut alerts = 0i64;
    for _ in 0..200 {
        alerts = sqlx::query_scalar("SELECT count(*) FROM budget_alerts WHERE budget = 'all'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if alerts == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        alerts, 3,
        "the writer recorded the budget's three thresholds"
    );
    let reconciled = http
        .post(format!(
            "http://{}/v1/reconcile?from=2026-11-25T18&to=2026-11-25T19",
            app.admin_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reconciled.status(), 200, "the writer reconciles");
    let metrics = get_text(&http, &format!("http://{}/metrics", app.admin_addr)).await;
    assert!(
        metrics.contains("deepseek_meter_reconcile_drift_yuan"),
        "{metrics}"
    );
    app.shutdown().await;
    let counters: i64 = sqlx::query_scalar("SELECT count(*) FROM budget_spent")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        counters, 2,
        "each budget's window counter (the alert's and the block's)"
    );
    owner
        .db
        .audit(&[id, refused_id].into_iter().collect(), journal.path())
        .await;

    let writer = sqlx::PgPool::connect(&as_writer).await.unwrap();
    for sql in [
        "UPDATE usage_ledger SET cost_total = 0",
        "DELETE FROM usage_ledger",
        "TRUNCATE usage_ledger CASCADE", // CASCADE: past the foreign key of cost_adjustments
    ] {
        let err = sqlx::query(sql)
            .execute(&writer)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
        // Even the owner cannot: the ledger is append-only.
        let err = sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    writer.close().await;
    pool.close().await;
}

/// A batch Postgres rejects (one row violates a check constraint) is split row by row: the good rows land,
/// the bad one goes to `dead-letter.jsonl` with Postgres's reason, and shipping goes on.
#[tokio::test]
async fn a_row_postgres_rejects_goes_to_the_dead_letter_file_and_the_rest_of_its_batch_lands() {
    use deepseek_meter::journal::Journal;
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    // Ten records journaled before any sidecar runs, so they ship as one batch; the fifth is invalid (its
    // answer is not output − reasoning, which the ledger checks).
    let mut good = std::collections::HashSet::new();
    let mut bad = None;
    {
        let config = ledger_settings(&db.url, journal.path()).journal;
        let (j, writer) = Journal::open(config).unwrap();
        for i in 0..10 {
            let mut r = a_record(i);
            if i == 4 {
                r.answer_tokens = 999;
                bad = Some(r.call_id.to_string());
            } else {
                good.insert(r.call_id.to_string());
            }
            j.append(r);
        }
        j.close();
        drop(j);
        writer.join().await;
    }
    let bad = bad.unwrap();
    let app = LedgerApp::start_on(&db, journal.path(), Upstream::Sim, |_| {}).await;
    flush(&app).await;
    assert_eq!(db.call_ids().await, good, "the rest of the batch landed");
    let dead = std::fs::read_to_string(journal.path().join("dead-letter.jsonl")).unwrap();
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["record"]["call_id"], bad.as_str());
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("violates check constraint"),
        "{dead}"
    );
    let metrics = get_text(
        &test_client(),
        &format!("http://{}/metrics", app.admin_addr),
    )
    .await;
    for line in [
        "deepseek_meter_ledger_written_total 9",
        "deepseek_meter_ledger_write_failures_total 1",
        "deepseek_meter_ledger_pending_records 0",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    app.shutdown().await;
}

/// `deepseek_meter_billing_hour_cost_yuan{model}`: the open billing hour's cost so far, read from the ledger
/// (every sidecar on the database), equal to the sum of that hour's priced rows.
#[tokio::test]
async fn the_open_hours_cost_gauge_is_the_ledgers_sum_for_the_hour() {
    // A clock that stays inside one hour, whenever the test runs.
    let clock = deepseek_meter::clock::Clock::manual("2026-11-25T05:30:00Z".parse().unwrap());
    let t = LedgerApp::start_at(Upstream::Sim, clock, |_| {}).await;
    let mut ids = Vec::new();
    for (model, n) in [
        ("deepseek-r1", 2),
        ("deepseek-v3", 1),
        ("deepseek-v9-preview", 1),
    ] {
        for _ in 0..n {
            let body =
                format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
            let (status, id, _) = t.call(COMPAT_PATH, &body, &[]).await;
            assert_eq!(status, 200);
            ids.push((model, id));
        }
    }
    flush(&t.app).await;
    let mut expected: std::collections::BTreeMap<&str, rust_decimal::Decimal> = Default::default();
    let mut hours = std::collections::HashSet::new();
    for (model, id) in &ids {
        let row = t.row(id).await;
        hours.insert(row["billing_hour"].as_str().unwrap().to_owned());
        if let Some(cost) = row["cost_total"].as_str() {
            *expected.entry(model).or_default() += cost.parse::<rust_decimal::Decimal>().unwrap();
        }
    }
    assert_eq!(
        hours.len(),
        1,
        "the calls finished in one hour (rerun at an hour's turn)"
    );
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    let gauge: std::collections::BTreeMap<String, f64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("deepseek_meter_billing_hour_cost_yuan{model=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(m, v)| (m.to_owned(), v.parse().unwrap()))
        .collect();
    use rust_decimal::prelude::ToPrimitive;
    let expected: std::collections::BTreeMap<String, f64> = expected
        .into_iter()
        .map(|(m, c)| (m.to_owned(), c.to_f64().unwrap()))
        .collect();
    assert_eq!(
        gauge, expected,
        "priced models only; the unpriced call is not 0 CNY\n{metrics}"
    );
    t.audit(&[]).await;
    t.app.shutdown().await;
}

/// protocol, status, http_status, error_code, usage_source, input_tokens, output_tokens
type AbortedRow = (
    String,
    String,
    Option<i16>,
    Option<String>,
    String,
    i64,
    i64,
);

/// A client that gives up before the upstream's response head still leaves a row: the upstream had the
/// call (it may bill its prompt), so it is `client_aborted` with the prompt estimated (issue 10, defect 1).
// Multi-threaded like the real server: the first estimate loads the tokenizer off the worker (block_in_place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_response_head_leaves_a_row() {
    let up = ScriptedUpstream::start().await;
    let t = LedgerApp::start(up.upstream(), |_| {}).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let cases = [
        (
            COMPAT_PATH,
            r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"9.9和9.11谁大"}]}"#,
            None,
        ),
        (
            NATIVE_PATH,
            r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"9.9和9.11谁大"}]}}"#,
            Some(("x-dashscope-sse", "enable")),
        ),
    ];
    for (path, body, header) in cases {
        let mut script = Script::json(200, COMPAT_R1_JSON);
        script.head_delay = Some(std::time::Duration::from_secs(4));
        up.push(script);
        let mut rb = impatient.post(t.url(path)).body(body);
        if let Some((k, v)) = header {
            rb = rb.header(k, v);
        }
        assert!(
            rb.send().await.unwrap_err().is_timeout(),
            "{path}: the client gave up"
        );
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        2,
        "both calls reached the upstream"
    );
    // The client never saw a call id: read the rows as the ledger has them.
    let pool = t.db.pool().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows: Vec<AbortedRow> = loop {
        flush(&t.app).await;
        let rows = sqlx::query_as(
            "SELECT protocol, status, http_status, error_code, usage_source, input_tokens, output_tokens
             FROM usage_ledger ORDER BY protocol DESC",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.len() == 2 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let estimate = |protocol, body: &str| {
        deepseek_meter::usage::estimate_prompt_tokens(protocol, body.as_bytes()) as i64
    };
    use deepseek_meter::usage::Protocol;
    assert_eq!(
        rows,
        vec![
            (
                "openai".into(),
                "client_aborted".into(),
                None,
                None,
                "estimated".into(),
                estimate(Protocol::OpenAi, cases[0].1),
                0
            ),
            (
                "dashscope".into(),
                "client_aborted".into(),
                None,
                None,
                "estimated".into(),
                estimate(Protocol::DashScope, cases[1].1),
                0
            ),
        ]
    );
    assert!(
        rows.iter().all(|r| r.5 > 0),
        "the prompt is estimated, never 0"
    );
    assert_no_dead_letters(t.journal.path());
    t.app.shutdown().await;
}

/// `Ledger::insert` (the shipper's) sends a full batch by COPY (binary: the twin test above shows it stores what
/// UNNEST stores) and a smaller one by UNNEST, and the bill's rollup holds the rows' sums either way.
#[tokio::test]
async fn a_full_batch_goes_by_copy_and_a_small_one_by_unnest_and_the_rollup_holds_the_rows_sums() {
    use deepseek_meter::ledger::COPY_FROM;
    let db = TestDb::new().await;
    let ledger = deepseek_meter::ledger::Ledger::create_and_migrate(&db.url)
        .await
        .unwrap();
    let pool = ledger.pool().clone();
    let small: Vec<_> = (0..COPY_FROM - 1).map(a_record).collect();
    assert_eq!(ledger.insert(&small).await.unwrap(), small.len() as u64);
    assert_eq!(
        copy_tables(&pool).await,
        0,
        "a batch under COPY_FROM goes by UNNEST"
    );
    let full: Vec<_> = (0..COPY_FROM).map(a_record).collect();
    assert_eq!(ledger.insert(&full).await.unwrap(), COPY_FROM as u64);
    assert!(copy_tables(&pool).await >= 1, "a full batch goes by COPY");
    assert_eq!(
        ledger.insert(&full).await.unwrap(),
        0,
        "a replay adds nothing"
    );
    // The bill's rollup holds exactly the rows' sums, whichever way they came.
    let (rows, rolled): (String, String) = sqlx::query_as(
        "SELECT (SELECT (count(*), sum(input_tokens), sum(output_tokens), sum(cost_total))::text FROM usage_ledger),
                (SELECT (sum(calls), sum(input_tokens), sum(output_tokens), sum(cost_total))::text FROM hourly_bill)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, rolled);
    assert!(
        rows.starts_with(&format!("({},", 2 * COPY_FROM - 1)),
        "{rows}"
    );
    pool.close().await;
}

/// The COPY paths (CSV, which `bench/ledger` measures, and binary, which `Ledger::insert` takes for full batches)
/// store exactly what the UNNEST insert stores — every column and the rollups' sums — for text that CSV must
/// quote (quotes, commas, line breaks, non-ASCII), NULLs, and a replay (nothing added twice any way).
#[tokio::test]
async fn the_copy_inserts_store_what_the_unnest_insert_stores() {
    use deepseek_meter::ledger::insert::{copy_binary_insert, copy_insert, insert};
    let db = TestDb::new().await;
    let ledger = deepseek_meter::ledger::Ledger::create_and_migrate(&db.url)
        .await
        .unwrap();
    let pool = ledger.pool().clone();
    let twin = |i: usize, project: &str| {
        let mut r = a_record(i);
        r.project = Some(project.to_owned());
        r.end_user = i
            .is_multiple_of(2)
            .then(|| format!("用户 \"{i}\",\n第二行"));
        r.error_code = Some("a,b\"c".into());
        r.upstream_request_id = (!i.is_multiple_of(3)).then(|| format!("req-{i}"));
        r.ttft_ms = (i % 2 == 1).then_some(12.5);
        r.cost_total = Some(format!("0.00{i}1234567").parse().unwrap());
        r.cost_input = Some("0.0000001".parse().unwrap());
        r.workspace = Some("ws,1".into());
        r.api_key_id = Some(format!("key-{project}"));
        // Sub-microsecond times (a real clock's): both paths keep the same microsecond.
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T10:59:59.9999996Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        r.started_at = at - chrono::Duration::nanoseconds(1_234_567_891);
        r.finished_at = at;
        // An empty text is not NULL; a backslash and a dot is COPY's end marker in its text format.
        r.key_hint = Some(if i % 4 == 1 { "" } else { "\\." }.into());
        r
    };
    let a: Vec<_> = (0..40).map(|i| twin(i, "unnest")).collect();
    let b: Vec<_> = (0..40).map(|i| twin(i, "copy")).collect();
    assert_eq!(insert(&pool, &a).await.unwrap(), 40);
    assert_eq!(copy_insert(&pool, &b).await.unwrap(), 40);
    assert_eq!(insert(&pool, &a).await.unwrap(), 0, "a replay adds nothing");
    assert_eq!(
        copy_insert(&pool, &b).await.unwrap(),
        0,
        "a replay adds nothing"
    );
    let c: Vec<_> = (0..40).map(|i| twin(i, "binary")).collect();
    assert_eq!(copy_binary_insert(&pool, &c).await.unwrap(), 40);
    assert_eq!(
        copy_binary_insert(&pool, &c).await.unwrap(),
        0,
        "a replay adds nothing"
    );
    // Row by row, every column but the key, the two that tell the twins apart and when it was recorded.
    let rows = |project: &'static str| {
        let pool = pool.clone();
        async move {
            let v: Vec<Value> = sqlx::query_scalar(
                "SELECT to_jsonb(l) - 'call_id' - 'project' - 'api_key_id' - 'recorded_at' FROM usage_ledger l
                 WHERE project = $1 ORDER BY upstream_request_id NULLS FIRST, cost_total",
            )
            .bind(project)
            .fetch_all(&pool)
            .await
            .unwrap();
            v
        }
    };
    let (by_unnest, by_copy) = (rows("unnest").await, rows("copy").await);
    assert_eq!(by_unnest.len(), 40);
    assert_eq!(by_unnest, by_copy);
    assert_eq!(by_unnest, rows("binary").await);
    assert!(
        by_copy.iter().any(|r| r["key_hint"] == ""),
        "an empty text stays empty"
    );
    assert!(by_copy.iter().any(|r| r["key_hint"] == "\\."));
    assert!(by_copy
        .iter()
        .all(|r| r["finished_at"] == by_unnest[0]["finished_at"]));
    assert!(by_copy
        .iter()
        .any(|r| r["end_user"] == "用户 \"0\",\n第二行"));
    // The rollups got the same sums from each.
    for (table, cols) in [
        (
            "hourly_bill",
            "sum(calls), sum(input_tokens), sum(output_tokens), sum(cost_total)",
        ),
        ("hourly_end_user_cost", "count(*), sum(cost)"),
    ] {
        let sums: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT ({cols})::text FROM {table} WHERE project IN ('unnest', 'copy', 'binary') GROUP BY project ORDER BY project"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(sums.len(), 3, "{table}");
        assert!(sums.iter().all(|s| *s == sums[0]), "{table}: {sums:?}");
    }
    {
        let sums: Vec<String> = sqlx::query_scalar(
            "SELECT (count(*), sum(calls), sum(input_tokens), sum(cost), sum(cost_input), min(workspace))::text
             FROM hourly_key_usage WHERE api_key_id IN ('key-unnest', 'key-copy', 'key-binary')
             GROUP BY api_key_id ORDER BY api_key_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(sums.len(), 3, "hourly_key_usage");
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "hourly_key_usage: {sums:?}"
        );
    }
    pool.close().await;
}
