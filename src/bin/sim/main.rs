//! `sim`: the Director's world on one machine, for `make demo`, `make bench` and `make soak`.
//!
//! It starts the same in-process gRPC doubles of the Open Match backend and the Agones allocator
//! that the end-to-end tests use (mTLS certificates generated on the spot), feeds players into
//! Open Match, and runs the real `director` binary against them. It is a separate binary: nothing
//! of it is linked into `director`.

mod bench;
mod bench_report;
mod demo;
mod failover_bench;
mod mapping_bench;
mod soak;
mod world;

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  sim demo [--duration SECS] [--arrival-rate PLAYERS_PER_SEC] [--fleet GAME_SERVERS_PER_REGION]
           [--session SECS] [--allocator-latency MS] [--error-rate 0..1] [--outage REGION]
           [--regions A,B] [--threads N] [--backfill 0..1] [--replicas 1|2]
           [--kill-leader-after SECS]
  sim bench [--quick | --only SCENARIO] [--director PATH]
  sim soak [--minutes MINUTES] [--arrival-rate PLAYERS_PER_SEC] [--director PATH] [--backfill 0..1]
           [--faults AllocatorUnavailable,AllocatorHang,AllocatorReset,OpenMatchRestart,CertificateRotation,SlowHttpClients]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::Options::parse(&args[1..]).map(demo::run),
        Some("bench") => bench::Options::parse(&args[1..]).map(bench::run),
        Some("soak") => soak::Options::parse(&args[1..]).map(soak::run),
        _ => Err("expected demo, bench or soak".to_string()),
    };
    match result {
        Ok(code) => code,
        Err(problem) => {
            eprintln!("sim: {problem}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Reads the value after a flag and parses it.
fn flag_value<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T, String> {
    value
        .ok_or_else(|| format!("{flag} needs a value"))?
        .parse()
        .map_err(|_| format!("{flag}: not a valid value"))
}

/// Seconds as a duration (fractions allowed).
fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}
