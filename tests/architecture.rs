//! The house as built, checked against docs/architecture.md: the rooms (the modules of
//! src/lib.rs) and, for each, the rooms its code uses (every `crate::room` outside its tests),
//! must be what the table there says; the arrows never run in a circle; the socketmap (a
//! lookup table) reaches no room of the judge (`session`); the transports (milter, LMTP, the
//! Exim scanner, XRPC and its HTTPS inbox) reach routing, reputation and replays only through
//! the judge; no source file is over 700 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rooms: `pub mod NAME;` in src/lib.rs.
fn rooms() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("src/lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

/// The files of a room: src/ROOM.rs or everything below src/ROOM/.
fn files(room: &str) -> Vec<PathBuf> {
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

/// The rooms `room`'s code names as `crate::OTHER`.
fn uses(room: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for file in files(room) {
        let code = code_of(&file);
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if all.contains(&name) && name != room {
                used.insert(name);
            }
            // `use crate::{a, b::c}`
            if rest.starts_with('{') {
                let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or_default();
                    if all.contains(name) && name != room {
                        used.insert(name.to_string());
                    }
                }
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
            .map(|name| name.split("::").next().unwrap_or_default().to_string())
            .filter(|name| all.contains(name))
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
        !graph["socketmap"].contains("session"),
        "the socketmap reaches the session's settings: {:?}",
        graph["socketmap"]
    );
    // Transports only translate the judge's answers: what decides (consent, reputation,
    // replays) is the judge's to ask.
    for transport in ["milter", "lmtp", "exim", "xrpc"] {
        for decider in ["routing", "reputation", "replay"] {
            assert!(
                !graph[transport].contains(decider),
                "{transport} uses {decider} itself instead of asking the judge: {:?}",
                graph[transport]
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
        .chain([root().join("src/lib.rs"), root().join("src/main.rs")])
        .filter_map(|f| {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            (lines > 700).then(|| format!("{}: {lines}", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{long:?}");
}
