//! Directory sources: the regular files of a tree, in sorted order, read as one stream and
//! decompressed on the fly by extension (`.gz`, `.bz2`, `.xz`, `.zst`). Preset payloads take
//! their unique content as consecutive slices of this stream, so no two unique files share a
//! byte position of the source, and memory stays one buffer whatever the file sizes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// A directory source as a data set uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// The directory tree.
    pub dir: PathBuf,
    /// Whether `.gz`, `.bz2`, `.xz` and `.zst` files are read decompressed.
    pub decompress: bool,
}

/// A range of one source file's (decompressed) stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePart {
    /// The file, relative to the source directory.
    pub path: String,
    /// Offset in the file's stream (after decompression when it is decompressed).
    pub offset: u64,
    /// Bytes taken.
    pub len: u64,
}

/// Checks that `dir` is a directory holding at least one non-empty regular file; the message
/// says what is wrong (the caller names the key to set).
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("source directory {} cannot be read: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("source {} is not a directory", dir.display()));
    }
    for entry in files(dir) {
        let entry = entry.map_err(|e| format!("source directory {}: {e}", dir.display()))?;
        if entry.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            return Ok(());
        }
    }
    Err(format!(
        "source directory {} holds no non-empty regular file",
        dir.display()
    ))
}

/// The regular files under `dir` in sorted order; symbolic links are not followed, so no file
/// is read twice through a link.
fn files(dir: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> + use<> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter(|e| e.as_ref().map_or(true, |e| e.file_type().is_file()))
}

struct Open {
    rel: String,
    reader: Box<dyn Read + Send>,
    offset: u64,
}

/// The source stream being read.
pub(crate) struct SourceStream {
    dir: PathBuf,
    walker: Box<dyn Iterator<Item = walkdir::Result<walkdir::DirEntry>> + Send>,
    current: Option<Open>,
    decompress: bool,
    read: u64,
}

impl SourceStream {
    /// Starts reading `spec`'s tree from its first file.
    pub fn open(spec: &SourceSpec) -> anyhow::Result<SourceStream> {
        check_dir(&spec.dir).map_err(crate::error::usage)?;
        Ok(SourceStream {
            dir: spec.dir.clone(),
            walker: Box::new(files(&spec.dir)),
            current: None,
            decompress: spec.decompress,
            read: 0,
        })
    }

    /// Bytes read so far; at the end of the stream, the size of the whole source.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Fills `buf` from the stream and appends where its bytes came from to `parts` (merging
    /// with the last part where they continue it). Returns the bytes filled: fewer than
    /// `buf.len()` only at the end of the stream.
    pub fn fill(&mut self, buf: &mut [u8], parts: &mut Vec<SourcePart>) -> anyhow::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let Some(cur) = self.current.as_mut() else {
                match self.walker.next() {
                    None => break,
                    Some(entry) => {
                        let entry = entry.with_context(|| {
                            format!("listing source directory {}", self.dir.display())
                        })?;
                        self.current = Some(self.open_file(entry.path())?);
                    }
                }
                continue;
            };
            let n = match cur.reader.read(&mut buf[got..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "reading source file {} at offset {}",
                            self.dir.join(&cur.rel).display(),
                            cur.offset
                        )
                    });
                }
            };
            if n == 0 {
                self.current = None;
                continue;
            }
            match parts.last_mut() {
                Some(p) if p.path == cur.rel && p.offset + p.len == cur.offset => {
                    p.len += n as u64;
                }
                _ => parts.push(SourcePart {
                    path: cur.rel.clone(),
                    offset: cur.offset,
                    len: n as u64,
                }),
            }
            cur.offset += n as u64;
            got += n;
            self.read += n as u64;
        }
        Ok(got)
    }

    fn open_file(&self, path: &Path) -> anyhow::Result<Open> {
        let file =
            File::open(path).with_context(|| format!("opening source file {}", path.display()))?;
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let reader: Box<dyn Read + Send> = match (self.decompress, ext.as_deref()) {
            (true, Some("gz")) => Box::new(flate2::read::MultiGzDecoder::new(file)),
            (true, Some("bz2")) => Box::new(bzip2::read::MultiBzDecoder::new(file)),
            (true, Some("xz")) => Box::new(liblzma::read::XzDecoder::new_multi_decoder(file)),
            (true, Some("zst")) => Box::new(
                zstd::stream::read::Decoder::new(file)
                    .with_context(|| format!("opening zstd stream {}", path.display()))?,
            ),
            _ => Box::new(file),
        };
        let rel = path
            .strip_prefix(&self.dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        Ok(Open {
            rel,
            reader,
            offset: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_missing_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_dir(dir.path()).unwrap_err();
        assert!(err.contains("no non-empty regular file"), "{err}");
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert!(check_dir(dir.path()).is_err());
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"x").unwrap();
        assert!(check_dir(dir.path()).is_ok());
        let err = check_dir(&dir.path().join("nope")).unwrap_err();
        assert!(err.contains("cannot be read"), "{err}");
        let err = check_dir(&dir.path().join("sub/x")).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn stream_reads_files_in_sorted_order_and_records_parts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/2"), b"CD").unwrap();
        std::fs::write(dir.path().join("a/1"), b"AB").unwrap();
        std::fs::write(dir.path().join("b"), b"EFG").unwrap();
        let spec = SourceSpec {
            dir: dir.path().to_path_buf(),
            decompress: true,
        };
        let mut s = SourceStream::open(&spec).unwrap();
        let mut parts = Vec::new();
        let mut buf = [0u8; 3];
        assert_eq!(s.fill(&mut buf, &mut parts).unwrap(), 3);
        assert_eq!(&buf, b"ABC");
        let mut rest = [0u8; 10];
        assert_eq!(s.fill(&mut rest, &mut parts).unwrap(), 4);
        assert_eq!(&rest[..4], b"DEFG");
        assert_eq!(s.bytes_read(), 7);
        let got: Vec<(&str, u64, u64)> = parts
            .iter()
            .map(|p| (p.path.as_str(), p.offset, p.len))
            .collect();
        assert_eq!(got, [("a/1", 0, 2), ("a/2", 0, 2), ("b", 0, 3)]);
    }
}
