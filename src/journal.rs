//! The append-only JSON Lines journal: the source of truth for reports and resume. This module
//! alone reads and writes it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::model::Record;
use crate::secret::redact;

/// File name of the journal inside an experiment directory.
pub const FILE: &str = "journal.jsonl";

/// An open journal. Every record is one line, written whole and fsynced before `append`
/// returns, so a crash loses at most the line being written.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Opens (creating if needed) the journal for appending and returns its records. The
    /// journal is locked while open: a second process appending to it would interleave its
    /// attempts with this one's. A last line cut off by a crash is cut from the file with a
    /// warning; any other unreadable line is an error.
    pub fn open(path: &Path) -> anyhow::Result<(Journal, Vec<Record>)> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .with_context(|| format!("opening journal {}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                anyhow::anyhow!(
                    "journal {} is in use by another dedup-lab run of this experiment; wait \
                     for it to finish, or give this run another --id or --results-dir",
                    path.display()
                )
            },
        )?;
        let (records, good_len) = parse(path)?;
        if file.metadata()?.len() > good_len {
            tracing::warn!(
                "journal {}: ignoring a last line cut off by an earlier crash",
                path.display()
            );
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        Ok((
            Journal {
                file,
                path: path.to_path_buf(),
            },
            records,
        ))
    }

    /// Reads a journal without changing it (for reports); a cut-off last line is ignored.
    pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
        Ok(parse(path)?.0)
    }

    /// Appends one record (secrets redacted) and fsyncs.
    pub fn append(&mut self, record: &Record) -> anyhow::Result<()> {
        let mut line = redact(&serde_json::to_string(record)?);
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing journal {}", self.path.display()))
    }
}

/// Parses every complete line; returns the records and the length of the well-formed prefix.
fn parse(path: &Path) -> anyhow::Result<(Vec<Record>, u64)> {
    let data =
        std::fs::read(path).with_context(|| format!("reading journal {}", path.display()))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut lines = data.split_inclusive(|&b| b == b'\n').peekable();
    let mut number = 0;
    while let Some(line) = lines.next() {
        number += 1;
        let last = lines.peek().is_none();
        let complete = line.ends_with(b"\n");
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        match serde_json::from_slice::<Record>(body) {
            Ok(r) if complete => records.push(r),
            _ if last => break,
            Err(e) => bail!(
                "journal {} line {number} is not a record ({e}); the journal was edited or \
                 written by another version — move it aside to start the experiment afresh",
                path.display()
            ),
            Ok(_) => unreachable!("only the last line can lack its newline"),
        }
        offset += line.len();
    }
    Ok((records, offset as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn session() -> Record {
        Record::Session {
            started_at: Utc::now(),
            tool_version: "t".into(),
            pid: 1,
        }
    }

    #[test]
    fn torn_last_line_is_dropped_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        {
            let (mut j, recs) = Journal::open(&path).unwrap();
            assert!(recs.is_empty());
            j.append(&session()).unwrap();
            j.append(&session()).unwrap();
        }
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(b"{\"type\":\"sess");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(Journal::read(&path).unwrap().len(), 2);
        let (mut j, recs) = Journal::open(&path).unwrap();
        assert_eq!(recs.len(), 2);
        j.append(&session()).unwrap();
        drop(j);
        assert_eq!(Journal::read(&path).unwrap().len(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn garbage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, "not json\n{}\n").unwrap();
        let err = Journal::read(&path).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
