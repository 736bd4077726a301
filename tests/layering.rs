//! Keeps the architecture of DESIGN.md true: reads every file under `src/` and fails
//! when a module uses a module of a higher layer, or one it must not know about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of every top-level module, bottom (0) to top (7). `metrics` may be used from
/// anywhere.
const LAYERS: &[(&str, u8)] = &[
    ("clock", 0),
    ("store", 0),
    ("membership", 1),
    ("wire", 1),
    ("metrics", 1),
    ("transport", 2),
    ("peer", 2),
    ("replication", 3),
    ("api", 4),
    ("config", 5),
    ("node", 5),
    ("tools", 6),
    ("cli", 7),
];

/// The server's internals, which black-box tools must not use.
const INTERNALS: &[&str] = &[
    "clock",
    "store",
    "membership",
    "wire",
    "transport",
    "peer",
    "replication",
    "api",
    "node",
];

/// Modules that must not know about others even when the layers would allow it.
const FORBIDDEN: &[(&str, &[&str])] = &[
    // The HTTP layer knows nothing of the wire format or peer links.
    ("api", &["wire", "peer"]),
    // Black-box tools speak only the public API, so they work against any server.
    ("tools", INTERNALS),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs, main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Every `crate::name` the text refers to, with its line number.
fn crate_references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
        }
        // `use crate::{a, b}` style groups.
        if let Some(at) = code.find("crate::{") {
            let group = &code[at + "crate::{".len()..];
            for name in group
                .split(['{', '}', ',', ' '])
                .filter(|part| !part.is_empty())
            {
                let name = name.split("::").next().unwrap_or(name);
                if name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    found.push((number + 1, name.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn modules_only_use_modules_of_their_layer_or_below() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&own_layer) = layers.get(module.as_str()) else {
            violations.push(format!(
                "{}: module {module} has no layer in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let forbidden: &[&str] = FORBIDDEN
            .iter()
            .find(|(name, _)| *name == module)
            .map_or(&[], |(_, list)| *list);
        let text = std::fs::read_to_string(file).expect("source is readable");
        for (line, used) in crate_references(&text) {
            checked += 1;
            if used == module || used == "metrics" {
                continue;
            }
            let Some(&used_layer) = layers.get(used.as_str()) else {
                continue;
            };
            if used_layer > own_layer {
                violations.push(format!(
                    "{}:{line}: {module} (layer {own_layer}) uses {used} (layer {used_layer})",
                    file.display()
                ));
            }
            if forbidden.contains(&used.as_str()) {
                violations.push(format!(
                    "{}:{line}: {module} must not know about {used}",
                    file.display()
                ));
            }
        }
    }
    assert!(
        checked > 20,
        "the scan found almost no references; is it still reading src/?"
    );
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_finds_references() {
    let text =
        "use crate::store::Store;\nuse crate::{clock::NodeId, wire};\n// crate::api in a comment\n";
    let names: Vec<String> = crate_references(text)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert!(names.contains(&"store".to_owned()));
    assert!(names.contains(&"clock".to_owned()));
    assert!(names.contains(&"wire".to_owned()));
    assert!(!names.contains(&"api".to_owned()));
}
