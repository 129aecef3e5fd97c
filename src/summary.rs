//! Allocate failures summarized per region, so that a bad day's log stays readable: each retry is
//! logged at DEBUG only, and once per INTERVAL a region that had failures gets one WARN line with
//! its attempts and its failures by gRPC code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::select;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Allocate attempts by `[region, result]`, as `director_allocations_total` counts them.
type Attempts = BTreeMap<Vec<String>, u64>;

/// Starts the thread that logs the summary every `interval`; it ends when shutdown is requested.
pub fn start(
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("log-summary".into())
        .spawn(move || {
            let mut before = metrics.allocations.snapshot();
            loop {
                let stop = select! {
                    recv(shutdown.requested_channel()) -> _ => true,
                    default(interval) => false,
                };
                let now = metrics.allocations.snapshot();
                for line in summary_lines(&before, &now, interval) {
                    log::warn!("{line}");
                }
                if stop {
                    return;
                }
                before = now;
            }
        })?;
    Ok(())
}

/// One line per region with failed attempts between the two snapshots.
pub fn summary_lines(before: &Attempts, now: &Attempts, interval: Duration) -> Vec<String> {
    let mut regions: BTreeMap<&str, (u64, BTreeMap<&str, u64>)> = BTreeMap::new();
    for (labels, count) in now {
        let [region, result] = labels.as_slice() else {
            continue;
        };
        let delta = count - before.get(labels).copied().unwrap_or(0);
        if delta == 0 {
            continue;
        }
        let (attempts, failures) = regions.entry(region).or_default();
        *attempts += delta;
        if result != "ok" {
            *failures.entry(result).or_default() += delta;
        }
    }
    regions
        .into_iter()
        .filter(|(_, (_, failures))| !failures.is_empty())
        .map(|(region, (attempts, failures))| {
            let failed: u64 = failures.values().sum();
            let codes: Vec<String> = failures
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            format!(
                "Region {region}: {failed} of {attempts} Allocate attempts failed in the last {:.1}s ({})",
                interval.as_secs_f64(),
                codes.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(entries: &[(&str, &str, u64)]) -> Attempts {
        entries
            .iter()
            .map(|(region, result, n)| (vec![region.to_string(), result.to_string()], *n))
            .collect()
    }

    #[test]
    fn one_line_per_region_with_failures_by_code() {
        let before = attempts(&[("a", "ok", 10), ("a", "UNAVAILABLE", 1), ("b", "ok", 5)]);
        let now = attempts(&[
            ("a", "ok", 15),
            ("a", "UNAVAILABLE", 4),
            ("a", "DEADLINE_EXCEEDED", 1),
            ("b", "ok", 9),
        ]);
        let lines = summary_lines(&before, &now, Duration::from_secs(5));
        assert_eq!(
            lines,
            ["Region a: 4 of 9 Allocate attempts failed in the last 5.0s (DEADLINE_EXCEEDED 1, UNAVAILABLE 3)"]
        );
    }

    #[test]
    fn a_quiet_or_healthy_interval_logs_nothing() {
        let now = attempts(&[("a", "ok", 3), ("b", "UNAVAILABLE", 2)]);
        assert!(summary_lines(&now, &now, Duration::from_secs(5)).is_empty());
        let healthy = attempts(&[("a", "ok", 7), ("b", "UNAVAILABLE", 2)]);
        assert!(summary_lines(&now, &healthy, Duration::from_secs(5)).is_empty());
    }
}
