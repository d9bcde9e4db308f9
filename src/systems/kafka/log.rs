//! Reading a partition's log: what a topic holds, each offset counted once, and reads that go
//! on from where an earlier one stopped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::client::{MetaClient, Quiet, classify, err};
use crate::model::{SysError, SysResult};

/// A partition's log read from `low` (its log start then) up to `next`. A Kafka log only
/// grows at its end, and compaction removes only records a later one supersedes, so what a
/// read found stays true while the log start is unchanged: a later read need only go on from
/// `next`.
#[derive(Debug, Default)]
pub struct LogRead {
    /// The log start when it was read.
    pub low: i64,
    /// The offset after the last record read.
    pub next: i64,
    /// What the records read hold.
    pub state: LogState,
}

/// What a topic holds, read from its log start to its high watermark.
#[derive(Debug, Default)]
pub struct LogState {
    /// Records read, each offset once.
    pub records: u64,
    /// Per key: whether its latest record holds a value (`false`: a tombstone).
    pub latest: HashMap<Vec<u8>, bool>,
    /// The latest value of the one key whose values the read keeps, if it has one.
    pub kept: Option<Vec<u8>>,
}

impl LogRead {
    /// The log as the delivery reports describe it, when the broker's watermarks confirm
    /// that it holds exactly the acknowledged records: `live` spans `low..high`, one record
    /// per offset. The count after the tombstones then reads only the tombstones, and the
    /// values are read once, by maintenance: the broker compacts while a whole read of
    /// uncompacted values would take seconds, and that wait belongs to maintenance.
    pub fn acknowledged(live: &BTreeMap<i64, String>, low: i64, high: i64) -> Option<LogRead> {
        let spans = live.first_key_value().map(|(&o, _)| o) == Some(low)
            && live.last_key_value().map(|(&o, _)| o + 1) == Some(high)
            && live.len() as i64 == high - low;
        spans.then(|| LogRead {
            low,
            next: high,
            state: LogState {
                records: live.len() as u64,
                latest: live
                    .values()
                    .map(|k| (k.as_bytes().to_vec(), true))
                    .collect(),
                kept: None,
            },
        })
    }
}

impl LogState {
    /// Keys whose latest record holds a value.
    pub fn live_keys(&self) -> u64 {
        self.latest.values().filter(|&&v| v).count() as u64
    }
}

/// Reads partition 0 of `topic` up to its high watermark, keeping only what [`LogState`]
/// needs (values are dropped as they arrive, but those of the key `keep`): from where
/// `earlier` stopped if the log still starts where it did then, else from the log start.
/// Fails when no new record arrives for `timeout`.
pub fn read_log(
    config: &ClientConfig,
    ctx: Quiet,
    topic: &str,
    earlier: Option<LogRead>,
    keep: Option<&[u8]>,
    timeout: Duration,
) -> SysResult<LogRead> {
    let consumer: MetaClient = config
        .create_with_context(ctx)
        .map_err(err("creating a consumer"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, timeout)
        .map_err(err("reading watermarks"))?;
    let mut read = match earlier {
        Some(r) if r.low == low && r.next <= high => r,
        _ => LogRead {
            low,
            next: low,
            state: LogState::default(),
        },
    };
    if high <= read.next {
        return Ok(read);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(read.next))
        .map_err(err("assigning"))?;
    consumer.assign(&tpl).map_err(err("assigning"))?;
    let mut progress = Instant::now();
    let LogRead { next, state, .. } = &mut read;
    while *next < high {
        if progress.elapsed() > timeout {
            return Err(SysError::connection(format!(
                "kafka: reading {topic}: no record for {timeout:?} at offset {next} of {high} \
                 (the broker stopped serving it)"
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(e)) => return Err(classify(&format!("reading {topic}"), &e)),
            // tansu re-delivers records after the gaps compaction leaves: count each offset once.
            Some(Ok(m)) if m.offset() < *next => {}
            Some(Ok(m)) => {
                progress = Instant::now();
                *next = m.offset() + 1;
                state.records += 1;
                if let Some(key) = m.key() {
                    state.latest.insert(key.to_vec(), m.payload().is_some());
                    if keep == Some(key) {
                        state.kept = m.payload().map(<[u8]>::to_vec);
                    }
                }
            }
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_records_stand_for_the_log_only_where_the_watermarks_confirm_them() {
        let live = |offsets: &[i64]| -> BTreeMap<i64, String> {
            offsets.iter().map(|&o| (o, format!("f{o}"))).collect()
        };
        let read = LogRead::acknowledged(&live(&[5, 6, 7]), 5, 8).expect("spans 5..8");
        assert_eq!((read.low, read.next, read.state.records), (5, 8, 3));
        assert_eq!(read.state.live_keys(), 3);
        assert_eq!(read.state.latest.get(b"f6".as_slice()), Some(&true));
        // A record the broker holds beyond the acknowledged ones, one missing from the
        // middle, or a log start moved past them: read the log instead.
        assert!(LogRead::acknowledged(&live(&[5, 6, 7]), 5, 9).is_none());
        assert!(LogRead::acknowledged(&live(&[5, 7]), 5, 8).is_none());
        assert!(LogRead::acknowledged(&live(&[5, 6, 7]), 6, 8).is_none());
        assert!(LogRead::acknowledged(&live(&[]), 0, 0).is_none());
    }
}
