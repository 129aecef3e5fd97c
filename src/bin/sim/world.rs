//! The simulated world: the Open Match and Agones doubles (the same ones the end-to-end tests use),
//! certificates made on the spot, players, and the real `director` as a child process.

use std::time::Duration;

use agones_openmatch_director::doubles;
use agones_openmatch_director::doubles::agones::{AgonesState, FakeAllocator, Fleet};
use agones_openmatch_director::doubles::apiserver::{FakeApiServer, SERVICE_ACCOUNT_NAMESPACE};
use agones_openmatch_director::doubles::certs::SecretVolume;
use agones_openmatch_director::doubles::director::Director;
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
    /// The share of matches that top up a running game's backfill (and of the others that start
    /// a game with a new backfill); 0: no backfill.
    pub backfill_ratio: f64,
}

/// The Director's SHUTDOWN_TIMEOUT in the simulation.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The Director's ASSIGN_TIMEOUT in the simulation.
pub const ASSIGN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the Director may take to exit after SIGTERM: SHUTDOWN_TIMEOUT + ASSIGN_TIMEOUT + 1 s.
pub const EXIT_BOUND: Duration = SHUTDOWN_TIMEOUT
    .saturating_add(ASSIGN_TIMEOUT)
    .saturating_add(Duration::from_secs(1));

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
            backfill_ratio: 0.0,
        }
    }
}

/// The running doubles (the tests' [`doubles::world::World`]), each region's own allocator, and
/// the simulator's players.
pub struct World {
    pub config: WorldConfig,
    /// The doubles and the Director's environment.
    pub doubles: doubles::world::World,
    /// Each region's own allocator, in the order of the regions, with `allocator_per_region`.
    pub regional: Vec<FakeAllocator>,
    client_certificate_versions: usize,
    random: u64,
}

impl World {
    pub fn start(config: WorldConfig) -> World {
        let om = FakeOpenMatch::start();
        {
            let mut state = om.state();
            state.keep_requests = false;
            state.pending_release_timeout = Some(config.pending_release_timeout);
            state.backfill_ratio = config.backfill_ratio;
        }
        let doubles = doubles::world::World::bare(om, &["127.0.0.1", "localhost"]);
        configure(&mut doubles.allocator.state(), &config);
        let regional = if config.allocator_per_region {
            let start = || {
                let tls = doubles.pki.server_tls(&["127.0.0.1", "localhost"]);
                let allocator = FakeAllocator::start(tls);
                configure(&mut allocator.state(), &config);
                allocator
            };
            config.regions.iter().map(|_| start()).collect()
        } else {
            Vec::new()
        };
        World {
            config,
            doubles,
            regional,
            client_certificate_versions: 0,
            random: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Every allocator double: the shared one, then the regions' own.
    pub fn allocators(&self) -> impl Iterator<Item = &FakeAllocator> {
        std::iter::once(&self.doubles.allocator).chain(&self.regional)
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
        self.doubles.om.add_ticket(&args, &["mode.session"])
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
        let volume_dir = self.doubles.env.dir.path().join("agones-tls");
        std::fs::create_dir_all(&volume_dir).expect("create the client certificate volume");
        let client = self.doubles.pki.client();
        let mut volume = SecretVolume {
            dir: &volume_dir,
            version: self.client_certificate_versions,
        };
        volume.publish(&[("tls.crt", &client.cert_pem), ("tls.key", &client.key_pem)]);
        self.client_certificate_versions = volume.version;
    }

    /// Starts the `director` binary (the one next to this simulator, or `config.director`)
    /// pointed at the doubles, its log left in the pipe.
    pub fn start_director(&mut self, rust_log: &str) -> Director {
        self.rotate_client_certificate();
        let volume = self.doubles.env.dir.path().join("agones-tls");
        let c = &self.config;
        let env = &mut self.doubles.env;
        if let Some(binary) = &c.director {
            env.binary.clone_from(binary);
        }
        env.set("OPENMATCH_MATCH_FUNCTION_ADDR", "mmf.sim");
        env.set(
            "AGONES_CLIENT_CERT",
            volume.join("tls.crt").display().to_string(),
        );
        env.set(
            "AGONES_CLIENT_KEY",
            volume.join("tls.key").display().to_string(),
        );
        env.set("REGIONS", c.regions.join(","));
        env.set("RANGES", &c.ranges);
        env.set("INTERVAL", format!("{}ms", c.interval.as_millis()));
        env.set("ALLOCATE_TIMEOUT", "2s");
        env.set("ALLOCATE_RETRY_BUDGET", "5s");
        env.set(
            "SHUTDOWN_TIMEOUT",
            format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
        );
        env.set("ASSIGN_TIMEOUT", format!("{}s", ASSIGN_TIMEOUT.as_secs()));
        let operations = if c.operations_port { "127.0.0.1:0" } else { "" };
        env.set("METRICS_ADDR", operations);
        env.set("RUST_LOG", rust_log);
        if !self.regional.is_empty() {
            let endpoints: Vec<String> = c
                .regions
                .iter()
                .zip(&self.regional)
                .map(|(region, allocator)| format!("{region}=127.0.0.1:{}", allocator.port))
                .collect();
            env.set("AGONES_ALLOCATOR_ENDPOINTS", endpoints.join(","));
        }
        for (key, value) in &c.director_env {
            env.set(key, value.as_str());
        }
        if let Some(dir) = &c.mapping_dir {
            env.set("GA_MAPPING_DIR", dir.display().to_string());
        }
        if let Some(threads) = c.allocator_threads {
            env.set("ALLOCATOR_THREADS", threads.to_string());
        }
        if let Some(rate) = c.allocate_rate_limit {
            env.set("ALLOCATE_RATE_LIMIT", rate.to_string());
        }
        env.start_piped()
    }
}

/// The Lease that replicas elect their leader on (`sim demo --replicas 2`, bench scenario 9).
pub const LEASE: &str = "director";

/// The match function host that replica `name`'s FetchMatches name, so that the Open Match double
/// tells whose call it got.
pub fn replica_host(name: &str) -> String {
    format!("{name}.mmf.sim")
}

impl World {
    /// Makes the next [`World::start_director`] replica `name` (its POD_NAME), whose FetchMatches
    /// name the match function host [`replica_host`].
    pub fn as_replica(&mut self, name: &str) {
        self.config.director_env = vec![
            ("POD_NAME".into(), name.into()),
            ("OPENMATCH_MATCH_FUNCTION_ADDR".into(), replica_host(name)),
        ];
    }
}

/// The replica that holds [`LEASE`] in `api` now, if any.
pub fn lease_holder(api: &FakeApiServer) -> Option<String> {
    api.state()
        .holder(SERVICE_ACCOUNT_NAMESPACE, LEASE)
        .filter(|holder| !holder.is_empty())
}

/// How long one [`World::step`] of the simulation is.
pub const STEP: Duration = Duration::from_millis(50);

impl World {
    /// One step of the simulated world: waits [`STEP`], adds the players `arrivals` says are
    /// due, and lets the backfill game servers act.
    pub fn step(&mut self, arrivals: &mut Arrivals) {
        std::thread::sleep(STEP);
        for _ in 0..arrivals.due(STEP) {
            self.add_player();
        }
        self.acknowledge_backfills();
    }

    /// Every allocator's backfill game servers acknowledge their backfill (or delete it when
    /// their session has ended), as Agones game servers do.
    pub fn acknowledge_backfills(&self) {
        for allocator in self.allocators() {
            let (ended, running) = allocator.state().backfill_sessions();
            doubles::world::acknowledge(&self.doubles.om, &ended, &running);
        }
    }
}

/// Players arriving at a steady rate.
pub struct Arrivals {
    per_second: f64,
    owed: f64,
}

impl Arrivals {
    /// `per_second` players a second.
    pub fn new(per_second: f64) -> Arrivals {
        Arrivals {
            per_second,
            owed: 0.0,
        }
    }

    /// How many players arrive in the next `step`.
    fn due(&mut self, step: Duration) -> usize {
        self.owed += self.per_second * step.as_secs_f64();
        let due = self.owed.floor();
        self.owed -= due;
        due as usize
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

/// The `q`-quantile (0..=1) of `values`, which it sorts.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}
