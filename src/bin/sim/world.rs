//! The simulated world: the Open Match and Agones doubles (the same ones the end-to-end tests use),
//! certificates made on the spot, players, and the real `director` as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use agones_openmatch_director::doubles::agones::{AgonesPki, AgonesState, FakeAllocator, Fleet};
use agones_openmatch_director::doubles::certs::{SecretVolume, TempDir};
use agones_openmatch_director::doubles::openmatch::FakeOpenMatch;

/// What the world looks like and how the Director is run in it.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub regions: Vec<String>,
    pub ranges: String,
    pub fleet_per_region: usize,
    pub session: Duration,
    pub allocator_latency: Duration,
    pub error_rate: f64,
    /// A region whose allocator answers UNAVAILABLE to every call.
    pub outage: Option<String>,
    /// A region whose allocator answers no call (each runs to its deadline).
    pub hang: Option<String>,
    /// Whether every region has its own allocator (AGONES_ALLOCATOR_ENDPOINTS) instead of
    /// sharing one.
    pub allocator_per_region: bool,
    /// ALLOCATOR_THREADS; `None`: the Director's default.
    pub allocator_threads: Option<usize>,
    /// ALLOCATE_RATE_LIMIT; `None`: no limit.
    pub allocate_rate_limit: Option<f64>,
    pub interval: Duration,
    pub pending_release_timeout: Duration,
    /// Whether the Director serves its operations port (on a free port, see its log).
    pub operations_port: bool,
    /// GA_MAPPING_DIR, if any.
    pub mapping_dir: Option<std::path::PathBuf>,
    /// The `director` binary to run; `None`: the one next to this simulator.
    pub director: Option<std::path::PathBuf>,
    /// Extra environment of the Director process.
    pub director_env: Vec<(String, String)>,
}

/// The Director's SHUTDOWN_TIMEOUT in the simulation.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The Director's ASSIGN_TIMEOUT in the simulation.
pub const ASSIGN_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            regions: vec!["us-east-1".into(), "us-east-2".into()],
            ranges: "0-24,25-49,50-74,75-99,100-9999".into(),
            fleet_per_region: 50,
            session: Duration::from_secs(30),
            allocator_latency: Duration::ZERO,
            error_rate: 0.0,
            outage: None,
            hang: None,
            allocator_per_region: false,
            allocator_threads: None,
            allocate_rate_limit: None,
            interval: Duration::from_millis(250),
            pending_release_timeout: Duration::from_secs(60),
            operations_port: false,
            mapping_dir: None,
            director: None,
            director_env: Vec::new(),
        }
    }
}

/// The running doubles and the files the Director needs.
pub struct World {
    pub config: WorldConfig,
    pub om: FakeOpenMatch,
    /// The shared allocator (idle when every region has its own).
    pub allocator: FakeAllocator,
    /// Each region's own allocator, in the order of the regions, with `allocator_per_region`.
    pub regional: Vec<FakeAllocator>,
    dir: TempDir,
    pki: AgonesPki,
    client_certificate_versions: usize,
    random: u64,
}

impl World {
    pub fn start(config: WorldConfig) -> World {
        let pki = AgonesPki::new();
        let start_allocator = || {
            let allocator = FakeAllocator::start(pki.server_tls(&["127.0.0.1", "localhost"]));
            configure(&mut allocator.state(), &config);
            allocator
        };
        let allocator = start_allocator();
        let regional = if config.allocator_per_region {
            config.regions.iter().map(|_| start_allocator()).collect()
        } else {
            Vec::new()
        };
        let om = FakeOpenMatch::start();
        {
            let mut state = om.state();
            state.keep_requests = false;
            state.pending_release_timeout = Some(config.pending_release_timeout);
        }
        World {
            config,
            om,
            allocator,
            regional,
            dir: TempDir::new("sim"),
            pki,
            client_certificate_versions: 0,
            random: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Every allocator double: the shared one, then the regions' own.
    pub fn allocators(&self) -> impl Iterator<Item = &FakeAllocator> {
        std::iter::once(&self.allocator).chain(&self.regional)
    }

    /// Adds a player close to one region (5–45 ms) and farther from the others (60–200 ms).
    pub fn add_player(&mut self) -> String {
        let home = (self.next_random() % self.config.regions.len() as u64) as usize;
        let latency = 5.0 + (self.next_random() % 40) as f64;
        self.add_player_near(home, latency)
    }

    /// Adds a player with `latency` to region number `home` and 60–200 ms to the others.
    pub fn add_player_near(&mut self, home: usize, latency: f64) -> String {
        self.add_player_with(home, latency, |world| {
            60.0 + (world.next_random() % 140) as f64
        })
    }

    /// Adds a player with `latency` to region number `home` and no usable latency (100 s) to
    /// the others, so that only `home`'s profiles can match it.
    pub fn add_player_only_near(&mut self, home: usize, latency: f64) -> String {
        self.add_player_with(home, latency, |_| 100_000.0)
    }

    fn add_player_with(
        &mut self,
        home: usize,
        latency: f64,
        mut far: impl FnMut(&mut World) -> f64,
    ) -> String {
        let regions = self.config.regions.clone();
        let args: Vec<(String, f64)> = regions
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let value = if i == home { latency } else { far(self) };
                (format!("latency-{region}"), value)
            })
            .collect();
        let args: Vec<(&str, f64)> = args.iter().map(|(a, v)| (a.as_str(), *v)).collect();
        self.om.add_ticket(&args, &["mode.session"])
    }

    /// A pseudo-random number below `n` (n > 0).
    pub fn random_below(&mut self, n: u64) -> u64 {
        self.next_random() % n
    }

    fn next_random(&mut self) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }

    /// Publishes a new client certificate and key the way the kubelet updates a mounted Secret
    /// (the first call creates the volume).
    pub fn rotate_client_certificate(&mut self) {
        let volume_dir = self.dir.path().join("agones-tls");
        std::fs::create_dir_all(&volume_dir).expect("create the client certificate volume");
        let client = self.pki.client();
        let mut volume = SecretVolume {
            dir: &volume_dir,
            version: self.client_certificate_versions,
        };
        volume.publish(&[("tls.crt", &client.cert_pem), ("tls.key", &client.key_pem)]);
        self.client_certificate_versions = volume.version;
    }

    /// Starts the `director` binary that sits next to this one, pointed at the doubles.
    pub fn start_director(&mut self, rust_log: &str) -> DirectorProcess {
        let ca = self.dir.write("ca.crt", self.pki.server_ca.pem());
        self.rotate_client_certificate();
        let cert = self.dir.path().join("agones-tls/tls.crt");
        let key = self.dir.path().join("agones-tls/tls.key");
        let c = &self.config;
        let binary = c.director.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("director")
        });
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("OPENMATCH_BACKEND_ADDR", "127.0.0.1")
            .env("OPENMATCH_BACKEND_PORT", self.om.port.to_string())
            .env("OPENMATCH_MATCH_FUNCTION_ADDR", "mmf.sim")
            .env("AGONES_ALLOCATOR_ADDR", "127.0.0.1")
            .env("AGONES_ALLOCATOR_PORT", self.allocator.port.to_string())
            .env("AGONES_CA_CERT", &ca)
            .env("AGONES_CLIENT_CERT", &cert)
            .env("AGONES_CLIENT_KEY", &key)
            .env("REGIONS", c.regions.join(","))
            .env("RANGES", &c.ranges)
            .env("INTERVAL", format!("{}ms", c.interval.as_millis()))
            .env("ALLOCATE_TIMEOUT", "2s")
            .env("ALLOCATE_RETRY_BUDGET", "5s")
            .env(
                "SHUTDOWN_TIMEOUT",
                format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
            )
            .env("ASSIGN_TIMEOUT", format!("{}s", ASSIGN_TIMEOUT.as_secs()))
            .env(
                "METRICS_ADDR",
                if c.operations_port { "127.0.0.1:0" } else { "" },
            )
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !self.regional.is_empty() {
            let endpoints: Vec<String> = c
                .regions
                .iter()
                .zip(&self.regional)
                .map(|(region, allocator)| format!("{region}=127.0.0.1:{}", allocator.port))
                .collect();
            command.env("AGONES_ALLOCATOR_ENDPOINTS", endpoints.join(","));
        }
        command.envs(c.director_env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &c.mapping_dir {
            command.env("GA_MAPPING_DIR", dir);
        }
        if let Some(threads) = c.allocator_threads {
            command.env("ALLOCATOR_THREADS", threads.to_string());
        }
        if let Some(rate) = c.allocate_rate_limit {
            command.env("ALLOCATE_RATE_LIMIT", rate.to_string());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        DirectorProcess { child }
    }
}

/// Sets an allocator double up as `config` says: fleet, latency, faults.
fn configure(state: &mut AgonesState, config: &WorldConfig) {
    state.keep_requests = false;
    state.fleet = Some(Fleet::new(config.fleet_per_region, config.session));
    state.latency = config.allocator_latency;
    state.error_rate = config.error_rate;
    if let Some(region) = &config.outage {
        state
            .failing_regions
            .insert(region.clone(), grpcio::RpcStatusCode::UNAVAILABLE);
    }
    if let Some(region) = &config.hang {
        state
            .hanging_regions
            .insert(region.clone(), Duration::from_secs(3600));
    }
}

/// The `director` child process, with its resource use read from /proc.
pub struct DirectorProcess {
    child: Child,
}

impl DirectorProcess {
    /// Its log, one line at a time.
    pub fn log_lines(&mut self) -> impl Iterator<Item = String> {
        let stderr: ChildStderr = self.child.stderr.take().expect("stderr is piped");
        BufReader::new(stderr).lines().map_while(Result::ok)
    }

    /// CPU time used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id())
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc/PID/status.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_value("VmHWM:")
    }

    /// Resident memory now (VmRSS) in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        self.status_value("VmRSS:")
    }

    /// Anonymous resident memory now (RssAnon: heap and stacks, not the mapped binary) in KiB.
    pub fn anonymous_rss_kib(&self) -> u64 {
        self.status_value("RssAnon:")
    }

    /// The Director's threads now, from /proc/PID/status.
    pub fn threads(&self) -> u64 {
        self.status_value("Threads:")
    }

    fn status_value(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for DirectorProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            let _ = self.child.wait();
        }
    }
}

/// CPU time process `pid` used so far (user + system), from /proc/PID/stat (10 ms ticks).
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The `q`-quantile (0..=1) of `values`, which it sorts.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}
