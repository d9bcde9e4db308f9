//! The HTTP layer under `object_store`: what every response says (server product, 5xx
//! answers retried and counted), and how failures are classified.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};

use crate::model::SysError;

/// How often a request the server answered with a 5xx status is sent again, waiting 0.1,
/// 0.4 and 1.6 s: a server that answers is reachable, and a busy one (Garage answers 503 when
/// its SQLite database is locked) should not cost a cell. Connection errors are never retried
/// here: the engine reconnects and retries the cell.
const SERVER_ERROR_RETRIES: u32 = 3;

/// The HTTP client `object_store` uses, wrapped to see every response: it keeps the `Server`
/// header (where a server names itself), retries 5xx answers and counts each retry (the
/// stage record shows them: a retried per-file request is inside its latency), and turns a
/// 5xx answer that persists into an interrupted request, so that a server restarting or
/// overloaded counts as a lost connection.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The latest `Server` header.
    pub server: Arc<Mutex<Option<String>>>,
    /// Requests sent again after a 5xx answer, since the adapter was built.
    pub retried: Arc<AtomicU64>,
}

impl HttpConnector for Observed {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(ObservedService {
            inner: ReqwestConnector::default().connect(options)?,
            seen: self.clone(),
        }))
    }
}

#[derive(Debug)]
struct ObservedService {
    inner: HttpClient,
    seen: Observed,
}

#[async_trait]
impl HttpService for ObservedService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let (mut delay, mut retries) = (Duration::from_millis(100), 0);
        loop {
            // Signed headers and payload stay valid: the same request can be sent again.
            let mut again = HttpRequest::new(body.clone());
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.version_mut() = parts.version;
            *again.headers_mut() = parts.headers.clone();
            *again.extensions_mut() = parts.extensions.clone();
            let response = self.inner.execute(again).await?;
            if let Some(name) = response
                .headers()
                .get(http::header::SERVER)
                .and_then(|v| v.to_str().ok())
            {
                *self.seen.server.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(name.to_string());
            }
            let status = response.status();
            if !status.is_server_error() {
                return Ok(response);
            }
            let body = response.into_body().bytes().await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            let text = format!("server answered {status}: {}", text.trim());
            if retries == SERVER_ERROR_RETRIES {
                return Err(HttpError::new(
                    HttpErrorKind::Interrupted,
                    std::io::Error::other(text),
                ));
            }
            tracing::warn!(
                "s3: {} {}: {text}; sending it again in {delay:?}",
                parts.method,
                parts.uri.path()
            );
            tokio::time::sleep(delay).await;
            self.seen.retried.fetch_add(1, Ordering::Relaxed);
            (delay, retries) = (delay * 4, retries + 1);
        }
    }
}

/// A lost connection (refused, reset, timed out, interrupted, or a 5xx answer) or any other
/// failure.
pub fn sys_error(context: &str, e: &(dyn std::error::Error + 'static), hint: &str) -> SysError {
    let mut lost = false;
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            lost |= matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        source = s.source();
    }
    let mut se = SysError::from_driver("s3", context, e, lost);
    se.message.push_str(hint);
    se
}

/// [`sys_error`] for an S3 request, with a hint for the failures a user can fix. The status
/// is read from the message where `object_store` has no variant for it: its error type for a
/// listing's HTTP status is private.
pub fn classify(context: &str, e: object_store::Error) -> SysError {
    let text = e.to_string();
    let hint = if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || text.contains(" 403 Forbidden")
        || text.contains(" 401 Unauthorized")
    {
        " (check the access key, the secret key and the key's permissions on the bucket)"
    } else if text.contains("NoSuchBucket") {
        " (does the bucket exist? dedup-lab does not create buckets: create it and grant the \
         key read and write)"
    } else {
        ""
    };
    sys_error(context, &e, hint)
}

/// Error mapper for S3 requests.
pub fn err(context: &str) -> impl FnOnce(object_store::Error) -> SysError + '_ {
    move |e| classify(context, e)
}
