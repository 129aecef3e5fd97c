//! The world a Director runs in: the Open Match and allocator doubles, the PKI they share, and the
//! Director's environment pointing at them. The end-to-end tests and the simulator both start
//! from here.

use std::time::Duration;

use super::agones::{AgonesPki, BackfillServer, FakeAllocator};
use super::director::{Director, DirectorEnv};
use super::openmatch::{FakeOpenMatch, TicketStatus};
use super::wait::wait_until;
use crate::allocator::MATCH_ID_ANNOTATION;
use crate::pipeline::{Totals, ACCOUNTING_PREFIX};

/// The regions of the tests' Director.
pub const REGIONS: [&str; 2] = ["us-east-1", "us-east-2"];

/// How long a test waits for something the Director should do soon.
pub const WAIT: Duration = Duration::from_secs(20);

/// The tests' settings: two regions, two bands, short timings, four workers per region, an
/// operations port on a free port.
pub const TEST_SETTINGS: &[(&str, &str)] = &[
    ("OPENMATCH_MATCH_FUNCTION_ADDR", "mmf.test"),
    ("OPENMATCH_MATCH_FUNCTION_PORT", "50502"),
    ("AGONES_NAMESPACE", "game-servers"),
    ("AGONES_MULTICLUSTER", "true"),
    ("REGIONS", "us-east-1,us-east-2"),
    ("RANGES", "0-49,50-99"),
    ("INTERVAL", "100ms"),
    ("FETCH_TIMEOUT", "5s"),
    ("ALLOCATE_TIMEOUT", "2s"),
    ("ASSIGN_TIMEOUT", "2s"),
    ("ALLOCATE_RETRY_BUDGET", "3s"),
    ("ASSIGN_RETRY_BUDGET", "3s"),
    ("SHUTDOWN_TIMEOUT", "5s"),
    ("ALLOCATOR_THREADS", "4"),
    ("METRICS_ADDR", "127.0.0.1:0"),
    ("CERT_RELOAD_INTERVAL", "200ms"),
    ("RUST_LOG", "info,grpcio=warn"),
];

/// The doubles and the Director's environment, wired together.
pub struct World {
    /// The CAs and client identities of the allocator side.
    pub pki: AgonesPki,
    /// The Open Match double.
    pub om: FakeOpenMatch,
    /// The allocator double every region shares unless it has its own.
    pub allocator: FakeAllocator,
    /// The Director's environment.
    pub env: DirectorEnv,
}

impl World {
    /// A plaintext Open Match and an allocator whose certificate is valid for 127.0.0.1, with
    /// [`TEST_SETTINGS`].
    pub fn new() -> World {
        World::with(FakeOpenMatch::start(), &["127.0.0.1", "localhost"])
    }

    /// `om`, and an allocator whose server certificate is valid for `allocator_names`, with
    /// [`TEST_SETTINGS`].
    pub fn with(om: FakeOpenMatch, allocator_names: &[&str]) -> World {
        let mut world = World::bare(om, allocator_names);
        world.env.set_all(TEST_SETTINGS);
        world
    }

    /// `om` and an allocator as in [`World::with`], with only the variables that reach them.
    pub fn bare(om: FakeOpenMatch, allocator_names: &[&str]) -> World {
        let pki = AgonesPki::new();
        let allocator = FakeAllocator::start(pki.server_tls(allocator_names));
        let env = DirectorEnv::new(om.port, allocator.port, &pki);
        World {
            pki,
            om,
            allocator,
            env,
        }
    }

    /// Adds `count` players close to `region` (latency 10: the 0-49 band).
    pub fn players(&self, region: &str, count: usize) -> Vec<String> {
        self.om.add_players(&REGIONS, region, 10.0, count)
    }

    /// Whether every ticket in `ids` is assigned.
    pub fn all_assigned(&self, ids: &[String]) -> bool {
        let om = self.om.state();
        ids.iter()
            .all(|id| matches!(om.ticket(id).status, TicketStatus::Assigned { .. }))
    }

    /// Whether every ticket in `ids` was named in some ReleaseTickets call.
    pub fn all_released(&self, ids: &[String]) -> bool {
        let released = self.om.state().released_ids();
        ids.iter().all(|id| released.contains(id))
    }

    /// The id of the match that holds `ticket` (the last one, if it was matched again).
    pub fn match_of(&self, ticket: &str) -> String {
        let om = self.om.state();
        let mut ids: Vec<&String> = om
            .matches
            .iter()
            .filter(|(_, m)| m.ticket_ids.iter().any(|t| t == ticket))
            .map(|(id, _)| id)
            .collect();
        ids.sort_by_key(|id| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()));
        ids.last().expect("ticket was matched").to_string()
    }

    /// How many Allocate requests named `match_id`.
    pub fn allocations_for(&self, match_id: &str) -> usize {
        self.allocator
            .state()
            .requests
            .iter()
            .filter(|r| {
                r.get_metadata()
                    .get_annotations()
                    .get(MATCH_ID_ANNOTATION)
                    .map(String::as_str)
                    == Some(match_id)
            })
            .count()
    }

    /// The game servers of new backfills do what Agones game servers that read their backfill id
    /// do: while their session lasts they acknowledge their backfill with their connection (Open
    /// Match then assigns the tickets of its top-up matches); when it ends they delete it.
    pub fn acknowledge_backfills(&self) {
        let (ended, running) = self.allocator.state().backfill_sessions();
        acknowledge(&self.om, &ended, &running);
    }

    /// Waits until `count` tickets are assigned.
    pub fn wait_assigned(&self, count: usize) {
        wait_until(WAIT, &format!("{count} assigned tickets"), || {
            self.om.state().assigned() >= count
        });
    }
}

/// Acknowledges the backfills of `running` game servers with `om`, and deletes those of `ended`.
pub fn acknowledge(om: &FakeOpenMatch, ended: &[BackfillServer], running: &[BackfillServer]) {
    for server in ended {
        om.delete_backfill(&server.backfill_id);
    }
    for server in running {
        om.acknowledge_backfill(&server.backfill_id, &server.connection);
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

/// Reads the final accounting line and checks that assigned + released + abandoned = received.
pub fn final_accounting(director: &Director) -> Totals {
    let lines = director.lines_with(ACCOUNTING_PREFIX);
    assert_eq!(lines.len(), 1, "one accounting line expected");
    let accounting = Totals::from_accounting_line(&lines[0])
        .unwrap_or_else(|| panic!("not an accounting line: {}", lines[0]));
    assert!(accounting.adds_up(), "accounting adds up: {}", lines[0]);
    accounting
}

/// Sends SIGTERM and expects exit code 0 within 15 s.
pub fn stop(mut director: Director) -> Director {
    director.terminate();
    let status = director.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
    director
}
