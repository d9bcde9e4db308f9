//! tansu, a Kafka-protocol broker that keeps its log in SQLite, and what it cannot do.

use super::settings::{DeleteMode, Settings};
use crate::model::{SysError, SysResult};

/// The cluster id tansu reports unless started with another `--cluster-id`.
pub const CLUSTER_ID: &str = "tansu_cluster";

/// Whether the broker of cluster `cluster` is tansu; refuses settings that break it.
pub fn check(cluster: &str, s: &Settings) -> SysResult<bool> {
    if cluster != CLUSTER_ID {
        return Ok(false);
    }
    if s.delete_topics {
        return Err(SysError::unsafe_namespace(
            "kafka: the broker is tansu (cluster id tansu_cluster), whose DeleteTopics deletes \
             every topic of the cluster; set delete_topics = false",
        ));
    }
    if s.delete_mode == DeleteMode::DeleteRecords {
        return Err(SysError::failed(
            "kafka: the broker is tansu (cluster id tansu_cluster), whose DeleteRecords is \
             unimplemented and leaves the broker unable to answer; set delete_mode = \
             \"tombstone\"",
        ));
    }
    Ok(true)
}
