//! `director`: wiring only. Load the configuration, start the pipeline, wait, report, exit.

use std::process::ExitCode;

use agones_openmatch_director::config::{Config, Origin};
use agones_openmatch_director::flags::{self, OriginalLayout};
use agones_openmatch_director::pipeline::Totals;
use agones_openmatch_director::process;
use agones_openmatch_director::profiles::{build_profiles, Profile};
use agones_openmatch_director::shutdown::Shutdown;

/// Log filter when RUST_LOG is unset: our events at INFO, gRPC core's own chatter only from WARN.
const DEFAULT_LOG_FILTER: &str = "info,grpcio=warn";

/// Exit code for a configuration the Director cannot run with.
const EXIT_BAD_CONFIG: u8 = 2;

const USAGE: &str = "usage: director [check] [ORIGINAL FLAGS] | --help | --version
Fetches matches from Open Match, allocates a game server for each from the Agones allocator,
and assigns it to the match's tickets. Configured by environment variables (see README.md), or by
the flags of the Go director it replaces (-backendAddr VALUE …, -multicluster; see README.md).
  check   validate the configuration, try the TLS handshake with the Agones allocator and a call
          to the Open Match backend, explain what is wrong; exit 0 when usable, 1 when not";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help" | "-h") if args.len() == 1 => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") if args.len() == 1 => {
            println!("director {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check") => check(&args[1..]),
        _ => run(&args),
    }
}

/// The configuration from the environment, or with the original's flags in `args` over it; or
/// the report of every problem (exit code 2). The second value is the line that says the
/// original's flags are in use, to log.
fn load_config(args: &[String]) -> Result<(Config, Option<String>), ExitCode> {
    let bad = |report: String| {
        eprintln!("director: {report}");
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    if args.is_empty() {
        return Config::from_env()
            .map(|config| (config, None))
            .map_err(|errors| bad(errors.to_string()));
    }
    let flags = flags::parse(args).map_err(bad)?;
    let workdir = std::env::current_dir().unwrap_or_default();
    let layout = OriginalLayout::of(&flags, &workdir);
    let env = |var: &str| std::env::var(var).ok();
    let lookup = |var: &str| layout.lookup(&flags, &env, var);
    Config::from_lookup_as(&lookup, Origin::OriginalFlags)
        .map(|config| (config, Some(layout.describe())))
        .map_err(|errors| bad(errors.to_string()))
}

fn check(args: &[String]) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let (config, _) = match load_config(args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let report = agones_openmatch_director::check::run(&config);
    print!("{}", report.text);
    if report.usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(args: &[String]) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER))
        .init();
    let (config, original_flags) = match load_config(args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    original_flags.iter().for_each(|line| log::info!("{line}"));
    config.warnings.iter().for_each(|w| log::warn!("{w}"));
    let profiles = build_profiles(&config.profiles);
    log_summary(&config, &profiles);
    log_election(&config);

    let shutdown = Shutdown::new(config.timing.shutdown_timeout);
    if let Err(error) = shutdown.install_signal_handler() {
        log::error!("Cannot install the SIGTERM/SIGINT handler: {error}");
        return ExitCode::FAILURE;
    }
    grpcio::redirect_log();
    match process::run(&config, profiles, &shutdown) {
        Ok(totals) => {
            log_totals(&totals);
            ExitCode::SUCCESS
        }
        Err(error) => {
            log::error!("Cannot start: {error}");
            ExitCode::FAILURE
        }
    }
}

fn log_summary(config: &Config, profiles: &[Profile]) {
    let om = &config.openmatch;
    let om_security = match &om.tls {
        None => "plaintext",
        Some(tls) if tls.identity.is_some() => "mTLS",
        Some(_) => "TLS",
    };
    let agones = &config.agones;
    let timing = &config.timing;
    log::info!(
        "Starting director {}: Open Match backend {} ({om_security}), match function {}; Agones namespace {:?}, selector label {:?}, policy label {:?}, port {:?}, backfill id annotation {:?}",
        env!("CARGO_PKG_VERSION"),
        om.backend,
        om.match_function,
        agones.namespace,
        agones.region_label,
        agones.policy_label.as_deref().unwrap_or("none"),
        agones.port_name,
        agones.backfill_annotation,
    );
    for (region, target) in &agones.targets {
        log::info!(
            "Allocator of region {region}: {} (mTLS, CA {}, server name {}), multicluster {}",
            target.endpoint,
            target.tls.ca.path.display(),
            target.tls_server_name.as_deref().unwrap_or("from address"),
            target.multicluster,
        );
    }
    log::info!(
        "{} profiles ({}); interval {:?}; timeouts fetch {:?} allocate {:?} assign {:?}; retry budgets allocate {:?} assign {:?}; shutdown timeout {:?}; queue timeout {:?}; match deadline {:?} (Open Match's pending-release timeout {:?}); per region {} allocator threads on {} connections, queue {}",
        profiles.len(),
        profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        timing.interval,
        timing.fetch_timeout,
        timing.allocate_timeout,
        timing.assign_timeout,
        timing.allocate_retry_budget,
        timing.assign_retry_budget,
        timing.shutdown_timeout,
        timing.queue_timeout,
        timing.match_deadline,
        timing.pending_release_timeout,
        config.allocator_threads,
        config.allocator_connections,
        config.queue_capacity,
    );
}

fn log_election(config: &Config) {
    match &config.leader_election {
        None => log::info!("No leader election (LEADER_ELECTION_LEASE unset): this replica fetches"),
        Some(election) => log::info!(
            "Leader election on Lease {}/{} as {:?} at https://{}: lease duration {:?}, renew deadline {:?}, retry period {:?}; a standby until it holds the Lease",
            election.namespace,
            election.lease,
            election.identity,
            election.api_server,
            election.lease_duration,
            election.renew_deadline,
            election.retry_period,
        ),
    }
}

fn log_totals(totals: &Totals) {
    log::info!("{}", totals.accounting_line());
}
