//! The library's top-level modules form layers: each uses only modules below it, so there is no
//! import cycle. Run `cargo test --test layers -- --nocapture` to print the dependency graph.
//!
//! A module's dependencies are the `crate::<module>` paths in its non-test code (comments and
//! `#[cfg(test)]` modules left out): what `use` and qualified paths name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use the modules listed before it, never after.
const LAYERS: &[&str] = &[
    "error",
    "secret",
    "tls",
    "dataset",
    "scan",
    "model",
    "journal",
    "probe",
    "lab",
    "systems",
    "results",
    "sinks",
    "config",
    "deploy",
    "experiment",
    "preflight",
];

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module or items.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module → the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        // The binary and the crate root are above every layer; test-only files are not code.
        if ["main", "cli", "lib"].contains(&module.as_str())
            || rel
                .file_name()
                .is_some_and(|n| n == "tests.rs" || n == "fake.rs")
        {
            continue;
        }
        let text = code(&std::fs::read_to_string(&path).unwrap());
        let uses = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && name != "bail_usage" {
                uses.insert(name);
            }
        }
    }
    graph
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let graph = graph();
    for (module, uses) in &graph {
        println!(
            "{module:<12} -> {}",
            uses.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    for (module, uses) in &graph {
        let own = rank(module)
            .unwrap_or_else(|| panic!("module {module} is not in LAYERS: give it its layer"));
        for used in uses {
            let theirs = rank(used)
                .unwrap_or_else(|| panic!("{module} uses {used}, which is not in LAYERS"));
            assert!(
                theirs < own,
                "{module} uses {used}, a layer above it: move the shared part down (to model/, \
                 say) or the use up"
            );
        }
    }
    let listed: BTreeSet<&str> = LAYERS.iter().copied().collect();
    let found: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(listed, found, "LAYERS lists exactly the top-level modules");
}

#[test]
fn a_use_of_a_higher_layer_would_be_caught() {
    // The check reads paths out of code: a use in a comment does not count, one in code does.
    let text = code("// crate::experiment is fine here\nuse crate::results::derive;\n");
    assert!(text.contains("crate::results") && !text.contains("crate::experiment"));
}
