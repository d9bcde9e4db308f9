//! Garage's admin API: its version for the records, and its table queues for settling.

use std::time::Duration;

use object_store::client::HttpRequestBody;

use super::S3;
use super::http::sys_error;
use crate::model::{SysError, SysResult};
use crate::secret::Secret;
use crate::systems::toolkit::Pacer;

/// Garage's admin API: a base URL and its bearer token.
pub struct GarageAdmin {
    /// Base URL.
    pub url: String,
    /// Bearer token.
    pub token: Secret,
}

impl S3 {
    /// A GET or POST to Garage's admin API; returns this node's part of the answer.
    pub(super) async fn garage_call(
        &self,
        endpoint: &str,
        post: bool,
    ) -> SysResult<serde_json::Value> {
        let Some(admin) = &self.garage else {
            return Err(SysError::failed("s3: garage_admin is not configured"));
        };
        let request = http::Request::builder()
            .method(if post { "POST" } else { "GET" })
            .uri(format!("{}/v2/{endpoint}?node=self", admin.url))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", admin.token.expose()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(if post {
                HttpRequestBody::from(String::from("{}"))
            } else {
                HttpRequestBody::empty()
            })
            .map_err(|e| SysError::failed(format!("s3: garage admin request: {e}")))?;
        let what = format!("garage admin {endpoint}");
        let response = self
            .conn()?
            .http
            .execute(request)
            .await
            .map_err(|e| sys_error(&what, &e, ""))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| sys_error(&what, &e, ""))?;
        if !status.is_success() {
            let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                " (check garage_admin_token)"
            } else {
                ""
            };
            return Err(SysError::failed(format!(
                "s3: {what}: {status}{hint}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| SysError::failed(format!("s3: {what}: {e}")))?;
        // Per-node answers: {"success": {"<node id>": …}, "error": {…}}.
        json["success"]
            .as_object()
            .and_then(|nodes| nodes.values().next())
            .cloned()
            .ok_or_else(|| SysError::failed(format!("s3: {what}: unexpected answer {json}")))
    }

    /// Waits until Garage's table queues (propagation and Merkle updates, which write to its
    /// metadata database after a PUT is acknowledged) are empty. Block resync queues are not
    /// waited for: they hold deleted blocks for Garage's fixed 600 s delay.
    pub(super) async fn wait_garage_queues(&self) -> SysResult<()> {
        let mut pacer = Pacer::new(Duration::from_secs(self.settings.settle_timeout_s));
        loop {
            let workers = self.garage_call("ListWorkers", true).await?;
            let busy: Vec<String> = workers
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| {
                    let name = w["name"].as_str().unwrap_or_default();
                    (name.ends_with(" queue") || name.ends_with(" Merkle"))
                        && w["queueLength"].as_u64().unwrap_or(0) > 0
                })
                .map(|w| format!("{} {}", w["name"], w["queueLength"]))
                .collect();
            if busy.is_empty() {
                return Ok(());
            }
            if !pacer.pause().await {
                return Err(SysError::failed(format!(
                    "s3: Garage queues still busy after {} s: {}",
                    self.settings.settle_timeout_s,
                    busy.join(", ")
                )));
            }
        }
    }
}
