//! The doubles and a Director's environment wired together, and helpers shared by the tests.

use std::time::Duration;

use crate::director::{wait_until, Director, DirectorEnv};
pub use agones_openmatch_director::allocator::MATCH_ID_ANNOTATION as MATCH_ID;
use agones_openmatch_director::doubles::agones::{AgonesPki, FakeAllocator};
use agones_openmatch_director::doubles::openmatch::{FakeOpenMatch, TicketStatus};
use agones_openmatch_director::pipeline::{Totals, ACCOUNTING_PREFIX};

pub const REGIONS: [&str; 2] = ["us-east-1", "us-east-2"];
pub const WAIT: Duration = Duration::from_secs(20);

/// The doubles and the Director's environment, wired together.
pub struct World {
    pub pki: AgonesPki,
    pub om: FakeOpenMatch,
    pub allocator: FakeAllocator,
    pub env: DirectorEnv,
}

impl World {
    /// A plaintext Open Match and an allocator whose certificate is valid for 127.0.0.1.
    pub fn new() -> World {
        World::with(FakeOpenMatch::start(), &["127.0.0.1", "localhost"])
    }

    /// `om`, and an allocator whose server certificate is valid for `allocator_names`.
    pub fn with(om: FakeOpenMatch, allocator_names: &[&str]) -> World {
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
                    .get(MATCH_ID)
                    .map(String::as_str)
                    == Some(match_id)
            })
            .count()
    }

    pub fn wait_assigned(&self, count: usize) {
        wait_until(WAIT, &format!("{count} assigned tickets"), || {
            self.om.state().assigned() >= count
        });
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
