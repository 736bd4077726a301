//! Keeps the architecture of DESIGN.md true: reads every file under `src/` and fails
//! when a module uses a module of a higher layer, or one it must not know about, or
//! when a part of `replication/` uses a part it must not (imports there point one way).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of every top-level module, bottom (0) to top (7). `metrics` may be used from
/// anywhere.
const LAYERS: &[(&str, u8)] = &[
    ("clock", 0),
    ("store", 0),
    ("session", 0),
    ("auth", 0),
    ("membership", 1),
    ("wire", 1),
    ("metrics", 1),
    ("persist", 1),
    ("skew", 1),
    ("transport", 2),
    ("peer", 2),
    ("tls", 2),
    ("replication", 3),
    ("api", 4),
    ("config", 5),
    ("node", 5),
    // The fuzz targets' bodies: they drive every parser of untrusted bytes, from the
    // codec to the router, so they sit with the assembly.
    ("fuzz_checks", 5),
    ("tools", 6),
    ("cli", 7),
];

/// The server's internals, which black-box tools must not use.
const INTERNALS: &[&str] = &[
    "auth",
    "clock",
    "store",
    "session",
    "membership",
    "skew",
    "wire",
    "persist",
    "transport",
    "peer",
    "tls",
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

/// The parts of `replication/` and which others each may use; `mod` is `mod.rs`, the
/// `Replica` handle, which may use them all. Each part may use only parts listed before
/// it, so imports point one way and cannot form a cycle; in particular nothing but
/// `mod` uses `mod` (the `Replica` handle, or anything else defined there), and the
/// driver knows neither the write nor the read path.
const REPLICATION: &[(&str, &[&str])] = &[
    ("level", &[]),
    ("outbox", &[]),
    ("anti_entropy", &[]),
    ("durable", &[]),
    ("tombstones", &[]),
    // The change feed knows nothing of the state that publishes into it.
    ("changes", &[]),
    ("state", &["changes", "durable", "tombstones"]),
    ("peers", &["outbox", "state"]),
    ("driver", &["anti_entropy", "outbox", "peers", "state"]),
    ("gate", &["level", "peers", "state"]),
    ("write", &["level", "outbox", "peers", "state"]),
    ("read", &["level", "outbox", "peers", "state"]),
    ("responder", &["anti_entropy", "peers", "state"]),
    (
        "mod",
        &[
            "level",
            "outbox",
            "anti_entropy",
            "durable",
            "tombstones",
            "changes",
            "state",
            "peers",
            "driver",
            "gate",
            "write",
            "read",
            "responder",
        ],
    ),
];

/// The outside worlds a node touches, each through one seam: the tokens that reach
/// it directly, and the one server file allowed to use them (its production side).
/// The black-box tools and the command line are not the server: they may use both.
const SEAMS: &[(&str, &[&str], &str)] = &[
    (
        "the network",
        &[
            "tokio::net",
            "TcpStream",
            "TcpListener",
            "TcpSocket",
            "UdpSocket",
        ],
        "transport.rs",
    ),
    (
        "the clock",
        &["SystemTime", "std::time::Instant", "UNIX_EPOCH"],
        "node.rs",
    ),
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

/// Every `<prefix>name` the text refers to, with its line number; `<prefix>{a, b}`
/// groups count each name. Comments are skipped.
fn references(text: &str, prefix: &str) -> Vec<(usize, String)> {
    let group_prefix = format!("{prefix}{{");
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
        }
        // `use crate::{a, b}` style groups.
        if let Some(at) = code.find(&group_prefix) {
            let group = &code[at + group_prefix.len()..];
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

/// Every `crate::name` the text refers to, with its line number.
fn crate_references(text: &str) -> Vec<(usize, String)> {
    references(text, "crate::")
}

/// The parts of `replication/` that a file of it refers to, with line numbers: through
/// `super::` or `crate::replication::`. A name that is not a part (`super::Replica`)
/// is something defined in `mod.rs`, so a use of `mod`. Test code (from the first
/// `#[cfg(test)]` on) is left out: its `super::` is the file's own module.
fn replication_references(text: &str) -> Vec<(usize, String)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let parts: Vec<&str> = REPLICATION.iter().map(|(part, _)| *part).collect();
    references(code, "super::")
        .into_iter()
        .chain(references(code, "crate::replication::"))
        .map(|(line, name)| {
            let part = if parts.contains(&name.as_str()) {
                name
            } else {
                "mod".to_owned()
            };
            (line, part)
        })
        .collect()
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
fn parts_of_replication_use_only_the_parts_below_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/replication");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut violations = Vec::new();
    for (index, (part, allowed)) in REPLICATION.iter().enumerate() {
        let earlier: Vec<&str> = REPLICATION[..index].iter().map(|(p, _)| *p).collect();
        for used in *allowed {
            if !earlier.contains(used) {
                violations.push(format!(
                    "tests/layering.rs: {part} may use {used}, which is not listed before it"
                ));
            }
        }
    }
    for file in &files {
        let part = file
            .file_stem()
            .and_then(|stem| stem.to_str())
            .expect("file name");
        let Some((_, allowed)) = REPLICATION.iter().find(|(name, _)| *name == part) else {
            violations.push(format!(
                "{}: replication part {part} is not listed in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source is readable");
        for (line, used) in replication_references(&text) {
            if used != part && !allowed.contains(&used.as_str()) {
                violations.push(format!(
                    "{}:{line}: replication part {part} must not use {used}",
                    file.display()
                ));
            }
        }
    }
    assert!(
        files.len() >= REPLICATION.len(),
        "replication/ has fewer files than parts listed"
    );
    assert!(
        violations.is_empty(),
        "replication import violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_replication_scanner_classifies_parts_and_skips_tests() {
    let text = "use super::peers::{Job, Peer};\nuse super::{state, Replica};\nuse crate::replication::write::write;\n// super::read in a comment\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
    let parts: Vec<String> = replication_references(text)
        .into_iter()
        .map(|(_, part)| part)
        .collect();
    assert_eq!(parts, ["peers", "state", "mod", "write"]);
}

#[test]
fn the_outside_world_enters_through_one_seam_each() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let name = relative.to_str().expect("UTF-8 path");
        if name.starts_with("tools") || name == "cli.rs" || name == "main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source is readable");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // `use std::time::{Duration, Instant}` names std's Instant too.
            let std_instant = code.contains("std::time::{") && code.contains("Instant");
            for (world, tokens, seam) in SEAMS {
                let touches = tokens.iter().any(|token| code.contains(token))
                    || (*world == "the clock" && std_instant);
                if touches && name != *seam {
                    violations.push(format!(
                        "{}:{}: reaches {world} directly; only {seam} may",
                        file.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "seam violations:\n{}",
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
