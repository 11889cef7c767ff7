//! The 0.22 usage snippet is compiled and run as this crate's doctest (its crate docs are
//! `crates/burn-dice-0.22/README.md`); the workspace README shows it under "Which burn?", and
//! this test keeps the two equal. The crate README's feature table lists every feature.

use std::path::Path;

/// The ```rust blocks of a Markdown file, in order.
fn rust_blocks(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.split("```rust\n")
        .skip(1)
        .map(|rest| {
            let len = rest
                .find("```")
                .unwrap_or_else(|| panic!("{}: unterminated ```rust block", path.display()));
            rest[..len].to_string()
        })
        .collect()
}

#[test]
fn workspace_readme_shows_the_tested_snippet() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crate_docs = rust_blocks(&here.join("README.md"));
    let workspace = rust_blocks(&here.join("../../README.md"));
    let snippet = &crate_docs[0];
    assert!(snippet.contains("Device::flex()"), "{snippet}");
    assert!(
        workspace.iter().any(|block| block == snippet),
        "README.md must show crates/burn-dice-0.22/README.md's snippet"
    );
    // The 0.21 snippet comes first there, and differs.
    assert_ne!(&workspace[0], snippet);
}

#[test]
fn the_feature_table_lists_every_feature() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(here.join("README.md")).unwrap();
    let manifest = std::fs::read_to_string(here.join("Cargo.toml")).unwrap();
    let features = manifest
        .split("[features]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [features] table");
    for line in features.lines() {
        if let Some((name, _)) = line.split_once(" = ") {
            if name != "default" && !line.starts_with('#') {
                assert!(
                    readme.contains(&format!("| `{name}` |")),
                    "feature `{name}` is missing from the crate README's feature table"
                );
            }
        }
    }
}
