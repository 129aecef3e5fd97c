//! Kubernetes and DNS names: what a label key, a label value and a DNS host name may be, and how
//! any text is made into a label value. The bottom layer: it imports nothing of ours.

/// Whether `key` is a valid Kubernetes label key (also the rule for annotation keys): an optional
/// DNS-subdomain prefix and `/`, then a name of at most 63 characters in the alphabet of label
/// values, not empty.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_object_name) && !name.is_empty() && is_label_value(name)
}

/// Whether `name` is a Kubernetes object name (a Lease's, or a label key's prefix): a lower-case
/// DNS subdomain.
pub fn is_object_name(name: &str) -> bool {
    is_dns_name(name) && !name.bytes().any(|b| b.is_ascii_uppercase())
}

/// Whether `name` is a DNS host name: dot-separated labels of letters, digits and inner hyphens,
/// each at most 63 characters, at most 253 in all.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !label.is_empty()
                && label.len() <= 63
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
}

/// Whether `value` is a valid Kubernetes label value.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_none_or(|b| b.is_ascii_alphanumeric());
    value.len() <= 63
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `namespace` is a valid Kubernetes namespace name: an RFC 1123 label (lower-case
/// letters, digits and inner hyphens, at most 63 characters).
pub fn is_namespace(namespace: &str) -> bool {
    !namespace.contains('.') && is_object_name(namespace)
}

/// `text` made into a valid Kubernetes label value: other characters become `-`, at most 63
/// characters, starting and ending with a letter or digit.
pub fn label_value(text: &str) -> String {
    let replaced: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = replaced.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    debug_assert!(is_label_value(trimmed));
    trimmed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        assert!(is_label_key("region"));
        assert!(is_label_key("topology.kubernetes.io/region"));
        for bad in ["", "/region", "Bad Label", "UPPER.example/x", "a/", "-x"] {
            assert!(!is_label_key(bad), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("a1234567890abcdef.awsglobalaccelerator.com"));
        for bad in [
            "",
            "-a.com",
            "a-.com",
            "a..com",
            "a_b.com",
            "a.com.",
            &"x".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn namespaces() {
        assert!(is_namespace("game-servers-2"));
        for bad in ["", "Game", "game_servers", "a.b", "-a", &"a".repeat(64)] {
            assert!(!is_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn label_value_is_sanitized() {
        assert_eq!(
            label_value("latency-us-east-1-0-24"),
            "latency-us-east-1-0-24"
        );
        assert_eq!(label_value("-a b/c-"), "a-b-c");
        let long = label_value(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert_eq!(label_value("prö:file ä"), "pr--file");
        assert!(is_label_value(&label_value("prö:file ä")));
        assert_eq!(
            label_value("ä:ö"),
            "",
            "nothing valid is left: the empty value"
        );
    }
}
