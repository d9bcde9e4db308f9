//! Shards: deterministic slices of an experiment's cells, each run by its own process or pod
//! into its own journal, merged into one report afterwards.
//!
//! Shards are numbered from 1 (`--shard 2/3`, directory `shards/2-of-3`), as CI systems
//! number parallel jobs (GitLab's `CI_NODE_INDEX`). A Kubernetes Indexed Job numbers its pods
//! from 0 (`JOB_COMPLETION_INDEX`): shard = index + 1.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::usage;

/// The environment variable an Indexed Job sets in each pod: its completion index, from 0.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// What a shard's slice is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ShardBy {
    /// Whole system instances, dealt round-robin in config order: one shard talks to its own
    /// servers only, and no two shards share a namespace.
    #[default]
    System,
    /// Cells dealt round-robin in the engine's order (run, payload, grade, system): spreads one
    /// system over shards, so each shard needs a namespace of its own (an embedded system, or
    /// a server per pod).
    Cell,
}

impl fmt::Display for ShardBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShardBy::System => "system",
            ShardBy::Cell => "cell",
        })
    }
}

/// One shard of an experiment: `index` of `count`, from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, 1 ..= count.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
    /// What the slices are made of.
    pub by: ShardBy,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard a run is: from `--shard I/N` (1-based), or `--shard /N` with the index from
    /// [`INDEX_ENV`] (0-based), or, without `--shard`, the configured count (`[experiment]
    /// shards`) with the index from [`INDEX_ENV`]. `None`: the run is not sharded.
    pub fn choose(
        flag: Option<&str>,
        by: ShardBy,
        configured: Option<u32>,
        env_index: Option<&str>,
    ) -> anyhow::Result<Option<Shard>> {
        let (index, count) = match flag {
            Some(spec) => {
                let (i, n) = spec.split_once('/').ok_or_else(|| {
                    usage(format!(
                        "--shard {spec}: write I/N, e.g. --shard 2/3 (shards count from 1), or \
                         /N to take the index from {INDEX_ENV}"
                    ))
                })?;
                let n = number(n.trim(), || format!("--shard {spec}: the count '{n}'"))?;
                match i.trim() {
                    "" => (None, n),
                    i => (
                        Some(number(i, || format!("--shard {spec}: the index '{i}'"))?),
                        n,
                    ),
                }
            }
            None => match configured {
                Some(n) => (None, n),
                None => return Ok(None),
            },
        };
        if count == 0 {
            return Err(usage(format!(
                "shard count {count}: an experiment is split into at least 1 shard; use e.g. \
                 --shard 1/2"
            )));
        }
        let index = match index {
            Some(i) => i,
            None => {
                let raw = env_index.ok_or_else(|| {
                    usage(format!(
                        "the run is split into {count} shards but does not say which one it \
                         is: give --shard I/{count} (from 1), or set {INDEX_ENV} (from 0, as a \
                         Kubernetes Indexed Job does)"
                    ))
                })?;
                let zero_based = number(raw.trim(), || format!("{INDEX_ENV}='{raw}'"))?;
                if zero_based >= count {
                    return Err(usage(format!(
                        "{INDEX_ENV}={zero_based} is out of range for {count} shards: it \
                         counts from 0 to {}",
                        count - 1
                    )));
                }
                zero_based + 1
            }
        };
        if index == 0 || index > count {
            return Err(usage(format!(
                "shard {index}/{count} does not exist: shards count from 1, so use 1/{count} to \
                 {count}/{count} ({INDEX_ENV} counts from 0)"
            )));
        }
        Ok(Some(Shard { index, count, by }))
    }

    /// Whether the item at `position` (0-based, in the order the slice is dealt from) is
    /// this shard's: items are dealt round-robin.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count as usize == (self.index - 1) as usize
    }

    /// The name of its directory inside the experiment's `shards/` directory: `2-of-3`.
    pub fn dir_name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// The index and count a shard directory's name gives (`2-of-3`), if it is one.
    pub fn parse_dir_name(name: &str) -> Option<(u32, u32)> {
        let (i, n) = name.split_once("-of-")?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (digits(i) && digits(n)).then(|| Some((i.parse().ok()?, n.parse().ok()?)))?
    }
}

fn number(text: &str, what: impl Fn() -> String) -> anyhow::Result<u32> {
    text.parse().map_err(|_| {
        usage(format!(
            "{} is not a whole number; write e.g. --shard 2/3",
            what()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(flag: Option<&str>, configured: Option<u32>, env: Option<&str>) -> Shard {
        Shard::choose(flag, ShardBy::System, configured, env)
            .unwrap()
            .unwrap()
    }

    fn refused(flag: Option<&str>, configured: Option<u32>, env: Option<&str>) -> String {
        let e = Shard::choose(flag, ShardBy::System, configured, env).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn the_flag_counts_from_one_and_the_job_index_from_zero() {
        assert_eq!(choose(Some("2/3"), None, Some("0")).index, 2, "flag wins");
        assert_eq!(choose(Some("/3"), None, Some("0")).index, 1);
        assert_eq!(choose(Some("/3"), None, Some("2")).index, 3);
        assert_eq!(choose(None, Some(4), Some("3")).index, 4);
        assert_eq!(choose(None, Some(4), Some("3")).count, 4);
        assert_eq!(
            Shard::choose(None, ShardBy::Cell, None, Some("1")).unwrap(),
            None,
            "no shard asked for: the index alone does not shard a run"
        );
    }

    #[test]
    fn impossible_shards_are_named_with_the_fix() {
        assert!(refused(Some("3/2"), None, None).contains("shard 3/2 does not exist"));
        assert!(refused(Some("0/2"), None, None).contains("count from 1"));
        assert!(refused(Some("0/0"), None, None).contains("at least 1 shard"));
        assert!(refused(Some("two/3"), None, None).contains("'two' is not a whole number"));
        assert!(refused(Some("3"), None, None).contains("write I/N"));
        assert!(refused(Some("/3"), None, None).contains("set JOB_COMPLETION_INDEX"));
        assert!(refused(None, Some(3), None).contains("give --shard I/3"));
        assert!(refused(Some("/3"), None, Some("3")).contains("counts from 0 to 2"));
        assert!(refused(Some("/3"), None, Some("x")).contains("JOB_COMPLETION_INDEX='x'"));
    }

    #[test]
    fn slices_are_round_robin_and_cover_everything_once() {
        let shards: Vec<Shard> = (1..=3)
            .map(|i| choose(Some(&format!("{i}/3")), None, None))
            .collect();
        for position in 0..10 {
            let owners: Vec<u32> = shards
                .iter()
                .filter(|s| s.owns(position))
                .map(|s| s.index)
                .collect();
            assert_eq!(owners, [position as u32 % 3 + 1]);
        }
    }

    #[test]
    fn directory_names_round_trip() {
        let s = choose(Some("2/3"), None, None);
        assert_eq!(s.dir_name(), "2-of-3");
        assert_eq!(Shard::parse_dir_name(&s.dir_name()), Some((2, 3)));
        for bad in ["2of3", "-of-3", "2-of-", "x-of-3", "2-of-3x"] {
            assert_eq!(Shard::parse_dir_name(bad), None, "{bad}");
        }
    }
}
