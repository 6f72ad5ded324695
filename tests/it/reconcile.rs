//! Reconciliation (issue 14) end to end: simulator traffic through the sidecar on a clock the test drives, the
//! simulator's own bill-detail export (the platform's layout and rounding, calls booked five minutes late),
//! and the real binary's `reconcile` → every hour a match, a call booked in the next hour matched. Then each
//! kind of drift injected — a row the ledger lost, a wrong price, traffic that bypassed the sidecar, a line
//! the bill lacks — and each reported as what it is, with its amount. Imports are idempotent and all or
//! nothing; `GET /v1/reconcile` and the drift metric say the same.

use crate::helpers::bin::run_bin;
use crate::helpers::*;
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Upstream;
use deepseek_meter::sim::billing::{key_id_of, PlatformBill, DEFAULT_WORKSPACE};
use deepseek_meter::sim::{SimOptions, SimServer};
use rust_decimal::Decimal;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "sk-reconcile-team-0001";
const BYPASS_KEY: &str = "sk-reconcile-bypass-0002";

fn fingerprint(key: &str) -> String {
    deepseek_meter::usage::key_identity(&format!("Bearer {key}"))
        .unwrap()
        .0
}

fn d(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

/// The sidecar's config file: the key's console ID, the default workspace, and (`wrong_v3`) a price book whose
/// deepseek-v3 output price is wrong.
fn config(dir: &std::path::Path, wrong_v3: bool) -> (std::path::PathBuf, String) {
    let key_id = key_id_of(&format!("Bearer {KEY}")).unwrap();
    let mut text = format!(
        "[[api_key]]\nfingerprint = \"{}\"\nkey_id = \"{key_id}\"\nname = \"team\"\n\n[reconcile]\ndefault_workspace = \"{DEFAULT_WORKSPACE}\"\n",
        fingerprint(KEY)
    );
    if wrong_v3 {
        let book = deepseek_meter::pricing::BUILTIN_BOOK.replace(
            "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"8\"",
            "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"80\"",
        );
        assert_ne!(book, deepseek_meter::pricing::BUILTIN_BOOK);
        let prices = dir.join("prices.toml");
        std::fs::write(&prices, book).unwrap();
        text = format!("prices = {:?}\n{text}", prices.to_str().unwrap());
    }
    let path = dir.join("meter.toml");
    std::fs::write(&path, &text).unwrap();
    (path, key_id)
}

struct World {
    t: LedgerApp,
    sim: SimServer,
    bill: Arc<PlatformBill>,
    clock: Clock,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl World {
    async fn start(wrong_v3: bool) -> World {
        World::start_with(wrong_v3, |_| {}).await
    }

    /// A world whose sidecar has these settings changed too.
    async fn start_with(
        wrong_v3: bool,
        tweak: impl FnOnce(&mut deepseek_meter::config::Settings) + Send + 'static,
    ) -> World {
        let clock = Clock::manual("2026-11-25T05:10:00Z".parse().unwrap());
        let bill = Arc::new(PlatformBill::new(clock.clone(), Duration::from_secs(300)));
        let sim = SimServer::start(
            SimOptions {
                bill: Some(bill.clone()),
                ..SimOptions::default()
            },
            ([127, 0, 0, 1], 0).into(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = config(dir.path(), wrong_v3);
        let file = deepseek_meter::config::load_file(Some(&config)).unwrap();
        let upstream = Upstream::Url(format!("http://{}", sim.addr).parse().unwrap());
        let t = LedgerApp::start_at(upstream, clock.clone(), move |s| {
            let resolved =
                deepseek_meter::config::Settings::resolve(Default::default(), file).unwrap();
            s.api_keys = resolved.api_keys;
            s.reconcile = resolved.reconcile;
            s.prices = resolved.prices;
            tweak(s);
        })
        .await;
        World {
            t,
            sim,
            bill,
            clock,
            dir,
            config,
        }
    }

    /// A call at `beijing` (`HH:MM` on 2026-11-25) through the sidecar (or straight to the simulator).
    /// `chunks` text pieces per channel: one token each.
    async fn call(
        &self,
        beijing: &str,
        model: &str,
        key: &str,
        through_sidecar: bool,
        workspace: Option<&str>,
    ) {
        let chunks = if model == "deepseek-v3" {
            "3000"
        } else {
            "200"
        };
        let at: chrono::DateTime<chrono::Utc> =
            format!("2026-11-25T{beijing}:00+08:00").parse().unwrap();
        self.clock.set(at);
        let base = if through_sidecar {
            self.t.url(COMPAT_PATH)
        } else {
            format!("http://{}{COMPAT_PATH}", self.sim.addr)
        };
        let mut req = self
            .t
            .http
            .post(base)
            .bearer_auth(key)
            .header("x-sim-chunks", chunks)
            .body(format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"reconcile me at {beijing}"}}],"stream":true}}"#
            ));
        if let Some(w) = workspace {
            req = req.header("X-DashScope-WorkSpace", w);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        if through_sidecar {
            self.t.saw(&call_id(&resp));
        }
        resp.bytes().await.unwrap();
    }

    /// An Anthropic Messages call at `beijing` through the sidecar, with the cache reads and writes the
    /// simulator reports.
    async fn call_anthropic(
        &self,
        beijing: &str,
        model: &str,
        chunks: u32,
        cached: u64,
        written: u64,
    ) {
        let at: chrono::DateTime<chrono::Utc> =
            format!("2026-11-25T{beijing}:00+08:00").parse().unwrap();
        self.clock.set(at);
        let resp = self
            .t
            .http
            .post(self.t.url("/apps/anthropic/v1/messages"))
            .header("x-api-key", KEY)
            .header("x-sim-chunks", chunks.to_string())
            .header("x-sim-cached-tokens", cached.to_string())
            .header("x-sim-cache-creation-tokens", written.to_string())
            .body(format!(
                r#"{{"model":"{model}","max_tokens":4096,"stream":true,"system":"{}","messages":[{{"role":"user","content":"reconcile me at {beijing}"}}]}}"#,
                "a long shared system prompt, cached. ".repeat(40)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        self.t.saw(&call_id(&resp));
        resp.bytes().await.unwrap();
    }

    /// `deepseek-meter reconcile` with these flags: exit code, stdout, stderr.
    async fn reconcile(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let config = self.config.to_str().unwrap();
        let db = &self.t.db.url;
        run_bin(
            &[
                &["--config", config, "reconcile", "--database-url", db],
                args,
            ]
            .concat(),
        )
        .await
    }

    /// The simulator's export so far, written to a file (without the lines `drop` says).
    fn export(&self, name: &str, drop: impl Fn(&str) -> bool) -> String {
        let csv: String = self
            .bill
            .csv(false)
            .lines()
            .filter(|l| !drop(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = self.dir.path().join(name);
        std::fs::write(&path, csv).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

fn hours(j: &Value) -> Vec<(String, String)> {
    j["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["hour"].as_str().unwrap()[11..13].to_owned(),
                h["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn hour<'a>(j: &'a Value, hh: &str) -> &'a Value {
    j["hours"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| &h["hour"].as_str().unwrap()[11..13] == hh)
        .unwrap_or_else(|| panic!("no hour {hh}: {j}"))
}

#[tokio::test]
async fn simulator_traffic_reconciles_to_a_match_and_each_injected_drift_is_named() {
    let w = World::start(true).await;
    // Clean traffic: 13:10 and 13:30 in hour 13, one at 13:57 that the platform books at 14:02 (hour 14),
    // one at 14:20 in another workspace.
    w.call("13:10", "deepseek-r1", KEY, true, None).await;
    w.call("13:30", "deepseek-r1", KEY, true, None).await;
    w.call("13:57", "deepseek-r1", KEY, true, None).await;
    w.call("14:20", "deepseek-r1", KEY, true, Some("llm-team"))
        .await;
    flush(&w.t.app).await;
    w.t.app.roll_bill().await.unwrap().unwrap();

    let clean = w.export("clean.csv", |_| false);
    let (code, out, err) = w.reconcile(&["--bill", &clean, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("imported the bill: 6 new lines"), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        hours(&j),
        [("13".into(), "match".into()), ("14".into(), "match".into())],
        "{j}"
    );
    assert_eq!(j["total_matches"], true, "{j}");
    let spilled = &hour(&j, "13")["lines"];
    assert!(
        spilled
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["spilled_tokens"].as_i64().unwrap() > 0),
        "the 13:57 call is carried into hour 14: {spilled}"
    );
    // The same file again changes nothing.
    let (code, _, err) = w.reconcile(&["--bill", &clean, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("0 new lines, 0 changed, 6 unchanged"), "{err}");

    // Drifts, an hour each. 15: deepseek-v3 priced wrong by the sidecar. 16: two calls of the team's key, one
    // of which never reached the ledger (it went around the sidecar). 17: a call of another key that bypassed
    // the sidecar. 18: a call the bill has no line for.
    w.call("15:10", "deepseek-v3", KEY, true, None).await;
    w.call("16:10", "deepseek-r1", KEY, true, None).await;
    w.call("16:20", "deepseek-r1", KEY, false, None).await;
    w.call("17:10", "deepseek-r1", BYPASS_KEY, false, None)
        .await;
    w.call("18:10", "deepseek-r1", KEY, true, None).await;
    flush(&w.t.app).await;
    let pool = w.t.db.pool().await;
    // What the missing call used, asked of a simulator of its own (the usage is a function of the request).
    let (lost_in, lost_out) = {
        let sim = SimServer::start(SimOptions::default(), ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let v: Value = w
            .t
            .http
            .post(format!("http://{}{COMPAT_PATH}", sim.addr))
            .bearer_auth(KEY)
            .header("x-sim-chunks", "200")
            .body(r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"reconcile me at 16:20"}]}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sim.shutdown().await;
        (
            v["usage"]["prompt_tokens"].as_i64().unwrap(),
            v["usage"]["completion_tokens"].as_i64().unwrap(),
        )
    };
    w.t.app.roll_bill().await.unwrap().unwrap();

    let all = w.export("all.csv", |l| l.starts_with("2026-11-25 18:00:00"));
    let (code, out, err) = w
        .reconcile(&[
            "--bill",
            &all,
            "--from",
            "2026-11-25T13",
            "--to",
            "2026-11-25T19",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(code, Some(0), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    let verdicts: Vec<(String, String)> = hours(&j);
    let want: Vec<(String, String)> = [
        ("13", "match"),
        ("14", "match"),
        ("15", "money_drift"),
        ("16", "token_drift"),
        ("17", "only_in_bill"),
        ("18", "only_in_ledger"),
    ]
    .iter()
    .map(|(h, v)| (h.to_string(), v.to_string()))
    .collect();
    assert_eq!(verdicts, want, "{j}");
    assert_eq!(j["total_matches"], false);

    // Each with its amount. 15: the ledger's v3 cost minus the bill's lines.
    let v3_cost: Decimal =
        sqlx::query_scalar("SELECT sum(cost_total) FROM usage_ledger WHERE model = 'deepseek-v3'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let h15 = hour(&j, "15");
    assert_eq!(d(&h15["ledger_yuan"]), v3_cost);
    assert_eq!(d(&h15["drift_yuan"]), v3_cost - d(&h15["bill_yuan"]));
    assert!(d(&h15["drift_yuan"]) > Decimal::new(1, 2), "{h15}");
    assert_eq!(
        d(&j["drift_by_model"]["deepseek-v3"]),
        d(&h15["drift_yuan"])
    );
    // 16: the bill has the missing call's tokens more, type by type.
    let h16 = hour(&j, "16");
    for (ty, lost) in [("input_token", lost_in), ("output_token", lost_out)] {
        let l = h16["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["token_type"] == ty)
            .unwrap();
        assert_eq!(l["verdict"], "token_drift");
        assert_eq!(
            l["bill_tokens"].as_i64().unwrap() - l["ledger_tokens"].as_i64().unwrap(),
            lost,
            "{l}"
        );
    }
    // 17: only the bypassing key's lines, none in the ledger.
    let h17 = hour(&j, "17");
    let bypass_id = key_id_of(&format!("Bearer {BYPASS_KEY}")).unwrap();
    assert!(h17["lines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["key_id"] == bypass_id.as_str()));
    assert_eq!(d(&h17["ledger_yuan"]), Decimal::ZERO);
    // 18: the ledger's call, no bill.
    let h18 = hour(&j, "18");
    assert_eq!(d(&h18["bill_yuan"]), Decimal::ZERO);
    assert!(d(&h18["ledger_yuan"]) > Decimal::ZERO);

    // The bill's hours record it; the admin route and the metric say the same.
    let recorded: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT to_char(billing_hour AT TIME ZONE 'Asia/Shanghai', 'HH24'), reconcile_verdict
         FROM bill_hours WHERE billing_hour >= '2026-11-25T13:00:00+08:00' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (hh, verdict) in &recorded {
        let want = want.iter().find(|(h, _)| h == hh).map(|(_, v)| v.clone());
        if want.is_some() {
            assert_eq!(verdict, &want, "bill_hours {hh}");
        }
    }
    let url =
        w.t.admin_url("/v1/reconcile?from=2026-11-25T13&to=2026-11-25T19");
    // A GET reads; it records nothing (DESIGN §6). A POST records the run.
    let runs = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reconcile_runs")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = runs().await;
    let via_api: Value = get_json(&w.t.http, &url).await;
    assert_eq!(hours(&via_api), want, "{via_api}");
    assert_eq!(runs().await, before, "a GET recorded a run");
    let posted = w.t.http.post(&url).send().await.unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(runs().await, before + 1);
    let metrics = get_text(&w.t.http, &w.t.admin_url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("deepseek_meter_reconcile_drift_yuan{model=\"deepseek-v3\"}")),
        "{metrics}"
    );
    let bad =
        w.t.http
            .get(w.t.admin_url("/v1/reconcile?from=yesterday"))
            .send()
            .await
            .unwrap();
    assert_eq!(bad.status(), 400);

    // Table and CSV say the same verdicts.
    let (_, table, _) = w
        .reconcile(&["--from", "2026-11-25T13", "--to", "2026-11-25T19"])
        .await;
    println!("{table}");
    assert!(
        table.contains("money_drift") && table.contains("only_in_bill"),
        "{table}"
    );
    assert!(table.contains("the totals differ"), "{table}");
    let (_, csv, _) = w
        .reconcile(&[
            "--from",
            "2026-11-25T13",
            "--to",
            "2026-11-25T19",
            "--format",
            "csv",
        ])
        .await;
    assert!(csv.starts_with("hour,hour_verdict,key_id"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.contains(",token_drift,") && l.contains("16:00:00+08:00")),
        "{csv}"
    );
    w.t.audit(&[]).await;
    w.sim.shutdown().await;
}

/// A file that cannot be read whole is not imported at all: the error names its line.
#[tokio::test]
async fn an_unreadable_export_imports_nothing_and_names_the_line() {
    let w = World::start(false).await;
    w.call("13:10", "deepseek-r1", KEY, true, None).await;
    flush(&w.t.app).await;
    let good = w.bill.csv(true);
    let mut lines: Vec<&str> = good.lines().collect();
    lines.push("2026/11/25 14:00:00,2026/11/25 15:00:00,sfm,x,1;llm-a;deepseek-r1;output_token;api,12.5,tokens,0.01,CNY");
    let path = w.dir.path().join("bad.csv");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (code, _, err) = w.reconcile(&["--bill", path.to_str().unwrap()]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("line 4: usage 12.5 tokens is not a whole number of tokens"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let pool = w.t.db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM platform_bill")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing half-imported");
    // Without a period or a file, the command says what is missing.
    let (code, _, err) = w.reconcile(&[]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("give --from and --to"), "{err}");
    w.t.audit(&[]).await;
    w.sim.shutdown().await;
}

/// `reconcile` and `reprice` show their stages on a terminal (a pseudo-terminal from `script`) and nothing of
/// them when piped.
#[tokio::test]
async fn long_commands_show_progress_on_a_terminal_and_stay_quiet_when_piped() {
    let w = World::start(false).await;
    w.call("13:10", "deepseek-r1", KEY, true, None).await;
    flush(&w.t.app).await;
    let export = w.export("bill.csv", |_| false);
    let config = w.config.to_str().unwrap().to_owned();
    let db = w.t.db.url.clone();
    let reconcile = [
        "--config",
        &config,
        "reconcile",
        "--bill",
        &export,
        "--database-url",
        &db,
    ];
    let reprice = [
        "reprice",
        "--from",
        "2026-11-25T13",
        "--to",
        "2026-11-25T14",
        "--prices",
        "/dev/null",
        "--database-url",
        &db,
    ];
    for (args, stage) in [
        (&reconcile[..], "reconcile: reading the export"),
        (&reprice[..], "reprice: hour 1 of 1"),
    ] {
        let (code, out, err) = run_bin(args).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(!out.contains(stage) && !err.contains(stage), "piped: {err}");
        let line = std::iter::once(crate::helpers::bin::BIN)
            .chain(args.iter().copied())
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let on_terminal =
            crate::helpers::bin::output_of(tokio::process::Command::new("script").args([
                "-qec",
                &line,
                "/dev/null",
            ]))
            .await;
        let text = String::from_utf8_lossy(&on_terminal.stdout);
        assert!(on_terminal.status.success(), "{text}");
        assert!(text.contains(stage), "on a terminal: {text}");
    }
    w.t.audit(&[]).await;
    w.sim.shutdown().await;
}

/// Whether the Anthropic API's `input_tokens` counts the cache reads and writes is unconfirmed on Bailian
/// (reference §4); the meter reads it Anthropic's way by default. The simulator bills every input token and
/// reports usage Anthropic's way: with the default, Anthropic calls with cache reads and writes — and a model
/// priced peak and off-peak, either side of 08:00 — reconcile to a match; a sidecar set to the other
/// reading (`--anthropic-input-tokens includes-cache`) sees its input tokens drift from the bill's, which is
/// how an operator learns which reading the platform uses.
#[tokio::test]
async fn the_platforms_bill_tells_which_anthropic_input_reading_is_right() {
    use deepseek_meter::usage::tap::InputConvention;
    for convention in [
        InputConvention::ExcludesCache,
        InputConvention::IncludesCache,
    ] {
        let w = World::start_with(false, move |s| s.anthropic_input_tokens = convention).await;
        // 10,000 thinking and 10,000 answer pieces: 0.09 CNY off-peak, 0.18 at peak, visible to the cent.
        w.call_anthropic("07:30", "deepseek-v4-flash-0731", 10_000, 0, 0)
            .await;
        w.call_anthropic("08:30", "deepseek-v4-flash-0731", 10_000, 0, 0)
            .await;
        w.call_anthropic("13:10", "deepseek-v4-pro", 200, 64, 128)
            .await;
        w.call_anthropic("13:40", "deepseek-v4-pro", 200, 200, 0)
            .await;
        flush(&w.t.app).await;
        let pool = w.t.db.pool().await;
        let periods: Vec<Option<String>> =
            sqlx::query_scalar("SELECT price_period FROM usage_ledger ORDER BY finished_at")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            periods,
            [Some("off-peak".into()), Some("peak".into()), None, None]
        );
        let bill = w.export("anthropic.csv", |_| false);
        let (code, out, err) = w.reconcile(&["--bill", &bill, "--format", "json"]).await;
        assert_eq!(code, Some(0), "{err}");
        let j: Value = serde_json::from_str(&out).unwrap();
        if convention == InputConvention::ExcludesCache {
            assert_eq!(
                hours(&j),
                [
                    ("07".into(), "match".into()),
                    ("08".into(), "match".into()),
                    ("13".into(), "match".into())
                ],
                "{j}"
            );
            assert_eq!(j["total_matches"], true, "{j}");
            // The same call costs twice as much at peak, on both sides: the ledger exactly, the platform's
            // bill (the simulator's, priced by the hour's period) to the cent of its rounding.
            assert_eq!(
                d(&hour(&j, "08")["ledger_yuan"]),
                d(&hour(&j, "07")["ledger_yuan"]) * Decimal::TWO
            );
            // (each line rounded to the cent, the bill's rounding put back on its largest line).
            let (b07, b08) = (
                d(&hour(&j, "07")["bill_yuan"]),
                d(&hour(&j, "08")["bill_yuan"]),
            );
            assert!(b07 >= "0.09".parse().unwrap(), "{j}");
            assert!(
                b08 * Decimal::TEN >= b07 * Decimal::from(18),
                "peak is priced at peak: {b07} {b08}"
            );
        } else {
            // Calls without cache reads or writes read the same either way.
            assert_eq!(hour(&j, "07")["verdict"], "match", "{j}");
            assert_eq!(hour(&j, "08")["verdict"], "match", "{j}");
            let h13 = hour(&j, "13");
            assert_eq!(h13["verdict"], "token_drift", "{j}");
            let input = h13["lines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["token_type"] == "input_token")
                .unwrap();
            // The reads and writes the meter left out: 64 + 128 + 200.
            assert_eq!(
                input["bill_tokens"].as_i64().unwrap() - input["ledger_tokens"].as_i64().unwrap(),
                392,
                "{input}"
            );
        }
        w.sim.shutdown().await;
    }
}

/// A deepseek-v3 answer billing 12,345 input and 6,789 output tokens: 0.02469 + 0.054312 = 0.079002 CNY.
const HAND_USAGE: &str = r#"{"choices":[{"message":{"content":"ok","role":"assistant"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":12345,"completion_tokens":6789,"total_tokens":19134},"model":"deepseek-v3","id":"chatcmpl-hand"}"#;

/// A sidecar whose calls are answered with [`HAND_USAGE`], at the Beijing times the test sets.
async fn hand_world(
    v3_output: Option<&str>,
) -> (
    LedgerApp,
    ScriptedUpstream,
    Clock,
    tempfile::TempDir,
    std::path::PathBuf,
    String,
) {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, HAND_USAGE));
    let clock = Clock::manual("2026-11-25T05:10:00Z".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (config, key_id) = config(dir.path(), false);
    let file = deepseek_meter::config::load_file(Some(&config)).unwrap();
    let book = v3_output.map(|out| {
        let text = deepseek_meter::pricing::BUILTIN_BOOK.replace(
            "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"8\"",
            &format!("name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"{out}\""),
        );
        assert_ne!(text, deepseek_meter::pricing::BUILTIN_BOOK);
        deepseek_meter::pricing::PriceBook::parse(&text, deepseek_meter::pricing::DEFAULT_TIMEZONE).unwrap()
    });
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), move |s| {
        let resolved = deepseek_meter::config::Settings::resolve(Default::default(), file).unwrap();
        s.api_keys = resolved.api_keys;
        s.reconcile = resolved.reconcile;
        if let Some(book) = book {
            s.prices = book;
        }
    })
    .await;
    (t, up, clock, dir, config, key_id)
}

async fn hand_call(t: &LedgerApp, clock: &Clock, beijing: &str) {
    clock.set(format!("2026-11-25T{beijing}+08:00").parse().unwrap());
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .bearer_auth(KEY)
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    t.saw(&call_id(&resp));
    resp.bytes().await.unwrap();
}

async fn run_reconcile(
    config: &std::path::Path,
    db: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let base = [
        "--config",
        config.to_str().unwrap(),
        "reconcile",
        "--database-url",
        db,
    ];
    run_bin(&[&base[..], args].concat()).await
}

fn line<'a>(h: &'a Value, ty: &str) -> &'a Value {
    h["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["token_type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} line: {h}"))
}

/// A platform bill written by hand, not by the simulator: the console's Chinese headers, usage in 千tokens,
/// the platform's rounding (each hour's sum rounded to the cent and split back onto its lines half-up, the
/// remainder on one line), a line of another product, and a call that ended at 13:59:30 booked at 14:02.
/// Every amount below is computed by hand from deepseek-v3's price (2 and 8 CNY per million). A restated
/// export replaces the lines it changes.
#[tokio::test]
async fn a_hand_written_platform_bill_in_the_consoles_chinese_layout_reconciles() {
    let (t, _up, clock, dir, config, key_id) = hand_world(None).await;
    hand_call(&t, &clock, "13:10:00").await;
    hand_call(&t, &clock, "13:59:30").await;
    clock.set("2026-11-25T15:30:00+08:00".parse().unwrap());
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    // Each hour: input 12,345 tokens = 0.02469 → 0.02, output 6,789 = 0.054312 → 0.05; the hour's sum
    // 0.079002 → 0.08, so the cent left over goes onto one line (the output line here, as the platform may).
    let header = "\u{feff}账期,产品,产品明细,计费方式,使用开始时间,使用结束时间,实例ID,用量,用量单位,应付金额,币种\n";
    let inference = |hour: &str, end: &str, ty: &str, usage: &str, amount: &str| {
        format!(
            "2026-11,阿里云百炼,模型推理,按小时,2026-11-25 {hour}:00:00,2026-11-25 {end}:00:00,\
             {key_id};{DEFAULT_WORKSPACE};deepseek-v3;{ty};app,{usage},千tokens,{amount},CNY\n"
        )
    };
    let ecs = "2026-11,云服务器ECS,按量付费实例,按小时,2026-11-25 13:00:00,2026-11-25 14:00:00,i-bp1hand0001,1,小时,0.35,CNY\n";
    let write = |name: &str, h14_output_usage: &str| {
        let text = [
            header.to_owned(),
            inference("13", "14", "input_token", "12.345", "0.02"),
            inference("13", "14", "output_token", "6.789", "0.06"),
            ecs.to_owned(),
            inference("14", "15", "input_token", "12.345", "0.02"),
            inference("14", "15", "output_token", h14_output_usage, "0.06"),
        ]
        .concat();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // The first export is short of hour 14's output (the platform had not booked all of it yet).
    let early = write("early.csv", "6.000");
    let (code, out, err) =
        run_reconcile(&config, &t.db.url, &["--bill", &early, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("4 new lines, 0 changed, 0 unchanged, 1 of other products skipped"),
        "{err}"
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    // 789 output tokens of the ledger have no line in the bill: hour 14's 6,000 are carried there, and the 789
    // left over stay a drift in hour 13.
    assert_eq!(
        hours(&j),
        [
            ("13".into(), "token_drift".into()),
            ("14".into(), "match".into())
        ],
        "{j}"
    );
    let out13 = line(hour(&j, "13"), "output_token");
    assert_eq!(
        (
            out13["ledger_tokens"].as_i64(),
            out13["bill_tokens"].as_i64(),
            out13["spilled_tokens"].as_i64()
        ),
        (Some(6_789 + 789), Some(6_789), Some(6_000)),
        "{out13}"
    );
    // The restated export: one line changed, the rest as they were.
    let restated = write("restated.csv", "6.789");
    let (code, out, err) = run_reconcile(
        &config,
        &t.db.url,
        &["--bill", &restated, "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("0 new lines, 1 changed, 3 unchanged, 1 of other products skipped"),
        "{err}"
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        hours(&j),
        [("13".into(), "match".into()), ("14".into(), "match".into())],
        "{j}"
    );
    // The ledger has both calls in hour 13; the second is carried into hour 14 with its money.
    let dec = |s: &str| s.parse::<Decimal>().unwrap();
    for (hh, spilled) in [("13", 12_345), ("14", -12_345)] {
        let h = hour(&j, hh);
        assert_eq!(d(&h["bill_yuan"]), dec("0.08"), "{h}");
        assert_eq!(d(&h["ledger_yuan"]), dec("0.079002"), "{h}");
        let input = line(h, "input_token");
        assert_eq!(input["bill_tokens"], 12_345, "{input}");
        assert_eq!(d(&input["bill_yuan"]), dec("0.02"));
        assert_eq!(d(&input["ledger_yuan"]), dec("0.02469"), "{input}");
        assert_eq!(input["spilled_tokens"], spilled, "{input}");
        let output = line(h, "output_token");
        assert_eq!(output["bill_tokens"], 6_789, "{output}");
        assert_eq!(d(&output["bill_yuan"]), dec("0.06"));
        assert_eq!(d(&output["ledger_yuan"]), dec("0.054312"), "{output}");
        assert_eq!(
            output["spilled_tokens"],
            spilled / 12_345 * 6_789,
            "{output}"
        );
    }
    // Over the period: the ledger's 0.158004 rounds to the bill's 0.16; the ECS line is not inference.
    assert_eq!(d(&j["ledger_yuan"]), dec("0.158004"));
    assert_eq!(d(&j["bill_yuan"]), dec("0.16"));
    assert_eq!(j["total_matches"], true);
    t.audit(&[]).await;
}

/// The alert runbook's answer to a `money_drift`: `reprice` the hours with the platform's price. The sidecar
/// priced deepseek-v3's output at 0.8 CNY per million, the platform at 9 (higher, and in neither the sidecar's
/// book nor the built-in one); after `reprice` with a book at 9, reconciliation of that hour reads `match`,
/// per token type, with each line's money the corrected one.
#[tokio::test]
async fn reprice_with_the_platforms_price_turns_a_money_drift_into_a_match() {
    let (t, _up, clock, dir, config, key_id) = hand_world(Some("0.8")).await;
    hand_call(&t, &clock, "13:10:00").await;
    hand_call(&t, &clock, "13:20:00").await;
    clock.set("2026-11-25T14:30:00+08:00".parse().unwrap());
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    // The platform's bill of hour 13: 24,690 input tokens = 0.04938 → 0.05; 13,578 output at 9 = 0.122202 → 0.12.
    let bill = dir.path().join("bill.csv");
    std::fs::write(
        &bill,
        format!(
            "UsageStartTime,InstanceID,Usage,UsageUnit,PretaxAmount\n\
             2026-11-25 13:00:00,{key_id};{DEFAULT_WORKSPACE};deepseek-v3;input_token;app,24690,tokens,0.05\n\
             2026-11-25 13:00:00,{key_id};{DEFAULT_WORKSPACE};deepseek-v3;output_token;app,13578,tokens,0.12\n"
        ),
    )
    .unwrap();
    let bill = bill.to_str().unwrap();
    let (code, out, err) =
        run_reconcile(&config, &t.db.url, &["--bill", bill, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hours(&j), [("13".into(), "money_drift".into())], "{j}");
    let dec = |s: &str| s.parse::<Decimal>().unwrap();
    // The ledger at 0.8: 13,578 × 0.8 per million = 0.0108624 for the output, the input right.
    assert_eq!(
        d(&line(hour(&j, "13"), "output_token")["ledger_yuan"]),
        dec("0.0108624")
    );
    assert_eq!(line(hour(&j, "13"), "input_token")["verdict"], "match");
    // reprice with the platform's price.
    let prices = dir.path().join("prices.toml");
    let at_nine = deepseek_meter::pricing::BUILTIN_BOOK.replace(
        "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"8\"",
        "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"9\"",
    );
    assert_ne!(at_nine, deepseek_meter::pricing::BUILTIN_BOOK);
    std::fs::write(&prices, at_nine).unwrap();
    let (code, out, err) = run_bin(&[
        "reprice",
        "--from",
        "2026-11-25T13",
        "--to",
        "2026-11-25T14",
        "--prices",
        prices.to_str().unwrap(),
        "--database-url",
        &t.db.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["adjusted"], 2, "{summary}");
    // The same bill, reconciled again (nothing re-imported): a match, each line's money the corrected one.
    let (code, out, err) = run_reconcile(
        &config,
        &t.db.url,
        &[
            "--from",
            "2026-11-25T13",
            "--to",
            "2026-11-25T14",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hours(&j), [("13".into(), "match".into())], "{j}");
    let h = hour(&j, "13");
    assert_eq!(
        d(&line(h, "output_token")["ledger_yuan"]),
        dec("0.122202"),
        "{h}"
    );
    assert_eq!(
        d(&line(h, "input_token")["ledger_yuan"]),
        dec("0.04938"),
        "{h}"
    );
    assert_eq!(d(&h["ledger_yuan"]), dec("0.171582"));
    assert_eq!(d(&h["drift_yuan"]), dec("0.171582") - dec("0.17"));
    assert_eq!(j["total_matches"], true, "{j}");
    // The admin API reads the same.
    let api = get_json(
        &t.http,
        &t.admin_url("/v1/reconcile?from=2026-11-25T13&to=2026-11-25T14"),
    )
    .await;
    assert_eq!(hours(&api), [("13".into(), "match".into())], "{api}");
    t.audit(&[]).await;
}
