//! The command-line flags of the Go director this one replaces, so that the guidance's manifest
//! (`command: ["/app/director", "-backendAddr", "$(OPENMATCH_BACKEND_ADDR)", …, "-multicluster"]`)
//! runs with only its image changed.
//!
//! Spelled as Go's flag package accepts them: `-name value`, `--name value`, `-name=value`; the
//! boolean `-multicluster` alone (or `-multicluster=false`). Each flag stands for one of our
//! variables and overrides it. With any of them, the original's file layout under the working
//! directory (`/app` in its image) supplies what the variables do not: see [`OriginalLayout`].

use std::collections::BTreeMap;
use std::path::Path;

/// Every flag of the original, and the variable it sets.
pub const FLAGS: [(&str, &str); 14] = [
    ("backendAddr", "OPENMATCH_BACKEND_ADDR"),
    ("backendPort", "OPENMATCH_BACKEND_PORT"),
    ("functionAddr", "OPENMATCH_MATCH_FUNCTION_ADDR"),
    ("functionPort", "OPENMATCH_MATCH_FUNCTION_PORT"),
    ("allocatorAddr", "AGONES_ALLOCATOR_ADDR"),
    ("allocatorPort", "AGONES_ALLOCATOR_PORT"),
    ("certFile", "AGONES_CLIENT_CERT"),
    ("keyFile", "AGONES_CLIENT_KEY"),
    ("caFile", "AGONES_CA_CERT"),
    ("namespace", "AGONES_NAMESPACE"),
    ("regions", "REGIONS"),
    ("ranges", "RANGES"),
    ("interval", "INTERVAL"),
    ("multicluster", "AGONES_MULTICLUSTER"),
];

/// The one flag that takes no value.
const BOOLEAN_FLAG: &str = "multicluster";

/// Where the original's certificate flags point: the certificate directory it mounts.
pub const AGONES_TLS_DIR: &str = "agones-tls";
/// The Open Match client certificate directory the original mounts.
pub const OPENMATCH_TLS_DIR: &str = "openmatch-tls";
/// The Global Accelerator mapping ConfigMap the original mounts.
pub const MAPPING_DIR: &str = "global-accelerator-mapping";

/// The flags given, as the variables they set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GoFlags {
    /// Variable name → value.
    pub values: BTreeMap<&'static str, String>,
}

/// The usage error for a bad command line: what is wrong, and every accepted flag.
pub fn usage_error(problem: &str) -> String {
    let names: Vec<String> = FLAGS
        .iter()
        .map(|(flag, _)| match *flag {
            BOOLEAN_FLAG => format!("-{flag}"),
            _ => format!("-{flag} VALUE"),
        })
        .collect();
    format!(
        "{problem}\naccepted flags (the original director's; each overrides its variable): {}",
        names.join(" ")
    )
}

/// Parses the original's flags; `Err` is a usage error.
pub fn parse(args: &[String]) -> Result<GoFlags, String> {
    let mut flags = GoFlags::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(spelled) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(usage_error(&format!("unexpected argument {arg:?}")));
        };
        let (name, inline) = match spelled.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (spelled, None),
        };
        let Some((flag, var)) = FLAGS.iter().find(|(flag, _)| *flag == name) else {
            return Err(usage_error(&format!("unknown flag {arg:?}")));
        };
        let value = match (inline, *flag == BOOLEAN_FLAG) {
            (Some(value), _) => value,
            (None, true) => "true".to_string(),
            (None, false) => args
                .next()
                .cloned()
                .ok_or_else(|| usage_error(&format!("flag -{flag} needs a value")))?,
        };
        flags.values.insert(var, value);
    }
    Ok(flags)
}

/// The original's file layout under the working directory, used when its flags are.
#[derive(Debug, PartialEq, Eq)]
pub struct OriginalLayout {
    /// Variable name → value, for the variables the layout supplies.
    pub defaults: BTreeMap<&'static str, String>,
}

impl OriginalLayout {
    /// What `flags` and the directories present under `workdir` (paths are kept relative) supply:
    /// the allocator certificate files inside `agones-tls/`; Open Match mTLS from
    /// `openmatch-tls/{tls.crt,tls.key,ca.crt}` when that directory exists; the mapping from
    /// `global-accelerator-mapping/` when it exists.
    pub fn of(flags: &GoFlags, workdir: &Path) -> OriginalLayout {
        let mut defaults = BTreeMap::new();
        for (var, default_file) in [
            ("AGONES_CLIENT_CERT", "tls.crt"),
            ("AGONES_CLIENT_KEY", "tls.key"),
            ("AGONES_CA_CERT", "ca.crt"),
        ] {
            let file = flags.values.get(var).map_or(default_file, String::as_str);
            defaults.insert(var, format!("{AGONES_TLS_DIR}/{file}"));
        }
        if workdir.join(OPENMATCH_TLS_DIR).is_dir() {
            for (var, file) in [
                ("OPENMATCH_CA_CERT", "ca.crt"),
                ("OPENMATCH_CLIENT_CERT", "tls.crt"),
                ("OPENMATCH_CLIENT_KEY", "tls.key"),
            ] {
                defaults.insert(var, format!("{OPENMATCH_TLS_DIR}/{file}"));
            }
        }
        if workdir.join(MAPPING_DIR).is_dir() {
            defaults.insert("GA_MAPPING_DIR", MAPPING_DIR.to_string());
        }
        OriginalLayout { defaults }
    }

    /// The value of `var`: the flag's (certificate flags name a file inside `agones-tls/`), else
    /// the environment's, else the layout's.
    pub fn lookup(
        &self,
        flags: &GoFlags,
        env: &dyn Fn(&str) -> Option<String>,
        var: &str,
    ) -> Option<String> {
        let is_cert_flag =
            ["AGONES_CLIENT_CERT", "AGONES_CLIENT_KEY", "AGONES_CA_CERT"].contains(&var);
        match flags.values.get(var) {
            Some(_) if is_cert_flag => self.defaults.get(var).cloned(),
            Some(value) => Some(value.clone()),
            None => env(var).or_else(|| self.defaults.get(var).cloned()),
        }
    }

    /// One line for the log: the original's flags are in use, and which files they lead to.
    pub fn describe(&self) -> String {
        let get = |var: &str| self.defaults.get(var).map(String::as_str);
        format!(
            "Started with the original director's flags: Agones client certificate {}, key {}, CA {}; Open Match {}; Global Accelerator mapping {} (variables set in the environment take precedence over these files, flags over both)",
            get("AGONES_CLIENT_CERT").unwrap_or_default(),
            get("AGONES_CLIENT_KEY").unwrap_or_default(),
            get("AGONES_CA_CERT").unwrap_or_default(),
            get("OPENMATCH_CA_CERT").map_or_else(
                || format!("without TLS (no {OPENMATCH_TLS_DIR}/ directory)"),
                |_| format!("mTLS from {OPENMATCH_TLS_DIR}/{{tls.crt,tls.key,ca.crt}}")
            ),
            get("GA_MAPPING_DIR").map_or_else(
                || format!("none (no {MAPPING_DIR}/ directory)"),
                |dir| format!("from {dir}/")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::certs::TempDir;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn every_spelling_of_a_flag() {
        for spelled in [
            "-backendAddr om.example",
            "--backendAddr om.example",
            "-backendAddr=om.example",
            "--backendAddr=om.example",
        ] {
            let flags = parse(&args(spelled)).unwrap();
            assert_eq!(
                flags.values["OPENMATCH_BACKEND_ADDR"], "om.example",
                "{spelled}"
            );
        }
        assert_eq!(
            parse(&args("-multicluster")).unwrap().values["AGONES_MULTICLUSTER"],
            "true"
        );
        assert_eq!(
            parse(&args("--multicluster=false")).unwrap().values["AGONES_MULTICLUSTER"],
            "false"
        );
    }

    #[test]
    fn the_guidance_manifest_command_line() {
        let flags = parse(&args(
            "-backendAddr open-match-backend.open-match.svc.cluster.local -backendPort 50505 \
             -functionAddr mmf.agones-openmatch.svc -functionPort 50502 \
             -allocatorAddr agones-allocator.agones-system.svc.cluster.local -allocatorPort 443 \
             -certFile tls.crt -keyFile tls.key -caFile ca.crt -namespace agones-system \
             -regions us-east-1,us-east-2 -ranges 0-24,25-49,50-74,74-99,100-9999 -interval 5 -multicluster",
        ))
        .unwrap();
        assert_eq!(flags.values.len(), FLAGS.len());
        assert_eq!(flags.values["RANGES"], "0-24,25-49,50-74,74-99,100-9999");
        assert_eq!(flags.values["INTERVAL"], "5");
    }

    #[test]
    fn errors_name_the_problem_and_list_the_flags() {
        for (line, problem) in [
            ("-backendAdr x", "unknown flag \"-backendAdr\""),
            ("-regions", "flag -regions needs a value"),
            ("-interval 5 stray", "unexpected argument \"stray\""),
            ("run", "unexpected argument \"run\""),
        ] {
            let error = parse(&args(line)).unwrap_err();
            assert!(error.starts_with(problem), "{line}: {error}");
            assert!(error.contains("-backendAddr VALUE"), "{error}");
            assert!(error.contains("-multicluster"), "{error}");
        }
    }

    #[test]
    fn the_original_layout_supplies_files_under_the_working_directory() {
        let workdir = TempDir::new("app");
        let flags = parse(&args("-certFile client.pem -namespace games")).unwrap();
        let env =
            |var: &str| (var == "AGONES_NAMESPACE" || var == "REGIONS").then(|| "env".to_string());
        let layout = OriginalLayout::of(&flags, workdir.path());
        let lookup = |var: &str| layout.lookup(&flags, &env, var);
        assert_eq!(
            lookup("AGONES_CLIENT_CERT").as_deref(),
            Some("agones-tls/client.pem")
        );
        assert_eq!(
            lookup("AGONES_CLIENT_KEY").as_deref(),
            Some("agones-tls/tls.key")
        );
        assert_eq!(
            lookup("AGONES_NAMESPACE").as_deref(),
            Some("games"),
            "a flag wins"
        );
        assert_eq!(lookup("REGIONS").as_deref(), Some("env"));
        assert_eq!(lookup("OPENMATCH_CA_CERT"), None);
        assert_eq!(lookup("GA_MAPPING_DIR"), None);
        assert!(layout.describe().contains("Open Match without TLS"));

        std::fs::create_dir(workdir.path().join(OPENMATCH_TLS_DIR)).unwrap();
        std::fs::create_dir(workdir.path().join(MAPPING_DIR)).unwrap();
        let layout = OriginalLayout::of(&flags, workdir.path());
        let lookup = |var: &str| layout.lookup(&flags, &env, var);
        assert_eq!(
            lookup("OPENMATCH_CLIENT_CERT").as_deref(),
            Some("openmatch-tls/tls.crt")
        );
        assert_eq!(lookup("GA_MAPPING_DIR").as_deref(), Some(MAPPING_DIR));
        assert!(layout
            .describe()
            .contains("mapping from global-accelerator-mapping/"));
    }
}
