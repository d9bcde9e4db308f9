//! The ownership rule, written once: dedup-lab creates, writes and drops only namespaces it
//! created, and only while no other live run holds them.
//!
//! Every adapter reports what its namespace holds ([`Holding`]) and can empty it
//! ([`System::recreate`]); [`reset`] decides. A namespace is lab-owned when it holds the
//! adapter's marker (a table, key, object, file or record). The marker's text carries the
//! [`Lease`] of the run that last reset it: a run refuses a namespace leased by another live
//! run, takes over one whose holder stopped (the engine journals that), and renews its own
//! lease at resets once it is a quarter of the lease lifetime old.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::model::{Lease, SysError, SysResult};
use crate::systems::System;

/// Prefix every lab-owned namespace name starts with.
pub const LAB_PREFIX: &str = "dedup_lab";

/// Table whose presence marks a schema, database or file as created by dedup-lab (SQL
/// systems); other systems keep the marker in their own kind of object.
pub const MARKER_TABLE: &str = "dedup_lab_owner";

/// What a namespace holds, as its adapter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Nothing, or only what a reset cut short leaves behind (an empty, unmarked container):
    /// nothing to lose.
    Absent,
    /// dedup-lab's marker, with the marker's text (which may hold a lease).
    Marked(String),
    /// Data dedup-lab did not create: what is there, for the refusal message.
    Foreign(String),
}

/// The marker text an adapter stores, and whether it differs from what the namespace holds
/// (an adapter that keeps its marker across resets writes it only then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The text to store.
    pub text: String,
    /// Whether it must be written.
    pub changed: bool,
}

/// What a marker's text holds.
#[derive(Serialize, Deserialize)]
struct MarkerText {
    created_by: String,
    note: String,
    #[serde(default)]
    lease: Option<Lease>,
}

impl MarkerText {
    /// The text of a marker holding `lease`.
    fn text(lease: &Lease) -> String {
        serde_json::to_string(&MarkerText {
            created_by: "dedup-lab".into(),
            note: "this namespace is emptied by dedup-lab's resets".into(),
            lease: Some(lease.clone()),
        })
        .expect("marker serializes")
    }

    /// The lease in a marker's text; markers of older versions hold a plain note and no lease.
    fn lease(text: &str) -> Option<Lease> {
        serde_json::from_str::<MarkerText>(text).ok()?.lease
    }
}

/// Whether `text` is a marker text dedup-lab wrote: for adapters that keep the marker in a
/// field anyone can set (a stream's description).
pub fn is_marker(text: &str) -> bool {
    serde_json::from_str::<MarkerText>(text).is_ok_and(|m| m.created_by == "dedup-lab")
}

/// A run's claim on one system instance's namespace.
#[derive(Clone, Debug)]
pub struct Claim {
    lease: Lease,
    ttl: Duration,
}

impl Claim {
    /// The claim of this process for `instance` of `experiment`; a lease not renewed for
    /// `ttl` by a holder on another host counts as abandoned.
    pub fn new(experiment: &str, instance: &str, ttl: Duration) -> Claim {
        Claim {
            lease: Lease::mine(experiment, instance),
            ttl,
        }
    }
}

/// Resets `sys`'s namespace under `claim`: refuses a foreign namespace or one that another
/// live run holds, else empties it with this run's lease in its marker. Returns the lease it
/// took over from a holder that no longer runs, for the journal.
pub async fn reset(sys: &mut dyn System, claim: &mut Claim) -> SysResult<Option<Lease>> {
    let now = Utc::now();
    let found = match sys.inspect().await? {
        Holding::Foreign(what) => {
            return Err(SysError::unsafe_namespace(format!(
                "{}: {what}: it was not created by dedup-lab (no marker); refusing to touch \
                 it — configure another namespace for this system",
                sys.name()
            )));
        }
        Holding::Absent => None,
        Holding::Marked(text) => MarkerText::lease(&text),
    };
    let (renew, taken) = match found {
        Some(l) if l.same_holder(&claim.lease) => {
            let age = now.signed_duration_since(l.renewed_at);
            (age.to_std().map_or(true, |a| a > claim.ttl / 4), None)
        }
        Some(l) if l.live(claim.ttl, now) => {
            return Err(SysError::unsafe_namespace(format!(
                "{}: its namespace is leased by {}: another run is using it; wait for that run \
                 to finish, or give this system another namespace",
                sys.name(),
                l.describe(now)
            )));
        }
        Some(l) => (true, Some(l)),
        None => (true, None),
    };
    if renew {
        claim.lease.renewed_at = now;
    }
    let marker = Marker {
        text: MarkerText::text(&claim.lease),
        changed: renew,
    };
    sys.recreate(&marker).await?;
    Ok(taken)
}

/// Checks that a namespace name is lab-owned: it starts with [`LAB_PREFIX`] and is a plain
/// identifier, so it can be used in statements and paths without quoting surprises.
pub fn check_namespace(system: &str, key: &str, name: &str) -> anyhow::Result<()> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name.starts_with(LAB_PREFIX) || !plain || name.len() > 63 {
        return Err(usage(format!(
            "config [systems.{system}] {key} = \"{name}\" is not a lab-owned name: it must start \
             with \"{LAB_PREFIX}\" and use only a-z, 0-9 and _ (at most 63 characters)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_carry_leases_and_old_markers_none() {
        let lease = Lease::mine("exp-1", "postgres");
        assert_eq!(MarkerText::lease(&MarkerText::text(&lease)), Some(lease));
        assert_eq!(
            MarkerText::lease("created by dedup-lab; dropped and recreated by its resets"),
            None
        );
    }

    #[test]
    fn lab_names_are_plain_and_prefixed() {
        assert!(check_namespace("pg", "schema", "dedup_lab_x1").is_ok());
        for bad in [
            "public",
            "dedup_lab-x",
            "dedup_labX",
            &"dedup_lab".repeat(8),
        ] {
            let e = check_namespace("pg", "schema", bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2);
            assert!(e.to_string().contains("not a lab-owned name"), "{e}");
        }
    }
}
