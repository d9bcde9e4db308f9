//! `minio`: any S3 API (MinIO, Garage, AWS S3, …), path-style, through `object_store`.
//!
//! Namespace: the key prefix `<prefix>/` inside a lab bucket, marked by the object
//! `<prefix>/.dedup-lab-owner`; files are `<prefix>/files/<name>`. Bulk path: concurrent PUTs
//! (bounded), multipart above a threshold; per file: one PUT (acknowledged) / one
//! DeleteObject; count and logical size: ListObjectsV2 page by page (continuation tokens),
//! never a HEAD per object; maintenance: none exists in S3, the note says what the server
//! still owes. No native size probe: a listing gives logical bytes, not physical ones. MinIO's
//! `minio_bucket_usage_total_bytes{bucket=…}` is read by the engine's `prometheus` probe when
//! configured (`prometheus_probe`, with a bearer token from `mc admin prometheus generate`).
//! The `fs` probe reads the server's directories when they are local. With Garage's admin API
//! configured (`garage_admin`), records name the Garage version and settling waits for
//! Garage's table queues.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpService, ReqwestConnector,
};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::poll::Pacer;
use super::{
    LAB_PREFIX, ServerInfo, SysError, SysResult, System, SystemContext, SystemDef, check_namespace,
    error_chain, parse_section,
};
use crate::dataset::{DataSet, FileEntry};
use crate::error::usage;
use crate::secret::{Secret, SecretSource};

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    name: "minio",
    embedded: false,
    about: "MinIO/S3 (any S3 API): concurrent PUT bulk load, no maintenance",
    build,
};

/// Name of the marker object inside the lab prefix.
pub const MARKER: &str = ".dedup-lab-owner";

/// `[systems.minio]`
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// `http://host:port` or `https://host:port`, without credentials or path.
    endpoint: String,
    /// Region the requests are signed for.
    region: String,
    /// Bucket (must exist); its name must start with `dedup-lab`.
    bucket: String,
    /// Key prefix inside the bucket (without the trailing `/`); must start with `dedup_lab`.
    prefix: String,
    access_key_env: Option<String>,
    access_key_file: Option<PathBuf>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    /// PEM file of the CA(s) to trust for https; default: the system's roots.
    ca_file: Option<PathBuf>,
    /// PUTs in flight at once in the bulk path.
    concurrency: usize,
    /// Files larger than this are uploaded in parts (multipart upload).
    multipart_threshold_mib: u64,
    /// Size of each part of a multipart upload.
    part_size_mib: u64,
    /// Keys per ListObjectsV2 page (S3 allows at most 1000).
    list_page_size: usize,
    connect_timeout_s: u64,
    /// Seconds one request may take (a whole PUT or part).
    request_timeout_s: u64,
    /// Seconds to wait for the server's background work when settling.
    settle_timeout_s: u64,
    /// Garage's admin API, e.g. `http://127.0.0.1:3903`: product version and settling.
    garage_admin: Option<String>,
    garage_admin_token_env: Option<String>,
    garage_admin_token_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "dedup-lab".into(),
            prefix: LAB_PREFIX.into(),
            access_key_env: None,
            access_key_file: None,
            secret_key_env: None,
            secret_key_file: None,
            ca_file: None,
            concurrency: 16,
            multipart_threshold_mib: 16,
            part_size_mib: 8,
            list_page_size: 1000,
            connect_timeout_s: 10,
            request_timeout_s: 300,
            settle_timeout_s: 300,
            garage_admin: None,
            garage_admin_token_env: None,
            garage_admin_token_file: None,
        }
    }
}

/// What lab-owned bucket names start with. S3 bucket names may not contain `_`, so
/// [`check_namespace`]'s `dedup_lab` cannot apply to buckets; the key prefix inside the bucket
/// still follows it.
pub const BUCKET_PREFIX: &str = "dedup-lab";

/// Checks that a bucket name is lab-owned and valid for S3: it starts with [`BUCKET_PREFIX`],
/// uses only a-z, 0-9 and `-`, does not end with `-`, and has at most 63 characters.
fn check_bucket(name: &str) -> anyhow::Result<()> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name.starts_with(BUCKET_PREFIX) || !plain || name.ends_with('-') || name.len() > 63 {
        return Err(usage(format!(
            "config [systems.minio] bucket = \"{name}\" is not a lab-owned S3 bucket name: it \
             must start with \"{BUCKET_PREFIX}\", use only a-z, 0-9 and - (no _), not end with \
             - and have at most 63 characters"
        )));
    }
    Ok(())
}

/// Checks the endpoint: http(s), a host, no credentials, no path or query.
fn check_endpoint(endpoint: &str) -> anyhow::Result<reqwest::Url> {
    let bad = |why: &str| {
        usage(format!(
            "config [systems.minio] endpoint = \"{}\": {why}; write it as http://host:port or \
             https://host:port",
            crate::secret::redact(endpoint)
        ))
    };
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not belong in the URL (use access_key_* and secret_key_*)",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("it needs an http or https scheme and a host"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(bad(
            "it must not have a path or query (the bucket is a setting of its own)",
        ));
    }
    Ok(url)
}

/// Reads a required secret (`<key>_env` or `<key>_file`).
fn required(what: &str, env: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Secret> {
    SecretSource::from_keys(env.clone(), file.clone())
        .resolve(&format!("config [systems.minio] {what}"))?
        .ok_or_else(|| {
            usage(format!(
                "config [systems.minio]: no {what}: set {what}_env or {what}_file"
            ))
        })
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    Ok(Box::new(Minio::new(ctx.section)?))
}

/// Objects under a key prefix as a paginated listing saw them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Number of objects.
    pub objects: u64,
    /// Sum of their sizes: logical bytes, not what the server stores.
    pub bytes: u64,
    /// ListObjectsV2 requests it took.
    pub pages: u64,
}

/// Garage's admin API: a base URL and its bearer token.
struct GarageAdmin {
    url: String,
    token: Secret,
}

/// A connection: the store and the HTTP client for admin requests.
struct Conn {
    store: Arc<AmazonS3>,
    http: HttpClient,
}

/// The S3 adapter.
pub struct Minio {
    settings: Settings,
    access_key: Secret,
    secret_key: Secret,
    certificates: Vec<Certificate>,
    garage: Option<GarageAdmin>,
    conn: Option<Conn>,
    /// Product named at the last connect, for the maintenance note.
    product: String,
}

impl Minio {
    /// Validates a `[systems.minio]` section and reads its secrets; does not connect.
    pub fn new(section: Option<&toml::Table>) -> anyhow::Result<Minio> {
        let s: Settings = parse_section(DEF.name, section)?;
        let url = check_endpoint(&s.endpoint)?;
        check_bucket(&s.bucket)?;
        check_namespace(DEF.name, "prefix", &s.prefix)?;
        if s.concurrency == 0 || !(1..=1000).contains(&s.list_page_size) {
            crate::bail_usage!(
                "config [systems.minio]: concurrency must be at least 1 and list_page_size 1 to 1000"
            );
        }
        // S3 limits: parts of 5 MiB to 5 GiB (except the last), single PUTs up to 5 GiB.
        if !(5..=5120).contains(&s.part_size_mib)
            || !(1..=5120).contains(&s.multipart_threshold_mib)
        {
            crate::bail_usage!(
                "config [systems.minio]: part_size_mib must be 5 to 5120 and \
                 multipart_threshold_mib 1 to 5120 (S3's limits)"
            );
        }
        let certificates = match &s.ca_file {
            None => Vec::new(),
            Some(_) if url.scheme() != "https" => crate::bail_usage!(
                "config [systems.minio]: ca_file is set but the endpoint is not https; use an \
                 https endpoint or remove ca_file"
            ),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    usage(format!(
                        "config [systems.minio] ca_file {}: {e}; give a PEM file of CA certificates",
                        path.display()
                    ))
                })?;
                match Certificate::from_pem_bundle(&pem) {
                    Ok(certs) if !certs.is_empty() => certs,
                    _ => crate::bail_usage!(
                        "config [systems.minio] ca_file {} holds no usable PEM CA certificate",
                        path.display()
                    ),
                }
            }
        };
        let access_key = required("access_key", &s.access_key_env, &s.access_key_file)?;
        let secret_key = required("secret_key", &s.secret_key_env, &s.secret_key_file)?;
        let garage = match &s.garage_admin {
            None if s.garage_admin_token_env.is_some() || s.garage_admin_token_file.is_some() => {
                crate::bail_usage!(
                    "config [systems.minio]: a garage_admin_token is set but garage_admin is not; \
                     set garage_admin to the admin API's URL or remove the token"
                )
            }
            None => None,
            Some(admin) => Some(GarageAdmin {
                url: check_endpoint(admin)
                    .map_err(|_| {
                        usage(format!(
                            "config [systems.minio] garage_admin = \"{admin}\" is not a URL like \
                             http://127.0.0.1:3903"
                        ))
                    })?
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
                token: required(
                    "garage_admin_token",
                    &s.garage_admin_token_env,
                    &s.garage_admin_token_file,
                )?,
            }),
        };
        Ok(Minio {
            settings: s,
            access_key,
            secret_key,
            certificates,
            garage,
            conn: None,
            product: String::new(),
        })
    }

    fn conn(&self) -> SysResult<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| SysError::connection("minio: not connected"))
    }

    fn store(&self) -> SysResult<Arc<AmazonS3>> {
        Ok(self.conn()?.store.clone())
    }

    fn marker(&self) -> Path {
        Path::from(format!("{}/{MARKER}", self.settings.prefix))
    }

    fn files_prefix(&self) -> String {
        format!("{}/files/", self.settings.prefix)
    }

    fn key(&self, f: &FileEntry) -> Path {
        Path::from(format!("{}{}", self.files_prefix(), f.name))
    }

    fn uploader(&self) -> SysResult<Uploader> {
        Ok(Uploader {
            store: self.store()?,
            threshold: (self.settings.multipart_threshold_mib << 20) as usize,
            part: (self.settings.part_size_mib << 20) as usize,
        })
    }

    /// One ListObjectsV2 page of keys under `prefix` (which ends with `/`).
    async fn page(
        &self,
        prefix: &str,
        token: Option<String>,
        max_keys: usize,
    ) -> SysResult<object_store::list::PaginatedListResult> {
        let opts = PaginatedListOptions {
            max_keys: Some(max_keys),
            page_token: token,
            ..Default::default()
        };
        self.store()?
            .list_paginated(Some(prefix), opts)
            .await
            .map_err(err("ListObjectsV2"))
    }

    /// Counts the lab's files and sums their sizes, page by page (continuation tokens), with
    /// `list_page_size` keys per page. Sizes come from the listing, never a HEAD per object.
    pub async fn listing(&self) -> SysResult<Listing> {
        let prefix = self.files_prefix();
        let mut out = Listing::default();
        let mut token = None;
        loop {
            let page = self
                .page(&prefix, token, self.settings.list_page_size)
                .await?;
            out.pages += 1;
            out.objects += page.result.objects.len() as u64;
            out.bytes += page.result.objects.iter().map(|o| o.size).sum::<u64>();
            match page.page_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// A GET or POST to Garage's admin API; returns this node's part of the answer.
    async fn garage_call(&self, endpoint: &str, post: bool) -> SysResult<serde_json::Value> {
        let Some(admin) = &self.garage else {
            return Err(SysError::failed("minio: garage_admin is not configured"));
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
            .map_err(|e| SysError::failed(format!("minio: garage admin request: {e}")))?;
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
                "minio: {what}: {status}{hint}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| SysError::failed(format!("minio: {what}: {e}")))?;
        // Per-node answers: {"success": {"<node id>": …}, "error": {…}}.
        json["success"]
            .as_object()
            .and_then(|nodes| nodes.values().next())
            .cloned()
            .ok_or_else(|| SysError::failed(format!("minio: {what}: unexpected answer {json}")))
    }

    /// Waits until Garage's table queues (propagation and Merkle updates, which write to its
    /// metadata database after a PUT is acknowledged) are empty. Block resync queues are not
    /// waited for: they hold deleted blocks for Garage's fixed 600 s delay.
    async fn wait_garage_queues(&self) -> SysResult<()> {
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
                    "minio: Garage queues still busy after {} s: {}",
                    self.settings.settle_timeout_s,
                    busy.join(", ")
                )));
            }
        }
    }
}

/// Puts whole objects, in parts above the multipart threshold.
#[derive(Clone)]
struct Uploader {
    store: Arc<AmazonS3>,
    threshold: usize,
    part: usize,
}

impl Uploader {
    /// Stores `content` at `key`; returns when the server acknowledged the whole object.
    async fn put(&self, key: Path, content: Bytes) -> SysResult<()> {
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

/// How often a request the server answered with a 5xx status is sent again, waiting 0.1,
/// 0.4 and 1.6 s: a server that answers is reachable, and a busy one (Garage answers 503 when
/// its SQLite database is locked) should not cost a cell. Connection errors are never retried
/// here: the engine reconnects and retries the cell.
const SERVER_ERROR_RETRIES: u32 = 3;

/// The HTTP client `object_store` uses, wrapped to see every response: it keeps the `Server`
/// header (where a server names itself), retries 5xx answers, and turns a 5xx answer that
/// persists into an interrupted request, so that a server restarting or overloaded counts as
/// a lost connection.
#[derive(Debug)]
struct Observed {
    server: Arc<Mutex<Option<String>>>,
}

impl HttpConnector for Observed {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(ObservedService {
            inner: ReqwestConnector::default().connect(options)?,
            server: self.server.clone(),
        }))
    }
}

#[derive(Debug)]
struct ObservedService {
    inner: HttpClient,
    server: Arc<Mutex<Option<String>>>,
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
                *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
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
                "minio: {} {}: {text}; sending it again in {delay:?}",
                parts.method,
                parts.uri.path()
            );
            tokio::time::sleep(delay).await;
            (delay, retries) = (delay * 4, retries + 1);
        }
    }
}

/// A lost connection (refused, reset, timed out, interrupted, or a 5xx answer) or any other
/// failure.
fn sys_error(context: &str, e: &(dyn std::error::Error + 'static), hint: &str) -> SysError {
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
    let msg = format!("minio: {context}: {}{hint}", error_chain(e));
    if lost {
        SysError::connection(msg)
    } else {
        SysError::failed(msg)
    }
}

/// [`sys_error`] for an S3 request, with a hint for the failures a user can fix. The status
/// is read from the message: `object_store` keeps it private for listings.
fn classify(context: &str, e: object_store::Error) -> SysError {
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

fn err(context: &str) -> impl FnOnce(object_store::Error) -> SysError + '_ {
    move |e| classify(context, e)
}

#[async_trait]
impl System for Minio {
    fn name(&self) -> &'static str {
        DEF.name
    }

    fn native_copies(&self) -> Option<u32> {
        // Plain S3 has no physical size function.
        None
    }

    fn target(&self) -> String {
        let s = &self.settings;
        format!(
            "{} bucket {} keys {}/ (path-style)",
            s.endpoint, s.bucket, s.prefix
        )
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        crate::tls::install_crypto_provider();
        let s = &self.settings;
        // Plain http only where a configured URL asks for it.
        let plain_http = [Some(&s.endpoint), self.garage.as_ref().map(|g| &g.url)]
            .into_iter()
            .flatten()
            .any(|u| u.starts_with("http://"));
        let mut options = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_connect_timeout(Duration::from_secs(s.connect_timeout_s))
            .with_timeout(Duration::from_secs(s.request_timeout_s));
        for c in &self.certificates {
            options = options.with_root_certificate(c.clone());
        }
        let server = Arc::new(Mutex::new(None));
        let observed = Observed {
            server: server.clone(),
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(&s.endpoint)
            .with_region(&s.region)
            .with_bucket_name(&s.bucket)
            .with_access_key_id(self.access_key.expose())
            .with_secret_access_key(self.secret_key.expose())
            .with_virtual_hosted_style_request(false)
            // Per-file deletes are DeleteObject requests, not one-key DeleteObjects batches.
            .with_disable_bulk_delete(true)
            // The engine retries cells after a reconnect: a request must fail, not hide an
            // outage behind minutes of retries.
            .with_retry(RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .with_client_options(options.clone())
            .with_http_connector(Observed {
                server: server.clone(),
            })
            .build()
            .map_err(|e| SysError::failed(format!("minio: client: {}", error_chain(&e))))?;
        let http = observed
            .connect(&options)
            .map_err(|e| SysError::failed(format!("minio: client: {}", error_chain(&e))))?;
        self.conn = Some(Conn {
            store: Arc::new(store),
            http,
        });
        // One listing proves the endpoint, the credentials and the bucket.
        let prefix = format!("{}/", self.settings.prefix);
        self.page(&prefix, None, 1).await.map_err(|mut e| {
            e.message = format!(
                "{} (endpoint {}, bucket {})",
                e.message, self.settings.endpoint, self.settings.bucket
            );
            e
        })?;
        let header = server.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let info = if self.garage.is_some() {
            let node = self.garage_call("GetNodeInfo", false).await?;
            ServerInfo {
                product: "Garage".into(),
                version: node["garageVersion"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
            }
        } else {
            ServerInfo {
                product: header
                    .clone()
                    .unwrap_or_else(|| "S3-compatible server".into()),
                version: if header.is_some() {
                    "unknown (the S3 API does not report it)".into()
                } else {
                    "unknown (no Server header; for Garage, configure garage_admin)".into()
                },
            }
        };
        self.product = info.product.clone();
        Ok(info)
    }

    async fn reset(&mut self) -> SysResult<()> {
        let store = self.store()?;
        let marker = self.marker();
        let prefix = format!("{}/", self.settings.prefix);
        let marked = match store.head(&marker).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(classify("HEAD marker", e)),
        };
        if !marked && !self.page(&prefix, None, 1).await?.result.objects.is_empty() {
            return Err(SysError::unsafe_namespace(format!(
                "minio: bucket {} holds objects under {prefix} but no {marker} marker: they were \
                 not written by dedup-lab; refusing to delete them — configure another prefix",
                self.settings.bucket
            )));
        }
        // First pages until only the marker is left: deleting never depends on a
        // continuation token staying valid, and the marker stays, so a reset cut short never
        // leaves unmarked lab objects behind.
        let mut previous: Option<Path> = None;
        loop {
            let page = self.page(&prefix, None, 1000).await?;
            let doomed: Vec<Path> = page
                .result
                .objects
                .into_iter()
                .map(|o| o.location)
                .filter(|p| *p != marker)
                .collect();
            let Some(first) = doomed.first().cloned() else {
                break;
            };
            if previous.as_ref() == Some(&first) {
                return Err(SysError::failed(format!(
                    "minio: {first} is still listed after DeleteObject succeeded"
                )));
            }
            previous = Some(first);
            let stream = futures_util::stream::iter(doomed.into_iter().map(Ok));
            let mut deleted = store.delete_stream(Box::pin(stream));
            while let Some(r) = futures_util::StreamExt::next(&mut deleted).await {
                r.map_err(err("DeleteObject"))?;
            }
        }
        if !marked {
            store
                .put(
                    &marker,
                    PutPayload::from_static(
                        b"created by dedup-lab; the objects under this prefix are deleted by its resets\n",
                    ),
                )
                .await
                .map_err(err("PUT marker"))?;
        }
        Ok(())
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let uploader = self.uploader()?;
        let mut files = ds.stream();
        // Spawned, so that requests (and payload signing) proceed on every worker thread
        // while the next files are read.
        let mut running = JoinSet::new();
        let joined = |r: Result<SysResult<()>, tokio::task::JoinError>| {
            r.map_err(|e| SysError::failed(format!("minio: PUT task: {e}")))?
        };
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            if running.len() >= self.settings.concurrency
                && let Some(r) = running.join_next().await
            {
                joined(r)?;
            }
            let (up, key) = (uploader.clone(), self.key(&f));
            running.spawn(async move { up.put(key, content).await });
        }
        while let Some(r) = running.join_next().await {
            joined(r)?;
        }
        Ok(())
    }

    async fn insert_one(&mut self, file: &FileEntry, content: Bytes) -> SysResult<()> {
        self.uploader()?.put(self.key(file), content).await
    }

    async fn delete_one(&mut self, file: &FileEntry) -> SysResult<()> {
        self.store()?
            .delete(&self.key(file))
            .await
            .map_err(err("DeleteObject"))
    }

    async fn maintenance(&mut self) -> SysResult<String> {
        let later = match self.product.as_str() {
            "Garage" => {
                "Garage deletes the blocks of deleted objects only after a fixed 600 s delay \
                 and its metadata database does not shrink; not waited for"
            }
            "MinIO" => {
                "MinIO frees deleted objects at once; its bucket-usage metric (the prometheus \
                 probe) lags by a scanner cycle"
            }
            _ => "the server may free space later; not waited for",
        };
        Ok(format!(
            "none: S3 has no space-reclaiming operation; {later}"
        ))
    }

    async fn settle(&mut self) -> SysResult<()> {
        // An acknowledged PUT or DELETE is stored: S3 has nothing to flush. Garage writes a
        // PUT's blocks before acknowledging it, but updates its metadata tables afterwards.
        if self.garage.is_some() {
            self.wait_garage_queues().await?;
        }
        Ok(())
    }

    async fn count(&mut self) -> SysResult<u64> {
        Ok(self.listing().await?.objects)
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        Err(SysError::failed(
            "minio: S3 has no physical size function (a listing gives logical bytes)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds from a section with credentials in a secret file, plus `extra`.
    fn build(extra: &str) -> anyhow::Result<Minio> {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "unit-test-key-value\n").unwrap();
        let section: toml::Table = toml::from_str(&format!(
            "access_key_file = {0:?}\nsecret_key_file = {0:?}\n{extra}",
            key.display().to_string()
        ))
        .unwrap();
        Minio::new(Some(&section))
    }

    fn refused(extra: &str) -> String {
        let e = build(extra).err().expect("refused");
        assert_eq!(crate::error::exit_code(&e), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn bucket_names_must_be_lab_owned_and_valid_for_s3() {
        assert!(build("bucket = \"dedup-lab-x1\"").is_ok());
        for bad in ["dedup_lab", "photos", "dedup-lab-", "dedup-labX"] {
            let e = refused(&format!("bucket = \"{bad}\""));
            assert!(e.contains("no _") && e.contains(bad), "{e}");
        }
        assert!(refused("prefix = \"photos\"").contains("dedup_lab"));
    }

    #[test]
    fn endpoints_carry_no_credentials_or_paths() {
        let e = refused("endpoint = \"http://ak:sk-very-secret@127.0.0.1:9000\"");
        assert!(e.contains("credentials do not belong"), "{e}");
        assert!(refused("endpoint = \"http://127.0.0.1:9000/dedup-lab\"").contains("path"));
        assert!(refused("endpoint = \"ftp://127.0.0.1\"").contains("scheme"));
        assert!(refused("ca_file = \"/etc/hosts\"").contains("not https"));
        let e = refused("endpoint = \"https://s3.example\"\nca_file = \"/etc/hostname\"");
        assert!(e.contains("no usable PEM"), "{e}");
    }

    #[test]
    fn credentials_and_limits_are_required() {
        let e = Minio::new(None).err().unwrap().to_string();
        assert!(e.contains("access_key_env or access_key_file"), "{e}");
        assert!(refused("part_size_mib = 1").contains("5 to 5120"));
        assert!(refused("list_page_size = 5000").contains("list_page_size"));
        assert!(refused("garage_admin_token_env = \"X\"").contains("garage_admin"));
        assert!(refused("bucket_name = \"x\"").contains("unknown field"));
    }
}
