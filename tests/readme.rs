//! The README's tables name what the registries hold: every system kind in the systems table,
//! every probe in the probes table, and nothing that is not registered.

use std::collections::BTreeSet;

/// The first backticked word of each row of the first table after `heading`.
fn first_column(readme: &str, heading: &str) -> BTreeSet<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading}"));
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| {
            let cell = l.split('|').nth(1)?;
            let name = cell.split('`').nth(1)?;
            Some(name.to_string())
        })
        .collect()
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_systems_table_names_every_registered_kind() {
    let listed = first_column(&readme(), "## Systems");
    let registered: BTreeSet<String> = dedup_lab::systems::REGISTRY
        .iter()
        .map(|d| d.kind.to_string())
        .collect();
    assert_eq!(listed, registered, "README ## Systems vs systems::REGISTRY");
}

#[test]
fn the_probes_table_names_every_registered_probe() {
    let listed = first_column(&readme(), "**Probes**");
    let registered: BTreeSet<String> = dedup_lab::probe::REGISTRY
        .iter()
        .map(|d| d.name.to_string())
        .collect();
    assert_eq!(listed, registered, "README probes table vs probe::REGISTRY");
}

#[test]
fn the_snapshot_table_names_every_registered_kind() {
    let listed = first_column(&readme(), "## Trace and the systems' own accounting");
    let registered: BTreeSet<String> = dedup_lab::systems::REGISTRY
        .iter()
        .map(|d| d.kind.to_string())
        .collect();
    assert_eq!(
        listed, registered,
        "README snapshot table vs systems::REGISTRY"
    );
}

#[test]
fn the_layout_table_names_every_registered_kind() {
    let listed = first_column(&readme(), "### Content keys and containers");
    let registered: BTreeSet<String> = dedup_lab::systems::REGISTRY
        .iter()
        .map(|d| d.kind.to_string())
        .collect();
    assert_eq!(
        listed, registered,
        "README layout table vs systems::REGISTRY"
    );
}
