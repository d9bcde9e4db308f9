//! The trace: `trace.jsonl` in an experiment directory, one JSON object per line — a probe's
//! size sampled while a stage runs and settles, or an event marker:
//!
//! ```json
//! {"cell":{"system":"sqlite","payload":"random_binary","grade":90,"run":1},"attempt":1,
//!  "stage":"bulk_insert","t_s":0.5,"at":"2025-01-01T00:00:00.5Z","probe":"fs","bytes":123}
//! ```
//!
//! with `"error": "…"` instead of `bytes` for a sample that failed,
//! `"event": "stage_start" | "stage_end" | "settle_start" | "settle_end" | "maintenance" |
//! "storage_dedupe"` instead of `probe` for a marker, and `"metrics": {…}` (the system's own
//! storage accounting, or `{"error": "…"}`) for a snapshot. `t_s` counts seconds from the
//! stage's start, `at` is the wall time. The types are [`crate::model::TraceLine`]'s.

use std::path::Path;

use crate::error::usage;
pub use crate::model::{Event, TraceItem, TraceLine};

/// File name of the trace inside an experiment directory.
pub const FILE: &str = "trace.jsonl";

/// The trace of an experiment directory; empty when it has none. A last line cut off by a
/// crash is left out; any other unreadable line is an error naming it.
pub fn read(dir: &Path) -> anyhow::Result<Vec<TraceLine>> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(usage(format!(
                "cannot read {}: {e}; make it readable or move it aside",
                path.display()
            )));
        }
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<TraceLine>(line) {
            Ok(l) => out.push(l),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => {
                return Err(usage(format!(
                    "{} line {} is not a trace sample or event ({e}); the file was edited or \
                     written by another version: move it aside to report without it",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Reading, Stage};

    const CELL: &str = r#""cell":{"system":"sqlite","payload":"random_binary","grade":90,"run":1}"#;

    fn write(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), text).unwrap();
        dir
    }

    #[test]
    fn reads_samples_failed_samples_and_events() {
        let text = format!(
            "{{{CELL},\"attempt\":2,\"stage\":\"bulk_insert\",\"t_s\":0.5,\
             \"at\":\"2025-01-01T00:00:00.5Z\",\"probe\":\"fs\",\"bytes\":123}}\n\
             {{{CELL},\"attempt\":2,\"stage\":\"bulk_insert\",\"t_s\":1.5,\
             \"at\":\"2025-01-01T00:00:01.5Z\",\"probe\":\"native\",\"error\":\"locked\"}}\n\
             {{{CELL},\"attempt\":2,\"stage\":\"maintenance\",\"t_s\":0,\
             \"at\":\"2025-01-01T00:00:09Z\",\"event\":\"settle_end\"}}\n"
        );
        let dir = write(&text);
        let t = read(dir.path()).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].cell.to_string(), "sqlite/random_binary/U90/run1");
        assert_eq!(
            (t[0].attempt, t[0].stage, t[0].t_s),
            (2, Stage::BulkInsert, 0.5)
        );
        assert_eq!(
            t[0].item,
            TraceItem::Sample {
                probe: "fs".into(),
                reading: Reading::Bytes { bytes: 123 }
            }
        );
        assert_eq!(
            t[1].item,
            TraceItem::Sample {
                probe: "native".into(),
                reading: Reading::Error {
                    error: "locked".into()
                }
            }
        );
        assert_eq!(
            t[2].item,
            TraceItem::Event {
                event: Event::SettleEnd
            }
        );
        assert_eq!(t[2].at.timestamp(), 1_735_689_609);
        // What this module writes, it reads back unchanged: the lead's writer can use it.
        let again: Vec<TraceLine> = t
            .iter()
            .map(|l| serde_json::from_str(&serde_json::to_string(l).unwrap()).unwrap())
            .collect();
        assert_eq!(again, t);
    }

    #[test]
    fn a_cut_off_last_line_is_left_out_and_a_bad_line_named() {
        let good = format!(
            "{{{CELL},\"attempt\":1,\"stage\":\"bulk_insert\",\"t_s\":0,\
             \"at\":\"2025-01-01T00:00:00Z\",\"event\":\"stage_start\"}}\n"
        );
        let dir = write(&format!("{good}{{\"cell\":{{\"sys"));
        assert_eq!(read(dir.path()).unwrap().len(), 1);
        let dir = write(&format!("{good}{{\"probe\":\"fs\"}}\n{good}"));
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 2 is not a trace sample or event"), "{e}");
        assert!(e.contains("move it aside"), "{e}");
        assert!(
            read(tempfile::tempdir().unwrap().path())
                .unwrap()
                .is_empty()
        );
    }
}
