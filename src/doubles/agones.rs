//! An in-process Agones allocator double that requires a client certificate (mTLS), hands out
//! game servers per region, follows a script of faults, and records every request.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::allocator::{MATCH_ID_ANNOTATION, MATCH_LABEL};
use crate::config::DEFAULT_BACKFILL_ID_ANNOTATION;
use crate::proto::allocation::{
    AllocationRequest, AllocationResponse, AllocationResponse_GameServerStatusAddress,
    AllocationResponse_GameServerStatusPort, GameServerSelector_GameServerState,
};
use crate::proto::allocation_grpc::{create_allocation_service, AllocationService};
use crate::sync::lock;
use crossbeam_channel::{RecvTimeoutError, Sender};
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

use super::certs::{Issued, TestCa, Usage};
use super::openmatch::reply;
use super::server::Served;
use super::tls::ServerTls;

/// How the double answers one Allocate call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Allocate a game server in the selected region: game server `n` of a region is
    /// `gs-<region>-<n>`, at port `7000 + n` of `127.0.0.1` (its status address and ExternalIP),
    /// InternalIP `10.0.0.1`, ExternalDNS `gs-<region>-<n>.example.com`.
    Allocate,
    /// Fail with this status code.
    Fail(RpcStatusCode),
    /// Answer (with an allocation) only after this long.
    Hang(Duration),
    /// Allocate, but answer without ports.
    NoPorts,
}

/// A game server the double allocated.
#[derive(Clone, Debug)]
pub struct Allocated {
    /// The GameServer's name.
    pub name: String,
    /// The region it was allocated in.
    pub region: String,
    /// `address:port` handed back.
    pub connection: String,
    /// The match id from the request's annotation.
    pub match_id: String,
    /// Its labels, as the request's metadata patched them.
    pub labels: HashMap<String, String>,
}

/// The game server of a new backfill, as an Agones game server that reads its backfill id from
/// its annotation would see itself.
#[derive(Clone, Debug)]
pub struct BackfillServer {
    /// The backfill id from the allocation's annotation.
    pub backfill_id: String,
    /// `address:port` handed back.
    pub connection: String,
    /// When it was allocated.
    pub allocated_at: Instant,
}

/// A fleet of game servers per region: each is Ready, or Allocated until its session ends.
#[derive(Debug)]
pub struct Fleet {
    /// Game servers in each region.
    pub per_region: usize,
    /// How long a session keeps a game server Allocated.
    pub session: Duration,
    regions: HashMap<String, RegionFleet>,
}

/// One region's game servers: Ready ones in the order they became Ready, and Allocated ones in
/// the order they were allocated (so also the order their sessions end). O(1) per allocation.
#[derive(Debug)]
struct RegionFleet {
    ready: VecDeque<usize>,
    allocated: VecDeque<(Instant, usize)>,
}

impl RegionFleet {
    /// Makes the game servers whose session ended Ready again.
    fn end_sessions(&mut self, session: Duration) {
        while let Some(&(since, index)) = self.allocated.front() {
            if since.elapsed() < session {
                break;
            }
            self.allocated.pop_front();
            self.ready.push_back(index);
        }
    }
}

impl Fleet {
    /// `per_region` Ready game servers in every region, each Allocated for `session`.
    pub fn new(per_region: usize, session: Duration) -> Fleet {
        Fleet {
            per_region,
            session,
            regions: HashMap::new(),
        }
    }

    /// Allocates a Ready game server of `region` (ended sessions make theirs Ready again).
    fn allocate(&mut self, region: &str) -> Option<usize> {
        let per_region = self.per_region;
        let fleet = self
            .regions
            .entry(region.to_string())
            .or_insert_with(|| RegionFleet {
                ready: (0..per_region).collect(),
                allocated: VecDeque::new(),
            });
        fleet.end_sessions(self.session);
        let index = fleet.ready.pop_front()?;
        fleet.allocated.push_back((Instant::now(), index));
        Some(index)
    }

    /// Allocated game servers in all regions.
    pub fn allocated(&mut self) -> usize {
        let session = self.session;
        self.regions
            .values_mut()
            .map(|fleet| {
                fleet.end_sessions(session);
                fleet.allocated.len()
            })
            .sum()
    }
}

/// Everything the double knows and saw.
#[derive(Default, Debug)]
pub struct AgonesState {
    /// Every Allocate request received, in order (when `keep_requests`).
    pub requests: Vec<AllocationRequest>,
    /// Allocate requests received.
    pub calls: usize,
    /// When each Allocate request arrived (when `keep_requests`).
    pub call_times: Vec<Instant>,
    /// The client addresses (`ipv4:127.0.0.1:PORT`) calls came from: one per TCP connection.
    pub peers: HashSet<String>,
    /// Every game server allocated.
    pub allocated: Vec<Allocated>,
    /// Replies for the next calls, in order; once empty, calls succeed.
    pub script: VecDeque<Reply>,
    /// Regions whose every call fails with the given code.
    pub failing_regions: HashMap<String, RpcStatusCode>,
    /// Regions whose every call answers only after the given time (a hung allocator).
    pub hanging_regions: HashMap<String, Duration>,
    /// A finite fleet (RESOURCE_EXHAUSTED when no game server is Ready); `None`: unlimited.
    pub fleet: Option<Fleet>,
    /// Time every answer takes.
    pub latency: Duration,
    /// Share of calls that fail with UNAVAILABLE.
    pub error_rate: f64,
    /// Whether to record every request (tests) or only count them (long simulations).
    pub keep_requests: bool,
    /// Whether every allocation returns the same game server, as a high-density server that
    /// hosts many matches does (an `ALLOCATED` selector finds it again and again).
    pub one_game_server: bool,
    /// The game servers allocated for a new backfill whose session has not ended (always kept).
    pub backfill_servers: Vec<BackfillServer>,
    /// Calls answered with a game server that was already Allocated (an `ALLOCATED` selector
    /// matched one of `allocated`).
    pub found_allocated: usize,
    random: u64,
}

impl AgonesState {
    /// The backfill game servers whose session has ended (removed from `backfill_servers`), and
    /// those still running.
    pub fn backfill_sessions(&mut self) -> (Vec<BackfillServer>, Vec<BackfillServer>) {
        let session = self.fleet.as_ref().map(|fleet| fleet.session);
        let (ended, running) = std::mem::take(&mut self.backfill_servers)
            .into_iter()
            .partition(|server| session.is_some_and(|s| server.allocated_at.elapsed() >= s));
        self.backfill_servers.clone_from(&running);
        (ended, running)
    }

    /// The last game server allocated for a match.
    pub fn connection_of(&self, match_id: &str) -> Option<&Allocated> {
        self.allocated.iter().rev().find(|a| a.match_id == match_id)
    }
}

/// A CA that signs the allocator's server certificate and a client CA that signs the Director's.
pub struct AgonesPki {
    /// Signs the allocator's server certificate (Agones' allocator-tls-ca).
    pub server_ca: TestCa,
    /// Signs the client certificates the allocator accepts (Agones' allocator-client-ca).
    pub client_ca: TestCa,
}

impl Default for AgonesPki {
    fn default() -> Self {
        AgonesPki::new()
    }
}

impl AgonesPki {
    /// Two new CAs.
    pub fn new() -> AgonesPki {
        AgonesPki {
            server_ca: TestCa::new("allocator-tls-ca"),
            client_ca: TestCa::new("allocator-client-ca"),
        }
    }

    /// Server material for `names`, trusting client certificates of our client CA.
    pub fn server_tls(&self, names: &[&str]) -> ServerTls {
        ServerTls {
            client_ca_pem: Some(self.client_ca.pem()),
            server: self.server_ca.issue(names, Usage::Server),
        }
    }

    /// A client certificate the allocator trusts.
    pub fn client(&self) -> Issued {
        self.client_ca.issue(&["director"], Usage::Client)
    }
}

/// The running double.
pub struct FakeAllocator {
    state: Arc<Mutex<AgonesState>>,
    tls: ServerTls,
    served: Served,
    /// The port it listens on.
    pub port: u16,
}

impl FakeAllocator {
    /// Starts on a free loopback port.
    pub fn start(tls: ServerTls) -> FakeAllocator {
        FakeAllocator::start_on(tls, 0)
    }

    /// Starts on `port` (0: any free port).
    pub fn start_on(tls: ServerTls, port: u16) -> FakeAllocator {
        let state = Arc::new(Mutex::new(AgonesState {
            keep_requests: true,
            random: 0x9E37_79B9_7F4A_7C15,
            ..AgonesState::default()
        }));
        let served = {
            let state = Arc::clone(&state);
            let service = move || {
                create_allocation_service(Allocator {
                    state: Arc::clone(&state),
                    delayed: delayer(),
                })
            };
            Served::start("allocator", service, tls.credentials(), port)
        };
        FakeAllocator {
            state,
            tls,
            port: served.port,
            served,
        }
    }

    /// Locks the state for reading or for setting faults.
    pub fn state(&self) -> MutexGuard<'_, AgonesState> {
        lock(&self.state)
    }

    /// Stops serving (the state is kept); calls fail with UNAVAILABLE until restarted.
    pub fn stop(&mut self) {
        self.served.stop();
    }

    /// Serves again on the same port with the same state, and new TLS material.
    pub fn restart_with(&mut self, tls: ServerTls) {
        self.tls = tls;
        self.restart();
    }

    /// Serves again on the same port, with the same state.
    pub fn restart(&mut self) {
        self.served.restart(self.tls.credentials());
    }
}

#[derive(Clone)]
struct Allocator {
    state: Arc<Mutex<AgonesState>>,
    delayed: Sender<Delayed>,
}

/// An answer to send at a given time.
struct Delayed {
    at: Instant,
    sequence: u64,
    send: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that the max-heap yields the earliest answer first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// One thread that sends delayed answers when they are due (a thread per answer would cost the
/// shared CPU more than the Director under test). It ends when the server is dropped.
fn delayer() -> Sender<Delayed> {
    let (sender, receiver) = crossbeam_channel::unbounded::<Delayed>();
    std::thread::spawn(move || {
        let mut due = BinaryHeap::new();
        loop {
            let next = match due.peek() {
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(first) => {
                    let first: &Delayed = first;
                    receiver.recv_timeout(first.at.saturating_duration_since(Instant::now()))
                }
            };
            match next {
                Ok(delayed) => due.push(delayed),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while due.peek().is_some_and(|d: &Delayed| d.at <= Instant::now()) {
                (due.pop().expect("peeked").send)();
            }
        }
    });
    sender
}

impl Allocator {
    /// Decides the reply and, for an allocation, allocates a game server.
    fn decide(&self, request: AllocationRequest) -> (Reply, Result<AllocationResponse, RpcStatus>) {
        let mut state = lock(&self.state);
        state.calls += 1;
        if state.keep_requests {
            state.call_times.push(Instant::now());
            state.requests.push(request.clone());
        }
        let region = request
            .get_gameServerSelectors()
            .first()
            .and_then(|s| {
                let mut labels = s.get_matchLabels().iter();
                labels
                    .find(|(key, _)| *key != MATCH_LABEL)
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        let mut reply = match (
            state.failing_regions.get(&region),
            state.hanging_regions.get(&region),
        ) {
            (Some(code), _) => Reply::Fail(*code),
            (None, Some(delay)) => Reply::Hang(*delay),
            (None, None) => state.script.pop_front().unwrap_or(Reply::Allocate),
        };
        if reply == Reply::Allocate && state.error_rate > 0.0 && state.chance() < state.error_rate {
            reply = Reply::Fail(RpcStatusCode::UNAVAILABLE);
        }
        if let Reply::Fail(code) = reply {
            return (reply, Err(RpcStatus::with_message(code, "injected".into())));
        }
        let finds_its_server = request.get_gameServerSelectors().first().is_some_and(|s| {
            s.get_gameServerState() == GameServerSelector_GameServerState::ALLOCATED
                && s.get_matchLabels().contains_key(MATCH_LABEL)
        });
        if finds_its_server {
            return match state.find_allocated(&request) {
                Some(found) => {
                    state.found_allocated += 1;
                    (reply, Ok(found))
                }
                None => {
                    let status = RpcStatus::with_message(
                        RpcStatusCode::RESOURCE_EXHAUSTED,
                        "there is no available GameServer to allocate".into(),
                    );
                    (Reply::Fail(RpcStatusCode::RESOURCE_EXHAUSTED), Err(status))
                }
            };
        }
        let one_game_server = state.one_game_server;
        let number = match &mut state.fleet {
            None if one_game_server => 1,
            None => state.allocated.len() + 1,
            Some(fleet) => match fleet.allocate(&region) {
                Some(index) => index + 1,
                None => {
                    let status = RpcStatus::with_message(
                        RpcStatusCode::RESOURCE_EXHAUSTED,
                        "there is no available GameServer to allocate".into(),
                    );
                    return (Reply::Fail(RpcStatusCode::RESOURCE_EXHAUSTED), Err(status));
                }
            },
        };
        if reply == Reply::Allocate && !state.latency.is_zero() {
            reply = Reply::Hang(state.latency);
        }
        let response = game_server_response(&region, number, reply != Reply::NoPorts);
        let connection = format!("127.0.0.1:{}", 7000 + number);
        let match_id = request
            .get_metadata()
            .get_annotations()
            .get(MATCH_ID_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let annotations = request.get_metadata().get_annotations();
        if let Some(backfill_id) = annotations.get(DEFAULT_BACKFILL_ID_ANNOTATION) {
            state.backfill_servers.push(BackfillServer {
                backfill_id: backfill_id.clone(),
                connection: connection.clone(),
                allocated_at: Instant::now(),
            });
        }
        if state.keep_requests {
            state.allocated.push(Allocated {
                name: response.get_gameServerName().to_string(),
                region,
                connection,
                match_id,
                labels: request.get_metadata().get_labels().clone(),
            });
        }
        (reply, Ok(response))
    }
}

/// The answer for game server `number` of `region` (with its `default` port when `ports`).
fn game_server_response(region: &str, number: usize, ports: bool) -> AllocationResponse {
    let name = format!("gs-{region}-{number}");
    let mut response = AllocationResponse::new();
    response.set_gameServerName(name.clone());
    response.set_address("127.0.0.1".into());
    for (kind, address) in [
        ("Hostname", "node-1".to_string()),
        ("InternalIP", "10.0.0.1".to_string()),
        ("ExternalIP", "127.0.0.1".to_string()),
        ("ExternalDNS", format!("{name}.example.com")),
    ] {
        let mut entry = AllocationResponse_GameServerStatusAddress::new();
        entry.set_field_type(kind.into());
        entry.set_address(address);
        response.mut_addresses().push(entry);
    }
    response.set_nodeName("node-1".into());
    response.set_source("local".into());
    if ports {
        let mut port = AllocationResponse_GameServerStatusPort::new();
        port.set_name("default".into());
        port.set_port(7000 + number as i32);
        response.mut_ports().push(port);
    }
    response
}

impl AgonesState {
    /// The Allocated game server that `request`'s first selector names: its region (the region
    /// label's value) and its [`MATCH_LABEL`], answered as when it was allocated.
    fn find_allocated(&self, request: &AllocationRequest) -> Option<AllocationResponse> {
        let wanted = request.get_gameServerSelectors()[0].get_matchLabels();
        let found = self.allocated.iter().rev().find(|a| {
            wanted.iter().all(|(key, value)| match key.as_str() {
                MATCH_LABEL => a.labels.get(key) == Some(value),
                _ => a.region == *value,
            })
        })?;
        let number = found.connection.rsplit(':').next()?.parse::<usize>().ok()? - 7000;
        Some(game_server_response(&found.region, number, true))
    }

    /// A pseudo-random number in [0, 1) (xorshift; good enough to inject faults).
    fn chance(&mut self) -> f64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl AllocationService for Allocator {
    fn allocate(
        &mut self,
        ctx: RpcContext,
        request: AllocationRequest,
        sink: UnarySink<AllocationResponse>,
    ) {
        lock(&self.state).peers.insert(ctx.peer());
        match self.decide(request) {
            (Reply::Hang(delay), result) => {
                let send = move || {
                    let send = match result {
                        Ok(response) => sink.success(response),
                        Err(status) => sink.fail(status),
                    };
                    let _ = futures_executor::block_on(send);
                };
                let sequence = lock(&self.state).calls as u64;
                let _ = self.delayed.send(Delayed {
                    at: Instant::now() + delay,
                    sequence,
                    send: Box::new(send),
                });
            }
            (_, result) => reply(ctx, sink, result),
        }
    }
}
