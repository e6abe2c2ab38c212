//! deploy/prometheus/ holds what it claims: alert rules that `promtool check rules`
//! accepts and whose unit tests pass under `promtool test rules`, and a Grafana
//! dashboard that parses, whose every query is valid PromQL, and that asks only for
//! metrics dbops exposes (the names below are the contract with the metrics code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod metrics_contract;
use metrics_contract::{METRICS, alert_rule_metrics, metric_names};

/// The runbooks' queries, which the dashboard must show as they are (modulo the
/// dashboard's label filters).
const SEED_METRICS: &[&str] = &[
    "backup_success_total",
    "backup_attempts_total",
    "backup_last_success_timestamp",
    "backup_duration_seconds",
    "backup_size_bytes",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("prometheus")
}

fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install Debian's prometheus package (it ships promtool; \
             scripts/test does)"
        ),
        Err(e) => panic!("could not run promtool: {e}"),
    }
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = promtool(&["check", "rules", "deploy/prometheus/dbops-alerts.yml"]);
    assert_success(
        "promtool check rules deploy/prometheus/dbops-alerts.yml",
        &out,
    );
}

#[test]
fn the_alert_rules_unit_tests_pass() {
    let out = promtool(&["test", "rules", "deploy/prometheus/dbops-alerts.test.yml"]);
    assert_success(
        "promtool test rules deploy/prometheus/dbops-alerts.test.yml",
        &out,
    );
}

/// Every alert in the rules file has at least one unit test that expects it firing.
#[test]
fn every_alert_has_a_firing_test() {
    let dir = deploy_dir();
    let rules = std::fs::read_to_string(dir.join("dbops-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("dbops-alerts.test.yml")).unwrap();
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        let firing = tests
            .split(&format!("alertname: {alert}\n"))
            .skip(1)
            .any(|rest| {
                rest.trim_start()
                    .strip_prefix("exp_alerts:")
                    .is_some_and(|r| !r.trim_start().starts_with("[]"))
            });
        assert!(firing, "no unit test expects {alert} to fire");
    }
}

/// The rules ask only for what dbops exposes (ops-cli/tests/health_cli.rs checks that
/// a running daemon exposes every name on the list).
#[test]
fn the_alert_rules_ask_only_for_metrics_dbops_exposes() {
    let rules = std::fs::read_to_string(deploy_dir().join("dbops-alerts.yml")).unwrap();
    let used = alert_rule_metrics(&rules);
    assert!(used.len() >= 8, "{used:?}");
    for name in &used {
        assert!(
            METRICS.contains(&name.as_str()),
            "the alert rules ask for {name}, which dbops does not expose"
        );
    }
}

#[test]
fn the_name_extraction_finds_metrics_only() {
    let names = metric_names(
        r#"sum by (job, status) (increase(dbops_job_runs_total{job=~"$job", x="a}b"}[1h]))
           / on(job) group_left(database) rate(backup_attempts_total[$__range] offset 1d) > 0.5
           and time() - backup_last_success_timestamp > 8 * 3600 unless label_values"#,
    );
    assert_eq!(
        names,
        [
            "dbops_job_runs_total",
            "backup_attempts_total",
            "backup_last_success_timestamp",
            "label_values"
        ]
    );
}

/// Every `expr` in the dashboard, and every templating query.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn dashboard_queries() -> Vec<String> {
    let path = deploy_dir().join("dbops-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(dashboard["title"].is_string(), "the dashboard has no title");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "the dashboard has no panels"
    );
    let mut out = Vec::new();
    queries(&dashboard, &mut out);
    assert!(out.len() >= 10, "only {} queries", out.len());
    out
}

/// `label_values(metric{…}, label)` names its metric as a first argument.
fn strip_label_values(q: &str) -> String {
    q.trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.rsplit_once(','))
        .map_or_else(|| q.to_owned(), |(metric, _)| metric.to_owned())
}

#[test]
fn the_dashboard_asks_only_for_metrics_dbops_exposes() {
    let mut used = BTreeSet::new();
    for q in dashboard_queries() {
        let names = metric_names(&strip_label_values(&q));
        assert!(!names.is_empty(), "query names no metric: {q}");
        for name in names {
            assert!(
                METRICS.contains(&name.as_str()),
                "the dashboard asks for {name}, which dbops does not expose: {q}"
            );
            used.insert(name);
        }
    }
    for seed in SEED_METRICS {
        assert!(used.contains(*seed), "the dashboard does not show {seed}");
    }
}

/// Each dashboard query as a recording rule, so promtool parses it as PromQL.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let exprs: Vec<String> = dashboard_queries()
        .into_iter()
        .filter(|q| !q.trim_start().starts_with("label_values("))
        .collect();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert_success("promtool check rules on the dashboard's queries", &out);
}
