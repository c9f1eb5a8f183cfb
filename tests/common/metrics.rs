//! Reading one figure out of a Prometheus text scrape, for tests that assert a counter moved
//! (a family merely being exported proves nothing). Shared by the test binaries with `#[path]`.

#![allow(dead_code)]

/// The Prometheus text the service at `base` serves on `/metrics`.
pub async fn scrape(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics scraped")
        .text()
        .await
        .expect("metrics text")
}

/// The sum of the samples of `name` whose labels include every `(label, value)` of `labels`
/// (0 when there is none).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
