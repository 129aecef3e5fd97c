//! ALLOCATION_REQUEST_FILE: the allocation request users shape, in the allocator's own JSON form
//! of `AllocationRequest` (the proto's camelCase field names, as in Agones' documentation), read
//! with serde_json, checked field by field, and mapped onto the generated protobuf types.
//!
//! Every problem is reported with its JSON path (`$.gameServerSelectors[0].counters.rooms`), all
//! at once. [`crate::allocator::allocation_request`] merges the result into every request.

use std::collections::HashMap;
use std::str::FromStr;

use protobuf::well_known_types::{Int64Value, StringValue};
use serde_json::{Map, Number, Value};

use crate::names::{is_label_key, is_label_value};
use crate::proto::allocation::{
    AllocationRequest, AllocationRequest_SchedulingStrategy as Scheduling, CounterAction,
    CounterSelector, GameServerSelector, GameServerSelector_GameServerState as GameServerState,
    LabelSelector, ListAction, ListSelector, MetaPatch, MultiClusterSetting, PlayerSelector,
    Priority, Priority_Order as Order, Priority_Type as PriorityType,
};

/// Parses the file's text into the request template, or every problem found.
pub fn parse(text: &str) -> Result<AllocationRequest, Vec<String>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| vec![format!("$: not valid JSON: {e}")])?;
    let mut reader = Reader::default();
    let request = reader.request(&value);
    if reader.problems.is_empty() {
        Ok(request)
    } else {
        Err(reader.problems)
    }
}

/// Walks the JSON, collecting problems; what it returns is meaningful only without problems.
#[derive(Default)]
struct Reader {
    problems: Vec<String>,
}

impl Reader {
    fn problem(&mut self, path: &str, what: impl Into<String>) {
        self.problems.push(format!("{path}: {}", what.into()));
    }

    /// The fields of the object at `path`, after checking that every field is one of `known`.
    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(fields) = value else {
            self.problem(path, format!("expected an object, got {}", kind(value)));
            return None;
        };
        for name in fields.keys().filter(|name| !known.contains(&name.as_str())) {
            self.problem(
                &format!("{path}.{name}"),
                format!("unknown field (expected one of: {})", known.join(", ")),
            );
        }
        Some(fields)
    }

    fn request(&mut self, value: &Value) -> AllocationRequest {
        let mut request = AllocationRequest::new();
        let known = [
            "namespace",
            "multiClusterSetting",
            "gameServerSelectors",
            "scheduling",
            "priorities",
            "counters",
            "lists",
            "metadata",
        ];
        let Some(fields) = self.object(value, "$", &known) else {
            return request;
        };
        for (name, value) in fields {
            let path = format!("$.{name}");
            match name.as_str() {
                "namespace" => request.set_namespace(self.string(value, &path)),
                "multiClusterSetting" => {
                    request.set_multiClusterSetting(self.multicluster(value, &path))
                }
                "gameServerSelectors" => {
                    let selectors = self.list(value, &path, Reader::selector);
                    request.set_gameServerSelectors(selectors.into());
                }
                "scheduling" => {
                    let names = [
                        ("Packed", Scheduling::Packed),
                        ("Distributed", Scheduling::Distributed),
                    ];
                    request.set_scheduling(self.enumeration(value, &path, &names));
                }
                "priorities" => {
                    let priorities = self.list(value, &path, Reader::priority);
                    request.set_priorities(priorities.into());
                }
                "counters" => request.set_counters(self.map(value, &path, Reader::counter_action)),
                "lists" => request.set_lists(self.map(value, &path, Reader::list_action)),
                "metadata" => request.set_metadata(self.metadata(value, &path)),
                _ => {}
            }
        }
        request
    }

    fn multicluster(&mut self, value: &Value, path: &str) -> MultiClusterSetting {
        let mut setting = MultiClusterSetting::new();
        let Some(fields) = self.object(value, path, &["enabled", "policySelector"]) else {
            return setting;
        };
        if let Some(enabled) = fields.get("enabled") {
            setting.set_enabled(self.boolean(enabled, &format!("{path}.enabled")));
        }
        if let Some(selector) = fields.get("policySelector") {
            let path = format!("{path}.policySelector");
            let mut labels = LabelSelector::new();
            if let Some(fields) = self.object(selector, &path, &["matchLabels"]) {
                if let Some(value) = fields.get("matchLabels") {
                    labels.set_matchLabels(self.labels(value, &format!("{path}.matchLabels")));
                }
            }
            setting.set_policySelector(labels);
        }
        setting
    }

    fn selector(&mut self, value: &Value, path: &str) -> GameServerSelector {
        let mut selector = GameServerSelector::new();
        let known = [
            "matchLabels",
            "gameServerState",
            "players",
            "counters",
            "lists",
        ];
        let Some(fields) = self.object(value, path, &known) else {
            return selector;
        };
        for (name, value) in fields {
            let path = format!("{path}.{name}");
            match name.as_str() {
                "matchLabels" => selector.set_matchLabels(self.labels(value, &path)),
                "gameServerState" => {
                    let names = [
                        ("READY", GameServerState::READY),
                        ("ALLOCATED", GameServerState::ALLOCATED),
                    ];
                    selector.set_gameServerState(self.enumeration(value, &path, &names));
                }
                "players" => selector.set_players(self.players(value, &path)),
                "counters" => {
                    selector.set_counters(self.map(value, &path, Reader::counter_selector))
                }
                "lists" => selector.set_lists(self.map(value, &path, Reader::list_selector)),
                _ => {}
            }
        }
        selector
    }

    fn players(&mut self, value: &Value, path: &str) -> PlayerSelector {
        let mut players = PlayerSelector::new();
        if let Some(fields) = self.object(value, path, &["minAvailable", "maxAvailable"]) {
            for (name, value) in fields {
                let number = self.unsigned(value, &format!("{path}.{name}"));
                match name.as_str() {
                    "minAvailable" => players.set_minAvailable(number),
                    _ => players.set_maxAvailable(number),
                }
            }
        }
        players
    }

    fn counter_selector(&mut self, value: &Value, path: &str) -> CounterSelector {
        let mut counter = CounterSelector::new();
        let known = ["minCount", "maxCount", "minAvailable", "maxAvailable"];
        if let Some(fields) = self.object(value, path, &known) {
            for (name, value) in fields {
                let number = self.integer(value, &format!("{path}.{name}"));
                match name.as_str() {
                    "minCount" => counter.set_minCount(number),
                    "maxCount" => counter.set_maxCount(number),
                    "minAvailable" => counter.set_minAvailable(number),
                    _ => counter.set_maxAvailable(number),
                }
            }
        }
        counter
    }

    fn list_selector(&mut self, value: &Value, path: &str) -> ListSelector {
        let mut list = ListSelector::new();
        let known = ["containsValue", "minAvailable", "maxAvailable"];
        if let Some(fields) = self.object(value, path, &known) {
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match name.as_str() {
                    "containsValue" => list.set_containsValue(self.string(value, &path)),
                    "minAvailable" => list.set_minAvailable(self.integer(value, &path)),
                    _ => list.set_maxAvailable(self.integer(value, &path)),
                }
            }
        }
        list
    }

    fn priority(&mut self, value: &Value, path: &str) -> Priority {
        let mut priority = Priority::new();
        if let Some(fields) = self.object(value, path, &["type", "key", "order"]) {
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match name.as_str() {
                    "type" => {
                        let names = [
                            ("Counter", PriorityType::Counter),
                            ("List", PriorityType::List),
                        ];
                        priority.set_field_type(self.enumeration(value, &path, &names));
                    }
                    "key" => priority.set_key(self.string(value, &path)),
                    _ => {
                        let names = [
                            ("Ascending", Order::Ascending),
                            ("Descending", Order::Descending),
                        ];
                        priority.set_order(self.enumeration(value, &path, &names));
                    }
                }
            }
        }
        priority
    }

    fn counter_action(&mut self, value: &Value, path: &str) -> CounterAction {
        let mut counter = CounterAction::new();
        if let Some(fields) = self.object(value, path, &["action", "amount", "capacity"]) {
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match name.as_str() {
                    "action" => {
                        let action = self.string(value, &path);
                        if !matches!(action.as_str(), "Increment" | "Decrement") {
                            self.problem(
                                &path,
                                format!(
                                    "unknown action {action:?} (expected Increment or Decrement)"
                                ),
                            );
                        }
                        let mut wrapped = StringValue::new();
                        wrapped.set_value(action);
                        counter.set_action(wrapped);
                    }
                    "amount" => counter.set_amount(self.wrapped_integer(value, &path)),
                    _ => counter.set_capacity(self.wrapped_integer(value, &path)),
                }
            }
        }
        counter
    }

    fn list_action(&mut self, value: &Value, path: &str) -> ListAction {
        let mut list = ListAction::new();
        let known = ["addValues", "capacity", "deleteValues"];
        if let Some(fields) = self.object(value, path, &known) {
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match name.as_str() {
                    "addValues" => {
                        let values = self.list(value, &path, Reader::string);
                        list.set_addValues(values.into());
                    }
                    "deleteValues" => {
                        let values = self.list(value, &path, Reader::string);
                        list.set_deleteValues(values.into());
                    }
                    _ => list.set_capacity(self.wrapped_integer(value, &path)),
                }
            }
        }
        list
    }

    fn metadata(&mut self, value: &Value, path: &str) -> MetaPatch {
        let mut metadata = MetaPatch::new();
        if let Some(fields) = self.object(value, path, &["labels", "annotations"]) {
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match name.as_str() {
                    "labels" => metadata.set_labels(self.labels(value, &path)),
                    _ => metadata.set_annotations(self.annotations(value, &path)),
                }
            }
        }
        metadata
    }

    /// A map of Kubernetes labels: keys and values Kubernetes accepts.
    fn labels(&mut self, value: &Value, path: &str) -> HashMap<String, String> {
        let labels = self.map(value, path, Reader::string);
        for (key, label) in &labels {
            let path = format!("{path}.{key}");
            if !is_label_key(key) {
                self.problem(&path, "not a valid Kubernetes label key");
            }
            if !is_label_value(label) {
                self.problem(
                    &path,
                    format!("{label:?} is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"),
                );
            }
        }
        labels
    }

    /// A map of Kubernetes annotations: keys as for labels, any string values.
    fn annotations(&mut self, value: &Value, path: &str) -> HashMap<String, String> {
        let annotations = self.map(value, path, Reader::string);
        for key in annotations.keys().filter(|key| !is_label_key(key)) {
            self.problem(
                &format!("{path}.{key}"),
                "not a valid Kubernetes annotation key",
            );
        }
        annotations
    }

    fn map<T>(
        &mut self,
        value: &Value,
        path: &str,
        mut item: impl FnMut(&mut Reader, &Value, &str) -> T,
    ) -> HashMap<String, T> {
        let Value::Object(fields) = value else {
            self.problem(path, format!("expected an object, got {}", kind(value)));
            return HashMap::new();
        };
        fields
            .iter()
            .map(|(key, value)| (key.clone(), item(self, value, &format!("{path}.{key}"))))
            .collect()
    }

    fn list<T>(
        &mut self,
        value: &Value,
        path: &str,
        mut item: impl FnMut(&mut Reader, &Value, &str) -> T,
    ) -> Vec<T> {
        let Value::Array(items) = value else {
            self.problem(path, format!("expected an array, got {}", kind(value)));
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(index, value)| item(self, value, &format!("{path}[{index}]")))
            .collect()
    }

    fn string(&mut self, value: &Value, path: &str) -> String {
        match value {
            Value::String(text) => text.clone(),
            other => {
                self.problem(path, format!("expected a string, got {}", kind(other)));
                String::new()
            }
        }
    }

    fn boolean(&mut self, value: &Value, path: &str) -> bool {
        match value {
            Value::Bool(flag) => *flag,
            other => {
                self.problem(path, format!("expected true or false, got {}", kind(other)));
                false
            }
        }
    }

    /// An int64: a JSON integer, or a decimal string (how the proto JSON form writes 64-bit
    /// numbers).
    fn integer(&mut self, value: &Value, path: &str) -> i64 {
        self.number(value, path, "a 64-bit integer", Number::as_i64)
    }

    /// A uint64, written like [`Reader::integer`].
    fn unsigned(&mut self, value: &Value, path: &str) -> u64 {
        self.number(value, path, "an unsigned 64-bit integer", Number::as_u64)
    }

    fn number<T: FromStr + Default>(
        &mut self,
        value: &Value,
        path: &str,
        what: &str,
        exact: fn(&Number) -> Option<T>,
    ) -> T {
        let number = match value {
            Value::Number(n) => exact(n),
            Value::String(text) => text.parse().ok(),
            _ => None,
        };
        number.unwrap_or_else(|| {
            self.problem(path, format!("expected {what}, got {}", kind(value)));
            T::default()
        })
    }

    fn wrapped_integer(&mut self, value: &Value, path: &str) -> Int64Value {
        let mut wrapped = Int64Value::new();
        wrapped.set_value(self.integer(value, path));
        wrapped
    }

    /// One of `names`, by its name in the proto.
    fn enumeration<T: Copy + Default>(
        &mut self,
        value: &Value,
        path: &str,
        names: &[(&str, T)],
    ) -> T {
        let name = self.string(value, path);
        match names.iter().find(|(known, _)| *known == name) {
            Some((_, value)) => *value,
            None => {
                let expected: Vec<&str> = names.iter().map(|(known, _)| *known).collect();
                if !matches!(value, Value::String(_)) {
                    return T::default();
                }
                self.problem(
                    path,
                    format!(
                        "unknown value {name:?} (expected {})",
                        expected.join(" or ")
                    ),
                );
                T::default()
            }
        }
    }
}

/// What kind of JSON value this is, for messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => format!("{flag}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(text) => format!("the string {text:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A high-density request: game servers already Allocated with a free `rooms` slot first,
    /// then Ready ones; fullest first; one room taken per match.
    const HIGH_DENSITY: &str = r#"{
        "gameServerSelectors": [
            {
                "gameServerState": "ALLOCATED",
                "matchLabels": {"agones.dev/fleet": "arena"},
                "counters": {"rooms": {"minAvailable": 1}},
                "players": {"minAvailable": "2", "maxAvailable": 10}
            },
            {"gameServerState": "READY", "lists": {"modes": {"containsValue": "duel", "minAvailable": 1}}}
        ],
        "scheduling": "Packed",
        "priorities": [{"type": "Counter", "key": "rooms", "order": "Ascending"}],
        "counters": {"rooms": {"action": "Increment", "amount": 1, "capacity": "8"}},
        "lists": {"players": {"addValues": ["a", "b"], "capacity": 16}},
        "metadata": {"labels": {"tier": "gold"}, "annotations": {"example.com/note": "any text: ok"}}
    }"#;

    #[test]
    fn a_high_density_request_maps_onto_the_proto() {
        let request = parse(HIGH_DENSITY).expect("valid");
        let selectors = request.get_gameServerSelectors();
        assert_eq!(selectors.len(), 2);
        assert_eq!(
            selectors[0].get_gameServerState(),
            GameServerState::ALLOCATED
        );
        assert_eq!(selectors[0].get_matchLabels()["agones.dev/fleet"], "arena");
        assert_eq!(selectors[0].get_counters()["rooms"].get_minAvailable(), 1);
        assert_eq!(selectors[0].get_players().get_minAvailable(), 2);
        assert_eq!(selectors[0].get_players().get_maxAvailable(), 10);
        assert_eq!(selectors[1].get_gameServerState(), GameServerState::READY);
        assert_eq!(
            selectors[1].get_lists()["modes"].get_containsValue(),
            "duel"
        );
        assert_eq!(request.get_scheduling(), Scheduling::Packed);
        let priority = &request.get_priorities()[0];
        assert_eq!(
            (
                priority.get_field_type(),
                priority.get_key(),
                priority.get_order()
            ),
            (PriorityType::Counter, "rooms", Order::Ascending)
        );
        let rooms = &request.get_counters()["rooms"];
        assert_eq!(rooms.get_action().get_value(), "Increment");
        assert_eq!(rooms.get_amount().get_value(), 1);
        assert_eq!(rooms.get_capacity().get_value(), 8);
        let players = &request.get_lists()["players"];
        assert_eq!(players.get_addValues(), ["a", "b"]);
        assert_eq!(players.get_capacity().get_value(), 16);
        assert_eq!(request.get_metadata().get_labels()["tier"], "gold");
        assert_eq!(
            request.get_metadata().get_annotations()["example.com/note"],
            "any text: ok"
        );
        assert!(request.get_namespace().is_empty());
        assert!(!request.has_multiClusterSetting());
    }

    #[test]
    fn every_problem_is_named_by_its_json_path() {
        let problems = parse(
            r#"{
                "gameServerSelector": [],
                "scheduling": "Pack",
                "namespace": 7,
                "gameServerSelectors": [{"gameServerState": "Ready", "matchLabels": {"bad key!": "v", "k": "no spaces"}}],
                "priorities": [{"type": "Counter", "order": "Up"}],
                "counters": {"rooms": {"action": "Add", "amount": 1.5}},
                "lists": {"l": {"addValues": "a"}},
                "metadata": {"annotations": {"/x": "y"}},
                "multiClusterSetting": {"enabled": "yes"}
            }"#,
        )
        .unwrap_err();
        for expected in [
            "$.gameServerSelector: unknown field (expected one of: namespace, multiClusterSetting,",
            "$.scheduling: unknown value \"Pack\" (expected Packed or Distributed)",
            "$.namespace: expected a string, got the number 7",
            "$.gameServerSelectors[0].gameServerState: unknown value \"Ready\" (expected READY or ALLOCATED)",
            "$.gameServerSelectors[0].matchLabels.bad key!: not a valid Kubernetes label key",
            "$.gameServerSelectors[0].matchLabels.k: \"no spaces\" is not a valid Kubernetes label value",
            "$.priorities[0].order: unknown value \"Up\" (expected Ascending or Descending)",
            "$.counters.rooms.action: unknown action \"Add\" (expected Increment or Decrement)",
            "$.counters.rooms.amount: expected a 64-bit integer, got the number 1.5",
            "$.lists.l.addValues: expected an array, got the string \"a\"",
            "$.metadata.annotations./x: not a valid Kubernetes annotation key",
            "$.multiClusterSetting.enabled: expected true or false, got the string \"yes\"",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected:?} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 12, "{problems:#?}");
    }

    #[test]
    fn text_that_is_not_a_json_object_is_refused() {
        assert!(parse("{").unwrap_err()[0].starts_with("$: not valid JSON: "));
        assert_eq!(
            parse("[1]").unwrap_err(),
            ["$: expected an object, got an array"]
        );
        assert_eq!(
            parse("{}").map(|r| r.get_gameServerSelectors().len()),
            Ok(0)
        );
    }

    /// Property tests of a parser of outside input (`make fuzz` runs many more cases).
    mod fuzz {
        use super::*;

        proptest::proptest! {
            #[test]
            fn mutated_requests_give_a_request_or_problems_with_their_paths(
                edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::char::any()), 1..6)
            ) {
                let mut text: Vec<char> = HIGH_DENSITY.chars().collect();
                for (at, c) in edits {
                    let at = at % text.len();
                    text[at] = c;
                }
                let text: String = text.into_iter().collect();
                if let Err(problems) = parse(&text) {
                    proptest::prop_assert!(!problems.is_empty());
                    for problem in problems {
                        proptest::prop_assert!(problem.starts_with('$'), "{}", problem);
                    }
                }
            }
        }
    }
}
