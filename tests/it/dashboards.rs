//! `dashboards/` against the sidecar and the real tools: every metric the rules (and dashboards) use is one the
//! sidecar declares — a renamed metric breaks this test until `dashboards/` follows; the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`); the Prometheus and Alertmanager
//! configurations pass `promtool check config` and `amtool check-config` (Debian's `prometheus` and
//! `prometheus-alertmanager`, installed by `.ci/run`).

use deepseek_meter::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Every `deepseek_meter_…` name in the files of `dashboards/`.
fn names_used() -> BTreeSet<(String, String)> {
    let mut used = BTreeSet::new();
    for entry in std::fs::read_dir(dashboards()).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // screenshots
        };
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("deepseek_meter_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert((file.clone(), name));
        }
    }
    used
}

#[test]
fn every_metric_the_dashboards_use_is_one_the_sidecar_declares() {
    let declared: BTreeSet<&str> = Metrics::names().collect();
    let used = names_used();
    assert!(used.len() > 10, "the rules use the metrics: {used:?}");
    for (file, name) in &used {
        // A histogram is used through its series.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(f)))
            .unwrap_or(name);
        assert!(
            declared.contains(family),
            "dashboards/{file} uses {name}, which the sidecar does not declare (renamed?)"
        );
    }
}

/// Whether `tool` is on the PATH.
fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

fn run(tool: &str, args: &[&str]) {
    assert!(
        which(tool),
        "{tool} is installed (apt-get install prometheus prometheus-alertmanager; .ci/run does)"
    );
    let out = crate::helpers::bin::output_blocking(
        Command::new(tool).args(args).current_dir(dashboards()),
    );
    assert!(
        out.status.success(),
        "{tool} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    run("promtool", &["check", "rules", "alerts.yml"]);
    run("promtool", &["test", "rules", "alerts_test.yml"]);
}

#[test]
fn the_prometheus_and_alertmanager_configurations_are_valid() {
    run("promtool", &["check", "config", "prometheus.yml"]);
    run("amtool", &["check-config", "alertmanager.yml"]);
}

use crate::helpers::*;
use chrono::{DateTime, Utc};
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Upstream;
use serde_json::Value;
use std::time::Duration;

fn dashboard(file: &str) -> Value {
    let text = std::fs::read_to_string(dashboards().join(file)).unwrap();
    // Provisioning loads a dashboard as it is: no import-wizard inputs (grafana/grafana#10786).
    assert!(
        !text.contains("__inputs") && !text.contains("${DS_"),
        "{file} uses import-wizard placeholders"
    );
    serde_json::from_str(&text).unwrap()
}

/// (panel title, its targets' `expr` or `rawSql`).
fn queries(dash: &Value, key: &str) -> Vec<(String, Vec<String>)> {
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let targets = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t[key].as_str().unwrap().to_owned())
                .collect();
            (p["title"].as_str().unwrap().to_owned(), targets)
        })
        .collect()
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A child process killed when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = crate::helpers::bin::wait_bounded(&mut self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sidecar on the simulator with a budget and a closed billing hour, and traffic of every kind the
/// dashboard shows: thinking and plain models, streams, an upstream error, an unpriced model, a retired
/// model (deepseek-r1, after 2026-10-10), cache writes, a model priced by period, every protocol.
async fn busy_sidecar() -> LedgerApp {
    let clock = Clock::manual(at("2026-11-25T10:30:00Z"));
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), |s| {
        let table: toml::Table = toml::from_str(
            "[[budget]]\nname = \"daily\"\nperiod = \"day\"\nlimit_yuan = 10\naction = \"block\"\n",
        )
        .unwrap();
        s.budgets = deepseek_meter::budget::parse(table.get("budget")).unwrap();
    })
    .await;
    traffic(&t).await;
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    clock.set(at("2026-11-25T11:11:00Z"));
    t.app.roll_bill().await.unwrap().unwrap();
    // A reconciliation, recorded (no platform bill imported: every hour only in the ledger), for the drift
    // panel.
    let resp = t
        .http
        .post(t.admin_url("/v1/reconcile?from=2026-11-25&to=2026-11-26"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    t
}

async fn traffic(t: &LedgerApp) {
    let calls: [(&str, Option<&str>); 8] = [
        (
            r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#,
            None,
        ),
        (
            r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"hi"}],"stream":true,"enable_thinking":true}"#,
            None,
        ),
        (
            r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            None,
        ),
        (
            r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#,
            Some("429"),
        ),
        (
            r#"{"model":"mystery-model","messages":[{"role":"user","content":"hi"}]}"#,
            None,
        ),
        (
            r#"{"model":"deepseek-v4-pro","messages":[{"role":"user","content":"a long prompt to cache, a long prompt to cache"}]}"#,
            None,
        ),
        (
            r#"{"model":"deepseek-v4-flash-0731","input":"hi","stream":true}"#,
            None,
        ),
        (
            r#"{"model":"deepseek-v4-flash","max_tokens":512,"messages":[{"role":"user","content":"hi"}]}"#,
            None,
        ),
    ];
    for (i, (body, fault)) in calls.into_iter().enumerate() {
        let path = match i {
            6 => "/compatible-mode/v1/responses",
            7 => "/apps/anthropic/v1/messages",
            _ => COMPAT_PATH,
        };
        let mut req = t
            .http
            .post(t.url(path))
            .bearer_auth("sk-dashboard-test-01")
            .body(body);
        if i == 5 {
            // deepseek-v4-pro, the model with the explicit cache: a cache write.
            req = req.header("x-sim-cache-creation-tokens", "8");
        }
        if let Some(f) = fault {
            req = req.header("x-sim-fault", f);
        }
        let resp = req.send().await.unwrap();
        t.saw(&call_id(&resp));
        resp.bytes().await.unwrap();
    }
}

/// A real Prometheus scrapes the sidecar every second while it takes calls; every PromQL expression of the
/// Prometheus dashboard parses, and every panel returns data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_the_prometheus_dashboard_returns_data_from_a_real_prometheus() {
    let t = busy_sidecar().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: deepseek-meter\n    static_configs:\n      - targets: [\"{}\"]\n",
            t.app.admin_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Child(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus; .ci/run does)"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1/query");
    // Calls between scrapes, so that rates and quantiles have two samples to work from.
    for _ in 0..6 {
        traffic(&t).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let dash = dashboard("deepseek-meter.json");
    let mut empty = Vec::new();
    for (title, exprs) in queries(&dash, "expr") {
        let mut has_data = false;
        for expr in &exprs {
            let mut body = Value::Null;
            for _ in 0..100 {
                let Ok(resp) = t
                    .http
                    .get(&api)
                    .query(&[("query", expr.as_str())])
                    .send()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue; // Prometheus still starting
                };
                body = resp.json::<Value>().await.unwrap_or_default();
                if body["status"] == "success"
                    && body["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
                {
                    break;
                }
                assert_ne!(body["errorType"], "bad_data", "{title}: {expr}: {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(body["status"], "success", "{title}: {expr}: {body}");
            has_data |= body["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        }
        if !has_data {
            empty.push(title);
        }
    }
    assert!(empty.is_empty(), "panels without data: {empty:?}");
    t.audit(&[]).await;
}

/// Every SQL query of the bill dashboard runs, as Grafana would send it (its time-filter macro expanded), as
/// the README's read-only Grafana role, against a database holding a bill, and returns rows; that role cannot
/// read the ledger.
#[tokio::test]
async fn every_sql_query_of_the_bill_dashboard_returns_rows() {
    let role = format!("dm_grafana_{}", uuid::Uuid::now_v7().simple());
    let _drop_role = DropRole(role.clone());
    let t = busy_sidecar().await;
    let pool = t.db.pool().await;
    // The README's read-only role for Grafana: the bill, not the ledger.
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT ON DATABASE \"{}\" TO {role}", t.db.name),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON hourly_bill, hourly_model_bill, bill_hours TO {role}"),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let reader = sqlx::PgPool::connect(&format!("postgres://{role}@{}/{}", pg_addr(), t.db.name))
        .await
        .unwrap();
    let dash = dashboard("deepseek-meter-bill.json");
    for (title, sqls) in queries(&dash, "rawSql") {
        for sql in sqls {
            let sql = sql.replace(
                "$__timeFilter(billing_hour)",
                "billing_hour BETWEEN '2026-11-24T00:00:00Z' AND '2026-11-27T00:00:00Z'",
            );
            assert!(!sql.contains("$__"), "{title}: an unexpanded macro: {sql}");
            let rows = sqlx::query(&sql)
                .fetch_all(&reader)
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}: {sql}"));
            assert!(!rows.is_empty(), "{title}: no rows: {sql}");
        }
    }
    // The period panel has a real period to show, not only the flat prices' "all day".
    let peak: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hourly_model_bill WHERE price_period = 'peak'")
            .fetch_one(&reader)
            .await
            .unwrap();
    assert!(peak > 0, "no peak row for the period panel");
    let err = sqlx::query("SELECT end_user, key_hint FROM usage_ledger LIMIT 1")
        .fetch_all(&reader)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    reader.close().await;
    t.audit(&[]).await;
}

/// A role dropped when the test ends (after its database: declare it first).
struct DropRole(String);

impl Drop for DropRole {
    fn drop(&mut self) {
        admin_sql(format!("DROP ROLE IF EXISTS {}", self.0));
    }
}

/// The alert path end to end: a sidecar's budget passes 80 %; a real Prometheus (scraping every second, with
/// the rules of `alerts.yml` — `DeepseekMeterBudgetNearLimit`'s `for:` shortened to 0s, its durations being
/// the unit tests' business) fires `DeepseekMeterBudgetNearLimit`; a real Alertmanager with the route of
/// `alertmanager.yml` (waits shortened, receiver URL pointed at the test) POSTs it to a webhook receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_past_80_percent_reaches_a_webhook_through_prometheus_and_alertmanager() {
    let (receiver, base) = crate::helpers::receiver::WebhookReceiver::start().await;
    let receiver_url = format!("{base}/alerts");

    // The sidecar: an alert budget of 0.0013; two deepseek-r1 calls on the simulator cost 0.001064 (82 %).
    let t = LedgerApp::start(Upstream::Sim, |s| {
        let table: toml::Table = toml::from_str(
            "[[budget]]\nname = \"team-daily\"\nperiod = \"day\"\nlimit_yuan = \"0.0013\"\naction = \"alert\"\n",
        )
        .unwrap();
        s.budgets = deepseek_meter::budget::parse(table.get("budget")).unwrap();
    })
    .await;
    for _ in 0..2 {
        let resp = t
            .http
            .post(t.url(COMPAT_PATH))
            .body(r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        t.saw(&call_id(&resp));
        resp.bytes().await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let (am_port, prom_port) = (free_port(), free_port());
    let route = std::fs::read_to_string(dashboards().join("alertmanager.yml"))
        .unwrap()
        .replace("http://127.0.0.1:5001/alerts", &receiver_url)
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 1s");
    assert!(route.contains(&receiver_url));
    std::fs::write(dir.path().join("alertmanager.yml"), route).unwrap();
    let rules = std::fs::read_to_string(dashboards().join("alerts.yml")).unwrap();
    let near = rules.find("alert: DeepseekMeterBudgetNearLimit").unwrap();
    let rules = format!(
        "{}{}",
        &rules[..near],
        rules[near..].replacen("for: 1m", "for: 0s", 1)
    );
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [alerts.yml]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n\
             scrape_configs:\n  - job_name: deepseek-meter\n    static_configs:\n      - targets: [\"{}\"]\n",
            t.app.admin_addr
        ),
    )
    .unwrap();
    let _alertmanager = Child(
        std::process::Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("am").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager is installed (.ci/run installs it)"),
    );
    let _prometheus = Child(
        std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (.ci/run installs it)"),
    );
    let mut alert = None;
    for _ in 0..600 {
        alert = receiver
            .bodies()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["labels"]["alertname"] == "DeepseekMeterBudgetNearLimit");
        if alert.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alert = alert.expect("the alert reached the webhook within 60 s");
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["budget"], "team-daily");
    assert_eq!(alert["labels"]["severity"], "warning");
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Budget team-daily is at 8") && summary.ends_with("% of its limit."),
        "{summary}"
    );
    t.audit(&[]).await;
}

/// `deploy/`: the promises each file makes, checked where no container runtime or systemd runs here.
#[test]
fn the_deployment_files_keep_their_promises() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let read = |f: &str| std::fs::read_to_string(deploy.join(f)).unwrap();
    // What a stop needs: the drain deadline, then the journal's shipping.
    let drain_ms: u64 = deepseek_meter::config::SERVE_SETTINGS
        .iter()
        .find(|s| s.key == "drain_timeout_ms")
        .and_then(|s| s.default)
        .unwrap()
        .parse()
        .unwrap();
    let stop_needs = drain_ms / 1000 + deepseek_meter::config::SHIP_DEADLINE.as_secs();
    let number_after = |text: &str, key: &str| -> u64 {
        let at = text.find(key).unwrap_or_else(|| panic!("{key} is set")) + key.len();
        text[at..]
            .trim_start_matches([' ', ':', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };

    let docker = read("Dockerfile");
    assert_eq!(
        docker.matches("\nFROM ").count() + usize::from(docker.starts_with("FROM ")),
        2,
        "multi-stage"
    );
    let user = docker
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "non-root: {user}"
    );

    let unit = read("deepseek-meter.service");
    for line in [
        "DynamicUser=yes",
        "StateDirectory=deepseek-meter",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit sets {line}");
    }
    assert!(number_after(&unit, "TimeoutStopSec") > stop_needs);

    let pod = read("kubernetes.yaml");
    assert!(number_after(&pod, "terminationGracePeriodSeconds") > stop_needs);
    for promise in [
        "restartPolicy: Always",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "persistentVolumeClaim:",
        "METER_ADMIN_TOKEN",
        "http://127.0.0.1:8787/compatible-mode/v1",
        "preStop:",
    ] {
        assert!(pod.contains(promise), "the pod has {promise}");
    }

    let compose = read("compose.yaml");
    for service in [
        "postgres:",
        "deepseek-meter:",
        "prometheus:",
        "alertmanager:",
        "grafana:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "compose runs {service}"
        );
    }
    assert!(number_after(&compose, "stop_grace_period") > stop_needs);
    for line in compose
        .lines()
        .filter(|l| l.trim_start().starts_with("ports:"))
    {
        assert!(
            line.contains("\"127.0.0.1:"),
            "published on loopback only: {line}"
        );
    }
    // Its Prometheus configuration, beside the rules it loads.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy.join("prometheus-compose.yml"),
        dir.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        dashboards().join("alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let out = crate::helpers::bin::output_blocking(
        Command::new("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(dir.path()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `deploy/`'s compose stack, read as files (no Docker engine here): the sidecar publishes both its listeners
/// (the README's `/metrics` and bill examples work against it) where Prometheus scrapes it; Alertmanager
/// gets a configuration of its own that amtool accepts and that posts nowhere unreachable (no loopback URL —
/// loopback is the Alertmanager container itself); and the build context leaves out `target/` and `.git`.
#[test]
fn the_compose_stack_publishes_both_listeners_and_routes_alerts_nowhere_unreachable() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let compose = std::fs::read_to_string(deploy.join("compose.yaml")).unwrap();
    let service = &compose[compose.find("  deepseek-meter:").unwrap()..];
    let service = &service[..service.find("\n\n").unwrap()];
    assert!(
        service.contains("\"--listen\", \"0.0.0.0:8787\"")
            && service.contains("\"--admin-listen\", \"0.0.0.0:9787\""),
        "{service}"
    );
    assert!(
        service.contains("\"127.0.0.1:8787:8787\"") && service.contains("\"127.0.0.1:9787:9787\""),
        "both listeners published on loopback: {service}"
    );
    let scrape = std::fs::read_to_string(deploy.join("prometheus-compose.yml")).unwrap();
    assert!(scrape.contains("\"deepseek-meter:9787\""), "{scrape}");
    // Prometheus presents the admin token the sidecar is given (or every scrape would be a 401).
    let token = service
        .lines()
        .find_map(|l| l.trim().strip_prefix("METER_ADMIN_TOKEN: "))
        .expect("the sidecar has an admin token");
    assert!(
        scrape
            .lines()
            .any(|l| l.trim() == format!("credentials: {token}")),
        "{scrape}"
    );
    let alertmanager = &compose[compose.find("  alertmanager:").unwrap()..];
    let alertmanager = &alertmanager[..alertmanager.find("\n\n").unwrap()];
    assert!(
        alertmanager.contains("./alertmanager-compose.yml:/etc/alertmanager/alertmanager.yml"),
        "{alertmanager}"
    );
    let route = std::fs::read_to_string(deploy.join("alertmanager-compose.yml")).unwrap();
    let config: Vec<&str> = route
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    // Nothing in the stack receives webhooks: the route posts nowhere at all (alerts show in the UI).
    assert!(
        !config
            .iter()
            .any(|l| l.contains("url") || l.contains("webhook_configs")),
        "{route}"
    );
    let out = crate::helpers::bin::output_blocking(
        Command::new("amtool")
            .args(["check-config", "alertmanager-compose.yml"])
            .current_dir(&deploy),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The build context: the repository, without what it does not need.
    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY . ."), "{dockerfile}");
    assert!(compose.contains("build: {context: .., dockerfile: deploy/Dockerfile}"));
    let ignore = std::fs::read_to_string(deploy.parent().unwrap().join(".dockerignore")).unwrap();
    for path in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == path),
            "{path} in .dockerignore"
        );
    }
}
