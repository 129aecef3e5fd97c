//! The bench's results: each figure of a row's runs as its median and range, printed as a Markdown
//! table and written to target/bench/results.json.

use std::fmt::Write as _;
use std::time::Duration;

/// A figure of several runs: the median and the range.
#[derive(Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// `None` when no run gave a finite value.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        Some(Spread {
            median: *values.get(values.len() / 2)?,
            min: *values.first()?,
            max: *values.last()?,
        })
    }
}

/// One row of the results.
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) setup: String,
    pub(crate) runs: Vec<Measured>,
    /// The rate the Director could reach if the allocator's latency were the only limit.
    pub(crate) ideal: Option<f64>,
    /// Whether the row shows the rate (and CPU per match): a backlog.
    pub(crate) throughput: bool,
    /// Whether the row shows waiting times (p50, p99 from stream to assignment).
    pub(crate) waits: bool,
}

/// What one run of the Director measured.
pub(crate) struct Measured {
    pub(crate) matches: usize,
    /// From the first assignment to the last.
    pub(crate) seconds: f64,
    pub(crate) cpu: Duration,
    /// The Director's CPU while idle before the load, per second.
    pub(crate) idle_cpu_per_second: Option<f64>,
    pub(crate) peak_rss_kib: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// The simulator's own CPU during the run, in cores.
    pub(crate) sim_cores: f64,
    /// TCP connections the allocator saw.
    pub(crate) allocator_connections: usize,
}

impl Measured {
    /// Assignments per second between the first and the last.
    pub(crate) fn rate(&self) -> f64 {
        self.matches.saturating_sub(1) as f64 / self.seconds
    }

    /// Director CPU per match, idle CPU of the same span taken off.
    pub(crate) fn cpu_us_per_match(&self) -> f64 {
        let idle = self.idle_cpu_per_second.unwrap_or(0.0) * self.seconds;
        (self.cpu.as_secs_f64() - idle).max(0.0) * 1e6 / self.matches as f64
    }
}

impl Row {
    pub(crate) fn spread(&self, figure: impl Fn(&Measured) -> f64) -> Option<Spread> {
        Spread::of(self.runs.iter().map(figure))
    }
}

/// `median (min–max)`, or `—`.
pub(crate) fn cell(spread: Option<Spread>, decimals: usize) -> String {
    match spread {
        None => "—".to_string(),
        Some(s) if s.min == s.max => format!("{:.decimals$}", s.median),
        Some(s) => format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            s.median, s.min, s.max
        ),
    }
}

/// The row's figures, in the order of the table's columns after the setup.
fn figures(row: &Row) -> [(&'static str, Option<Spread>, usize); 10] {
    let throughput = |spread: Option<Spread>| spread.filter(|_| row.throughput);
    let waits = |spread: Option<Spread>| spread.filter(|_| row.waits);
    [
        ("matches", row.spread(|m| m.matches as f64), 0),
        (
            "matches_per_second",
            throughput(row.spread(Measured::rate)),
            0,
        ),
        (
            "ideal_ratio",
            row.ideal.and_then(|ideal| row.spread(|m| m.rate() / ideal)),
            2,
        ),
        (
            "cpu_us_per_match",
            throughput(row.spread(Measured::cpu_us_per_match)),
            0,
        ),
        (
            "idle_cpu_percent",
            row.spread(|m| m.idle_cpu_per_second.map_or(f64::NAN, |c| c * 100.0)),
            2,
        ),
        (
            "peak_rss_mib",
            row.spread(|m| m.peak_rss_kib as f64 / 1024.0),
            1,
        ),
        (
            "allocator_connections",
            row.spread(|m| m.allocator_connections as f64),
            0,
        ),
        ("sim_cores", row.spread(|m| m.sim_cores), 2),
        (
            "p50_ms",
            waits(row.spread(|m| m.p50.as_secs_f64() * 1e3)),
            1,
        ),
        (
            "p99_ms",
            waits(row.spread(|m| m.p99.as_secs_f64() * 1e3)),
            1,
        ),
    ]
}

pub(crate) fn markdown(rows: &[Row], runs: usize) -> String {
    let mut out = format!(
        "Each figure: median of {runs} runs (min–max); sim cores = the simulator's own CPU.\n\n| scenario | setup | matches | matches/s | vs ideal | CPU µs/match | idle CPU % | peak RSS MiB | allocator connections | sim cores | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let cells: Vec<String> = figures(row)
            .into_iter()
            .map(|(_, spread, decimals)| cell(spread, decimals))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            row.scenario,
            row.setup,
            cells.join(" | ")
        );
    }
    out
}

pub(crate) fn json_spread(spread: Option<Spread>) -> String {
    spread.map_or_else(
        || "null".to_string(),
        |s| {
            format!(
                "{{\"median\": {:.3}, \"min\": {:.3}, \"max\": {:.3}}}",
                s.median, s.min, s.max
            )
        },
    )
}

pub(crate) fn write_json(rows: &[Row], scenarios: &[String]) -> std::io::Result<()> {
    let mut entries: Vec<String> = rows
        .iter()
        .map(|row| {
            let fields: Vec<String> = figures(row)
                .into_iter()
                .map(|(name, spread, _)| format!("\"{name}\": {}", json_spread(spread)))
                .collect();
            format!(
                "  {{\"scenario\": \"{}\", \"setup\": \"{}\", \"runs\": {}, {}}}",
                row.scenario,
                row.setup,
                row.runs.len(),
                fields.join(", ")
            )
        })
        .collect();
    entries.extend(scenarios.iter().map(|json| format!("  {json}")));
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/results.json",
        format!("[\n{}\n]\n", entries.join(",\n")),
    )
}
