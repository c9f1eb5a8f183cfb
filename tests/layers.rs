//! The layer rule, checked on the source: every module of `src/` imports only from modules
//! of a lower layer (or from itself), and inside a module its files import each other
//! without a circle. Test-only code (`tests.rs`, `contract.rs`, `contract/`, inline
//! `#[cfg(test)] mod tests`) may reach anywhere and may be longer. Run it with `cargo test --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first; a module may import only from modules of strictly earlier layers.
const LAYERS: &[&[&str]] = &[
    &["backoff", "clock", "paging", "db"],
    &["batcher", "breaker"],
    &["config", "domain", "observability"],
    &["eventstore"],
    &["runtime"],
    &["dlq"],
    &["bus"],
    &["projections"],
    &["cache", "payment", "auth", "webhooks", "queue"],
    &["audit"],
    &["app"],
    &["http"],
    &["startup"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of tests/layers.rs"))
}

/// Every `.rs` file of the library (not the binaries), with its module path.
fn library_files() -> Vec<(Vec<String>, PathBuf)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, PathBuf)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut inner = prefix.to_vec();
                inner.push(name);
                walk(&path, &inner, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut module = prefix.to_vec();
                if name != "mod" {
                    module.push(name);
                }
                out.push((module, path));
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&src, &[], &mut out);
    out.retain(|(module, _)| {
        !module.is_empty()
            && module[0] != "bin"
            && module[0] != "main"
            && module[0] != "lib"
            && !module
                .iter()
                .any(|part| part == "tests" || part == "contract")
    });
    out
}

/// The file's text without its inline test module.
fn production_code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Module paths named as `crate::a::b...` in `code` (the first two segments).
fn crate_references(code: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let segments: Vec<String> = rest
            .split("::")
            .take(2)
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty())
            .collect();
        if !segments.is_empty() {
            out.insert(segments);
        }
    }
    out
}

/// Sibling files named as `super::x` from a file directly inside a module folder.
fn super_references(code: &str) -> BTreeSet<String> {
    code.match_indices("super::")
        .filter(|(at, _)| !code[..*at].ends_with("super::"))
        .map(|(at, _)| {
            code[at + "super::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// No module imports from a layer above its own (or from another module of its layer).
#[test]
fn every_module_imports_only_from_lower_layers() {
    let mut wrong = Vec::new();
    for (module, path) in library_files() {
        let own = layer_of(&module[0]);
        for target in crate_references(&production_code(&path)) {
            if target[0] == module[0] {
                continue;
            }
            if layer_of(&target[0]) >= own {
                wrong.push(format!(
                    "{} imports crate::{}",
                    path.display(),
                    target.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}

/// Inside each top-level module, its files import each other without a circle.
#[test]
fn no_import_circle_between_the_files_of_a_module() {
    let files = library_files();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        if module.len() < 2 {
            continue;
        }
        let (top, me) = (&module[0], &module[1]);
        let code = production_code(path);
        let mut targets: BTreeSet<String> = crate_references(&code)
            .into_iter()
            .filter(|t| &t[0] == top && t.len() == 2)
            .map(|t| t[1].clone())
            .collect();
        if module.len() == 2 && path.file_stem().is_some_and(|s| s != "mod") {
            targets.extend(super_references(&code));
        }
        let siblings: BTreeSet<&String> = files
            .iter()
            .filter(|(m, _)| m.len() >= 2 && &m[0] == top)
            .map(|(m, _)| &m[1])
            .collect();
        let node = format!("{top}::{me}");
        for target in targets {
            if &target != me && siblings.contains(&target) {
                edges
                    .entry(node.clone())
                    .or_default()
                    .insert(format!("{top}::{target}"));
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let from = path.iter().position(|n| n == node).unwrap_or(0);
                let mut circle = path[from..].to_vec();
                circle.push(node.to_owned());
                return Some(circle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, state, path) {
                return Some(circle);
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(circle) = visit(node, &edges, &mut state, &mut Vec::new()) {
            panic!("an import circle: {}", circle.join(" -> "));
        }
    }
}

/// No file of `src/` is over 450 lines, test files aside, and none holds a stub.
#[test]
fn source_files_stay_small_and_hold_no_stub() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            let is_test_file = path.components().any(|c| {
                ["tests", "contract", "tests.rs", "contract.rs"]
                    .contains(&&*c.as_os_str().to_string_lossy())
            });
            let lines = text.lines().count();
            if !is_test_file && lines > 450 {
                problems.push(format!("{} has {lines} lines", path.display()));
            }
            for stub in ["unimplemented!", "todo!"] {
                if text.contains(stub) {
                    problems.push(format!("{} holds {stub}", path.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
