//! The README's usage snippet is compiled and run as the burn-dice crate's doctest (its crate
//! docs are `crates/burn-dice/README.md`); the workspace README shows the same snippet, and this
//! test keeps the two equal, and their feature tables too.

use std::path::Path;

/// The first ```rust block of a Markdown file.
fn first_rust_block(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let start = text
        .find("```rust\n")
        .unwrap_or_else(|| panic!("{} has no ```rust block", path.display()))
        + "```rust\n".len();
    let len = text[start..]
        .find("```")
        .unwrap_or_else(|| panic!("{}: unterminated ```rust block", path.display()));
    text[start..start + len].to_string()
}

#[test]
fn workspace_readme_shows_the_tested_snippet() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = first_rust_block(&root.join("README.md"));
    let crate_docs = first_rust_block(&root.join("crates/burn-dice/README.md"));
    assert!(workspace.contains("DiceLossConfig"), "{workspace}");
    assert_eq!(
        workspace, crate_docs,
        "README.md and crates/burn-dice/README.md must show the same usage snippet"
    );
}

/// The Markdown table that starts with `header`, up to the first blank line.
fn table(path: &Path, header: &str) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let start = text
        .find(header)
        .unwrap_or_else(|| panic!("{} has no table `{header}`", path.display()));
    let len = text[start..].find("\n\n").unwrap_or(text.len() - start);
    text[start..start + len].to_string()
}

#[test]
fn both_readmes_list_the_same_features() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let header = "| feature | default | brings |";
    let workspace = table(&root.join("README.md"), header);
    let crate_docs = table(&root.join("crates/burn-dice/README.md"), header);
    assert_eq!(workspace, crate_docs);
    // Every feature of the crate's manifest is in the table.
    let manifest = std::fs::read_to_string(root.join("crates/burn-dice/Cargo.toml")).unwrap();
    let features = manifest
        .split("[features]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [features] table");
    for line in features.lines() {
        if let Some((name, _)) = line.split_once(" = ") {
            if name != "default" && !line.starts_with('#') {
                assert!(
                    workspace.contains(&format!("| `{name}` |")),
                    "feature `{name}` is missing from the README's feature table"
                );
            }
        }
    }
}
