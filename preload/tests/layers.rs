//! The preload crate's modules form layers: none calls one above it, so their dependencies have no cycle.
//!
//! This test reads the sources of `preload/src` (not the compiled crate): every `use crate::…` and
//! `use super::…` line and every `crate::x::y` path outside comments and `#[cfg(test)]` code makes an
//! edge from the file's module to the deepest module the path names. It fails on any cycle and prints it.
//! Layers, top to bottom, are listed in `lib.rs` and README's layout table.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The module path of a source file: `lib.rs` is the root (""), `hooks/mod.rs` is `hooks`,
/// `hooks/pool.rs` is `hooks::pool`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("preload/src is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src");
            let text = fs::read_to_string(&path).expect("source is readable");
            out.push((module_of(rel), text));
        }
    }
}

/// The code of a file: comments removed, and everything from its `#[cfg(test)]` module on (unit tests
/// sit at the bottom of their file and may reach any layer).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths after `prefix` (`crate::` or `super::`): `a::b::c` as ["a", "b", "c"]; a `{…}` group expands
/// to one path per item (one level deep, enough for `use crate::{publish, state::{self, X}}`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        found.extend(parse_tree(rest, Vec::new()));
    }
    found
}

fn parse_tree(s: &str, base: Vec<String>) -> Vec<Vec<String>> {
    let mut path = base;
    let mut s = s.trim_start();
    loop {
        if let Some(group) = s.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &group[..end];
            let mut items = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&inner[start..]);
            return items
                .into_iter()
                .filter(|item| !item.trim().is_empty())
                .flat_map(|item| parse_tree(item, path.clone()))
                .collect();
        }
        let len = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
        if len == 0 {
            break;
        }
        path.push(s[..len].to_string());
        s = &s[len..];
        match s.strip_prefix("::") {
            Some(next) => s = next,
            None => break,
        }
    }
    vec![path]
}

/// The deepest known module a path names (`state::LEDGER` is `state`; `hooks::pool::refresh` is
/// `hooks::pool`).
fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        let code = code(text);
        let parent: Vec<String> = match module.rsplit_once("::") {
            Some((p, _)) => p.split("::").map(String::from).collect(),
            None => Vec::new(),
        };
        let mut targets: Vec<Vec<String>> = paths_after(&code, "crate::");
        for p in paths_after(&code, "super::") {
            targets.push(parent.iter().cloned().chain(p).collect());
        }
        let out = edges.entry(module.clone()).or_default();
        for target in targets {
            if let Some(to) = resolve(&target, &modules) {
                if &to != module && !to.is_empty() {
                    out.insert(to);
                }
            }
        }
    }
    edges
}

/// One cycle of the graph, if it has any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn preload_modules_have_no_cycle() {
    let edges = graph();
    assert!(edges.len() > 10, "too few modules read: {edges:?}");
    let listing: Vec<String> = edges
        .iter()
        .map(|(m, to)| {
            format!(
                "  {m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    println!("{}", listing.join("\n"));
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "the preload crate's modules call each other in a cycle: {}\nall edges:\n{}",
            cycle.join(" -> "),
            listing.join("\n")
        );
    }
}

#[test]
fn the_reader_sees_grouped_and_relative_paths() {
    let code =
        "use crate::{publish, state::{self, LEDGER}};\nlet x = crate::hooks::pool::refresh(d);";
    let paths = paths_after(code, "crate::");
    assert!(paths.contains(&vec!["publish".to_string()]));
    assert!(paths.contains(&vec!["state".to_string(), "self".to_string()]));
    assert!(paths.contains(&vec!["state".to_string(), "LEDGER".to_string()]));
    assert!(paths.contains(&vec![
        "hooks".to_string(),
        "pool".to_string(),
        "refresh".to_string()
    ]));
    let edges = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert!(find_cycle(&edges).is_some());
}
