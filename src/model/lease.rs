//! Leases: which run holds a namespace. A run writes its lease into the namespace's marker
//! when it takes the namespace over and renews it at resets; another run that finds a live
//! holder's lease refuses the namespace instead of resetting it under the holder's feet.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The claim of one run on one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Experiment id of the holding run.
    pub experiment: String,
    /// System instance of the holding run that uses the namespace.
    pub instance: String,
    /// Host name of the holding process.
    pub host: String,
    /// Process id of the holding process.
    pub pid: u32,
    /// When the holder last wrote the lease.
    pub renewed_at: DateTime<Utc>,
}

impl Lease {
    /// This process's lease for `instance` of `experiment`, renewed now.
    pub fn mine(experiment: &str, instance: &str) -> Lease {
        Lease {
            experiment: experiment.to_string(),
            instance: instance.to_string(),
            host: this_host(),
            pid: std::process::id(),
            renewed_at: Utc::now(),
        }
    }

    /// Whether `other` was written by the same holder (process and instance).
    pub fn same_holder(&self, other: &Lease) -> bool {
        self.host == other.host
            && self.pid == other.pid
            && self.experiment == other.experiment
            && self.instance == other.instance
    }

    /// Whether the holder may still be running: on this host, its process is alive (and is
    /// the same program); on another host, it renewed the lease within `ttl`.
    pub fn live(&self, ttl: Duration, now: DateTime<Utc>) -> bool {
        if self.host == this_host() {
            return process_alive(self.pid);
        }
        let age = now.signed_duration_since(self.renewed_at);
        age.to_std().is_ok_and(|age| age < ttl) || age < chrono::TimeDelta::zero()
    }

    /// How the holder is named in messages.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let age = now.signed_duration_since(self.renewed_at).num_seconds();
        format!(
            "experiment {} (instance {}), pid {} on host {}, renewed {age} s ago",
            self.experiment, self.instance, self.pid, self.host
        )
    }
}

/// This machine's host name.
pub fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Whether `pid` runs the same program as this process (a reused pid of another program does
/// not count).
fn process_alive(pid: u32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // State is the field after the parenthesised command name; a zombie has exited.
    let zombie = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X");
    !zombie && comm(&pid.to_string()).is_some_and(|c| Some(c) == comm("self"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_of_this_process_is_live_and_one_of_a_dead_pid_is_not() {
        let now = Utc::now();
        let mine = Lease::mine("exp", "postgres");
        assert!(mine.live(Duration::from_secs(1), now));
        // A child that has exited and been reaped leaves its pid unused.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Lease {
            pid,
            ..mine.clone()
        };
        assert!(!dead.live(Duration::from_secs(3600), now));
        // pid 1 runs another program (init), not this one.
        assert!(!Lease { pid: 1, ..mine }.live(Duration::from_secs(3600), now));
    }

    #[test]
    fn a_lease_from_another_host_lives_until_its_ttl() {
        let now = Utc::now();
        let remote = Lease {
            host: "elsewhere.invalid".into(),
            renewed_at: now - chrono::TimeDelta::seconds(100),
            ..Lease::mine("exp", "redis")
        };
        assert!(remote.live(Duration::from_secs(101), now));
        assert!(!remote.live(Duration::from_secs(99), now));
    }
}
