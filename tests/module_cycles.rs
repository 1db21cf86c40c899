//! No module of a workspace crate imports a module that imports it back.
//!
//! Modules are compared at two levels: the crate's top-level modules (everything under
//! `src/proxy/` counts as `proxy`), and the children of one module directory among
//! themselves (`layer::service` against `layer::future`). A child naming its parent (`super::`)
//! is how Rust modules share their parent's items and is not counted; siblings and cousins
//! that name each other both ways are.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The module path of a source file, relative to the crate's `src/`: `lib.rs` and `main.rs` are
/// the root (empty), `a/mod.rs` and `a.rs` are `a`, `a/b.rs` is `a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    let is_root = parts.is_empty() && matches!(stem, "lib" | "main");
    if stem != "mod" && !is_root {
        parts.push(stem.to_owned());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and the contents of its string literals, so that a
/// doc comment naming `crate::x` is not read as an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // a char literal such as '"' or '\n' (a lifetime has no closing quote)
            let end = b[i + 1..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(b.len(), |p| i + 2 + p);
            i = end;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Paths used in `code` that start with `crate::` or `super::`, resolved against `module`:
/// each as the absolute module path it names (the identifiers after the prefix).
fn referenced_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut rest = code;
    while let Some(pos) = rest.find("::") {
        // the word before `::` and the words after
        let before = &rest[..pos];
        let start = before.rfind(|c: char| !ident(c)).map_or(0, |p| p + 1);
        let head = &before[start..];
        let after = &rest[pos + 2..];
        rest = after;
        let mut base: Vec<String> = match head {
            "crate" => Vec::new(),
            "super" => {
                // `super::super::x` is handled by counting the run of supers
                let mut up = 1;
                let mut tail = after;
                while let Some(t) = tail.strip_prefix("super::") {
                    up += 1;
                    tail = t;
                }
                if up > module.len() {
                    continue;
                }
                let base = module[..module.len() - up].to_vec();
                let names = path_words(tail, ident);
                let mut path = base;
                path.extend(names);
                found.push(path);
                continue;
            }
            _ => continue,
        };
        if start > 0 && before[..start].ends_with("::") {
            continue; // `foo::crate` cannot happen; `$crate::` is a macro's own crate
        }
        if start > 0 && before[..start].ends_with('$') {
            continue;
        }
        base.extend(path_words(after, ident));
        found.push(base);
    }
    found
}

/// The identifiers of a path `a::b::{c, d}` up to its first brace or non-path character. A
/// group in braces yields its prefix only, which is enough to name the module.
fn path_words(text: &str, ident: impl Fn(char) -> bool + Copy) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        words.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    words
}

/// For a referenced path, the longest prefix that is one of the crate's modules.
fn module_named(path: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// Every pair of modules, at the levels described at the top, that name each other.
fn cycles_in_crate(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    let mut code = Vec::new();
    for file in &files {
        let module = module_of(src, file);
        modules.insert(module.clone());
        let text = fs::read_to_string(file).expect("a readable file");
        code.push((module, code_only(&text)));
    }
    // edges at each level: (scope, from, to) where from and to are children of scope
    let mut edges: BTreeSet<(Vec<String>, String, String)> = BTreeSet::new();
    for (module, text) in &code {
        for path in referenced_paths(text, module) {
            let target = module_named(&path, &modules);
            // the deepest module both lie under, then the child of it on each side
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // itself, an ancestor or a descendant
            }
            edges.insert((
                module[..common].to_vec(),
                module[common].clone(),
                target[common].clone(),
            ));
        }
    }
    let mut graph: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (scope, from, to) in &edges {
        graph
            .entry(scope.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    let mut found = Vec::new();
    for (scope, nodes) in &graph {
        for cycle in strongly_connected(nodes) {
            let prefix = if scope.is_empty() {
                String::new()
            } else {
                format!("{}::", scope.join("::"))
            };
            let names: Vec<String> = cycle.iter().map(|n| format!("{prefix}{n}")).collect();
            found.push(names.join(" <-> "));
        }
    }
    found
}

/// The strongly connected components of more than one node (Tarjan).
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(next) = s.graph.get(v) {
            for w in next {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_module_in_the_workspace_imports_one_that_imports_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crates: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("the crates directory")
        .map(|e| e.expect("an entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    assert!(crates.len() >= 8, "the workspace's crates were not found");
    let mut all = Vec::new();
    for src in &crates {
        let name = src
            .parent()
            .and_then(Path::file_name)
            .expect("a crate name");
        for cycle in cycles_in_crate(src) {
            all.push(format!("{}: {cycle}", name.to_string_lossy()));
        }
    }
    assert!(
        all.is_empty(),
        "modules that import each other (move what both need into one of them or a third):\n{}",
        all.join("\n")
    );
}

#[test]
fn the_cycle_finder_sees_a_cycle_between_siblings_and_ignores_parents_and_comments() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path();
    fs::create_dir_all(src.join("layer")).expect("a module directory");
    fs::write(src.join("lib.rs"), "mod a; mod b; mod layer;").expect("a file");
    fs::write(
        src.join("a.rs"),
        "use crate::b::Thing;\n// crate::layer::x\n",
    )
    .expect("a file");
    fs::write(src.join("b.rs"), "pub fn f() { super::a::g() }").expect("a file");
    fs::write(src.join("layer/mod.rs"), "mod service; pub use service::S;").expect("a file");
    fs::write(
        src.join("layer/service.rs"),
        "use super::Config; use super::future::F;",
    )
    .expect("a file");
    fs::write(src.join("layer/future.rs"), "use crate::layer::service::S;").expect("a file");
    let found = cycles_in_crate(src);
    assert_eq!(found, ["a <-> b", "layer::future <-> layer::service"]);
}
