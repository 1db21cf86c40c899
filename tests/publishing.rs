//! What a published crate needs and a reader of the repository meets: each crate's metadata,
//! licence files, README as its top-level docs and docs.rs settings; the repository's README
//! a user's guide; and no Markdown link that leads outside the repository or nowhere.

use std::path::{Path, PathBuf};

use garrison::toml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates under `crates/`: every one of them is published.
fn published() -> Vec<PathBuf> {
    let mut crates: Vec<_> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    assert!(crates.len() >= 9, "{crates:?}");
    crates
}

#[test]
fn every_published_crate_has_its_metadata_licences_readme_and_docs_rs_settings() {
    let workspace: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let shared = &workspace["workspace"]["package"];
    assert_eq!(shared["license"].as_str(), Some("MIT OR Apache-2.0"));
    assert!(
        shared.get("repository").is_none(),
        "no repository until there is a real one"
    );
    for dir in published() {
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let package = manifest["package"].as_table().unwrap();
        assert!(package.get("publish").is_none(), "{name} is published");
        let text = |key: &str| package.get(key).and_then(|v| v.as_str()).unwrap_or("");
        assert!(text("description").len() > 40, "{name}: description");
        assert_eq!(text("readme"), "README.md", "{name}");
        assert_eq!(
            text("documentation"),
            format!("https://docs.rs/{name}"),
            "{name}"
        );
        assert!(
            package["license"]
                .as_table()
                .is_some_and(|t| t["workspace"].as_bool() == Some(true)),
            "{name}: the workspace's licence"
        );
        assert!(package.get("repository").is_none(), "{name}: repository");
        for (key, most) in [("keywords", 5), ("categories", 5)] {
            let list = package[key].as_array().unwrap();
            assert!(!list.is_empty() && list.len() <= most, "{name}: {key}");
        }
        let docs_rs = &manifest["package"]["metadata"]["docs"]["rs"];
        assert_eq!(docs_rs["all-features"].as_bool(), Some(true), "{name}");
        assert_eq!(
            docs_rs["rustdoc-args"].as_array().unwrap(),
            &vec![toml::Value::from("--cfg"), toml::Value::from("docsrs")],
            "{name}"
        );
        for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
            // the licences are links to the repository's: the package holds their text
            let text = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            assert!(text.len() > 500, "{name}/{file}");
        }
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(
            lib.starts_with("#![doc = include_str!(\"../README.md\")]"),
            "{name}: the README is the crate's top-level doc, so that its example is a doctest"
        );
        assert!(
            lib.contains("#![cfg_attr(docsrs, feature(doc_cfg))]"),
            "{name}: docs.rs's form of the feature"
        );
        assert!(
            !lib.contains("doc_auto_cfg"),
            "{name}: removed from nightly"
        );
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(readme.starts_with(&format!("# {name}\n")), "{name}");
        assert!(
            readme.contains("```rust"),
            "{name}: a runnable example in its README"
        );
    }
    for file in ["LICENSE-MIT", "LICENSE-APACHE", "CHANGELOG.md"] {
        assert!(root().join(file).is_file(), "{file}");
    }
    let changelog = std::fs::read_to_string(root().join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains("## [Unreleased]"));
}

#[test]
fn the_readme_is_a_users_guide_under_400_lines_without_hashes_or_dates() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines < 400, "README.md has {lines} lines");
    for word in readme.split(|c: char| !c.is_ascii_alphanumeric() && c != '-') {
        let hash = word.len() >= 7
            && word.len() <= 40
            && word
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && word.bytes().any(|b| b.is_ascii_alphabetic())
            && word.bytes().any(|b| b.is_ascii_digit());
        assert!(!hash, "a commit hash in README.md: {word}");
        let b = word.as_bytes();
        let date = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        assert!(!date, "a date in README.md: {word}");
    }
    for doc in ["docs/architecture.md", "docs/performance.md"] {
        assert!(root().join(doc).is_file(), "{doc}");
        assert!(readme.contains(&format!("]({doc}")), "README links {doc}");
    }
}

/// The Markdown files of the repository, outside build outputs.
fn markdown(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            markdown(&path, found);
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
}

/// The targets of the inline links `[text](target)` and `![alt](target)` of `text`, outside
/// code spans and fenced blocks.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // code spans hold no links
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_owned());
            rest = &after[end..];
        }
    }
    targets
}

#[test]
fn every_relative_markdown_link_leads_to_a_file_inside_the_repository() {
    let root = root().canonicalize().unwrap();
    let mut files = Vec::new();
    markdown(&root, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in link_targets(&text) {
            if target.starts_with("https://")
                || target.starts_with("http://")
                || target.starts_with("mailto:")
                || target.starts_with('#')
                || target.is_empty()
            {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let resolved = file.parent().unwrap().join(path);
            let shown = file.strip_prefix(&root).unwrap().display();
            let Ok(resolved) = resolved.canonicalize() else {
                panic!("{shown}: the link to {target} leads nowhere");
            };
            assert!(
                resolved.starts_with(&root),
                "{shown}: the link to {target} leads outside the repository"
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked} links checked");
}

#[test]
fn the_link_reader_finds_links_and_skips_code() {
    let text = "see [a](docs/a.md) and ![b](img.svg#x)\n`[no](code.md)`\n```\n[no](fenced.md)\n```\n[c](https://x.y)";
    assert_eq!(
        link_targets(text),
        ["docs/a.md", "img.svg#x", "https://x.y"]
    );
}
