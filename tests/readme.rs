//! The README's curl walkthrough, run verbatim with bash against a fresh in-memory service
//! started as the README says (bootstrap admin, default limits), must print exactly the
//! output the README states. Needs `bash`, `curl` and `jq` on PATH, as the README does.

use std::path::PathBuf;

#[path = "support/service.rs"]
mod service;

/// The first fenced block of `language` after `marker` in `text`.
fn block<'a>(text: &'a str, marker: &str, language: &str) -> &'a str {
    let from = text.find(marker).unwrap_or_else(|| panic!("no {marker:?}")) + marker.len();
    let fence = format!("```{language}\n");
    let start = from
        + text[from..]
            .find(&fence)
            .unwrap_or_else(|| panic!("no {language} block after {marker:?}"))
        + fence.len();
    let end = start + text[start..].find("```").expect("a closing fence");
    &text[start..end]
}

#[tokio::test]
async fn the_curl_walkthrough_prints_what_the_readme_says() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("README.md");
    let script = block(&readme, "## Buy a ticket with curl", "bash");
    let expected = block(&readme, "It prints, on a fresh in-memory service:", "text");
    let mut service = service::start(
        &[
            ("ADMIN_EMAIL", "admin@example.com"),
            ("ADMIN_PASSWORD", "change-me-please"),
            ("DATABASE_URL", ""),
        ],
        "/ready",
    )
    .await;
    let output = tokio::process::Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", script])
        .env("API", &service.base)
        .output()
        .await
        .expect("bash runs (the walkthrough needs bash, curl and jq)");
    service.process.kill().await.expect("the service stops");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the walkthrough failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, expected, "the README's stated output differs");
}
