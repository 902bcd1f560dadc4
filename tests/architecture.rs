//! The house as built, checked against docs/architecture.md: the rooms (the modules of
//! src/lib.rs, and the modules of each group in it: `transport::milter`, …) and, for each, the
//! rooms its code uses (every `crate::room` outside its tests), must be what the table there
//! says; the arrows never run in a circle; the socketmap (a lookup table) reaches no room of
//! the judge; the transports (milter, LMTP, the Exim scanner, XRPC and its HTTPS inbox) reach
//! routing, reputation and replays only through the judge; no source file is over 700 lines;
//! no function is over 120.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `pub mod NAME;` lines of a module file.
fn modules_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

/// The groups of rooms (docs/architecture.md): folders of src/ whose mod.rs says what the
/// group is for and declares its rooms, nothing else.
const GROUPS: [&str; 6] = [
    "transport",
    "policy",
    "verification",
    "atproto",
    "format",
    "infra",
];

fn is_group(name: &str) -> bool {
    let path = root().join("src").join(name).join("mod.rs");
    GROUPS.contains(&name)
        && std::fs::read_to_string(&path).unwrap().lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with("//!") || l.starts_with("pub mod ")
        })
}

/// The rooms, as paths below the crate: `cli`, `transport::milter`, …
fn rooms() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for name in modules_of(&root().join("src/lib.rs")) {
        if is_group(&name) {
            for room in modules_of(&root().join("src").join(&name).join("mod.rs")) {
                all.insert(format!("{name}::{room}"));
            }
        } else {
            all.insert(name);
        }
    }
    for group in GROUPS {
        assert!(
            is_group(group),
            "src/{group}/mod.rs holds more than its rooms"
        );
    }
    all
}

/// The files of a room: src/ROOM.rs or everything below src/ROOM/.
fn files(room: &str) -> Vec<PathBuf> {
    let room = room.replace("::", "/");
    let single = root().join(format!("src/{room}.rs"));
    if single.exists() {
        return vec![single];
    }
    let mut out = Vec::new();
    let mut dirs = vec![root().join("src").join(room)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// A file's code without its `#[cfg(test)]` module (tests may reach anywhere).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The room a path below the crate names (`infra::config::Config` → `infra::config`).
fn room_named(path: &str, all: &BTreeSet<String>) -> Option<String> {
    let mut parts = path.split("::");
    let first = parts.next()?;
    if all.contains(first) {
        return Some(first.to_string());
    }
    let room = format!("{first}::{}", parts.next()?);
    all.contains(&room).then_some(room)
}

/// The rooms `room`'s code names as `crate::OTHER`.
fn uses(room: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for file in files(room) {
        let code = code_of(&file);
        for (at, _) in code.match_indices("crate::") {
            let path: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            match room_named(&path, all) {
                Some(name) if name != room => {
                    used.insert(name);
                }
                Some(_) => {}
                // `use crate::{a, b::c}` would hide its rooms from this reading.
                None => assert!(
                    !path.is_empty() && !path.ends_with("::"),
                    "{}: a `crate::` path this test cannot read: {path:?}",
                    file.display()
                ),
            }
        }
    }
    used
}

/// The table of docs/architecture.md: room → the rooms its "uses" column names.
fn documented(all: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut table = BTreeMap::new();
    for line in text.lines() {
        let line = line.replace("\\|", "/");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 {
            continue;
        }
        let Some(room) = cells[1]
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|r| all.contains(*r))
        else {
            continue;
        };
        let named: BTreeSet<String> = cells[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|name| room_named(name, all))
            .collect();
        table.insert(room.to_string(), named);
    }
    table
}

#[test]
fn the_import_graph_is_the_one_docs_architecture_draws() {
    let all = rooms();
    let table = documented(&all);
    let mut wrong = Vec::new();
    for room in &all {
        let code = uses(room, &all);
        match table.get(room) {
            None => wrong.push(format!("{room}: no row in docs/architecture.md")),
            Some(doc) if *doc != code => wrong.push(format!(
                "{room}: the code uses {code:?}, docs/architecture.md says {doc:?}"
            )),
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_arrows_run_one_way() {
    let all = rooms();
    let graph: BTreeMap<String, BTreeSet<String>> =
        all.iter().map(|r| (r.clone(), uses(r, &all))).collect();
    // Depth-first search for a path back to where it started.
    fn cycle(
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let here = path.last().unwrap().clone();
        for next in &graph[&here] {
            if let Some(at) = path.iter().position(|p| p == next) {
                return Some(path[at..].to_vec());
            }
            if done.contains(next) {
                continue;
            }
            path.push(next.clone());
            if let Some(found) = cycle(graph, path, done) {
                return Some(found);
            }
            path.pop();
        }
        done.insert(here);
        None
    }
    let mut done = BTreeSet::new();
    for room in &all {
        if let Some(found) = cycle(&graph, &mut vec![room.clone()], &mut done) {
            panic!("a circle: {}", found.join(" → "));
        }
    }
    assert!(
        !graph["transport::socketmap"].contains("policy::judge"),
        "the socketmap reaches the judge's settings: {:?}",
        graph["transport::socketmap"]
    );
    // Transports only translate the judge's answers: what decides (consent, reputation,
    // replays) is the judge's to ask.
    for transport in ["milter", "lmtp", "exim", "xrpc"].map(|t| format!("transport::{t}")) {
        for decider in ["routing", "reputation", "replay"].map(|d| format!("policy::{d}")) {
            assert!(
                !graph[&transport].contains(&decider),
                "{transport} uses {decider} itself instead of asking the judge: {:?}",
                graph[&transport]
            );
        }
    }
}

#[test]
fn no_source_file_is_over_700_lines() {
    let all = rooms();
    let long: Vec<String> = all
        .iter()
        .flat_map(|r| files(r))
        .chain(groups_and_roots())
        .filter_map(|f| {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            (lines > 700).then(|| format!("{}: {lines}", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{long:?}");
}

/// src/lib.rs, src/main.rs and each group's mod.rs.
fn groups_and_roots() -> Vec<PathBuf> {
    let mut out = vec![root().join("src/lib.rs"), root().join("src/main.rs")];
    for name in modules_of(&root().join("src/lib.rs")) {
        if is_group(&name) {
            out.push(root().join("src").join(name).join("mod.rs"));
        }
    }
    out
}

/// Every `fn` of a file with its length in lines: from its line to the closing brace at its
/// indentation (rustfmt's layout).
fn functions(path: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let head = trimmed
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        let Some(name) = head.strip_prefix("fn ") else {
            continue;
        };
        if line.ends_with(';') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[at..].iter().position(|l| *l == close) {
            let name: String = name
                .chars()
                .take_while(|c| *c != '(' && *c != '<')
                .collect();
            out.push((format!("{}:{} {name}", path.display(), at + 1), end + 1));
        }
    }
    out
}

#[test]
fn no_function_is_over_120_lines() {
    let all = rooms();
    let long: Vec<String> = all
        .iter()
        .flat_map(|r| files(r))
        .flat_map(|f| functions(&f))
        .filter(|(_, lines)| *lines > 120)
        .map(|(name, lines)| format!("{name}: {lines}"))
        .collect();
    assert!(long.is_empty(), "{long:#?}");
}

#[test]
fn no_test_function_is_over_150_lines() {
    let mut long = Vec::new();
    for entry in std::fs::read_dir(root().join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            long.extend(
                functions(&path)
                    .into_iter()
                    .filter(|(_, lines)| *lines > 150)
                    .map(|(name, lines)| format!("{name}: {lines}")),
            );
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}
