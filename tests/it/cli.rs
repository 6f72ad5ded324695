//! The real binary: settings errors stop startup with one line naming the setting; `serve --upstream sim`
//! serves with no API key; the call log line carries the metering fields and never the key (failed calls at info, every
//! call at debug); SIGTERM exits 0.

use crate::helpers::bin::{output_blocking, wait_bounded, Bin, BIN, RUN_BOUND, SERVE_ON_SIM};
use crate::helpers::{test_client, TestDb};
use std::process::Command;

fn stderr_of(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = output_blocking(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("METER_LISTEN"),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_stop_startup_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("meter.toml");
    std::fs::write(&cfg, "upstream = \"sim\"\nlisten_addr = \"x\"\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let neg = dir.path().join("prices.toml");
    std::fs::write(
        &neg,
        "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = \"-1\"\noutput = 1\n",
    )
    .unwrap();
    let neg = neg.to_str().unwrap();
    let budget = dir.path().join("budget.toml");
    std::fs::write(
        &budget,
        "upstream = \"sim\"\n[[budget]]\nname = \"alpha-daily\"\nperiod = \"day\"\nlimit_yuan = \"0\"\naction = \"block\"\n",
    )
    .unwrap();
    let budget = budget.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["serve", "--listen", "not-an-address"], &[], "--listen"),
        (
            &["serve"],
            &[("METER_ADMIN_LISTEN", "localhost")],
            "--admin-listen",
        ),
        (&["serve", "--upstream", "ftp://x"], &[], "--upstream"),
        (
            &["serve", "--idle-timeout-ms", "soon"],
            &[],
            "--idle-timeout-ms",
        ),
        (&["--config", cfg, "serve"], &[], "listen_addr"),
        (&["serve", "--prices", neg], &[], "--prices"),
        (
            &["--config", budget, "serve"],
            &[],
            "invalid [[budget]] in the config file: budget \"alpha-daily\": limit_yuan must be greater than 0",
        ),
        (
            &["serve", "--budget-reservation", "maybe"],
            &[],
            "--budget-reservation",
        ),
        (
            &["serve", "--admin-listen", "0.0.0.0:0"],
            &[("METER_ADMIN_TOKEN", "")],
            "invalid setting --admin-listen (METER_ADMIN_LISTEN, config key `admin_listen`): 0.0.0.0:0 is not a loopback address: set --admin-token (METER_ADMIN_TOKEN) too",
        ),
        (
            &["serve"],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "invalid setting --otlp-protocol (OTEL_EXPORTER_OTLP_PROTOCOL, config key `otlp_protocol`): \"grpc\" is not supported",
        ),
        (
            &["serve"],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key")],
            "--otlp-headers",
        ),
        (&["serve", "--otlp-endpoint", "ftp://x"], &[], "--otlp-endpoint"),
        (
            &["serve"],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "Authorization: Bearer s3cret==")],
            "pair 1 does not start with a header name",
        ),
        (
            &["serve"],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cret%zz")],
            "the value of pair 1 has a % not followed by two hex digits",
        ),
        (
            &["prices"],
            &[("METER_PRICES", neg)],
            "m@2025-01-01: input price -1 is negative",
        ),
    ];
    for (args, env, name) in cases {
        let (code, stderr) = stderr_of(args, env);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(lines[0].contains(name), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "a secret in the error: {stderr}"
        );
    }
}

#[test]
fn prices_prints_the_builtin_book() {
    let out = output_blocking(Command::new(BIN).arg("prices").env_remove("METER_PRICES"));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("deepseek-v3.2-exp "))
        .unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "deepseek-v3.2-exp",
            "2025-09-29",
            "all",
            "day",
            "2",
            "0.4",
            "2.5*",
            "3",
            "3",
            "2026-10-10"
        ]
    );
    // One line per price: 27 entries, two of them with a peak and an off-peak price.
    let prices = text.lines().skip(1).take_while(|l| !l.is_empty()).count();
    assert_eq!(prices, 29, "{text}");
    // The README's excerpt is this output, line for line.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let excerpt: Vec<&str> = readme
        .split("```\nmodel ")
        .nth(1)
        .expect("the README shows `prices` output")
        .split("```")
        .next()
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(excerpt.len() >= 3);
    for line in excerpt {
        assert!(
            text.lines().any(|l| l == line),
            "README line not in the output: {line}"
        );
    }
    let book = deepseek_meter::pricing::PriceBook::builtin();
    for model in book.models() {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{model} "))),
            "{model} in\n{text}"
        );
    }
}

/// Runs `serve` on the simulator with `env`, makes an ok call and a failed one (x-sim-fault: 429), stops it
/// with SIGTERM, and returns the JSON call log lines.
fn call_log_lines(env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A journal directory and a database of its own: tests run in parallel.
    let db = rt.block_on(TestDb::new());
    let journal = tempfile::tempdir().unwrap();
    let journal = journal.path().to_str().unwrap();
    let args: Vec<&str> = SERVE_ON_SIM
        .into_iter()
        .chain(["--database-url", &db.url, "--journal-dir", journal])
        .collect();
    let mut bin = Bin::start(&args, env, &["proxy_addr"]);
    let proxy = bin.addrs[0].clone();
    rt.block_on(async {
        let http = test_client();
        for fault in [None, Some("429")] {
            let mut rb = http
                .post(format!("http://{proxy}/compatible-mode/v1/chat/completions"))
                .bearer_auth("sk-canary-secret-7777")
                .header("x-meter-project", "cli-test")
                .body(r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}],"stream":true}"#);
            if let Some(f) = fault {
                rb = rb.header("x-sim-fault", f);
            }
            let text = rb.send().await.unwrap().text().await.unwrap();
            assert_eq!(fault.is_none(), text.ends_with("data: [DONE]\n\n"));
        }
    });
    assert!(bin.sigterm().success(), "exit 0 after SIGTERM");
    let log = bin.log();
    assert!(
        log.iter().all(|l| !l.contains("canary-secret")),
        "no key in the log"
    );
    log.iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["message"] == "call")
        .collect()
}

#[test]
fn serve_logs_failed_calls_at_info_without_the_key_and_stops_on_sigterm() {
    let calls = call_log_lines(&[]);
    assert_eq!(
        calls.len(),
        1,
        "only the failed call at the default level: {calls:?}"
    );
    let call = &calls[0];
    assert_eq!(call["level"], "INFO");
    assert_eq!(call["status"], "upstream_error");
    assert_eq!(call["error_code"], "limit_requests");
    assert_eq!(call["model"], "deepseek-r1");
    assert_eq!(call["project"], "cli-test");
}

#[test]
fn every_call_is_logged_when_the_call_target_is_at_debug() {
    let calls = call_log_lines(&[("METER_LOG", "info,deepseek_meter::call=debug")]);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let ok = calls
        .iter()
        .find(|c| c["status"] == "ok")
        .expect("the ok call");
    assert_eq!(ok["level"], "DEBUG");
    assert_eq!(ok["model"], "deepseek-r1");
    assert_eq!(ok["project"], "cli-test");
    assert_eq!(ok["usage_source"], "reported");
    assert_eq!(ok["output_tokens"], 32);
}

/// A text log written to a pipe or a file is plain: no ANSI colour codes (they are for terminals).
#[test]
fn a_text_log_to_a_pipe_has_no_colour_codes() {
    // A journal of its own and a database that is never there: the test leaves nothing behind.
    let journal = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-format", "text"])
        .args(SERVE_ON_SIM)
        .args(["--journal-dir", journal.path().to_str().unwrap()])
        .args(["--database-url", "postgres://127.0.0.1:1/never"])
        .env("METER_LOG", "debug")
        .env_remove("DASHSCOPE_API_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("deepseek-meter serving") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let serving = rx.recv_timeout(RUN_BOUND);
    let _ = child.kill();
    let _ = wait_bounded(&mut child);
    let serving = serving.expect("the serving line");
    assert!(serving.contains("INFO"), "a text line: {serving:?}");
    assert!(!serving.contains('\u{1b}'), "no escape codes: {serving:?}");
}

/// A config file that is not valid TOML, or has a key that is not a setting: one line naming the file, the
/// line and column, and what is wrong; exit 2.
#[test]
fn a_bad_config_file_is_named_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        (
            "listen = \"127.0.0.1:0\"\n\n[[budget]]\nname = \"unterminated\n",
            "line 4, column 21: invalid basic string",
        ),
        (
            "listen = \"127.0.0.1:0\"\nlisen = \"x\"\n",
            "line 2, column 1: unknown field `lisen`",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = stderr_of(&["--config", path.to_str().unwrap(), "prices"], &[]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("invalid config file") && stderr.contains("bad.toml"),
            "{stderr}"
        );
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
}

/// `report` against a database that is not there says so at once, and where: not a pool's timeout.
#[tokio::test]
async fn report_against_an_absent_database_names_it_and_why() {
    let refused = crate::helpers::refusing_port();
    let url = format!("postgres://meter:secret-password@{}/nowhere", refused.1);
    let t = std::time::Instant::now();
    let (code, stderr) = stderr_of(&["report", "--database-url", &url], &[]);
    // A refused connection is an answer: no waiting out a pool's 5 s timeout first.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the ledger database at {}/nowhere",
            refused.1
        )) && stderr.to_lowercase().contains("refused"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pool timed out") && !stderr.contains("secret-password"),
        "{stderr}"
    );
}

/// SIGTERM with the database away: the calls are in the journal, nothing waits on Postgres for long — the
/// process exits within the drain (nothing in flight here) plus 2 s for shipping and 2 s for the last roll —
/// and each step is logged, ending with the records left for the next start.
#[tokio::test]
async fn sigterm_with_the_database_away_exits_within_its_bound_and_says_what_it_left() {
    let refused = crate::helpers::refusing_port();
    let journal = tempfile::tempdir().unwrap();
    let url = format!("postgres://meter@{}/away", refused.1);
    let args: Vec<&str> = SERVE_ON_SIM
        .into_iter()
        .chain([
            "--database-url",
            &url,
            "--journal-dir",
            journal.path().to_str().unwrap(),
        ])
        .collect();
    let mut bin = Bin::start(&args, &[], &["proxy_addr"]);
    let resp = test_client()
        .post(format!(
            "http://{}/compatible-mode/v1/chat/completions",
            bin.addrs[0]
        ))
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let t = std::time::Instant::now();
    assert!(bin.sigterm().success());
    let took = t.elapsed();
    // Nothing in flight: the drain is immediate, then at most 2 s of shipping and 2 s for the last roll.
    assert!(took < std::time::Duration::from_secs(6), "took {took:?}");
    let log = bin.log();
    let messages: Vec<String> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .collect();
    for step in [
        "shutting down: listeners closed, draining calls in flight",
        "shutting down: journal closed, shipping what is left",
        "records left in the journal; they are shipped at the next start",
        "shut down",
    ] {
        assert!(messages.iter().any(|m| m == step), "{step}: {messages:?}");
    }
    // The records left are named, as a warning.
    let left = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "records left in the journal; they are shipped at the next start")
        .unwrap();
    assert_eq!(
        (&left["level"], &left["records"]),
        (&serde_json::json!("WARN"), &serde_json::json!(1)),
        "{left}"
    );
}
