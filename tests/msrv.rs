//! Each published crate's `rust-version` is true: it equals the highest `rust-version` that the crates
//! it depends on declare (normal and build dependencies, every feature on, for this host),
//! computed from `cargo metadata`. A dependency that raises its minimum fails this test until
//! the crate's own `rust-version` says so.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

fn version(v: Option<&str>) -> Vec<u64> {
    v.map(|v| v.split('.').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// The highest rust-version among `id`'s dependencies, and the crate that declares it.
fn highest(
    id: &str,
    packages: &HashMap<&str, &Value>,
    nodes: &HashMap<&str, &Value>,
    memo: &mut HashMap<String, (Vec<u64>, String)>,
) -> (Vec<u64>, String) {
    if let Some(m) = memo.get(id) {
        return m.clone();
    }
    memo.insert(id.to_owned(), (Vec::new(), String::new()));
    let mut best = (Vec::new(), String::new());
    for dep in nodes[id]["deps"].as_array().unwrap() {
        let normal_or_build = dep["dep_kinds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"].is_null() || k["kind"] == "build");
        if !normal_or_build {
            continue;
        }
        let pkg = dep["pkg"].as_str().unwrap();
        let p = packages[pkg];
        let own = (
            version(p["rust_version"].as_str()),
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            ),
        );
        let below = highest(pkg, packages, nodes, memo);
        for c in [own, below] {
            if c.0 > best.0 {
                best = c;
            }
        }
    }
    memo.insert(id.to_owned(), best.clone());
    best
}

#[test]
fn every_crates_rust_version_is_the_highest_of_its_dependencies() {
    let rustc = Command::new("rustc").arg("-vV").output().expect("rustc");
    let rustc = String::from_utf8(rustc.stdout).unwrap();
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--all-features"])
        .args(["--filter-platform", host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut memo = HashMap::new();
    let mut wrong = Vec::new();
    for member in meta["workspace_members"].as_array().unwrap() {
        let id = member.as_str().unwrap();
        let p = packages[id];
        if p["publish"].as_array().is_some_and(|a| a.is_empty()) {
            // the workspace's own test and bench packages are never published
            continue;
        }
        let declared = version(p["rust_version"].as_str());
        let (needed, by) = highest(id, &packages, &nodes, &mut memo);
        let text = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
        // 1.94 and 1.94.0 say the same
        let trim = |mut v: Vec<u64>| {
            while v.len() > 2 && v.last() == Some(&0) {
                v.pop();
            }
            v
        };
        if trim(declared.clone()) != trim(needed.clone()) {
            wrong.push(format!(
                "{}: rust-version {} but {} needs {}",
                p["name"].as_str().unwrap(),
                text(&declared),
                by,
                text(&needed)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
