//! Hourly cost reports (issue 11): one implementation behind three doors. A property test of the totals and of
//! the four formats against the ledger itself, in a real Postgres; the real binary's `report`; the admin
//! route with its token; the HTML page in headless Chromium.

use crate::helpers::bin::run_bin;
use crate::helpers::captures::*;
use crate::helpers::*;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use deepseek_meter::billing::format::render;
use deepseek_meter::billing::read;
use deepseek_meter::billing::report::{Format, Group, Report, ReportQuery, Sums};
use deepseek_meter::billing::Bill;
use deepseek_meter::calendar::{start_of, Granularity};
use deepseek_meter::clock::Clock;
use deepseek_meter::ledger::Ledger;
use deepseek_meter::record::CallRecord;
use deepseek_meter::usage::UsageSource;
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::time::Duration;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

const MODELS: [&str; 5] = [
    "deepseek-r1",
    "deepseek-v3",
    "deepseek-v3.2-exp",
    "deepseek-r1-distill-qwen-7b",
    "mystery-model", // not in the price book: unpriced
];
/// `None`: no `X-Meter-Project`; one name needs quoting in CSV and escaping in HTML.
const PROJECTS: [Option<&str>; 4] = [None, Some("alpha"), Some("team b"), Some("a, \"b\" <c>&")];
const KEYS: [Option<&str>; 3] = [None, Some("0123456789ab"), Some("ba9876543210")];
const ZONES: [Tz; 3] = [
    chrono_tz::Asia::Shanghai,
    chrono_tz::Asia::Kolkata,
    chrono_tz::UTC,
];

/// One generated ledger row: hour index from the start, model, project, key, estimated, tokens, cost.
#[derive(Debug, Clone)]
struct Gen {
    hour: i64,
    model: usize,
    project: usize,
    key: usize,
    estimated: bool,
    input: u64,
    cached_per_mille: u64,
    output: u64,
    reasoning_per_mille: u64,
    cost_units: i64,
    cost_scale: u32,
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        (
            0i64..96,
            0..MODELS.len(),
            0..PROJECTS.len(),
            0..KEYS.len(),
            any::<bool>(),
        ),
        (0u64..2_000_000, 0u64..=1000, 0u64..500_000, 0u64..=1000),
        (0i64..1_000_000_000, 0u32..=9),
    )
        .prop_map(
            |((hour, model, project, key, estimated), (input, c, output, r), (units, scale))| Gen {
                hour,
                model,
                project,
                key,
                estimated,
                input,
                cached_per_mille: c,
                output,
                reasoning_per_mille: r,
                cost_units: units,
                cost_scale: scale,
            },
        )
}

/// The record of a generated row; its billing hour is the clock hour in `tz` of `start + hour h + 17 min`.
fn record(g: &Gen, start: DateTime<Utc>, tz: Tz) -> CallRecord {
    let finished = start + chrono::Duration::hours(g.hour) + chrono::Duration::minutes(17);
    let cached = g.input * g.cached_per_mille / 1000;
    let reasoning = g.output * g.reasoning_per_mille / 1000;
    let priced = g.model != MODELS.len() - 1;
    CallRecord {
        model: MODELS[g.model].to_owned(),
        project: PROJECTS[g.project].map(str::to_owned),
        key_fingerprint: KEYS[g.key].map(str::to_owned),
        started_at: finished - chrono::Duration::seconds(3),
        finished_at: finished,
        billing_hour: start_of(Granularity::Hour, finished, tz),
        input_tokens: g.input,
        cached_tokens: cached,
        cache_creation_tokens: 0,
        output_tokens: g.output,
        reasoning_tokens: reasoning,
        answer_tokens: g.output - reasoning,
        usage_source: if g.estimated {
            UsageSource::Estimated
        } else {
            UsageSource::Reported
        },
        priced,
        price_version: priced.then(|| format!("{}@test", MODELS[g.model])),
        price_period: None,
        cost_total: priced.then(|| Decimal::new(g.cost_units, g.cost_scale)),
        cost_input: None,
        ..a_record(0)
    }
}

/// What a report must say, computed from the records alone: (period, groups) → sums.
fn expected(
    records: &[CallRecord],
    q: &ReportQuery,
) -> BTreeMap<(DateTime<Utc>, Vec<Option<String>>), Sums> {
    let mut out: BTreeMap<_, Sums> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.billing_hour >= q.from && r.billing_hour < q.to)
    {
        let groups =
            q.by.iter()
                .map(|g| match g {
                    Group::Model => Some(r.model.clone()),
                    Group::Project => r.project.clone(),
                    Group::Key => r.key_fingerprint.clone(),
                    Group::Period => r.price_period.clone(),
                })
                .collect();
        let s = out
            .entry((start_of(q.granularity, r.billing_hour, q.timezone), groups))
            .or_default();
        s.add(&Sums {
            calls: 1,
            unpriced_calls: i64::from(!r.priced),
            estimated_calls: i64::from(r.usage_source == UsageSource::Estimated),
            input_tokens: r.input_tokens as i64,
            cached_tokens: r.cached_tokens as i64,
            cache_creation_tokens: r.cache_creation_tokens as i64,
            reasoning_tokens: r.reasoning_tokens as i64,
            answer_tokens: r.answer_tokens as i64,
            output_tokens: r.output_tokens as i64,
            cost_total: r.cost_total.unwrap_or_default(),
            adjustment_yuan: Decimal::ZERO,
        });
    }
    out
}

/// Every subset of the grouping columns, in a generated order.
fn groupings() -> Vec<Vec<Group>> {
    let all = [Group::Model, Group::Project, Group::Key];
    (0..8u8)
        .map(|mask| {
            all.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, g)| *g)
                .rev()
                .collect()
        })
        .collect()
}

// ---- the four formats, read back ---------------------------------------------------------------------

/// Cells of the rows and the total, as JSON has them (null groups as empty cells).
fn cells_from_json(report: &Report, json: &serde_json::Value) -> (Vec<Vec<String>>, Vec<String>) {
    let columns = report.columns();
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let total = columns
        .iter()
        .map(|c| match *c {
            "billing_hour" => "total".to_owned(),
            "model" | "project" | "key_fingerprint" | "revision" => String::new(),
            c => cell(&json["total"][c]),
        })
        .collect();
    (rows, total)
}

fn cells_from_csv(csv_text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(csv_text.as_bytes());
    let header = r.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The HTML table's rows (body, then foot), cell texts unescaped.
/// The HTML table's cells, put back in the report's column order (the page orders and labels its columns
/// for reading; each header's `title` is the column's name).
fn cells_from_html(html: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let table = &html[html.find("<table id=\"bill\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let titles: Vec<String> = table
        .split("<th title=\"")
        .skip(1)
        .map(|t| unescape(&t[..t.find('"').unwrap()]))
        .collect();
    let mut sorted = titles.clone();
    sorted.sort();
    let mut want: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    want.sort();
    assert_eq!(sorted, want, "every column once");
    let position: Vec<usize> = columns
        .iter()
        .map(|c| titles.iter().position(|t| t == c).unwrap())
        .collect();
    let body = &table[table.find("<tbody>").unwrap()..];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            let cells: Vec<String> = row
                .split("<td")
                .skip(1)
                .map(|c| {
                    let c = &c[c.find('>').unwrap() + 1..];
                    unescape(&c[..c.find("</td>").unwrap()])
                })
                .collect();
            position.iter().map(|p| cells[*p].clone()).collect()
        })
        .collect()
}

/// Checks every rendering of `report` carries its cells: JSON, CSV, table (numbers and state, read from the
/// right), HTML (and the chart's bars add up to the total).
fn formats_agree(report: &Report, chart: &[deepseek_meter::billing::report::ReportRow]) {
    let (rows, total) = report.cells();
    let json: serde_json::Value = serde_json::from_str(&render(report, Format::Json, &[])).unwrap();
    assert_eq!(
        cells_from_json(report, &json),
        (rows.clone(), total.clone())
    );

    let (header, csv_rows) = cells_from_csv(&render(report, Format::Csv, &[]));
    assert_eq!(header, report.columns());
    let mut want: Vec<Vec<String>> = rows.clone();
    want.push(total.clone());
    assert_eq!(csv_rows, want);

    let table = render(report, Format::Table, &[]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), rows.len() + 3, "{table}");
    for (line, cells) in lines[1..=rows.len()]
        .iter()
        .zip(&rows)
        .chain(std::iter::once((&lines[rows.len() + 2], &total)))
    {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(tokens[0], cells[0]);
        let tail: Vec<&String> = cells
            .iter()
            .rev()
            .filter(|c| !c.is_empty())
            .take(10)
            .collect();
        let got: Vec<&&str> = tokens.iter().rev().take(10).collect();
        assert_eq!(
            got.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            tail.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{line}"
        );
    }

    let html = render(report, Format::Html, chart);
    assert_eq!(cells_from_html(&html, &report.columns()), want);
    assert!(
        !html.contains("src=") && !html.contains("href=") && !html.contains("<script"),
        "self-contained"
    );
    let bars: Decimal = html
        .split("data-cost=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(
        bars, report.total.cost_total,
        "the chart's bars add up to the total"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// For any set of ledger rows (hours over four days across a month's end, five models one of them
    /// unpriced, projects and keys some absent, estimated rows), any window, every granularity and every
    /// grouping: the rows are exactly the ledger's sums per period and group, the total is exactly Σ of the
    /// ledger's rows in the window, and JSON, CSV, table and HTML carry the same cells.
    #[test]
    fn every_granularity_and_grouping_totals_the_ledger_and_the_formats_agree(
        rows in prop::collection::vec(gen(), 1..60),
        zone in 0..ZONES.len(),
        window in (0i64..48, 1i64..120),
    ) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let tz = ZONES[zone];
            let start = at("2026-11-29T02:00:00Z");
            let records: Vec<CallRecord> = rows.iter().map(|g| record(g, start, tz)).collect();
            let db = TestDb::new().await;
            let ledger = Ledger::create_and_migrate(&db.url).await.unwrap();
            assert_eq!(ledger.insert(&records).await.unwrap(), records.len() as u64);
            let now = at("2027-01-15T00:00:00Z");
            let rolled = Bill::new(ledger.pool().clone(), Duration::from_secs(600))
                .roll(now, start_of(Granularity::Hour, now, tz))
                .await
                .unwrap();
            assert!(!rolled.skipped);
            let windows = [
                (at("2026-10-01T00:00:00Z"), at("2027-01-01T00:00:00Z")),
                (
                    start + chrono::Duration::hours(window.0),
                    start + chrono::Duration::hours(window.0 + window.1),
                ),
            ];
            for (from, to) in windows {
                let mut ledger_total = Sums::default();
                for s in expected(&records, &ReportQuery {
                    from, to, by: vec![], granularity: Granularity::Hour, timezone: tz,
                }).values() {
                    ledger_total.add(s);
                }
                for granularity in [Granularity::Hour, Granularity::Day, Granularity::Month] {
                    for by in groupings() {
                        let q = ReportQuery { from, to, by, granularity, timezone: tz };
                        let report = read::report(ledger.pool(), &q).await.unwrap();
                        let got: BTreeMap<_, Sums> = report
                            .rows
                            .iter()
                            .map(|r| ((r.period, r.groups.clone()), r.sums.clone()))
                            .collect();
                        assert_eq!(got.len(), report.rows.len(), "one row per period and group");
                        assert_eq!(got, expected(&records, &q), "{q:?}");
                        assert_eq!(report.total, ledger_total, "{q:?}");
                        assert!(report.rows.iter().all(|r| r.state.as_str() == "closed" && r.revision == 0));
                        let chart = read::rows(ledger.pool(), &q, &[Group::Model]).await.unwrap();
                        formats_agree(&report, &chart);
                    }
                }
            }
            ledger.pool().close().await;
        });
    }
}

// ---- the doors ------------------------------------------------------------------------------------------

const V3_JSON: &str = r#"{"choices":[{"message":{"content":"ok","role":"assistant"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":6,"completion_tokens":64,"total_tokens":70},"model":"deepseek-v3","id":"chatcmpl-v3"}"#;

/// A sidecar on a pinned clock with calls in two Beijing hours that share a UTC date but not a Beijing date
/// (23:30 on the 25th, 00:30 on the 26th), rolled: the bill the doors read.
async fn billed_app(
    tweak: impl FnOnce(&mut deepseek_meter::config::Settings),
) -> (LedgerApp, ScriptedUpstream, Clock) {
    let up = ScriptedUpstream::start().await;
    let clock = Clock::manual(at("2026-11-25T15:30:00Z"));
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), tweak).await;
    for (when, body, model, project) in [
        (
            "2026-11-25T15:30:00Z",
            COMPAT_R1_JSON,
            "deepseek-r1",
            "alpha",
        ),
        ("2026-11-25T15:40:00Z", V3_JSON, "deepseek-v3", "beta"),
        (
            "2026-11-25T16:30:00Z",
            COMPAT_R1_JSON,
            "deepseek-r1",
            "alpha",
        ),
    ] {
        clock.set(at(when));
        t.call_as(&up, body, model, "sk-report-test-0001", project)
            .await;
    }
    flush(&t.app).await;
    roll_until_done(&t.app).await;
    (t, up, clock)
}

pub async fn roll_until_done(app: &deepseek_meter::app::App) {
    for _ in 0..100 {
        let r = app.roll_bill().await.unwrap().unwrap();
        if !r.skipped {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the roller lock was never free");
}

/// The real binary's `report`, every format, against the database the sidecar wrote: days are Beijing days
/// (the 23:30 call is on the 25th, the 00:30 one on the 26th, though both are on the 25th in UTC).
#[tokio::test]
async fn the_binary_prints_the_report_in_every_format() {
    let (t, _up, _clock) = billed_app(|_| {}).await;
    let run = |args: &[&str]| run_bin(&[&["report", "--database-url", &t.db.url], args].concat());
    let window = ["--from", "2026-11-25", "--to", "2026-11-27"];
    let (code, json, err) = run(&[
        &window[..],
        &["--by", "model", "--granularity", "day", "--format", "json"],
    ]
    .concat())
    .await;
    assert_eq!(code, Some(0), "{err}");
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["from"], "2026-11-25T00:00:00+08:00");
    assert_eq!(j["timezone"], "Asia/Shanghai");
    let rows = j["rows"].as_array().unwrap();
    let summary: Vec<(&str, &str, i64, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["billing_hour"].as_str().unwrap(),
                r["model"].as_str().unwrap(),
                r["calls"].as_i64().unwrap(),
                r["cost_total"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("2026-11-25T00:00:00+08:00", "deepseek-r1", 1, "0.012828"),
            ("2026-11-25T00:00:00+08:00", "deepseek-v3", 1, "0.000524"),
            ("2026-11-26T00:00:00+08:00", "deepseek-r1", 1, "0.012828"),
        ]
    );
    assert_eq!(j["total"]["cost_total"], "0.02618");
    assert_eq!(j["total"]["state"], "open");

    let (code, csv_text, err) =
        run(&[&window[..], &["--by", "project", "--format", "csv"]].concat()).await;
    assert_eq!(code, Some(0), "{err}");
    let (header, csv_rows) = cells_from_csv(&csv_text);
    assert_eq!(header[..2], ["billing_hour", "project"]);
    assert_eq!(csv_rows.len(), 4, "{csv_text}");
    assert_eq!(csv_rows[3][0], "total");
    assert_eq!(
        csv_rows[3][header.iter().position(|h| h == "cost_total").unwrap()],
        "0.02618"
    );

    let (code, table, err) = run(&window).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table.lines().last().unwrap().starts_with("total"),
        "{table}"
    );
    assert!(table.contains("0.02618"), "{table}");

    let (code, html, err) = run(&[&window[..], &["--format", "html"]].concat()).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("¥0.02618"),
        "{html}"
    );

    let (code, out, err) = run(&["--granularity", "week"]).await;
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err.trim(),
        "deepseek-meter: invalid report flag --granularity \"week\" is not one of hour, day, month"
    );
    t.audit(&[]).await;
}

/// `GET /v1/bill/hourly`: behind the admin token; JSON by default, CSV and HTML on asking; a bad parameter is
/// a 400 that says which.
#[tokio::test]
async fn the_admin_route_serves_the_report_behind_the_token() {
    let (t, _up, _clock) = billed_app(|s| s.admin_token = Some("let-me-in".into())).await;
    let url = t.admin_url("/v1/bill/hourly?from=2026-11-25T23&to=2026-11-26T01&by=model,project");
    let resp = t.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = t
        .http
        .get(&url)
        .bearer_auth("let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let j: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(j["by"], serde_json::json!(["model", "project"]));
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["billing_hour"], "2026-11-25T23:00:00+08:00");
    // 23:00 ended more than the 10-minute grace ago (the clock reads 00:30): closed; 00:00 runs: open.
    assert_eq!(rows[0]["state"], "closed");
    assert_eq!(rows[2]["billing_hour"], "2026-11-26T00:00:00+08:00");
    assert_eq!(rows[2]["state"], "open");
    assert_eq!(j["total"]["cost_total"], "0.02618");

    let resp = t
        .http
        .get(format!("{url}&format=csv"))
        .bearer_auth("let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(resp
        .text()
        .await
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .starts_with("total,,,3,"));

    let resp = t
        .http
        .get(t.admin_url("/v1/bill/hourly?by=team"))
        .bearer_auth("let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "InvalidReportQuery");
    assert_eq!(
        e["error"]["message"],
        "by: \"team\" is not one of model, project, key, period"
    );
    t.audit(&[]).await;
}

/// The HTML page in headless Chromium (Debian's `chromium`, installed by `.ci/run`): it renders one bar per
/// (hour, model) with calls, the table with every row, and loads nothing from anywhere. With
/// `UPDATE_SCREENSHOT=1` the README's screenshot is written from a month-like demo bill.
#[tokio::test]
async fn the_html_report_renders_in_headless_chromium() {
    let (t, _up, _clock) = billed_app(|_| {}).await;
    let html = t
        .http
        .get(t.admin_url(
            "/v1/bill/hourly?from=2026-11-25T20&to=2026-11-26T04&by=model,project,key&format=html",
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bill.html");
    std::fs::write(&page, &html).unwrap();
    let dom = chromium(&["--dump-dom", &format!("file://{}", page.display())]);
    let dom = String::from_utf8(dom.stdout).unwrap();
    assert_eq!(dom.matches("class=\"bar\"").count(), 3, "{dom}");
    assert!(dom.contains("<td>total</td>"), "{dom}");
    let columns = [
        "billing_hour",
        "model",
        "project",
        "key_fingerprint",
        "calls",
        "unpriced_calls",
        "estimated_calls",
        "input_tokens",
        "cached_tokens",
        "cache_creation_tokens",
        "reasoning_tokens",
        "answer_tokens",
        "output_tokens",
        "cost_total",
        "adjustment_yuan",
        "state",
        "revision",
    ];
    assert_eq!(
        cells_from_html(&dom, &columns).len(),
        4,
        "three rows and the total"
    );
    // In a 1,200-pixel window the page does not overflow and the money columns are in view: measured by
    // Chromium laying out the page (a copy with a script that writes the edges into the title). The report is
    // by model, project and key: the widest grouping.
    let measured = dir.path().join("measured.html");
    std::fs::write(
        &measured,
        html.replace(
            // The page forbids scripts; this copy lets the measuring one run.
            "default-src 'none'; style-src 'unsafe-inline'",
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        )
        .replace(
            "</body>",
            "<script>document.title='right='+Math.ceil(Math.max(document.querySelector('th[title=cost_total]').getBoundingClientRect().right,document.querySelector('th[title=adjustment_yuan]').getBoundingClientRect().right))+' page='+document.documentElement.scrollWidth</script></body>",
        ),
    )
    .unwrap();
    let laid_out = chromium(&[
        "--window-size=1200,800",
        "--dump-dom",
        &format!("file://{}", measured.display()),
    ]);
    let laid_out = String::from_utf8(laid_out.stdout).unwrap();
    let title =
        &laid_out[laid_out.find("<title>").unwrap() + 7..laid_out.find("</title>").unwrap()];
    let number = |key: &str| -> u32 {
        let t = &title[title.find(key).unwrap_or_else(|| panic!("{title}")) + key.len()..];
        t.split(' ').next().unwrap().parse().unwrap()
    };
    println!("RESULT html report at 1200 px: {title}");
    assert!(
        number("right=") <= 1200 && number("page=") <= 1200,
        "{title}"
    );
    let shot = dir.path().join("bill.png");
    let out = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1000,760",
        &format!("file://{}", page.display()),
    ]);
    let png = std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot: {out:?}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    t.audit(&[]).await;
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        readme_screenshot().await;
    }
}

/// `UPDATE_SCREENSHOT=1 cargo nextest run -E 'test(the_html_report)'`: a Beijing day of demo traffic (four
/// models, a busy afternoon), its HTML report by model, and the README's screenshot of it.
async fn readme_screenshot() {
    let tz = chrono_tz::Asia::Shanghai;
    let start = at("2026-11-24T16:00:00Z");
    let mut gens = Vec::new();
    let mut seed = 7u64;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    for hour in 0..24i64 {
        let load = if (9..19).contains(&hour) { 40 } else { 8 };
        for _ in 0..load {
            let model = [0, 0, 1, 2, 2, 2, 3][next(7) as usize];
            let output = 200 + next(3000);
            gens.push(Gen {
                hour,
                model,
                project: 1 + next(2) as usize,
                key: 1 + next(2) as usize,
                estimated: next(50) == 0,
                input: 500 + next(6000),
                cached_per_mille: next(600),
                output,
                reasoning_per_mille: if model == 0 { 700 } else { 0 },
                cost_units: 0,
                cost_scale: 0,
            });
        }
    }
    let book = deepseek_meter::pricing::PriceBook::builtin();
    let records: Vec<CallRecord> = gens
        .iter()
        .map(|g| {
            let r = record(g, start, tz);
            let price = book.price_at(&r.model, r.finished_at).unwrap();
            CallRecord {
                cost_total: Some(price.cost(&r.tokens())),
                ..r
            }
        })
        .collect();
    let db = TestDb::new().await;
    let ledger = Ledger::create_and_migrate(&db.url).await.unwrap();
    ledger.insert(&records).await.unwrap();
    let now = at("2026-11-26T12:00:00Z");
    Bill::new(ledger.pool().clone(), Duration::from_secs(600))
        .roll(now, start_of(Granularity::Hour, now, tz))
        .await
        .unwrap();
    let q = ReportQuery {
        from: start,
        to: start + chrono::Duration::hours(24),
        by: vec![Group::Model],
        granularity: Granularity::Hour,
        timezone: tz,
    };
    let html = read::render(ledger.pool(), &q, Format::Html).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bill.html");
    std::fs::write(&page, html).unwrap();
    let shot = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/screenshots/hourly-report.png"
    );
    std::fs::create_dir_all(std::path::Path::new(shot).parent().unwrap()).unwrap();
    chromium(&[
        &format!("--screenshot={shot}"),
        "--window-size=1100,860",
        &format!("file://{}", page.display()),
    ]);
    ledger.pool().close().await;
}

/// Runs headless Chromium (as root it needs `--no-sandbox`) with a bounded time.
fn chromium(args: &[&str]) -> std::process::Output {
    let mut out = std::process::Command::new("timeout");
    out.args([
        "60",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .args(["--no-first-run", "--disable-extensions"])
    .arg(format!(
        "--user-data-dir={}",
        std::env::temp_dir()
            .join(format!("dm-chromium-{}", uuid::Uuid::now_v7().simple()))
            .display()
    ))
    .args(args);
    let out = crate::helpers::bin::output_blocking(&mut out);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What clients write (a project name) is text in the page a browser renders, never markup: a project named
/// like an HTML element and a script shows as those characters, and the DOM Chromium builds has no such element.
#[tokio::test]
async fn a_hostile_project_name_is_text_in_the_rendered_page() {
    let (t, up, clock) = billed_app(|_| {}).await;
    clock.set(at("2026-11-25T15:50:00Z"));
    let hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>";
    t.call_as(&up, V3_JSON, "deepseek-v3", "sk-report-test-0001", hostile)
        .await;
    // And a model named like markup (it reaches the chart's legend, its bars' titles and data attributes).
    t.call_as(
        &up,
        V3_JSON,
        "<b onmouseover=alert(3)>m</b>",
        "sk-report-test-0001",
        "gamma",
    )
    .await;
    flush(&t.app).await;
    roll_until_done(&t.app).await;
    let html = get_text(
        &t.http,
        &t.admin_url(
            "/v1/bill/hourly?from=2026-11-25T20&to=2026-11-26T04&by=model,project&format=html",
        ),
    )
    .await;
    assert!(
        !html.contains("<img") && !html.contains("<script") && !html.contains("<b onmouseover"),
        "{html}"
    );
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bill.html");
    std::fs::write(&page, &html).unwrap();
    let dom = chromium(&["--dump-dom", &format!("file://{}", page.display())]);
    let dom = String::from_utf8(dom.stdout).unwrap();
    assert!(
        !dom.contains("<img") && !dom.contains("<script") && !dom.contains("<b onmouseover"),
        "{dom}"
    );
    assert!(
        dom.contains("&lt;b onmouseover=alert(3)&gt;m&lt;/b&gt;"),
        "{dom}"
    );
    assert!(
        dom.contains("&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{dom}"
    );
    t.audit(&[]).await;
}

/// The README's report examples are this program's output: the same calls through the simulator, then the
/// commands the README shows (each `$ deepseek-meter …` line, run with this test's database), compared line
/// for line; the JSON example's keys are the real JSON's.
#[tokio::test]
async fn the_readmes_report_examples_are_the_binarys_output() {
    let clock = Clock::manual(at("2026-11-26T01:10:00Z")); // 09:10 Beijing
    let t = LedgerApp::start_at(deepseek_meter::config::Upstream::Sim, clock, |_| {}).await;
    for (model, project) in [
        ("deepseek-r1", "alpha"),
        ("deepseek-r1", "alpha"),
        ("deepseek-v3", "beta"),
        ("deepseek-v4-flash", "beta"),
    ] {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let (status, _, _) = t
            .call(COMPAT_PATH, &body, &[("x-meter-project", project)])
            .await;
        assert_eq!(status, 200);
    }
    flush(&t.app).await;
    roll_until_done(&t.app).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = &readme[readme
        .find("```console\n$ deepseek-meter report")
        .expect("the README's report example")
        + 11..];
    let block = &block[..block.find("```").unwrap()];
    let mut expected = String::new();
    let mut got = String::new();
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("$ deepseek-meter ") {
            let mut args: Vec<&str> = command.split_whitespace().collect();
            args.extend(["--database-url", &t.db.url]);
            let (code, out, err) = run_bin(&args).await;
            assert_eq!(code, Some(0), "{err}");
            got.push_str(line);
            got.push('\n');
            got.push_str(&out);
        } else {
            expected.push_str(line);
            expected.push('\n');
            continue;
        }
        expected.push_str(line);
        expected.push('\n');
    }
    assert_eq!(
        got.trim_end(),
        expected.trim_end(),
        "the README's block should read:\n{got}"
    );
    // The JSON example: the real JSON's keys (abridged rows, every key).
    let example = &readme[readme
        .find("```json\n{\n  \"from\"")
        .expect("the README's JSON example")
        + 8..];
    let example: serde_json::Value =
        serde_json::from_str(&example[..example.find("```").unwrap()]).unwrap();
    let (code, json, err) = run_bin(&[
        "report",
        "--by",
        "model",
        "--from",
        "2026-11-26T09",
        "--to",
        "2026-11-26T10",
        "--format",
        "json",
        "--database-url",
        &t.db.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&example), keys(&json), "{json}");
    assert_eq!(keys(&example["rows"][0]), keys(&json["rows"][0]), "{json}");
    assert_eq!(keys(&example["total"]), keys(&json["total"]), "{json}");
    assert_eq!(
        example["rows"][0], json["rows"][0],
        "the example's first row is the real one"
    );
    assert_eq!(example["total"], json["total"]);
    t.audit(&[]).await;
}
