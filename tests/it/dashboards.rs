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

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dashboards())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is installed (apt-get install prometheus prometheus-alertmanager; .ci/run does): {e}"));
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
