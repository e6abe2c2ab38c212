//! The metric names that are dbops's contract with dashboards and alert rules, shared
//! by the tests that hold both sides to it: ops-agent/tests/prometheus_rules.rs (the
//! dashboard and the rules in deploy/prometheus/ ask only for these names) and
//! ops-cli/tests/health_cli.rs (a running daemon's `/metrics` exposes every one of
//! them). A test helper, not a test target: it lives in a directory so that cargo
//! does not build it on its own.
#![allow(dead_code)]

use std::collections::BTreeSet;

/// Every metric dbops exposes: the runbooks' five series and the `dbops_` families.
pub const METRICS: &[&str] = &[
    "backup_attempts_total",
    "backup_success_total",
    "backup_last_success_timestamp",
    "backup_duration_seconds",
    "backup_size_bytes",
    "dbops_job_runs_total",
    "dbops_job_retries_total",
    "dbops_job_last_run_failed",
    "dbops_job_last_success_timestamp_seconds",
    "dbops_backup_stored_bytes",
    "dbops_backup_new_bytes",
    "dbops_backup_size_median_bytes",
    "dbops_verify_last_success_timestamp_seconds",
    "dbops_verify_last_restore_proof_timestamp_seconds",
    "dbops_notification_failures_total",
    "dbops_health_status",
    "dbops_health_value",
    "dbops_backup_rows",
    "dbops_repository_backups",
    "dbops_repository_stored_bytes",
    "dbops_build_info",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers, ranges and grouping lists that are not functions, keywords, aggregations
/// or numbers. Not a PromQL parser; enough to catch a misspelt or invented name.
pub fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
        // Aggregations, which may be followed by `by (…)` rather than `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening `open` to its `close`, stepping over quoted strings.
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                let q = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if call && grouping.contains(&ident.as_str()) {
                i = skip_to(j + 1, ')');
            } else if !call && !KEYWORDS.contains(&ident.to_ascii_lowercase().as_str()) {
                names.push(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Series a rule may use that Prometheus makes itself, not dbops.
pub const PROMETHEUS_OWN: &[&str] = &["up"];

/// The metric names the `expr` of every rule in an alert-rules file uses (an `expr:`
/// on one line, or a folded block scalar below it), without Prometheus's own series.
pub fn alert_rule_metrics(rules: &str) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('>') || rest.starts_with('|') {
            let indent = line.len() - line.trim_start().len();
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                let deeper = next.len() - next.trim_start().len() > indent;
                if !deeper && !next.trim().is_empty() {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            exprs.push(block);
        } else {
            exprs.push(rest.to_owned());
        }
    }
    exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .filter(|n| !PROMETHEUS_OWN.contains(&n.as_str()))
        .collect()
}

/// The sample names in a Prometheus or OpenMetrics text exposition (counters with
/// their `_total`).
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}
