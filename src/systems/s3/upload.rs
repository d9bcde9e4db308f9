//! Uploading one object: a single PUT, or a multipart upload above a threshold.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::http::{classify, err};
use crate::model::SysResult;

/// Puts whole objects, in parts above the multipart threshold.
#[derive(Clone)]
pub struct Uploader {
    /// The store.
    pub store: Arc<AmazonS3>,
    /// Objects larger than this go in parts.
    pub threshold: usize,
    /// Bytes per part.
    pub part: usize,
}

impl Uploader {
    /// Stores `content` at `key`; returns when the server acknowledged the whole object.
    pub async fn put(&self, key: Path, content: Bytes) -> SysResult<()> {
        if content.len() <= self.threshold {
            self.store
                .put(&key, PutPayload::from(content))
                .await
                .map_err(err("PUT"))?;
            return Ok(());
        }
        // Parts are sent one after another: the bulk path's concurrency is across objects.
        let mut upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(err("CreateMultipartUpload"))?;
        let mut sent = Ok(());
        for start in (0..content.len()).step_by(self.part) {
            let end = (start + self.part).min(content.len());
            sent = upload
                .put_part(PutPayload::from(content.slice(start..end)))
                .await;
            if sent.is_err() {
                break;
            }
        }
        match sent {
            Ok(()) => upload
                .complete()
                .await
                .map(|_| ())
                .map_err(err("CompleteMultipartUpload")),
            Err(e) => {
                // Best effort: a lost connection cannot abort; the reset's listing does not
                // see unfinished uploads, and servers expire them.
                let _ = upload.abort().await;
                Err(classify("UploadPart", e))
            }
        }
    }
}
