//! The layers of ARCHITECTURE.md, checked against the code: every module of `src/` is in the
//! table, and every `crate::` path in a module's non-test code names a module of its own layer or
//! below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layer of each module, from ARCHITECTURE.md's table (`| N | `a`, `b` | … |`).
fn layers() -> BTreeMap<String, u32> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("read ARCHITECTURE.md");
    let mut layers = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for module in cells[2].split(',') {
            layers.insert(module.trim().trim_matches('`').to_string(), layer);
        }
    }
    layers
}

/// The modules of `src/` (files and folders), but for the binaries and the test doubles, with the
/// source files of each.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "bin" | "doubles" | "lib" | "main") {
            continue;
        }
        let files = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("read module folder")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests.rs"))
                .collect()
        } else {
            vec![path]
        };
        modules.insert(name, files);
    }
    modules
}

/// The modules a file's non-test code names as `crate::NAME` (comments and a trailing
/// `#[cfg(test)] mod tests` left out).
fn imports(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read source");
    let code = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    let mut names = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            names.extend(first_names(rest));
        }
    }
    names
}

/// The module names at the start of a path after `crate::`: `a::…` gives `a`, `{a, b::c}` gives `a`
/// and `b`.
fn first_names(path: &str) -> Vec<String> {
    let word = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    match path.strip_prefix('{') {
        Some(group) => group
            .split('}')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(word)
            .collect(),
        None => vec![word(path)],
    }
}

#[test]
fn every_import_goes_down_the_layers() {
    let layers = layers();
    let modules = modules();
    let unplaced: Vec<&String> = modules
        .keys()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from ARCHITECTURE.md's layers: {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (module, files) in &modules {
        for file in files {
            for name in imports(file) {
                let is_module = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
                if name == *module || !is_module {
                    continue;
                }
                match layers.get(&name) {
                    Some(layer) if *layer <= layers[module] => {}
                    _ => upward.push(format!("{} imports {name}", file.display())),
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up a layer (or into the doubles): {upward:#?}"
    );
}
