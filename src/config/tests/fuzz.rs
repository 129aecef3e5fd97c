//! Property tests of a parser of outside input (`make fuzz` runs many more cases).

use super::*;

/// Every variable the Director reads that takes a value of its own syntax.
const FUZZED: &[&str] = &[
    "OPENMATCH_BACKEND_ADDR",
    "OPENMATCH_BACKEND_PORT",
    "OPENMATCH_MATCH_FUNCTION_PORT",
    "AGONES_ALLOCATOR_ADDR",
    "AGONES_ALLOCATOR_PORT",
    "AGONES_MULTICLUSTER",
    "REGIONS",
    "RANGES",
    "INTERVAL",
    "FETCH_TIMEOUT",
    "ALLOCATE_TIMEOUT",
    "ASSIGN_TIMEOUT",
    "ALLOCATE_RETRY_BUDGET",
    "ASSIGN_RETRY_BUDGET",
    "SHUTDOWN_TIMEOUT",
    "QUEUE_TIMEOUT",
    "ALLOCATOR_THREADS",
    "ALLOCATOR_CONNECTIONS",
    "ALLOCATE_RATE_LIMIT",
    "QUEUE_CAPACITY",
    "METRICS_ADDR",
    "CERT_RELOAD_INTERVAL",
    "BACKFILL_ID_ANNOTATION",
    "MATCH_DEADLINE",
    "OPENMATCH_PENDING_RELEASE_TIMEOUT",
    "LEADER_ELECTION_LEASE",
    "LEADER_ELECTION_NAMESPACE",
    "LEASE_DURATION",
    "LEASE_RENEW_DEADLINE",
    "LEASE_RETRY_PERIOD",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Text that looks like configuration values: digits, units, separators, and anything else.
fn value() -> impl proptest::strategy::Strategy<Value = String> {
    proptest::prop_oneof![
        "[0-9a-z:,.\\- ]{0,24}",
        "[0-9]{1,22}(ms|s|m|h)?",
        "([0-9]{1,6}-[0-9]{1,6},?){0,6}",
        proptest::string::string_regex(".{0,24}").unwrap(),
    ]
}

proptest::proptest! {
    #[test]
    fn any_values_give_a_config_or_errors_naming_their_variable(
        values in proptest::collection::vec(value(), FUZZED.len())
    ) {
        let fixture = with_lease(Fixture::new());
        let mut vars = fixture.vars.clone();
        for (name, value) in FUZZED.iter().zip(&values) {
            vars.insert(name.to_string(), value.clone());
        }
        if let Err(ConfigErrors(problems)) = Config::from_lookup(&|name| vars.get(name).cloned()) {
            proptest::prop_assert!(!problems.is_empty());
            for problem in &problems {
                let named = FUZZED.iter().any(|name| problem.starts_with(&format!("{name}: ")));
                proptest::prop_assert!(named, "{problem:?} names no variable");
            }
        }
    }

    #[test]
    fn durations_parse_or_explain(text in value()) {
        if let Ok(duration) = parse_duration(&text) {
            let back = format!("{}ms", duration.as_millis());
            proptest::prop_assert_eq!(parse_duration(&back), Ok(duration));
        }
    }

    #[test]
    fn parsed_bands_are_ordered_and_disjoint(text in value()) {
        if let Ok(bands) = parse_bands(&text) {
            proptest::prop_assert!(!bands.is_empty());
            for band in &bands {
                proptest::prop_assert!(band.min <= band.max);
            }
            for (i, a) in bands.iter().enumerate() {
                for b in &bands[i + 1..] {
                    proptest::prop_assert!(a.max < b.min || b.max < a.min, "{a:?} overlaps {b:?}");
                }
            }
        }
    }

    #[test]
    fn parsed_regions_are_distinct_label_values(text in value()) {
        if let Ok(regions) = parse_regions(&text) {
            for (i, region) in regions.iter().enumerate() {
                proptest::prop_assert!(is_label_value(region) && !region.is_empty());
                proptest::prop_assert!(!regions[..i].contains(region));
            }
        }
    }
}
