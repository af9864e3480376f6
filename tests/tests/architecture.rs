//! The shape of the two crates, kept (ARCHITECTURE.md, issue "one pass, one house"): no import
//! circle between the top-level modules of `layergate-filter` or `layergate-operator` (a
//! module may use only modules below it), and no source file beyond 500 lines (its tests,
//! in a `tests.rs` beside it, do not count).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each top-level module of `src` and the top-level modules its code (not its comments, not
/// its tests) names as `crate::…`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().to_string_lossy().into_owned();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if ["lib", "main"].contains(&top.as_str()) || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let uses = graph.entry(top.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap();
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A circle through `from`, if there is one: the path back to it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == from {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_module_of_either_crate_imports_in_a_circle() {
    for krate in ["filter/src", "operator/src"] {
        let g = graph(&repo().join(krate));
        assert!(g.len() > 10, "{krate}: {g:?}");
        for m in g.keys() {
            assert!(
                circle(&g, m).is_none(),
                "{krate}: {m} imports in a circle: {:?}",
                circle(&g, m)
            );
        }
    }
    // The check sees a circle when there is one.
    let mut g = graph(&repo().join("operator/src"));
    g.get_mut("settings").unwrap().insert("render".into());
    assert!(circle(&g, "settings").is_some());
}

#[test]
fn no_source_file_is_over_500_lines() {
    for krate in ["filter/src", "operator/src"] {
        let mut files = Vec::new();
        sources(&repo().join(krate), &mut files);
        for f in files.iter().filter(|f| !f.ends_with("tests.rs")) {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            assert!(lines <= 500, "{}: {lines} lines", f.display());
        }
    }
}
