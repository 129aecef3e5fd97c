//! The user's documents, checked against the code: docs/metrics.md lists exactly the metrics that
//! `/metrics` exports, each with the type it is exported as.

use std::collections::BTreeMap;
use std::path::Path;

use agones_openmatch_director::metrics::Metrics;

/// Name → type of each row of docs/metrics.md's tables whose first cell is a metric's name
/// (`| `director_…` | type | labels | meaning |`).
fn documented() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("read docs/metrics.md");
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let is_name = name.starts_with("director_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let kind = cells.get(2)?;
            is_name.then(|| (name.to_string(), kind.to_string()))
        })
        .collect()
}

/// Name → type of every metric in the exposition (its `# TYPE` lines).
fn exported() -> BTreeMap<String, String> {
    Metrics::new()
        .render()
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split(' ');
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

#[test]
fn docs_metrics_lists_every_exported_metric_with_its_type_and_no_other() {
    let exported = exported();
    assert!(
        exported.len() > 20,
        "the exposition has its metrics: {exported:?}"
    );
    assert_eq!(documented(), exported);
}
