//! The Agones allocator client: builds AllocationRequests and turns responses into connections.

use std::sync::Arc;
use std::time::Duration;

use grpcio::{CallOption, Channel, Environment, RpcStatusCode};

use crate::config::{host_port, AddressSource, AgonesConfig, AllocatorTarget};
use crate::names::label_value;
use crate::proto::allocation::{
    AllocationRequest, AllocationResponse, GameServerSelector, GameServerSelector_GameServerState,
    LabelSelector, MultiClusterSetting,
};
use crate::proto::allocation_grpc::AllocationServiceClient;
use crate::rpc::{channel_builder, RpcError};
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsMaterial};

/// Annotation on every allocated GameServer naming the match it was allocated for.
pub const MATCH_ID_ANNOTATION: &str = "director.agones-openmatch/match-id";
/// Label on every allocated GameServer naming the profile (sanitized) that produced the match.
pub const PROFILE_LABEL: &str = "director.agones-openmatch/profile";
/// Label on every allocated GameServer holding [`match_label_value`] of its match: a retry finds
/// by it the game server that an attempt whose answer was lost allocated.
pub const MATCH_LABEL: &str = "director.agones-openmatch/match";

/// `match_id` as a label value that identifies it: the first 160 bits of its SHA-256, in hex.
pub fn match_label_value(match_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, match_id.as_bytes());
    digest.as_ref()[..20]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether a failed Allocate may still have allocated a game server: the call reached the
/// allocator and only its answer was lost (our deadline passed, the call was cancelled, or it
/// broke inside the server). A refused connection or TLS failure (UNAVAILABLE) and Agones'
/// definite answers (RESOURCE_EXHAUSTED, ABORTED, validation errors) allocated nothing.
pub fn may_have_allocated(code: RpcStatusCode) -> bool {
    matches!(
        code,
        RpcStatusCode::DEADLINE_EXCEEDED | RpcStatusCode::CANCELLED | RpcStatusCode::INTERNAL
    )
}

/// Opens a long-lived mTLS channel to a region's allocator with `tls` (the target's material, or
/// newer material after a certificate change). A local subchannel pool gives each channel its own
/// TCP connection, spread over the allocator replicas.
pub fn connect(env: Arc<Environment>, target: &AllocatorTarget, tls: &TlsMaterial) -> Channel {
    let mut builder = channel_builder(env)
        .use_local_subchannel_pool(true)
        .set_credentials(tls::channel_credentials(tls));
    if let Some(name) = &target.tls_server_name {
        builder = builder.override_ssl_target(name.clone());
    }
    builder.connect(&target.endpoint.target())
}

/// Whether a failed Allocate is worth another attempt: the allocator is unreachable, overloaded,
/// lost a race, or has no Ready game server yet.
pub fn is_retryable(code: RpcStatusCode) -> bool {
    matches!(
        code,
        RpcStatusCode::UNAVAILABLE
            | RpcStatusCode::ABORTED
            | RpcStatusCode::DEADLINE_EXCEEDED
            | RpcStatusCode::UNKNOWN
            | RpcStatusCode::RESOURCE_EXHAUSTED
    )
}

/// A client of `allocation.AllocationService`.
pub struct AllocatorClient {
    client: AllocationServiceClient,
}

impl AllocatorClient {
    /// A client on `channel`.
    pub fn new(channel: Channel) -> AllocatorClient {
        AllocatorClient {
            client: AllocationServiceClient::new(channel),
        }
    }

    /// One Allocate call with a deadline; a forced shutdown cancels it (CANCELLED).
    pub fn allocate(
        &self,
        request: &AllocationRequest,
        timeout: Duration,
        shutdown: &Shutdown,
    ) -> Result<AllocationResponse, RpcError> {
        let mut call = self
            .client
            .allocate_async_opt(request, CallOption::default().timeout(timeout))?;
        match shutdown.block_on_unless_forced(&mut call) {
            Some(result) => Ok(result?),
            None => {
                call.cancel();
                Err(RpcError::new(
                    RpcStatusCode::CANCELLED,
                    "cancelled by shutdown; a game server may still have been allocated",
                ))
            }
        }
    }
}

/// The match a game server is allocated for.
#[derive(Clone, Copy, Debug)]
pub struct ForMatch<'a> {
    /// The region of the profile that produced it.
    pub region: &'a str,
    /// That profile's name.
    pub profile: &'a str,
    /// Open Match's match id.
    pub match_id: &'a str,
    /// The id of the new backfill the game server is to acknowledge, if the match has one.
    pub backfill_id: Option<&'a str>,
}

/// The request for one match: ALLOCATION_REQUEST_FILE's request if there is one, with the
/// region's label added to every selector (to one selector when it has none); the namespace and
/// multi-cluster setting (with the region's policy label, if configured) unless the file sets
/// them; metadata that lets a game server allocated by a lost response be traced back to its
/// match; and a new backfill's id, under BACKFILL_ID_ANNOTATION, for its game server to read.
pub fn allocation_request(config: &AgonesConfig, game: ForMatch) -> AllocationRequest {
    let ForMatch {
        region,
        profile,
        match_id,
        backfill_id,
    } = game;
    let mut request = config.request_template.clone().unwrap_or_default();
    if request.get_gameServerSelectors().is_empty() {
        request
            .mut_gameServerSelectors()
            .push(GameServerSelector::new());
    }
    for selector in request.mut_gameServerSelectors().iter_mut() {
        selector
            .mut_matchLabels()
            .insert(config.region_label.clone(), region.to_string());
    }
    if request.get_namespace().is_empty() {
        request.set_namespace(config.namespace.clone());
    }
    if !request.has_multiClusterSetting() {
        request.set_multiClusterSetting(multicluster_setting(config, region));
    }
    let metadata = request.mut_metadata();
    metadata
        .mut_annotations()
        .insert(MATCH_ID_ANNOTATION.to_string(), match_id.to_string());
    metadata
        .mut_labels()
        .insert(PROFILE_LABEL.to_string(), label_value(profile));
    metadata
        .mut_labels()
        .insert(MATCH_LABEL.to_string(), match_label_value(match_id));
    if let Some(backfill_id) = backfill_id {
        metadata
            .mut_annotations()
            .insert(config.backfill_annotation.clone(), backfill_id.to_string());
    }
    request
}

/// The request that finds the game server an earlier attempt of the same match allocated when
/// that attempt's answer was lost: `request` with one selector, an Allocated game server of
/// `region` with the match's [`MATCH_LABEL`], and without counter, list or priority actions (the
/// lost attempt applied them; a second room must not be used up). Agones answers
/// RESOURCE_EXHAUSTED when there is no such server.
pub fn recovery_request(
    request: &AllocationRequest,
    config: &AgonesConfig,
    region: &str,
) -> AllocationRequest {
    let mut recovery = request.clone();
    let mut selector = GameServerSelector::new();
    selector.set_gameServerState(GameServerSelector_GameServerState::ALLOCATED);
    let labels = selector.mut_matchLabels();
    labels.insert(config.region_label.clone(), region.to_string());
    if let Some(value) = request.get_metadata().get_labels().get(MATCH_LABEL) {
        labels.insert(MATCH_LABEL.to_string(), value.clone());
    }
    recovery.set_gameServerSelectors(vec![selector].into());
    recovery.clear_counters();
    recovery.clear_lists();
    recovery.clear_priorities();
    recovery
}

/// Multi-cluster allocation as `region`'s allocator is configured, with only the region's
/// policies (AGONES_POLICY_LABEL) when it is on.
fn multicluster_setting(config: &AgonesConfig, region: &str) -> MultiClusterSetting {
    let mut multicluster = MultiClusterSetting::new();
    multicluster.set_enabled(config.target(region).multicluster);
    if let (true, Some(label)) = (multicluster.get_enabled(), &config.policy_label) {
        let mut policies = LabelSelector::new();
        policies
            .mut_matchLabels()
            .insert(label.clone(), region.to_string());
        multicluster.set_policySelector(policies);
    }
    multicluster
}

/// An allocated game server the players can connect to.
#[derive(Debug, PartialEq, Eq)]
pub struct GameServer {
    /// The GameServer's name.
    pub name: String,
    /// The address chosen by GAMESERVER_ADDRESS.
    pub address: String,
    /// The port named GAMESERVER_PORT_NAME.
    pub port: u16,
    /// `address:port` for the Assignment (after a Global Accelerator translation, the
    /// accelerator's).
    pub connection: String,
}

/// A game server was allocated but cannot be used: it stays allocated and needs attention.
#[derive(Debug, PartialEq, Eq)]
pub struct UnusableGameServer {
    /// The GameServer's name.
    pub name: String,
    /// What the response lacked.
    pub reason: String,
}

/// The connection string for the address `source` picks and the port named `port_name`.
pub fn game_server(
    response: &AllocationResponse,
    port_name: &str,
    source: &AddressSource,
) -> Result<GameServer, UnusableGameServer> {
    let name = response.get_gameServerName().to_string();
    let unusable = |reason: String| UnusableGameServer {
        name: name.clone(),
        reason,
    };
    let address = match source {
        AddressSource::Status => response.get_address(),
        AddressSource::Type(wanted) => response
            .get_addresses()
            .iter()
            .find(|a| a.get_field_type() == wanted)
            .map(|a| a.get_address())
            .ok_or_else(|| {
                let types: Vec<&str> = response
                    .get_addresses()
                    .iter()
                    .map(|a| a.get_field_type())
                    .collect();
                unusable(format!(
                    "no address of type {wanted} (GAMESERVER_ADDRESS); types: {types:?}"
                ))
            })?,
    };
    if address.is_empty() {
        return Err(unusable("the allocation response has no address".into()));
    }
    let port = response
        .get_ports()
        .iter()
        .find(|p| p.get_name() == port_name)
        .ok_or_else(|| {
            let names: Vec<&str> = response.get_ports().iter().map(|p| p.get_name()).collect();
            unusable(format!("no port named {port_name:?} (ports: {names:?})"))
        })?
        .get_port();
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| unusable(format!("port {port_name:?} is {port}, not a TCP port")))?;
    Ok(GameServer {
        name,
        address: address.to_string(),
        port,
        connection: host_port(address, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::allocation::AllocationResponse_GameServerStatusPort as Port;
    use crate::rpc::AGONES_VALIDATION_ERROR;
    use crate::tls::PemFile;

    fn target(endpoint: &str, multicluster: bool) -> AllocatorTarget {
        AllocatorTarget {
            endpoint: crate::config::parse_host_port(endpoint).unwrap(),
            tls: TlsMaterial {
                ca: PemFile {
                    path: "ca.crt".into(),
                    pem: Vec::new(),
                },
                identity: None,
            },
            tls_server_name: None,
            multicluster,
            tls_dir: None,
        }
    }

    /// eu-west on the shared allocator with multi-cluster on; eu-north on its own allocator.
    fn agones_config() -> AgonesConfig {
        AgonesConfig {
            targets: [
                ("eu-west".to_string(), target("allocator:443", true)),
                (
                    "eu-north".to_string(),
                    target("allocator.eu-north:443", false),
                ),
            ]
            .into(),
            namespace: "games".into(),
            region_label: "topology/region".into(),
            policy_label: None,
            port_name: "default".into(),
            request_template: None,
            address: AddressSource::Status,
            backfill_annotation: "open-match.dev/backfill-id".into(),
        }
    }

    /// A match of `profile` in `region`, without a backfill.
    fn game<'a>(region: &'a str, profile: &'a str, match_id: &'a str) -> ForMatch<'a> {
        ForMatch {
            region,
            profile,
            match_id,
            backfill_id: None,
        }
    }

    #[test]
    fn every_game_server_is_labelled_with_a_digest_of_its_match() {
        let request = allocation_request(&agones_config(), game("eu-west", "p", "m-1"));
        let value = &request.get_metadata().get_labels()[MATCH_LABEL];
        assert_eq!(value, &match_label_value("m-1"));
        assert_eq!(value.len(), 40);
        assert!(crate::names::is_label_value(value));
        assert_ne!(match_label_value("m-1"), match_label_value("m-2"));
    }

    #[test]
    fn the_recovery_request_asks_only_for_the_allocated_server_of_the_match() {
        let template = crate::request_template::parse(
            r#"{"gameServerSelectors": [
                    {"gameServerState": "ALLOCATED", "counters": {"rooms": {"minAvailable": 1}}},
                    {"gameServerState": "READY"}
                ],
                "priorities": [{"type": "Counter", "key": "rooms", "order": "Ascending"}],
                "counters": {"rooms": {"action": "Increment", "amount": 1}}}"#,
        )
        .unwrap();
        let config = AgonesConfig {
            request_template: Some(template),
            ..agones_config()
        };
        let request = allocation_request(&config, game("eu-west", "p", "m-1"));
        let recovery = recovery_request(&request, &config, "eu-west");
        let selectors = recovery.get_gameServerSelectors();
        assert_eq!(selectors.len(), 1);
        assert_eq!(
            selectors[0].get_gameServerState(),
            GameServerSelector_GameServerState::ALLOCATED
        );
        let labels = selectors[0].get_matchLabels();
        assert_eq!(labels[MATCH_LABEL], match_label_value("m-1"));
        assert_eq!(labels["topology/region"], "eu-west");
        assert!(selectors[0].get_counters().is_empty());
        assert!(recovery.get_counters().is_empty() && recovery.get_priorities().is_empty());
        assert_eq!(recovery.get_metadata(), request.get_metadata());
        assert_eq!(recovery.get_namespace(), request.get_namespace());
    }

    #[test]
    fn a_new_backfill_hands_its_id_to_the_game_server() {
        let config = AgonesConfig {
            backfill_annotation: "example.com/backfill".into(),
            ..agones_config()
        };
        let game = ForMatch {
            backfill_id: Some("backfill-7"),
            ..game("eu-west", "p", "m-1")
        };
        let request = allocation_request(&config, game);
        let annotations = request.get_metadata().get_annotations();
        assert_eq!(annotations["example.com/backfill"], "backfill-7");
        assert_eq!(annotations[MATCH_ID_ANNOTATION], "m-1");
    }

    fn response(address: &str, ports: &[(&str, i32)]) -> AllocationResponse {
        let mut response = AllocationResponse::new();
        response.set_gameServerName("gs-1".into());
        response.set_address(address.into());
        for (name, number) in ports {
            let mut port = Port::new();
            port.set_name(name.to_string());
            port.set_port(*number);
            response.mut_ports().push(port);
        }
        response
    }

    #[test]
    fn request_selects_region_and_tags_match() {
        let request = allocation_request(
            &agones_config(),
            game("eu-west", "latency-eu-west-0-24", "m-1"),
        );
        assert_eq!(request.get_namespace(), "games");
        assert!(request.get_multiClusterSetting().get_enabled());
        let selectors = request.get_gameServerSelectors();
        assert_eq!(selectors.len(), 1);
        assert_eq!(selectors[0].get_matchLabels()["topology/region"], "eu-west");
        let metadata = request.get_metadata();
        assert_eq!(metadata.get_annotations()[MATCH_ID_ANNOTATION], "m-1");
        assert_eq!(metadata.get_labels()[PROFILE_LABEL], "latency-eu-west-0-24");
        assert!(!request.get_multiClusterSetting().has_policySelector());
    }

    #[test]
    fn the_request_file_is_merged_with_the_region_and_the_match() {
        let template = crate::request_template::parse(
            r#"{"gameServerSelectors": [
                    {"gameServerState": "ALLOCATED", "counters": {"rooms": {"minAvailable": 1}}},
                    {"matchLabels": {"agones.dev/fleet": "arena"}}
                ],
                "metadata": {"labels": {"tier": "gold"}}}"#,
        )
        .unwrap();
        let config = AgonesConfig {
            request_template: Some(template.clone()),
            ..agones_config()
        };
        let request = allocation_request(&config, game("eu-west", "p", "m-1"));
        for selector in request.get_gameServerSelectors() {
            assert_eq!(selector.get_matchLabels()["topology/region"], "eu-west");
        }
        let fleet = &request.get_gameServerSelectors()[1];
        assert_eq!(fleet.get_matchLabels()["agones.dev/fleet"], "arena");
        assert_eq!(
            request.get_gameServerSelectors()[0].get_counters(),
            template.get_gameServerSelectors()[0].get_counters()
        );
        assert_eq!(request.get_namespace(), "games");
        assert!(request.get_multiClusterSetting().get_enabled());
        let metadata = request.get_metadata();
        assert_eq!(metadata.get_labels()["tier"], "gold");
        assert_eq!(metadata.get_labels()[PROFILE_LABEL], "p");
        assert_eq!(metadata.get_annotations()[MATCH_ID_ANNOTATION], "m-1");
    }

    #[test]
    fn namespace_and_multicluster_of_the_request_file_win() {
        let template = crate::request_template::parse(
            r#"{"namespace": "arena", "multiClusterSetting": {"enabled": false}}"#,
        )
        .unwrap();
        let config = AgonesConfig {
            request_template: Some(template),
            policy_label: Some("region".into()),
            ..agones_config()
        };
        let request = allocation_request(&config, game("eu-west", "p", "m-1"));
        assert_eq!(request.get_namespace(), "arena");
        assert!(!request.get_multiClusterSetting().get_enabled());
        assert!(!request.get_multiClusterSetting().has_policySelector());
        assert_eq!(request.get_gameServerSelectors().len(), 1);
    }

    #[test]
    fn policy_label_selects_the_regions_policies_with_multicluster_only() {
        let config = AgonesConfig {
            policy_label: Some("region".into()),
            ..agones_config()
        };
        let shared = allocation_request(&config, game("eu-west", "p", "m-1"));
        let setting = shared.get_multiClusterSetting();
        assert!(setting.get_enabled());
        assert_eq!(
            setting.get_policySelector().get_matchLabels()["region"],
            "eu-west"
        );
        let own = allocation_request(&config, game("eu-north", "p", "m-2"));
        assert!(!own.get_multiClusterSetting().get_enabled());
        assert!(!own.get_multiClusterSetting().has_policySelector());
    }

    const STATUS: &AddressSource = &AddressSource::Status;

    #[test]
    fn connection_uses_named_port() {
        let server = game_server(
            &response("1.2.3.4", &[("metrics", 9000), ("default", 7777)]),
            "default",
            STATUS,
        );
        assert_eq!(
            server,
            Ok(GameServer {
                name: "gs-1".into(),
                address: "1.2.3.4".into(),
                port: 7777,
                connection: "1.2.3.4:7777".into()
            })
        );
        let v6 = game_server(
            &response("fd00::1", &[("default", 7777)]),
            "default",
            STATUS,
        );
        assert_eq!(v6.unwrap().connection, "[fd00::1]:7777");
    }

    #[test]
    fn the_address_of_the_asked_type_is_used() {
        let mut with_addresses = response("203.0.113.9", &[("default", 7777)]);
        for (kind, address) in [
            ("Hostname", "node-1"),
            ("InternalIP", "10.0.1.23"),
            ("ExternalDNS", "node-1.example.com"),
            ("InternalIP", "10.0.9.9"),
        ] {
            let mut entry =
                crate::proto::allocation::AllocationResponse_GameServerStatusAddress::new();
            entry.set_field_type(kind.into());
            entry.set_address(address.into());
            with_addresses.mut_addresses().push(entry);
        }
        let pick = |kind: &str| {
            game_server(
                &with_addresses,
                "default",
                &AddressSource::Type(kind.into()),
            )
            .map(|s| s.connection)
            .map_err(|unusable| unusable.reason)
        };
        assert_eq!(pick("InternalIP"), Ok("10.0.1.23:7777".to_string()));
        assert_eq!(
            pick("ExternalDNS"),
            Ok("node-1.example.com:7777".to_string())
        );
        let missing = pick("ExternalIP").unwrap_err();
        assert!(
            missing.contains("no address of type ExternalIP"),
            "{missing}"
        );
    }

    #[test]
    fn missing_port_or_address_is_unusable() {
        let no_port = game_server(&response("1.2.3.4", &[]), "default", STATUS).unwrap_err();
        assert_eq!(no_port.name, "gs-1");
        assert!(no_port.reason.contains("no port named \"default\""));
        let no_address =
            game_server(&response("", &[("default", 7777)]), "default", STATUS).unwrap_err();
        assert!(no_address.reason.contains("no address"));
    }

    #[test]
    fn retryable_codes() {
        for code in [
            RpcStatusCode::UNAVAILABLE,
            RpcStatusCode::ABORTED,
            RpcStatusCode::DEADLINE_EXCEEDED,
            RpcStatusCode::UNKNOWN,
            RpcStatusCode::RESOURCE_EXHAUSTED,
        ] {
            assert!(is_retryable(code), "{code:?}");
        }
        for code in [
            RpcStatusCode::INVALID_ARGUMENT,
            RpcStatusCode::PERMISSION_DENIED,
            RpcStatusCode::UNAUTHENTICATED,
            RpcStatusCode::UNIMPLEMENTED,
            RpcStatusCode::from(AGONES_VALIDATION_ERROR),
        ] {
            assert!(!is_retryable(code), "{code:?}");
        }
    }
}
