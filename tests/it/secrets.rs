//! Keys never leave the door: a canary API key sent through every kind of call, error and fault, and a
//! second canary injected from `DASHSCOPE_API_KEY`, are searched for in the logs (every level), the ledger,
//! the journal files, `/metrics`, `/readyz` and every call's `/v1/calls/{id}`. Zero hits. Secrets read from
//! files (`--admin-token-file`, `DASHSCOPE_API_KEY_FILE`) work and stay out of the log too.

use crate::helpers::bin::{Bin, SERVE_ON_SIM};
use crate::helpers::*;
const CANARY: &str = "sk-canary-7f3a9c1e5b2d4e6f";
const INJECTED: &str = "sk-injected-canary-0a1b2c3d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_key_appears_nowhere() {
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().to_str().unwrap().to_owned();
    let mut bin = Bin::start(
        &SERVE_ON_SIM
            .into_iter()
            .chain([
                "--database-url",
                &db.url,
                "--idle-timeout-ms",
                "300",
                "--max-body-bytes",
                "4096",
            ])
            .chain(["--journal-dir", &journal_dir])
            .collect::<Vec<_>>(),
        &[("METER_LOG", "trace"), ("DASHSCOPE_API_KEY", INJECTED)],
        &["proxy_addr", "admin_addr"],
    );
    let (proxy, admin) = (bin.addrs[0].clone(), bin.addrs[1].clone());

    let http = test_client();
    let compat = |stream: bool, usage: bool| {
        let mut v = serde_json::json!({"model": "deepseek-v3.2-exp", "messages": [{"role": "user", "content": "hi"}],
                                       "stream": stream, "enable_thinking": true});
        if usage {
            v["stream_options"] = serde_json::json!({"include_usage": true});
        }
        v.to_string()
    };
    let native = r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"hi"}]},"parameters":{"incremental_output":true}}"#;
    let mut metered = std::collections::HashSet::new();
    type Call<'a> = (String, String, Vec<(&'a str, &'a str)>);
    let mut calls: Vec<Call> = vec![
        (COMPAT_PATH.into(), compat(false, false), vec![]),
        (COMPAT_PATH.into(), compat(true, false), vec![]),
        (COMPAT_PATH.into(), compat(true, true), vec![]),
        (
            NATIVE_PATH.into(),
            native.into(),
            vec![("x-dashscope-sse", "enable")],
        ),
        (NATIVE_PATH.into(), native.into(), vec![]),
        (COMPAT_PATH.into(), "{broken json".into(), vec![]),
        (
            COMPAT_PATH.into(),
            format!("{{\"model\":\"{}\"}}", "x".repeat(5000)),
            vec![],
        ),
        ("/admin/keys".into(), "{}".into(), vec![]),
        ("/compatible-mode/v1/models".into(), String::new(), vec![]),
    ];
    for fault in SIM_FAULTS {
        calls.push((
            COMPAT_PATH.into(),
            compat(true, false),
            vec![("x-sim-fault", fault)],
        ));
        calls.push((
            NATIVE_PATH.into(),
            native.into(),
            vec![("x-sim-fault", fault), ("x-dashscope-sse", "enable")],
        ));
    }
    for (i, (path, body, headers)) in calls.iter().enumerate() {
        // Every other call relies on the injected key instead of sending one.
        let mut rb = http
            .post(format!("http://{proxy}{path}"))
            .body(body.clone());
        if i % 2 == 0 {
            rb = rb.bearer_auth(CANARY);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap();
        if path == COMPAT_PATH || path == NATIVE_PATH {
            metered.insert(call_id(&resp));
        }
        let _ = resp.bytes().await;
    }
    let mut exposed = get_text(&http, &format!("http://{admin}/metrics")).await;
    exposed.push_str(&get_text(&http, &format!("http://{admin}/readyz")).await);
    // Every metered call's row through the admin API, once the shipper has it in Postgres.
    for id in &metered {
        let url = format!("http://{admin}/v1/calls/{id}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let row = loop {
            let resp = http.get(&url).send().await.unwrap();
            if resp.status() == 200 {
                break resp.text().await.unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} reaches /v1/calls"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(row.contains(id.as_str()), "{row}");
        exposed.push_str(&row);
    }

    assert!(bin.sigterm().success());

    // The ledger (through the admin API of a second instance would need it running; read it directly).
    assert_eq!(metered.len(), 23, "25 calls, 2 of them to unmetered paths");
    db.audit(&metered, journal.path()).await;
    let pool = db.pool().await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(l)::text FROM usage_ledger l")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut journal_bytes = Vec::new();
    for e in std::fs::read_dir(journal.path()).unwrap() {
        journal_bytes.extend(std::fs::read(e.unwrap().path()).unwrap_or_default());
    }
    let log = bin.log().join("\n");
    assert!(
        log.len() > 10_000,
        "trace logging ran ({} bytes)",
        log.len()
    );
    for secret in [CANARY, INJECTED, &CANARY[3..], &INJECTED[3..]] {
        assert!(!log.contains(secret), "key in the log");
        assert!(
            !rows.iter().any(|r| r.contains(secret)),
            "key in the ledger"
        );
        assert!(
            !String::from_utf8_lossy(&journal_bytes).contains(secret),
            "key in the journal"
        );
        assert!(
            !exposed.contains(secret),
            "key in metrics, readiness or /v1/calls"
        );
    }
    // The fingerprints are there instead.
    assert!(
        rows.iter().any(|r| r.contains("sk-…4e6f")) && rows.iter().any(|r| r.contains("sk-…2c3d"))
    );
}

/// Secrets from files (the Kubernetes and systemd credentials way): `--admin-token-file` guards the admin
/// listener with the file's token (its final newline ignored), and `DASHSCOPE_API_KEY_FILE` is the key injected
/// upstream for a client without `Authorization`; neither secret reaches the log. Giving a secret and its file
/// both, or an empty file, stops startup with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_from_files() {
    use crate::helpers::captures::COMPAT_R1_JSON;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-admin-token-7c1f\n").unwrap();
    let key_file = dir.path().join("dashscope-key");
    std::fs::write(&key_file, "sk-from-a-file-0000000000009f3e\n").unwrap();
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, COMPAT_R1_JSON));
    let upstream = match up.upstream() {
        deepseek_meter::config::Upstream::Url(u) => u.to_string(),
        deepseek_meter::config::Upstream::Sim => unreachable!(),
    };
    let token_path = token_file.to_str().unwrap();
    let client_token_file = dir.path().join("client-token");
    std::fs::write(&client_token_file, "file-client-token-31aa\n").unwrap();
    let db = TestDb::new().await;
    let journal = dir.path().join("journal");
    let mut bin = Bin::start(
        &[
            "serve",
            "--database-url",
            &db.url,
            "--journal-dir",
            journal.to_str().unwrap(),
            "--upstream",
            upstream.trim_end_matches('/'),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_path,
            "--client-token-file",
            client_token_file.to_str().unwrap(),
        ],
        &[
            ("METER_LOG", "trace"),
            ("DASHSCOPE_API_KEY_FILE", key_file.to_str().unwrap()),
        ],
        &["proxy_addr", "admin_addr"],
    );
    let (proxy, admin) = (bin.addrs[0].clone(), bin.addrs[1].clone());
    let http = test_client();
    // The key from its file is lent only to a client with the token from its file.
    let call = |token: Option<&'static str>| {
        let (http, proxy) = (http.clone(), proxy.clone());
        async move {
            let mut req = http
                .post(format!("http://{proxy}{COMPAT_PATH}"))
                .body(r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#);
            if let Some(t) = token {
                req = req.header("x-meter-client-token", t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let id = call_id(&resp);
            resp.bytes().await.unwrap();
            (status, id)
        }
    };
    assert_eq!(call(None).await.0, 401);
    assert_eq!(call(Some("wrong-token")).await.0, 401);
    let (status, id) = call(Some("file-client-token-31aa")).await;
    assert_eq!(status, 200);
    // Every admin route but /healthz needs the admin token from its file: 401 without it, answered with it.
    let routes = [
        ("GET", "/metrics".to_owned()),
        ("GET", "/readyz".to_owned()),
        ("GET", format!("/v1/calls/{id}")),
        ("GET", "/v1/bill/hourly?by=model".to_owned()),
        ("GET", "/v1/budgets".to_owned()),
        (
            "GET",
            "/v1/reconcile?from=2026-11-25T13&to=2026-11-25T14".to_owned(),
        ),
        (
            "POST",
            "/v1/reconcile?from=2026-11-25T13&to=2026-11-25T14".to_owned(),
        ),
    ];
    for (method, path) in &routes {
        let url = format!("http://{admin}{path}");
        let req = |token: Option<&str>| {
            let mut r = http.request(method.parse().unwrap(), &url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r
        };
        let without = req(None).send().await.unwrap();
        assert_eq!(without.status(), 401, "{method} {path}");
        assert_eq!(
            without.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        assert_eq!(
            req(Some("not-the-token")).send().await.unwrap().status(),
            401,
            "{method} {path}"
        );
        let mut with = req(Some("file-admin-token-7c1f"))
            .send()
            .await
            .unwrap()
            .status();
        // The call's row may still be on its way to the ledger.
        for _ in 0..100 {
            if with != 404 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            with = req(Some("file-admin-token-7c1f"))
                .send()
                .await
                .unwrap()
                .status();
        }
        // Answered: 2xx, or for /readyz a 503 that says why it is not ready.
        assert!(
            with.is_success() || (path == "/readyz" && with == 503),
            "{method} {path}: {with}"
        );
    }
    let health = http
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "/healthz needs no token");
    assert_eq!(
        up.last_seen().header("authorization"),
        Some("Bearer sk-from-a-file-0000000000009f3e")
    );
    assert!(bin.sigterm().success());
    let log = bin.log().join("\n");
    assert!(
        !log.contains("sk-from-a-file")
            && !log.contains("file-admin-token")
            && !log.contains("file-client-token"),
        "a secret in the log"
    );

    // Both a secret and its file, or an empty file: one line, exit 2.
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let empty = dir.path().join("empty");
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (
            &["serve", "--admin-token", "x", "--admin-token-file", token_path],
            &[],
            "invalid setting --admin-token-file (METER_ADMIN_TOKEN_FILE, config key `admin_token_file`): give --admin-token or its file, not both",
        ),
        (
            &["serve"],
            &[("DASHSCOPE_API_KEY", "sk-x"), ("DASHSCOPE_API_KEY_FILE", key_file.to_str().unwrap())],
            "invalid setting DASHSCOPE_API_KEY_FILE: set DASHSCOPE_API_KEY or DASHSCOPE_API_KEY_FILE, not both",
        ),
        (
            &["serve", "--admin-token-file", empty.to_str().unwrap()],
            &[],
            "is empty",
        ),
    ];
    for (args, env, want) in cases {
        // Ephemeral ports: if the check ever let it start, it would not take the default ports of the machine.
        let out = crate::helpers::bin::output_of(
            tokio::process::Command::new(crate::helpers::bin::BIN)
                .args(args)
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .env_remove("DASHSCOPE_API_KEY")
                .envs(env.iter().copied()),
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("file-admin-token"),
            "the content is never quoted"
        );
    }
}

/// The injected key is lent only to clients with the client token: with `--client-token`, a call without its own
/// `Authorization` needs `X-Meter-Client-Token` — missing or wrong: 401 in the caller's shape, a `rejected` row,
/// nothing forwarded; right: forwarded with the injected key and without the client token. A client with its own
/// key is unaffected. A non-loopback `--listen` with `DASHSCOPE_API_KEY` and no client token stops startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_key_is_lent_only_with_the_client_token() {
    use crate::helpers::captures::COMPAT_R1_JSON;
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, COMPAT_R1_JSON));
    let upstream = match up.upstream() {
        deepseek_meter::config::Upstream::Url(u) => u.to_string(),
        deepseek_meter::config::Upstream::Sim => unreachable!(),
    };
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let mut bin = Bin::start(
        &[
            "serve",
            "--upstream",
            upstream.trim_end_matches('/'),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--journal-dir",
            journal.path().to_str().unwrap(),
        ],
        &[
            ("DASHSCOPE_API_KEY", INJECTED),
            ("METER_CLIENT_TOKEN", "client-token-5d2e"),
            ("METER_LOG", "trace"),
        ],
        &["proxy_addr", "admin_addr"],
    );
    let (proxy, admin) = (bin.addrs[0].clone(), bin.addrs[1].clone());
    let http = test_client();
    let body = r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#;
    let native = r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"hi"}]}}"#;
    let call = |path: &'static str, body: &'static str, token: Option<&'static str>, own: bool| {
        let http = http.clone();
        let url = format!("http://{proxy}{path}");
        async move {
            let mut req = http.post(url).body(body);
            if let Some(t) = token {
                req = req.header("x-meter-client-token", t);
            }
            if own {
                req = req.bearer_auth("sk-the-clients-own-key-1234");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let id = call_id(&resp);
            (
                status,
                id,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let seen_before = || up.seen.lock().unwrap().len();
    let mut refused = Vec::new();
    for (path, body, token) in [
        (COMPAT_PATH, body, None),
        (COMPAT_PATH, body, Some("client-token-wrong")),
        (NATIVE_PATH, native, None),
    ] {
        let n = seen_before();
        let (status, id, answer) = call(path, body, token, false).await;
        assert_eq!(status, 401, "{answer}");
        let code = if path == COMPAT_PATH {
            &answer["error"]["code"]
        } else {
            &answer["code"]
        };
        assert_eq!(code, "MeterClientTokenInvalid", "{answer}");
        assert_eq!(seen_before(), n, "nothing forwarded");
        refused.push(id);
    }
    let (status, _, _) = call(COMPAT_PATH, body, Some("client-token-5d2e"), false).await;
    assert_eq!(status, 200);
    let seen = up.last_seen();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {INJECTED}").as_str())
    );
    assert_eq!(seen.header("x-meter-client-token"), None, "never forwarded");
    let (status, _, _) = call(COMPAT_PATH, body, None, true).await;
    assert_eq!(status, 200, "a client with its own key is unaffected");
    assert_eq!(
        up.last_seen().header("authorization"),
        Some("Bearer sk-the-clients-own-key-1234")
    );
    // The refused call's row, once shipped.
    let url = format!("http://{admin}/v1/calls/{}", refused[0]);
    let mut row = serde_json::Value::Null;
    for _ in 0..200 {
        row = serde_json::from_str(&get_text(&http, &url).await).unwrap_or_default();
        if row["status"] == "rejected" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (&row["status"], &row["http_status"]),
        (&"rejected".into(), &401.into())
    );
    assert!(bin.sigterm().success());
    let log = bin.log().join("\n");
    assert!(
        !log.contains("client-token-5d2e") && !log.contains(INJECTED),
        "a secret in the log"
    );

    // Beyond loopback with the key and no client token: refused at startup.
    let out = crate::helpers::bin::output_of(
        tokio::process::Command::new(crate::helpers::bin::BIN)
            .args([
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("DASHSCOPE_API_KEY", INJECTED)
            .env_remove("METER_CLIENT_TOKEN"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid setting --listen (METER_LISTEN")
            && stderr.contains("set --client-token (METER_CLIENT_TOKEN)")
            && !stderr.contains(INJECTED),
        "{stderr}"
    );
}

/// The canary key through everything built on the ledger: every table of the schema (the hourly bill and its
/// rollup, the hour states, heartbeats, the delivery outbox, budget alerts, the coordinated budgets' counters
/// and reservations, the imported platform bill, reconciliation runs, price adjustments — listed from the
/// catalog, so a new table is searched without being named here); the delivered report files and webhook
/// POSTs; the alert POSTs; the output of `reconcile` and `reprice`; `/v1/bill/hourly`, `/v1/budgets`,
/// `/v1/reconcile`, `/metrics`. Zero hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_key_is_in_no_bill_report_delivery_or_alert() {
    use chrono::{DateTime, Utc};
    use deepseek_meter::clock::Clock;
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    // One receiver for both webhooks: every body it got, as text.
    let (receiver, base) = crate::helpers::receiver::WebhookReceiver::start().await;
    let bodies = || -> Vec<String> { receiver.bodies().iter().map(|b| b.to_string()).collect() };
    let reports = tempfile::tempdir().unwrap();
    let clock = Clock::manual(at("2026-11-25T15:30:00Z"));
    let t = LedgerApp::start_at(
        deepseek_meter::config::Upstream::Sim,
        clock.clone(),
        |s| {
            let table: toml::Table = toml::from_str(
                "[[budget]]\nname = \"tiny\"\nperiod = \"day\"\nlimit_yuan = \"0.000001\"\naction = \"alert\"\n\
                 [[budget]]\nname = \"cap\"\nperiod = \"month\"\nlimit_yuan = \"100\"\naction = \"block\"\n",
            )
            .unwrap();
            s.budgets = deepseek_meter::budget::parse(table.get("budget")).unwrap();
            s.budget_coordination = deepseek_meter::budget::coordinated::Coordination::Postgres;
            s.alert_webhook = Some(format!("{base}/alerts").parse().unwrap());
            let l = s.ledger.as_mut().unwrap();
            l.report_dir = Some(reports.path().to_owned());
            l.report_webhook = Some(format!("{base}/reports").parse().unwrap());
        },
    )
    .await;
    for _ in 0..200 {
        let b = get_json(&t.http, &t.admin_url("/v1/budgets")).await;
        if b["coordination"] == "postgres" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let resp = t
            .http
            .post(t.url(COMPAT_PATH))
            .bearer_auth(CANARY)
            .header("x-meter-project", "canary")
            .body(r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        t.saw(&call_id(&resp));
        resp.bytes().await.unwrap();
    }
    flush(&t.app).await;
    // The budget's alerts first (its day ends at 16:00 UTC, which the clock passes next).
    for _ in 0..200 {
        if bodies().iter().any(|b| b.contains("\"threshold\"")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    t.app.roll_bill().await.unwrap().unwrap();
    clock.set(at("2026-11-25T16:10:00Z"));
    t.app.roll_bill().await.unwrap().unwrap();
    // Wait for the report (webhook and files) and the budget's alerts.
    let mut texts: Vec<String> = Vec::new();
    for _ in 0..200 {
        t.app.deliver_reports().await.unwrap();
        let got = bodies();
        let report = got.iter().any(|b| b.contains("\"rows\""));
        let alert = got.iter().any(|b| b.contains("\"threshold\""));
        if report && alert && std::fs::read_dir(reports.path()).unwrap().count() == 2 {
            texts = got;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !texts.is_empty(),
        "a report and an alert were delivered: {:?}, files {:?}",
        bodies(),
        std::fs::read_dir(reports.path()).unwrap().count()
    );
    for f in std::fs::read_dir(reports.path()).unwrap() {
        texts.push(std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    // The platform's bill of those calls (as the simulator writes it) reconciled, and a price correction.
    let dir = tempfile::tempdir().unwrap();
    let platform =
        deepseek_meter::sim::billing::PlatformBill::new(clock.clone(), std::time::Duration::ZERO);
    platform.book(&deepseek_meter::sim::billing::Booking {
        authorization: Some(&format!("Bearer {CANARY}")),
        workspace: None,
        model: "deepseek-r1",
        tokens: deepseek_meter::usage::Tokens {
            input: 10,
            output: 50,
            reasoning: 20,
            ..Default::default()
        },
    });
    let export = dir.path().join("bill.csv");
    std::fs::write(&export, platform.csv(false)).unwrap();
    let book = dir.path().join("prices.toml");
    std::fs::write(
        &book,
        deepseek_meter::pricing::BUILTIN_BOOK.replace("output = \"16\"", "output = \"17\""),
    )
    .unwrap();
    for args in [
        vec![
            "reconcile",
            "--bill",
            export.to_str().unwrap(),
            "--format",
            "json",
        ],
        vec![
            "reprice",
            "--from",
            "2026-11-25",
            "--to",
            "2026-11-27",
            "--prices",
            book.to_str().unwrap(),
        ],
    ] {
        let (code, out, err) =
            crate::helpers::bin::run_bin(&[args, vec!["--database-url", &t.db.url]].concat()).await;
        assert_eq!(code, Some(0), "{err}");
        texts.push(out);
        texts.push(err);
    }
    for path in [
        "/v1/bill/hourly?from=2026-11-25&to=2026-11-27&by=model,project,key",
        "/v1/budgets",
        "/v1/reconcile?from=2026-11-25&to=2026-11-27",
        "/metrics",
    ] {
        texts.push(get_text(&t.http, &t.admin_url(path)).await);
    }
    let pool = t.db.pool().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for must in [
        "budget_spent",
        "platform_bill",
        "reconcile_runs",
        "cost_adjustments",
        "usage_ledger",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {must}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(n > 0, "{must} has rows to search");
    }
    for table in tables {
        let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(&pool)
            .await
            .unwrap();
        texts.extend(rows.into_iter().map(|r| r.0));
    }
    assert!(
        texts.iter().any(|t| t.contains("canary")),
        "the calls are in what was searched"
    );
    for secret in [CANARY, &CANARY[3..]] {
        assert!(
            !texts.iter().any(|t| t.contains(secret)),
            "the key in a bill, report or alert"
        );
    }
    t.audit(&[]).await;
}

/// The real binary with a key pinned to project alpha (`[[api_key]]` in its config file) and a `block` budget on
/// alpha: a client holding that key cannot leave alpha by sending another `X-Meter-Project`, its rows say
/// alpha, and alpha's budget refuses it once full.
#[tokio::test]
async fn a_pinned_key_stays_in_its_project_and_its_budget_through_the_binary() {
    const KEY: &str = "sk-pinned-alpha-0001";
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let fingerprint = deepseek_meter::usage::key_identity(&format!("Bearer {KEY}"))
        .unwrap()
        .0;
    let config = journal.path().join("meter.toml");
    // With max_tokens 64 a deepseek-v3 call's worst case is (82 body bytes × 2 + 64 × 8) per million = 0.000676,
    // and the simulator's answer costs 0.000136: room for the first call, not for a second after it.
    std::fs::write(
        &config,
        format!(
            "[[api_key]]\nfingerprint = \"{fingerprint}\"\nproject = \"alpha\"\n\n\
             [[budget]]\nname = \"alpha\"\nperiod = \"day\"\nlimit_yuan = \"0.0008\"\nproject = \"alpha\"\naction = \"block\"\n"
        ),
    )
    .unwrap();
    let journal_dir = journal.path().join("journal");
    let args: Vec<&str> = ["--config", config.to_str().unwrap()]
        .into_iter()
        .chain(SERVE_ON_SIM)
        .chain(["--database-url", &db.url])
        .chain(["--journal-dir", journal_dir.to_str().unwrap()])
        .collect();
    let mut bin = Bin::start(&args, &[], &["proxy_addr", "admin_addr"]);
    let (proxy, admin) = (bin.addrs[0].clone(), bin.addrs[1].clone());
    let http = test_client();
    for _ in 0..200 {
        let b = get_json(&http, &format!("http://{admin}/v1/budgets")).await;
        if b["budgets"][0]["spent_known"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut statuses = Vec::new();
    for project in ["beta", "gamma"] {
        let resp = http
            .post(format!("http://{proxy}{COMPAT_PATH}"))
            .bearer_auth(KEY)
            .header("x-meter-project", project)
            .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}],"max_tokens":64}"#)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        let body = resp.text().await.unwrap();
        if statuses.len() == 2 {
            assert!(body.contains("BudgetExceeded"), "{body}");
        }
    }
    assert_eq!(statuses, [200, 429]);
    assert!(bin.sigterm().success());
    let pool = db.pool().await;
    let projects: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT project, status FROM usage_ledger ORDER BY started_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        projects,
        [
            (Some("alpha".into()), "ok".into()),
            (Some("alpha".into()), "rejected".into())
        ]
    );
}
