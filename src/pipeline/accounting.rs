//! The accounting: what happened to the matches of a run, and the last log line that says so.
//! The end-to-end tests and the simulator read that line back ([`Totals::from_accounting_line`]).

use super::job::Outcome;
use crate::metrics::Metrics;

/// What happened to the matches of this run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Matches with tickets taken off FetchMatches streams.
    pub received: u64,
    /// Matches whose tickets were assigned.
    pub assigned: u64,
    /// Matches whose tickets were released.
    pub released: u64,
    /// Matches that top up a running game's backfill, left to its game server.
    pub backfill: u64,
    /// Matches left to Open Match's pending-release timeout.
    pub abandoned: u64,
    /// Matches without tickets, skipped.
    pub skipped_empty: u64,
    /// Tickets AssignTickets reported as not found.
    pub tickets_not_found: u64,
    /// Game servers allocated but left without players.
    pub orphaned_game_servers: u64,
}

impl Totals {
    /// The totals when the shutdown bound is reached with calls still running: the matches they
    /// hold are counted as abandoned (Open Match returns their tickets after its pending-release
    /// timeout), so that the accounting adds up.
    pub fn unfinished_abandoned(metrics: &Metrics) -> Totals {
        let mut totals = Totals::of(metrics);
        let finished = totals.assigned + totals.released + totals.backfill + totals.abandoned;
        let unfinished = totals.received.saturating_sub(finished);
        log::error!(
            "Shutdown bound reached with {unfinished} matches still in Open Match or allocator calls that did not end in time; counted as abandoned (their tickets return after Open Match's pending-release timeout; their ids are in the log lines above)"
        );
        totals.abandoned += unfinished;
        totals
    }

    /// The totals the metrics hold now.
    pub fn of(metrics: &Metrics) -> Totals {
        let finished = |outcome: Outcome| metrics.matches_finished.get(&[outcome.label()]);
        Totals {
            received: metrics.matches_fetched.sum(),
            assigned: finished(Outcome::Assigned),
            released: finished(Outcome::Released),
            backfill: finished(Outcome::Backfill),
            abandoned: finished(Outcome::Abandoned),
            skipped_empty: metrics.empty_matches.get(),
            tickets_not_found: metrics.assignment_failures.get(&["ticket_not_found"]),
            orphaned_game_servers: metrics.orphaned_game_servers.get(),
        }
    }

    /// Whether every match received ended in exactly one outcome.
    pub fn adds_up(&self) -> bool {
        self.received == self.assigned + self.released + self.backfill + self.abandoned
    }

    /// The Director's last log line: [`ACCOUNTING_PREFIX`] and every figure.
    pub fn accounting_line(&self) -> String {
        format!(
            "{ACCOUNTING_PREFIX} {} matches received: {} assigned, {} released, {} left to their backfill's game server, {} abandoned to Open Match's pending-release timeout; {} empty matches skipped, {} tickets not found, {} orphaned game servers",
            self.received,
            self.assigned,
            self.released,
            self.backfill,
            self.abandoned,
            self.skipped_empty,
            self.tickets_not_found,
            self.orphaned_game_servers,
        )
    }

    /// The totals of an [`accounting_line`](Self::accounting_line) found in `line` (a log line
    /// around it is fine); `None` when `line` holds none.
    pub fn from_accounting_line(line: &str) -> Option<Totals> {
        let (_, figures) = line.split_once(ACCOUNTING_PREFIX)?;
        let n: Vec<u64> = figures
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [received, assigned, released, backfill, abandoned, skipped_empty, tickets_not_found, orphaned_game_servers] =
            n[..]
        else {
            return None;
        };
        Some(Totals {
            received,
            assigned,
            released,
            backfill,
            abandoned,
            skipped_empty,
            tickets_not_found,
            orphaned_game_servers,
        })
    }
}

/// How the accounting line starts.
pub const ACCOUNTING_PREFIX: &str = "Director stopped:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounting_line_reads_back_as_the_same_totals() {
        let totals = Totals {
            received: 120,
            assigned: 100,
            released: 12,
            backfill: 3,
            abandoned: 5,
            skipped_empty: 2,
            tickets_not_found: 3,
            orphaned_game_servers: 4,
        };
        let logged = format!(
            "[2026-11-29T05:00:00Z INFO  director] {}",
            totals.accounting_line()
        );
        assert_eq!(Totals::from_accounting_line(&logged), Some(totals));
        assert!(totals.adds_up());
        let lost = Totals {
            abandoned: 4,
            ..totals
        };
        assert!(!lost.adds_up());
    }

    #[test]
    fn a_line_without_every_figure_is_not_an_accounting_line() {
        assert_eq!(Totals::from_accounting_line("Director started"), None);
        assert_eq!(
            Totals::from_accounting_line("Director stopped: 3 matches received: 3 assigned"),
            None
        );
    }
}
