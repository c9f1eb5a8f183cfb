//! Checks the operations artifacts against the code: every metric an alert or recording rule
//! or a Grafana panel names exists in the catalogue (`src/observability/metrics.rs`), every
//! alert links a section of `RUNBOOK.md`, `promtool` accepts the rules and the scrape
//! configuration, and the SLO rules pass their unit tests (`prometheus/tests/*.yml`).
//! A fresh service's first scrape shows every series they read, at 0 if nothing happened.
//! Needs `promtool` on PATH (Debian package `prometheus`; `scripts/services.sh` installs it)
//! and PostgreSQL (the pool series exist only on it; `scripts/services.sh` starts it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/service.rs"]
mod service;

/// The registry adds this prefix; the catalogue's source names metrics without it.
const PREFIX: &str = "ticketing_";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Every `ticketing_[a-z0-9_]+` token of `text` that does not continue a longer identifier.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(PREFIX) {
        let start = from + found;
        let glued = text[..start]
            .chars()
            .next_back()
            .is_some_and(|c| is_name_char(c) || c.is_ascii_uppercase());
        let rest = &text[start + PREFIX.len()..];
        let len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        if !glued && len > 0 {
            names.insert(text[start..start + PREFIX.len() + len].to_owned());
        }
        from = start + PREFIX.len();
    }
    names
}

/// The rule files `prometheus/prometheus.yml` loads: alerts, and the SLOs with their alerts.
const RULE_FILES: [&str; 2] = ["prometheus/alerts.yml", "prometheus/slos.yml"];

/// The rule files and every dashboard, with their paths (the rule files first).
fn artifacts() -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> = RULE_FILES.iter().map(|f| root().join(f)).collect();
    let dashboards = root().join("grafana/dashboards");
    let mut jsons: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dashboards.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(
        !jsons.is_empty(),
        "no dashboard in {}",
        dashboards.display()
    );
    jsons.sort();
    files.extend(jsons);
    files
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

/// True when the catalogue's source defines `bare` (a name without the prefix) as a literal.
fn defined(source: &str, bare: &str) -> bool {
    source.contains(&format!("\"{bare}\""))
}

/// Every metric named by an alert rule or a dashboard panel is defined in the metric catalogue.
#[test]
fn every_metric_in_alerts_and_dashboards_is_in_the_catalogue() {
    // The catalogue is `metrics.rs` and its sibling files.
    let source: String = ["metrics.rs", "queue_metrics.rs", "resilience.rs"]
        .iter()
        .map(|file| read(&root().join("src/observability").join(file)))
        .collect();
    let mut missing = Vec::new();
    let mut checked = 0;
    for (path, text) in artifacts() {
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{} names no metric", path.display());
        for name in names {
            let bare = &name[PREFIX.len()..];
            // A histogram is exposed as <name>_bucket, <name>_sum and <name>_count.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| bare.strip_suffix(suffix))
                .filter(|base| !defined(&source, bare) && defined(&source, base))
                .unwrap_or(bare);
            checked += 1;
            if !defined(&source, base) {
                missing.push(format!("{name} (in {})", path.display()));
            }
        }
    }
    assert!(checked > 0, "no metric was checked");
    assert!(
        missing.is_empty(),
        "not in src/observability/metrics.rs: {missing:#?}"
    );
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every alert has a summary, a description and a runbook link to an existing RUNBOOK.md section.
#[test]
fn every_alert_links_a_runbook_section() {
    for file in RULE_FILES {
        alerts_link_runbook_sections(file);
    }
}

fn alerts_link_runbook_sections(file: &str) {
    let rules = read(&root().join(file));
    let runbook = read(&root().join("RUNBOOK.md"));
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let count = |key: &str| {
        rules
            .lines()
            .filter(|l| l.trim_start().starts_with(key))
            .count()
    };
    let alerts = count("- alert:");
    assert!(alerts > 0, "no alert in {file}");
    for key in ["summary:", "description:", "runbook_url:"] {
        assert_eq!(
            count(key),
            alerts,
            "every alert of {file} needs one `{key}`"
        );
    }
    for line in rules.lines().filter(|l| l.contains("runbook_url:")) {
        let target = line
            .split("RUNBOOK.md#")
            .nth(1)
            .unwrap_or_else(|| panic!("runbook_url must point at RUNBOOK.md#<anchor>: {line}"));
        let target = target.trim_end_matches(['"', '\'', ' ']);
        assert!(
            anchors.contains(target),
            "RUNBOOK.md has no heading with anchor #{target}"
        );
    }
}

/// Runs `promtool` with `args` in the crate root and returns its output on success.
fn promtool(args: &[&str]) -> String {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install the Debian package `prometheus` \
             (apt-get install -y --no-install-recommends prometheus), or run ./scripts/services.sh"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

/// `promtool check rules` accepts the alert and SLO rules.
#[test]
fn promtool_accepts_the_alert_rules() {
    for file in RULE_FILES {
        let out = promtool(&["check", "rules", file]);
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// The rules' unit tests pass (`promtool test rules` on synthetic series, every file of
/// `prometheus/tests/`): a fast burn pages, a slow burn only opens a ticket, a healthy
/// service raises nothing; a skipped undecodable event alerts and clears.
#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let dir = root().join("prometheus/tests");
    let mut tests: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| {
            format!(
                "prometheus/tests/{}",
                p.file_name().expect("a file").to_string_lossy()
            )
        })
        .collect();
    assert!(!tests.is_empty(), "no rule unit test in {}", dir.display());
    tests.sort();
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let out = promtool(&args);
    assert!(out.contains("SUCCESS") && !out.contains("FAILED"), "{out}");
}

/// `promtool check config` accepts the scrape configuration and finds its rule file.
#[test]
fn promtool_accepts_the_scrape_config() {
    let out = promtool(&["check", "config", "prometheus/prometheus.yml"]);
    assert!(out.contains("2 rule files found"), "{out}");
}

/// The dashboard JSON parses and every panel queries through the dashboard's data source variable.
#[test]
fn dashboards_are_importable_json() {
    for (path, text) in artifacts().into_iter().skip(RULE_FILES.len()) {
        let dashboard: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert!(
            dashboard["title"].is_string(),
            "{} has no title",
            path.display()
        );
        assert!(
            dashboard["uid"].is_string(),
            "{} has no uid",
            path.display()
        );
        let panels = dashboard["panels"].as_array().expect("panels");
        let queries: Vec<&serde_json::Value> = panels
            .iter()
            .filter_map(|p| p["targets"].as_array())
            .flatten()
            .collect();
        assert!(!queries.is_empty(), "{} has no query", path.display());
        for q in queries {
            assert_eq!(
                q["datasource"]["uid"],
                "${datasource}",
                "{}: query {} does not use the datasource variable",
                path.display(),
                q["expr"]
            );
        }
    }
}

/// The extractor finds whole metric names only.
#[test]
fn metric_names_are_extracted_whole() {
    let names = metric_names(
        r#"rate(ticketing_a_total[5m]) / x_ticketing_b + ticketing_c_bucket{job="ticketing"}"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ticketing_a_total", "ticketing_c_bucket"]
    );
}

/// The series names of a Prometheus text exposition (a histogram's `_bucket`, `_sum` and
/// `_count` lines, and its bare name through them).
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        names.insert(name.to_owned());
        if let Some(base) = name.strip_suffix("_bucket") {
            names.insert(base.to_owned());
        }
    }
    names
}

/// Starts the real binary on a fresh PostgreSQL database, waits for `/health` and returns the
/// body of its very first `/metrics` scrape.
async fn first_scrape() -> String {
    let url = ticketing::db::testing::fresh_database().await;
    let mut service = service::start(&[("DATABASE_URL", &url)], "/health").await;
    let body = reqwest::get(format!("{}/metrics", service.base))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a text body");
    service.process.kill().await.expect("the service stops");
    ticketing::db::testing::drop_database(&url).await;
    body
}

/// Every series an alert rule or a dashboard reads is on a fresh service's first scrape, so
/// panels show 0 instead of "no data" and `rate()` sees the first increment.
#[tokio::test]
async fn a_fresh_scrape_shows_every_series_the_dashboards_and_alerts_read() {
    let exposed = exposed_names(&first_scrape().await);
    let mut missing = Vec::new();
    for (path, text) in artifacts() {
        for name in metric_names(&text) {
            if !exposed.contains(&name) {
                missing.push(format!("{name} (in {})", path.display()));
            }
        }
    }
    assert!(missing.is_empty(), "not on the first scrape: {missing:#?}");
}
