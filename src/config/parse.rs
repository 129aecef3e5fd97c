//! Value parsers: one variable's text into what the Director uses, or why not.

use std::time::Duration;

use super::{Band, Endpoint};
use crate::names::is_label_value;

/// Parses a duration: a bare number of seconds, or a number followed by `ms`, `s` or `m`.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let number: u64 = number.trim().parse().map_err(|_| {
        "is not a duration: use a whole number with ms, s or m (e.g. 500ms, 5s, 2m)".to_string()
    })?;
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "is too large".to_string())
}

/// A duration that must be greater than zero.
pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        Err("must be greater than zero".to_string())
    } else {
        Ok(d)
    }
}

pub(super) fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err("is not a TCP port (1-65535)".to_string()),
        Ok(port) => Ok(port),
    }
}

pub(super) fn count(text: &str, min: usize, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

pub(super) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".to_string()),
    }
}

/// Parses `REGIONS`: a comma-separated list of distinct Kubernetes label values.
pub(super) fn parse_regions(text: &str) -> Result<Vec<String>, String> {
    let regions: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    if regions.is_empty() {
        return Err("lists no region".to_string());
    }
    if let Some(bad) = regions.iter().find(|r| !is_label_value(r)) {
        return Err(format!(
            "region {bad:?} is not a valid Kubernetes label value (letters, digits, '-', '_', '.'; at most 63)"
        ));
    }
    if let Some(dup) = regions
        .iter()
        .enumerate()
        .find(|(i, r)| regions[..*i].contains(r))
    {
        return Err(format!("region {:?} is listed twice", dup.1));
    }
    Ok(regions)
}

/// Parses `RANGES`: comma-separated inclusive bands `min-max` that must not overlap.
pub(super) fn parse_bands(text: &str) -> Result<Vec<Band>, String> {
    let bands = parse_band_list(text)?;
    match overlap(&bands) {
        Some(problem) => Err(problem),
        None => Ok(bands),
    }
}

/// Comma-separated inclusive bands `min-max`, overlapping or not.
pub(super) fn parse_band_list(text: &str) -> Result<Vec<Band>, String> {
    let mut bands = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let band = item
            .split_once('-')
            .and_then(|(min, max)| Some((min.trim().parse().ok()?, max.trim().parse().ok()?)))
            .map(|(min, max)| Band { min, max })
            .ok_or_else(|| {
                format!("band {item:?} is not of the form MIN-MAX with whole numbers")
            })?;
        if band.min > band.max {
            return Err(format!("band {item:?} has min > max"));
        }
        bands.push(band);
    }
    if bands.is_empty() {
        return Err("lists no band".to_string());
    }
    Ok(bands)
}

/// The first two bands that overlap, if any.
pub(super) fn overlap(bands: &[Band]) -> Option<String> {
    let mut sorted = bands.to_vec();
    sorted.sort_by_key(|b| b.min);
    let pair = sorted.windows(2).find(|w| w[0].max >= w[1].min)?;
    Some(format!(
        "bands {}-{} and {}-{} overlap",
        pair[0].min, pair[0].max, pair[1].min, pair[1].max
    ))
}

/// Parses `host:port`; an IPv6 literal host is bracketed (`[fd00::1]:443`).
pub fn parse_host_port(text: &str) -> Result<Endpoint, String> {
    let malformed = || "is not host:port (an IPv6 address in brackets: [fd00::1]:443)".to_string();
    let (host, port) = text.rsplit_once(':').ok_or_else(malformed)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .filter(|h| h.contains(':'))
            .ok_or_else(malformed)?,
        None if host.contains(':') || host.contains(']') => return Err(malformed()),
        None => host,
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if !valid_host {
        return Err(malformed());
    }
    let port = parse_port(port)
        .map_err(|why| format!("has a port that {}", why.trim_start_matches("is ")))?;
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// `ALLOCATE_RATE_LIMIT`: Allocate attempts per second and region, 0.1 to 100000.
pub(super) fn parse_rate_limit(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.1..=100_000.0).contains(&rate) => Ok(rate),
        _ => Err(
            "must be a number of allocations per second from 0.1 to 100000 (unset means no limit)"
                .to_string(),
        ),
    }
}
