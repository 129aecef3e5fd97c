//! Global Accelerator custom routing (GA_MAPPING_DIR): players connect through one accelerator per
//! region, so the game server's private `IPv4:port` is translated into
//! `<accelerator DNS name>:<accelerator port>` through that region's mapping.
//!
//! Files of the region at 1-based position `i` in REGIONS: `mapping-<region>.gz` (or
//! `mapping-<region>.json`) and `accelerator-<region>` if they exist, else the guidance's own
//! ConfigMap keys `mapping<i>.gz` and `accelerator<i>`. A mapping is a JSON object
//! `{"10.0.1.23:7005": 41234, …}`, gzipped or not; entries are stored as sorted integers (8 bytes
//! each), so a region's ~61,000 entries take about half a MiB and a lookup is a binary search.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use flate2::read::GzDecoder;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::metrics::Metrics;
use crate::names::is_dns_name;
use crate::rotation::Reloadable;
use crate::sync::Versioned;

/// How many bad keys a load names in its warning.
const BAD_KEYS_SHOWN: usize = 5;

/// The most a mapping file may hold once inflated: 64 MiB, about 1.5 million entries (a region of
/// two /22 subnets and 30 ports per server is 2.5 MB).
const MAX_MAPPING_BYTES: u64 = 64 << 20;

/// One region's accelerator and mapping.
#[derive(Debug)]
pub struct RegionMapping {
    /// The accelerator's DNS name.
    pub accelerator: String,
    /// The mapping file and the accelerator file read.
    pub files: [PathBuf; 2],
    /// Entries skipped: a key that is not `IPv4:port` or is given twice, or a value outside
    /// 1–65535.
    pub bad_entries: usize,
    /// The first few skipped keys.
    pub bad_keys: Vec<String>,
    /// `(IPv4 << 16 | port) << 16 | accelerator port`, sorted.
    entries: Vec<u64>,
}

impl RegionMapping {
    /// The accelerator port of `address:port`, if the mapping has it.
    pub fn lookup(&self, address: Ipv4Addr, port: u16) -> Option<u16> {
        let key = (u64::from(u32::from(address)) << 16) | u64::from(port);
        let at = self.entries.partition_point(|entry| entry >> 16 < key);
        let entry = *self.entries.get(at)?;
        (entry >> 16 == key).then_some((entry & 0xFFFF) as u16)
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry (never true of a loaded mapping).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Every region's mapping.
#[derive(Debug, Default)]
pub struct Mappings {
    /// By region.
    pub regions: BTreeMap<String, RegionMapping>,
}

/// Why a game server's address could not be translated.
#[derive(Debug, PartialEq, Eq)]
pub struct TranslationMiss {
    /// The key looked up (`address:port`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for TranslationMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.key, self.reason)
    }
}

impl Mappings {
    /// `<accelerator DNS>:<accelerator port>` for a game server of `region` at `address:port`.
    pub fn translate(
        &self,
        region: &str,
        address: &str,
        port: u16,
    ) -> Result<String, TranslationMiss> {
        let key = format!("{address}:{port}");
        let miss = |reason: &str| TranslationMiss {
            key: key.clone(),
            reason: reason.to_string(),
        };
        let mapping = self
            .regions
            .get(region)
            .ok_or_else(|| miss("the region has no mapping"))?;
        let ip: Ipv4Addr = address
            .parse()
            .map_err(|_| miss("the address is not an IPv4 address"))?;
        let accelerator_port = mapping
            .lookup(ip, port)
            .ok_or_else(|| miss("not in the region's mapping"))?;
        Ok(format!("{}:{accelerator_port}", mapping.accelerator))
    }
}

impl Mappings {
    /// Logs what was loaded (a warning for skipped entries, with the first few keys) and exports
    /// each region's entry count.
    pub fn publish(&self, metrics: &Metrics) {
        for (region, mapping) in &self.regions {
            metrics.mapping_entries.set(&[region], mapping.len() as u64);
            log::info!(
                "Global Accelerator mapping of region {region}: {} entries from {}, accelerator {} (from {})",
                mapping.len(),
                mapping.files[0].display(),
                mapping.accelerator,
                mapping.files[1].display()
            );
            if mapping.bad_entries > 0 {
                log::warn!(
                    "Global Accelerator mapping {}: skipped {} entries that are not \"IPv4:port\": 1–65535 or whose key is given twice (first keys: {:?})",
                    mapping.files[0].display(),
                    mapping.bad_entries,
                    mapping.bad_keys
                );
            }
        }
    }
}

/// Watches GA_MAPPING_DIR: a changed file (a ConfigMap update swaps its `..data` symlink) is
/// loaded again; a valid mapping replaces the one in use between two lookups, an invalid one is
/// refused and counted, and the previous one stays.
pub struct MappingWatch {
    dir: PathBuf,
    regions: Vec<String>,
    mappings: Arc<Versioned<Mappings>>,
    in_use: Vec<(PathBuf, Vec<u8>)>,
}

impl MappingWatch {
    /// Watches `dir` for the mappings of `regions`, now in use in `mappings`.
    pub fn new(dir: PathBuf, regions: Vec<String>, mappings: Arc<Versioned<Mappings>>) -> Self {
        let in_use = snapshot(&dir, &regions);
        MappingWatch {
            dir,
            regions,
            mappings,
            in_use,
        }
    }
}

/// The bytes of every file a region could be read from, to notice any change cheaply.
fn snapshot(dir: &Path, regions: &[String]) -> Vec<(PathBuf, Vec<u8>)> {
    regions
        .iter()
        .enumerate()
        .flat_map(|(index, region)| FileNames::of(region, index + 1).all())
        .map(|name| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path, bytes)
        })
        .collect()
}

impl Reloadable for MappingWatch {
    fn reload_if_changed(&mut self, metrics: &Metrics) {
        let now = snapshot(&self.dir, &self.regions);
        if now == self.in_use {
            return;
        }
        self.in_use = now;
        match load(&self.dir, &self.regions) {
            Ok(mappings) => {
                mappings.publish(metrics);
                self.mappings.replace(mappings);
                log::info!(
                    "Reloaded the Global Accelerator mappings from {}",
                    self.dir.display()
                );
            }
            Err(problems) => {
                metrics.mapping_reload_errors.add(1);
                log::error!(
                    "Refused the changed Global Accelerator mappings in {}, keeping the previous ones: {}",
                    self.dir.display(),
                    problems.join("; ")
                );
            }
        }
    }
}

/// Loads the mapping of every region in `regions` from `dir`; every problem names its file.
pub fn load(dir: &Path, regions: &[String]) -> Result<Mappings, Vec<String>> {
    let mut mappings = Mappings::default();
    let mut problems = Vec::new();
    for (index, region) in regions.iter().enumerate() {
        match load_region(dir, region, index + 1) {
            Ok(mapping) => {
                mappings.regions.insert(region.clone(), mapping);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(mappings)
    } else {
        Err(problems)
    }
}

/// The names a region's files may have, at 1-based `position` in REGIONS: its own mapping (gzip or
/// JSON) and accelerator, then the guidance's `mapping<i>.gz` and `accelerator<i>`.
struct FileNames {
    own_mappings: [String; 2],
    own_accelerator: String,
    guidance_mapping: String,
    guidance_accelerator: String,
}

impl FileNames {
    fn of(region: &str, position: usize) -> FileNames {
        FileNames {
            own_mappings: [
                format!("mapping-{region}.gz"),
                format!("mapping-{region}.json"),
            ],
            own_accelerator: format!("accelerator-{region}"),
            guidance_mapping: format!("mapping{position}.gz"),
            guidance_accelerator: format!("accelerator{position}"),
        }
    }

    /// Every name, to watch them all.
    fn all(self) -> [String; 5] {
        let [gz, json] = self.own_mappings;
        [
            gz,
            json,
            self.own_accelerator,
            self.guidance_mapping,
            self.guidance_accelerator,
        ]
    }
}

/// The files of the region at 1-based `position`, by the rules in the module's documentation.
pub fn region_files(dir: &Path, region: &str, position: usize) -> Result<[PathBuf; 2], String> {
    let names = FileNames::of(region, position);
    let own_mapping = names
        .own_mappings
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists());
    let own_accelerator = dir.join(&names.own_accelerator);
    if let Some(mapping) = own_mapping {
        if own_accelerator.exists() {
            return Ok([mapping, own_accelerator]);
        }
    }
    let mapping = dir.join(&names.guidance_mapping);
    let accelerator = dir.join(&names.guidance_accelerator);
    if mapping.exists() && accelerator.exists() {
        return Ok([mapping, accelerator]);
    }
    let [gz, json] = &names.own_mappings;
    Err(format!(
        "no mapping for region {region} in {}: looked for {gz} or {json} with {}, and {} with {}",
        dir.display(),
        names.own_accelerator,
        names.guidance_mapping,
        names.guidance_accelerator
    ))
}

fn load_region(dir: &Path, region: &str, position: usize) -> Result<RegionMapping, String> {
    let [mapping_file, accelerator_file] = region_files(dir, region, position)?;
    let accelerator = read_accelerator(&accelerator_file)?;
    let bytes = std::fs::read(&mapping_file)
        .map_err(|e| format!("cannot read {}: {e}", mapping_file.display()))?;
    let parsed =
        parse_mapping(&bytes).map_err(|why| format!("{}: {why}", mapping_file.display()))?;
    Ok(RegionMapping {
        accelerator,
        files: [mapping_file, accelerator_file],
        bad_entries: parsed.bad_entries,
        bad_keys: parsed.bad_keys,
        entries: parsed.entries,
    })
}

/// The accelerator's DNS name: the file's text, trimmed; a valid host name.
fn read_accelerator(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = text.trim();
    if is_dns_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{} does not hold an accelerator DNS name (got {name:?})",
            path.display()
        ))
    }
}

/// A mapping file's valid entries, sorted, and what was skipped.
#[derive(Debug, Default)]
pub struct ParsedMapping {
    entries: Vec<u64>,
    /// Entries skipped.
    pub bad_entries: usize,
    /// The first few skipped keys.
    pub bad_keys: Vec<String>,
}

/// Parses a mapping: gzip (recognised by its magic bytes) of a JSON object, or the JSON itself, of
/// at most [`MAX_MAPPING_BYTES`]. A key given twice is skipped: which port it means is unknown.
pub fn parse_mapping(bytes: &[u8]) -> Result<ParsedMapping, String> {
    let too_large = || format!("holds more than {} MiB of JSON", MAX_MAPPING_BYTES >> 20);
    let json = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut json = Vec::with_capacity(bytes.len() * 8);
        GzDecoder::new(bytes)
            .take(MAX_MAPPING_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(|e| format!("not a valid gzip file: {e}"))?;
        json
    } else {
        bytes.to_vec()
    };
    if json.len() as u64 > MAX_MAPPING_BYTES {
        return Err(too_large());
    }
    let mut parsed = serde_json::Deserializer::from_slice(&json)
        .deserialize_map(EntriesVisitor)
        .map_err(|e| format!("not a JSON object of \"IPv4:port\": port entries: {e}"))?;
    parsed.entries.sort_unstable();
    parsed.skip_repeated_keys();
    if parsed.entries.is_empty() {
        return Err("holds no valid entry".to_string());
    }
    Ok(parsed)
}

impl ParsedMapping {
    /// Removes every entry whose key is given more than once (the entries are sorted), counting
    /// them as skipped.
    fn skip_repeated_keys(&mut self) {
        let key = |entry: &u64| entry >> 16;
        let mut kept = Vec::with_capacity(self.entries.len());
        for group in self.entries.chunk_by(|a, b| key(a) == key(b)) {
            if group.len() == 1 {
                kept.push(group[0]);
                continue;
            }
            self.bad_entries += group.len();
            if self.bad_keys.len() < BAD_KEYS_SHOWN {
                let (address, port) = (key(&group[0]) >> 16, key(&group[0]) & 0xffff);
                let address = Ipv4Addr::from(address as u32);
                self.bad_keys.push(format!("{address}:{port}"));
            }
        }
        self.entries = kept;
    }
}

/// Reads the JSON object entry by entry into the compact form, without building a JSON tree.
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = ParsedMapping;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParsedMapping, A::Error> {
        let mut parsed = ParsedMapping {
            entries: Vec::with_capacity(map.size_hint().unwrap_or(0)),
            ..ParsedMapping::default()
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value: serde_json::Value = map.next_value()?;
            match entry(&key, &value) {
                Some(entry) => parsed.entries.push(entry),
                None => {
                    parsed.bad_entries += 1;
                    if parsed.bad_keys.len() < BAD_KEYS_SHOWN {
                        parsed.bad_keys.push(key.into_owned());
                    }
                }
            }
        }
        Ok(parsed)
    }
}

/// The compact entry for `"IPv4:port": accelerator port`, or `None` if either is invalid.
fn entry(key: &str, value: &serde_json::Value) -> Option<u64> {
    let (address, port) = key.split_once(':')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let accelerator_port = value.as_u64().filter(|p| (1..=65_535).contains(p))?;
    Some((((u64::from(u32::from(address)) << 16) | u64::from(port)) << 16) | accelerator_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::certs::TempDir;
    use std::io::Write;

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_key_given_twice_is_skipped_and_named_not_resolved_by_chance() {
        let parsed = parse_mapping(
            br#"{"10.0.0.1:7001": 41001, "10.0.0.1:7002": 41002, "10.0.0.1:7001": 41009}"#,
        )
        .unwrap();
        assert_eq!(parsed.entries.len(), 1, "only 10.0.0.1:7002 is sure");
        assert_eq!(parsed.bad_entries, 2);
        assert_eq!(parsed.bad_keys, ["10.0.0.1:7001"]);
    }

    #[test]
    fn a_mapping_that_inflates_past_the_limit_is_refused() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(br#"{"10.0.0.1:7001": 41001"#).unwrap();
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..(MAX_MAPPING_BYTES >> 20) + 1 {
            encoder.write_all(&spaces).unwrap();
        }
        encoder.write_all(b"}").unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes gzipped", bomb.len());
        let problem = parse_mapping(&bomb).unwrap_err();
        assert!(
            problem.contains("holds more than 64 MiB of JSON"),
            "{problem}"
        );
    }

    #[test]
    fn entries_are_looked_up_and_bad_ones_skipped_and_counted() {
        let parsed = parse_mapping(&gzip(
            r#"{
  "10.0.1.23:7005": 41234,
  "10.0.1.23:7006": 41235,
  "10.0.0.1": 5,
  "10.0.0.2:7000": 70000,
  "not-an-ip:7000": 1,
  "10.0.0.3:7000": "41000"
}"#,
        ))
        .unwrap();
        assert_eq!(parsed.entries.len(), 2);
        assert_eq!(parsed.bad_entries, 4);
        assert_eq!(
            parsed.bad_keys,
            [
                "10.0.0.1",
                "10.0.0.2:7000",
                "not-an-ip:7000",
                "10.0.0.3:7000"
            ]
        );
        let mapping = RegionMapping {
            accelerator: "a1.awsglobalaccelerator.com".into(),
            files: [PathBuf::new(), PathBuf::new()],
            bad_entries: parsed.bad_entries,
            bad_keys: parsed.bad_keys,
            entries: parsed.entries,
        };
        let ip = Ipv4Addr::new(10, 0, 1, 23);
        assert_eq!(mapping.lookup(ip, 7005), Some(41234));
        assert_eq!(mapping.lookup(ip, 7006), Some(41235));
        assert_eq!(mapping.lookup(ip, 7007), None);
        assert_eq!(mapping.lookup(Ipv4Addr::new(10, 0, 1, 22), 7005), None);
        let mappings = Mappings {
            regions: [("us-east-1".to_string(), mapping)].into(),
        };
        assert_eq!(
            mappings.translate("us-east-1", "10.0.1.23", 7005),
            Ok("a1.awsglobalaccelerator.com:41234".to_string())
        );
        let miss = mappings
            .translate("us-east-1", "10.0.1.23", 7999)
            .unwrap_err();
        assert_eq!(miss.key, "10.0.1.23:7999");
        assert!(mappings.translate("us-east-2", "10.0.1.23", 7005).is_err());
        assert!(mappings.translate("us-east-1", "fd00::1", 7005).is_err());
    }

    #[test]
    fn bad_files_are_errors() {
        let truncated = gzip(r#"{"10.0.0.1:7000": 1}"#);
        let truncated = &truncated[..truncated.len() / 2];
        assert!(parse_mapping(truncated)
            .unwrap_err()
            .starts_with("not a valid gzip file"));
        assert!(parse_mapping(b"[1, 2]")
            .unwrap_err()
            .starts_with("not a JSON object"));
        assert_eq!(parse_mapping(b"{}").unwrap_err(), "holds no valid entry");
        assert_eq!(
            parse_mapping(br#"{"10.0.0.1": 7000}"#).unwrap_err(),
            "holds no valid entry"
        );
        assert!(parse_mapping(b"\x1f\x8bnot gzip").is_err());
    }

    #[test]
    fn region_files_prefer_the_region_names_then_the_guidance_layout() {
        let dir = TempDir::new("mapping-files");
        let regions = ["us-east-1".to_string(), "us-east-2".to_string()];
        let problems = load(dir.path(), &regions).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(problems[1].contains("mapping-us-east-2.gz or mapping-us-east-2.json with accelerator-us-east-2, and mapping2.gz with accelerator2"));
        dir.write("mapping1.gz", gzip(r#"{"10.0.0.1:7000": 1}"#));
        dir.write("accelerator1", " a1.example.com\n");
        dir.write("mapping2.gz", gzip(r#"{"10.0.0.2:7000": 2}"#));
        dir.write("accelerator2", "a2.example.com");
        dir.write("mapping-us-east-2.json", r#"{"10.0.0.2:7000": 3}"#);
        dir.write("accelerator-us-east-2", "b2.example.com");
        let mappings = load(dir.path(), &regions).unwrap();
        assert_eq!(
            mappings.translate("us-east-1", "10.0.0.1", 7000),
            Ok("a1.example.com:1".into())
        );
        assert_eq!(
            mappings.translate("us-east-2", "10.0.0.2", 7000),
            Ok("b2.example.com:3".into())
        );
        dir.write("accelerator1", "  \n");
        let problems = load(dir.path(), &regions).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("accelerator1 does not hold an accelerator DNS name"));
    }

    /// Property tests of a parser of outside input (`make fuzz` runs many more cases).
    mod fuzz {
        use super::*;

        proptest::proptest! {
            #[test]
            fn mutated_mappings_give_entries_or_an_error(
                gzipped in proptest::bool::ANY,
                edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8)
            ) {
                let text = r#"{ "10.0.1.23:7005": 41234, "10.0.1.24:7005": 41235 }"#;
                let mut bytes = if gzipped { gzip(text) } else { text.as_bytes().to_vec() };
                for (at, byte) in edits {
                    let at = at % bytes.len();
                    bytes[at] = byte;
                }
                if let Ok(parsed) = parse_mapping(&bytes) {
                    proptest::prop_assert!(!parsed.entries.is_empty());
                }
            }
        }
    }
}
