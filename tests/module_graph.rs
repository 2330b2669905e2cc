//! The library's top-level modules form a chain with no back-edges: no
//! module names (through `crate::…`) one that names it back, directly or
//! around a loop. Reading the request path top to bottom depends on it; this
//! test fails on the first cycle and prints it.
//!
//! Test code counts too: a `#[cfg(test)]` import that closes a loop still
//! ties the modules together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 5,
        "found too few modules under {}: {graph:?}",
        src.display()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "module cycle: {}\n(each arrow is a `crate::` path in the first module naming the second)",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_check_finds_a_cycle_when_there_is_one() {
    let graph: Graph = [
        ("server", &["pipeline", "tls"][..]),
        ("pipeline", &["authn", "proxy"][..]),
        ("authn", &["tls"][..]),
        ("proxy", &["server"][..]),
        ("tls", &[][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_owned(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph).unwrap(),
        ["pipeline", "proxy", "server", "pipeline"]
    );
    let mut acyclic = graph.clone();
    acyclic.get_mut("proxy").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn crate_paths_are_read_from_code_but_not_comments() {
    let text = "//! see [`crate::server`]\nuse crate::tls::TlsState;\n  let x = crate::proxy::f(); // crate::admin\nuse crate::{metrics::Metrics, body};\n";
    let names: Vec<_> = crate_paths(text).collect();
    assert_eq!(names, ["tls", "proxy", "metrics", "body"]);
}

/// Top-level module → the top-level modules its files name.
fn module_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The crate root declares every module; the binary uses the library
        // by name.
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(top.clone()).or_default();
        for target in crate_paths(&text) {
            if target != top {
                edges.insert(target.to_owned());
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The first segment after every `crate::` in code (comments skipped),
/// including each name of a `crate::{a, b::c}` group.
fn crate_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .flat_map(|code| code.split("crate::").skip(1))
        .flat_map(|rest| {
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|item| leading_identifier(item.trim()))
                    .collect(),
                None => vec![leading_identifier(rest)],
            };
            names.into_iter().filter(|n| !n.is_empty())
        })
}

fn leading_identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// A path `a → b → … → a`, if the graph has a cycle (depth-first search).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::OnPath) => {
                let start = path.iter().position(|n| *n == node).unwrap();
                let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}
