//! Prometheus metrics: counters, gauges and histograms kept with atomics and small maps, rendered
//! in the text exposition format 0.0.4. Every name starts with `director_`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// A family of series with labels, one per distinct label values: counters (`add`, `inc`) or
/// gauges (`set`).
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Family {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `by` to the series with these label values (in the order of the family's labels).
    pub fn add(&self, values: &[&str], by: u64) {
        let key = values.iter().map(|v| v.to_string()).collect();
        *lock(&self.series).entry(key).or_insert(0) += by;
    }

    /// Adds one.
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Sets the series with these label values to `value` (a gauge).
    pub fn set(&self, values: &[&str], value: u64) {
        let key = values.iter().map(|v| v.to_string()).collect();
        lock(&self.series).insert(key, value);
    }

    /// The sum over all series.
    pub fn sum(&self) -> u64 {
        lock(&self.series).values().sum()
    }

    /// The value of one series (0 if it does not exist yet).
    pub fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        lock(&self.series).get(&key).copied().unwrap_or(0)
    }

    /// Every series and its value now.
    pub fn snapshot(&self) -> BTreeMap<Vec<String>, u64> {
        lock(&self.series).clone()
    }

    fn render(&self, out: &mut String, kind: &str) {
        header(out, self.name, self.help, kind);
        let series = lock(&self.series);
        for (values, count) in series.iter() {
            let _ = writeln!(
                out,
                "{}{} {count}",
                self.name,
                label_set(self.labels, values)
            );
        }
    }
}

/// A counter without labels.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    /// Adds `by`.
    pub fn add(&self, by: u64) {
        self.value.fetch_add(by, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations in seconds.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    /// Under one lock, so that a scrape sees the buckets, the sum and the count of the same
    /// observations (never a `+Inf` bucket below a finite one).
    observations: Mutex<Observations>,
}

/// A histogram's data.
#[derive(Clone, Copy)]
struct Observations {
    /// Cumulative: observations at or below each bound of [`BUCKETS`].
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            observations: Mutex::new(Observations {
                buckets: [0; BUCKETS.len()],
                count: 0,
                sum_micros: 0,
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let mut observations = lock(&self.observations);
        for (bucket, bound) in observations.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        observations.count += 1;
        observations.sum_micros = observations.sum_micros.saturating_add(micros);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        lock(&self.observations).count
    }

    fn render(&self, out: &mut String) {
        let observations = *lock(&self.observations);
        header(out, self.name, self.help, "histogram");
        for (bucket, bound) in observations.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {bucket}", self.name);
        }
        let count = observations.count;
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", self.name);
        let sum = observations.sum_micros as f64 / 1e6;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {count}", self.name);
    }
}

/// Everything the Director measures.
pub struct Metrics {
    /// Matches received from FetchMatches, by profile.
    pub matches_fetched: Family,
    /// Matches without tickets, skipped.
    pub empty_matches: Counter,
    /// Failed FetchMatches calls, by profile and gRPC code.
    pub fetch_errors: Family,
    /// Allocate attempts, by region and result (`ok` or the gRPC code).
    pub allocations: Family,
    /// Duration of Allocate attempts.
    pub allocation_duration: Histogram,
    /// Allocate attempts that waited for ALLOCATE_RATE_LIMIT, by region.
    pub allocate_throttled: Family,
    /// Game servers found again by a retry after an attempt whose answer was lost, by region.
    pub allocations_recovered: Family,
    /// How matches ended, by outcome (`assigned`, `released`, `backfill`, `abandoned`).
    pub matches_finished: Family,
    /// Tickets that got an assignment.
    pub tickets_assigned: Counter,
    /// Tickets returned to the pool.
    pub tickets_released: Counter,
    /// Tickets or matches that could not be assigned, by cause.
    pub assignment_failures: Family,
    /// Game servers allocated but left without players.
    pub orphaned_game_servers: Counter,
    /// 1 while this replica leads (may fetch), else 0 (LEADER_ELECTION_LEASE).
    pub leader: Family,
    /// Times this replica became or stopped being the leader.
    pub leader_transitions: Counter,
    /// Time from a match coming off the stream to its tickets being assigned.
    pub match_to_assignment: Histogram,
    /// Certificate reloads, by endpoint and result.
    pub certificate_reloads: Family,
    /// Whether each region's circuit breaker is open (1) or closed (0).
    pub region_circuit_open: Family,
    /// Whether each region can allocate (1: a connected channel and a closed circuit) or not (0).
    pub allocator_up: Family,
    /// Game servers whose address is missing from their region's Global Accelerator mapping.
    pub connection_translation_misses: Family,
    /// Mapping changes refused (the previous mapping stayed in use).
    pub mapping_reload_errors: Counter,
    /// Entries of each region's Global Accelerator mapping in use.
    pub mapping_entries: Family,
    /// Not-after time of each certificate file (Unix seconds), by file; `None` when unreadable.
    certificate_expiry: Mutex<BTreeMap<String, Option<i64>>>,
    /// Matches in the queue: counted here by the fetchers and workers, so that nothing else holds
    /// an end of the channel (a send must fail when no worker is left).
    queue_depth: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics at zero.
    pub const fn new() -> Metrics {
        Metrics {
            matches_fetched: Family::new(
                "director_matches_fetched_total",
                "Matches with tickets received from Open Match FetchMatches.",
                &["profile"],
            ),
            empty_matches: Counter::new(
                "director_empty_matches_total",
                "Matches without tickets, skipped.",
            ),
            fetch_errors: Family::new(
                "director_fetch_errors_total",
                "FetchMatches calls that failed.",
                &["profile", "code"],
            ),
            allocations: Family::new(
                "director_allocations_total",
                "Agones Allocate attempts, by result (ok or the gRPC status code).",
                &["region", "result"],
            ),
            allocation_duration: Histogram::new(
                "director_allocation_duration_seconds",
                "Duration of Agones Allocate attempts.",
            ),
            allocate_throttled: Family::new(
                "director_allocate_throttled_total",
                "Allocate attempts that waited for their turn under ALLOCATE_RATE_LIMIT.",
                &["region"],
            ),
            allocations_recovered: Family::new(
                "director_allocations_recovered_total",
                "Game servers a retry found again (Allocated, labelled with the match) after an attempt that allocated them lost its answer.",
                &["region"],
            ),
            matches_finished: Family::new(
                "director_matches_total",
                "Matches handled, by outcome: assigned, released, backfill (topping up a running game's backfill, left to its game server), or abandoned to Open Match's pending-release timeout.",
                &["outcome"],
            ),
            tickets_assigned: Counter::new(
                "director_tickets_assigned_total",
                "Tickets assigned a game server connection.",
            ),
            tickets_released: Counter::new(
                "director_tickets_released_total",
                "Tickets returned to the Open Match pool with ReleaseTickets.",
            ),
            assignment_failures: Family::new(
                "director_assignment_failures_total",
                "Tickets AssignTickets reported as not assigned (ticket_not_found, unknown), and AssignTickets calls that failed (rpc_error).",
                &["cause"],
            ),
            leader: Family::new(
                "director_leader",
                "1 while this replica holds the leader election Lease and fetches matches, else 0.",
                &[],
            ),
            leader_transitions: Counter::new(
                "director_leader_transitions_total",
                "Times this replica became the leader or stopped being it.",
            ),
            orphaned_game_servers: Counter::new(
                "director_orphaned_game_servers_total",
                "Game servers allocated whose tickets could not be assigned, or whose response was unusable.",
            ),
            match_to_assignment: Histogram::new(
                "director_match_to_assignment_seconds",
                "Time from a match arriving on the FetchMatches stream to its tickets being assigned.",
            ),
            certificate_reloads: Family::new(
                "director_certificate_reloads_total",
                "Certificate reloads after a file changed, by endpoint and result.",
                &["endpoint", "result"],
            ),
            region_circuit_open: Family::new(
                "director_region_circuit_open",
                "1 while a region's allocator failed repeatedly and its new matches are released at once; 0 otherwise.",
                &["region"],
            ),
            allocator_up: Family::new(
                "director_allocator_up",
                "1 when a region's allocator has a connected channel and a closed circuit, else 0; read at scrape time.",
                &["region"],
            ),
            connection_translation_misses: Family::new(
                "director_connection_translation_misses_total",
                "Allocated game servers whose address is not in their region's Global Accelerator mapping (released, counted as orphaned).",
                &["region"],
            ),
            mapping_reload_errors: Counter::new(
                "director_mapping_reload_errors_total",
                "Changed Global Accelerator mappings refused; the previous mapping stays in use.",
            ),
            mapping_entries: Family::new(
                "director_mapping_entries",
                "Entries of each region's Global Accelerator mapping in use.",
                &["region"],
            ),
            certificate_expiry: Mutex::new(BTreeMap::new()),
            queue_depth: AtomicI64::new(0),
        }
    }

    /// Notes that a match entered the queue.
    pub fn queued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that a worker took a match off the queue.
    pub fn dequeued(&self) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// Matches in the queue (a worker may count its take before the fetcher counts the send).
    pub fn queue_depth(&self) -> u64 {
        self.queue_depth
            .load(Ordering::Relaxed)
            .max(0)
            .unsigned_abs()
    }

    /// Records the not-after time of a certificate file, or that it is unknown (exported as NaN).
    pub fn set_certificate_expiry(&self, file: &str, not_after: Option<i64>) {
        lock(&self.certificate_expiry).insert(file.to_string(), not_after);
    }

    /// The whole exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        header(
            &mut out,
            "director_build_info",
            "Build information; the value is always 1.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "director_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        self.matches_fetched.render(&mut out, "counter");
        self.empty_matches.render(&mut out);
        self.fetch_errors.render(&mut out, "counter");
        self.allocations.render(&mut out, "counter");
        self.allocation_duration.render(&mut out);
        self.allocate_throttled.render(&mut out, "counter");
        self.allocations_recovered.render(&mut out, "counter");
        self.matches_finished.render(&mut out, "counter");
        self.tickets_assigned.render(&mut out);
        self.tickets_released.render(&mut out);
        self.assignment_failures.render(&mut out, "counter");
        self.orphaned_game_servers.render(&mut out);
        self.leader.render(&mut out, "gauge");
        self.leader_transitions.render(&mut out);
        self.match_to_assignment.render(&mut out);
        self.certificate_reloads.render(&mut out, "counter");
        self.region_circuit_open.render(&mut out, "gauge");
        self.allocator_up.render(&mut out, "gauge");
        self.connection_translation_misses
            .render(&mut out, "counter");
        self.mapping_reload_errors.render(&mut out);
        self.mapping_entries.render(&mut out, "gauge");
        header(
            &mut out,
            "director_queue_depth",
            "Matches waiting in the queue for an allocator worker.",
            "gauge",
        );
        let _ = writeln!(out, "director_queue_depth {}", self.queue_depth());
        header(
            &mut out,
            "director_certificate_expiry_timestamp_seconds",
            "Not-after time of each certificate file, Unix seconds; NaN when its dates cannot be read.",
            "gauge",
        );
        let expiry = lock(&self.certificate_expiry);
        for (file, not_after) in expiry.iter() {
            let value = not_after.map_or_else(|| "NaN".to_string(), |t| t.to_string());
            let _ = writeln!(
                out,
                "director_certificate_expiry_timestamp_seconds{{file=\"{}\"}} {value}",
                escape(file)
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn label_set(names: &[&str], values: &[String]) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    format!("{{{}}}", pairs.join(","))
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let metrics = Metrics::new();
        metrics
            .fetch_errors
            .inc(&["latency-eu-0-24", "UNAVAILABLE"]);
        metrics
            .fetch_errors
            .add(&["latency-eu-0-24", "UNAVAILABLE"], 2);
        metrics.tickets_assigned.add(4);
        metrics.set_certificate_expiry("/etc/a \"b\"", Some(1_700_000_000));
        metrics.set_certificate_expiry("/etc/unreadable", None);
        (0..4).for_each(|_| metrics.queued());
        metrics.dequeued();
        let text = metrics.render();
        assert!(text.contains(
            "director_fetch_errors_total{profile=\"latency-eu-0-24\",code=\"UNAVAILABLE\"} 3\n"
        ));
        assert!(text.contains(
            "# TYPE director_tickets_assigned_total counter\ndirector_tickets_assigned_total 4\n"
        ));
        assert!(text.contains("director_queue_depth 3\n"));
        assert!(text.contains(
            "director_certificate_expiry_timestamp_seconds{file=\"/etc/a \\\"b\\\"\"} 1700000000\n"
        ));
        assert!(text.contains(
            "director_certificate_expiry_timestamp_seconds{file=\"/etc/unreadable\"} NaN\n"
        ));
        assert!(text.contains("director_build_info{version=\""));
    }

    /// The bucket values of `name` in a rendered exposition, `+Inf` last.
    fn buckets(text: &str, name: &str) -> Vec<u64> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}_bucket{{")))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_scrape_during_observations_sees_consistent_buckets() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let observer = {
            let metrics = std::sync::Arc::clone(&metrics);
            std::thread::spawn(move || {
                for _ in 0..200_000 {
                    metrics
                        .allocation_duration
                        .observe(Duration::from_micros(500));
                }
            })
        };
        while !observer.is_finished() {
            let text = metrics.render();
            let values = buckets(&text, "director_allocation_duration_seconds");
            assert!(
                values.windows(2).all(|pair| pair[0] <= pair[1]),
                "buckets not cumulative: {values:?}"
            );
        }
        observer.join().unwrap();
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new();
        metrics
            .allocation_duration
            .observe(Duration::from_millis(3));
        metrics.allocation_duration.observe(Duration::from_secs(2));
        let text = metrics.render();
        assert!(text.contains("director_allocation_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("director_allocation_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("director_allocation_duration_seconds_bucket{le=\"2.5\"} 2\n"));
        assert!(text.contains("director_allocation_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("director_allocation_duration_seconds_sum 2.003\n"));
        assert!(text.contains("director_allocation_duration_seconds_count 2\n"));
    }
}
