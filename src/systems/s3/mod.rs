//! `s3`: any S3 API (MinIO, Garage, s3s-fs, AWS S3, …), path-style, through `object_store`.
//! `minio` is accepted as the kind's old name.
//!
//! Namespace: the key prefix `<prefix>/` inside a lab bucket, marked by the object
//! `<prefix>/.dedup-lab-owner`; files are `<prefix>/files/<key>`, the key a file's name or its
//! content's hash (the layout's keys). Several containers are key prefixes
//! `<prefix>/c<k>/files/`, not buckets: the lab has one bucket, and creating buckets needs
//! rights the adapter does not assume. A content key written again is a PUT to the same key,
//! which S3 overwrites: one object per content in its container, and the count (a listing) is
//! what the server holds. A reset deletes everything under `<prefix>/` but the marker, so no
//! container of an earlier layout survives it. Bulk path: concurrent PUTs
//! (bounded), multipart above a threshold; per file: one PUT (acknowledged) / one
//! DeleteObject; count and logical size: ListObjectsV2 page by page (continuation tokens),
//! never a HEAD per object; maintenance: none exists in S3, the note says what the server
//! still owes. No native size probe: a listing gives logical bytes, not physical ones. MinIO's
//! `minio_bucket_usage_total_bytes{bucket=…}` is read by the engine's `prometheus` probe when
//! configured (`prometheus_probe`, with a bearer token from `mc admin prometheus generate`).
//! The `fs` probe reads the server's directories when they are local. With Garage's admin API
//! configured (`garage_admin`), records name the Garage version and settling waits for
//! Garage's table queues.

mod garage;
mod http;
mod lab_garage;
mod lab_s3s;
mod native;
mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};

use super::toolkit::{Holding, Marker, Window, check_namespace, parse, spawned};
use super::{System, SystemContext, SystemDef, TEST_HOOKS};
use crate::dataset::{DataSet, FileEntry};
use crate::error::usage;
use crate::model::{Layout, Measured, Meter, ServerInfo, SysError, SysResult, error_chain};
use crate::secret::{Secret, SecretSource};
use garage::GarageAdmin;
use http::{Observed, classify, err};
use upload::Uploader;

/// Registry entry.
pub const DEF: SystemDef = SystemDef {
    kind: "s3",
    aliases: &["minio"],
    embedded: false,
    about: "any S3 API (MinIO, Garage, s3s-fs): concurrent PUT bulk load, no maintenance",
    build,
    lab: &[&lab_garage::Garage, &lab_s3s::S3s],
    native_loader: Some(native::LOADER),
    tests: TEST_HOOKS,
};

/// Name of the marker object inside the lab prefix.
pub const MARKER: &str = ".dedup-lab-owner";

/// The keys of an S3 instance's section.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `http://host:port` or `https://host:port`, without credentials or path.
    pub endpoint: String,
    /// Region the requests are signed for.
    pub region: String,
    /// Bucket (must exist); its name must start with `dedup-lab`.
    pub bucket: String,
    /// Key prefix inside the bucket (without the trailing `/`); must start with `dedup_lab`.
    /// Default: see [`SystemContext::default_namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<PathBuf>,
    /// PEM file of the CA(s) to trust for https; default: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PUTs in flight at once in the bulk path.
    pub concurrency: usize,
    /// Files larger than this are uploaded in parts (multipart upload).
    pub multipart_threshold_mib: u64,
    /// Size of each part of a multipart upload.
    pub part_size_mib: u64,
    /// Keys per ListObjectsV2 page (S3 allows at most 1000).
    pub list_page_size: usize,
    pub connect_timeout_s: u64,
    /// Seconds one request may take (a whole PUT or part).
    pub request_timeout_s: u64,
    /// Seconds to wait for the server's background work when settling.
    pub settle_timeout_s: u64,
    /// Garage's admin API, e.g. `http://127.0.0.1:3903`: product version and settling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub garage_admin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub garage_admin_token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub garage_admin_token_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "dedup-lab".into(),
            prefix: None,
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
fn check_bucket(instance: &str, name: &str) -> anyhow::Result<()> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name.starts_with(BUCKET_PREFIX) || !plain || name.ends_with('-') || name.len() > 63 {
        return Err(usage(format!(
            "config [systems.{instance}] bucket = \"{name}\" is not a lab-owned S3 bucket name: it \
             must start with \"{BUCKET_PREFIX}\", use only a-z, 0-9 and - (no _), not end with \
             - and have at most 63 characters"
        )));
    }
    Ok(())
}

/// Checks the endpoint: http(s), a host, no credentials, no path or query.
fn check_endpoint(instance: &str, endpoint: &str) -> anyhow::Result<reqwest::Url> {
    let bad = |why: &str| {
        usage(format!(
            "config [systems.{instance}] endpoint = \"{}\": {why}; write it as http://host:port \
             or https://host:port",
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
fn required(
    instance: &str,
    what: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> anyhow::Result<Secret> {
    SecretSource::from_keys(env.clone(), file.clone())
        .resolve(&format!("config [systems.{instance}] {what}"))?
        .ok_or_else(|| {
            usage(format!(
                "config [systems.{instance}]: no {what}: set {what}_env or {what}_file"
            ))
        })
}

fn build(ctx: &SystemContext<'_>) -> anyhow::Result<Box<dyn System>> {
    Ok(Box::new(S3::new(ctx)?))
}

/// Objects under key prefixes as paginated listings saw them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Number of objects.
    pub objects: u64,
    /// Sum of their sizes: logical bytes, not what the server stores.
    pub bytes: u64,
    /// ListObjectsV2 requests it took.
    pub pages: u64,
}

/// A connection: the store and the HTTP client for admin requests.
struct Conn {
    store: Arc<AmazonS3>,
    http: HttpClient,
}

/// The S3 adapter.
pub struct S3 {
    name: String,
    prefix: String,
    layout: Layout,
    settings: Settings,
    access_key: Secret,
    secret_key: Secret,
    certificates: Vec<Certificate>,
    garage: Option<GarageAdmin>,
    conn: Option<Conn>,
    /// Product named at the last connect, for the maintenance note.
    product: String,
    /// What the HTTP layer saw: server header, retried requests.
    observed: Observed,
}

impl S3 {
    /// Validates an instance's section and reads its secrets; does not connect.
    pub fn new(ctx: &SystemContext<'_>) -> anyhow::Result<S3> {
        let instance = ctx.instance;
        let s: Settings = parse(instance, ctx.section)?;
        let url = check_endpoint(instance, &s.endpoint)?;
        check_bucket(instance, &s.bucket)?;
        let prefix = s
            .prefix
            .clone()
            .unwrap_or_else(|| ctx.default_namespace(DEF.kind));
        check_namespace(instance, "prefix", &prefix)?;
        if s.concurrency == 0 || !(1..=1000).contains(&s.list_page_size) {
            crate::bail_usage!(
                "config [systems.{instance}]: concurrency must be at least 1 and list_page_size 1 to 1000"
            );
        }
        // S3 limits: parts of 5 MiB to 5 GiB (except the last), single PUTs up to 5 GiB.
        if !(5..=5120).contains(&s.part_size_mib)
            || !(1..=5120).contains(&s.multipart_threshold_mib)
        {
            crate::bail_usage!(
                "config [systems.{instance}]: part_size_mib must be 5 to 5120 and \
                 multipart_threshold_mib 1 to 5120 (S3's limits)"
            );
        }
        let certificates = match &s.ca_file {
            None => Vec::new(),
            Some(_) if url.scheme() != "https" => crate::bail_usage!(
                "config [systems.{instance}]: ca_file is set but the endpoint is not https; use an \
                 https endpoint or remove ca_file"
            ),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    usage(format!(
                        "config [systems.{instance}] ca_file {}: {e}; give a PEM file of CA certificates",
                        path.display()
                    ))
                })?;
                match Certificate::from_pem_bundle(&pem) {
                    Ok(certs) if !certs.is_empty() => certs,
                    _ => crate::bail_usage!(
                        "config [systems.{instance}] ca_file {} holds no usable PEM CA certificate",
                        path.display()
                    ),
                }
            }
        };
        let access_key = required(
            instance,
            "access_key",
            &s.access_key_env,
            &s.access_key_file,
        )?;
        let secret_key = required(
            instance,
            "secret_key",
            &s.secret_key_env,
            &s.secret_key_file,
        )?;
        let garage = match &s.garage_admin {
            None if s.garage_admin_token_env.is_some() || s.garage_admin_token_file.is_some() => {
                crate::bail_usage!(
                    "config [systems.{instance}]: a garage_admin_token is set but garage_admin is not; \
                     set garage_admin to the admin API's URL or remove the token"
                )
            }
            None => None,
            Some(admin) => Some(GarageAdmin {
                url: check_endpoint(instance, admin)
                    .map_err(|_| {
                        usage(format!(
                            "config [systems.{instance}] garage_admin = \"{admin}\" is not a URL like \
                             http://127.0.0.1:3903"
                        ))
                    })?
                    .as_str()
                    .trim_end_matches('/')
                    .to_string(),
                token: required(
                    instance,
                    "garage_admin_token",
                    &s.garage_admin_token_env,
                    &s.garage_admin_token_file,
                )?,
            }),
        };
        Ok(S3 {
            name: instance.to_string(),
            prefix,
            layout: ctx.layout,
            settings: s,
            access_key,
            secret_key,
            certificates,
            garage,
            conn: None,
            product: String::new(),
            observed: Observed::default(),
        })
    }

    fn conn(&self) -> SysResult<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| SysError::connection("s3: not connected"))
    }

    fn store(&self) -> SysResult<Arc<AmazonS3>> {
        Ok(self.conn()?.store.clone())
    }

    fn marker(&self) -> Path {
        Path::from(format!("{}/{MARKER}", self.prefix))
    }

    /// The key prefix of container `k`: `<prefix>/files/` when there is one, as ever.
    fn files_prefix(&self, k: u32) -> String {
        if self.layout.containers == 1 {
            format!("{}/files/", self.prefix)
        } else {
            format!("{}/c{k}/files/", self.prefix)
        }
    }

    /// The key prefixes of every container.
    fn files_prefixes(&self) -> Vec<String> {
        (0..self.layout.containers)
            .map(|k| self.files_prefix(k))
            .collect()
    }

    fn key(&self, f: &FileEntry) -> Path {
        Path::from(format!(
            "{}{}",
            self.files_prefix(self.layout.container_of(f)),
            self.layout.key_of(f)
        ))
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
        page(&self.conn()?.store, prefix, token, max_keys).await
    }

    /// The lab's files in every container as listings see them (see [`listing`]).
    pub async fn listing(&self) -> SysResult<Listing> {
        listing(
            &self.conn()?.store,
            &self.files_prefixes(),
            self.settings.list_page_size,
        )
        .await
    }

    /// A new store (with a connection pool of its own) and HTTP client for admin requests;
    /// `observed` sees their requests.
    fn open(&self, observed: &Observed) -> SysResult<Conn> {
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
            .with_http_connector(observed.clone())
            .build()
            .map_err(|e| SysError::failed(format!("s3: client: {}", error_chain(&e))))?;
        let http = observed
            .connect(&options)
            .map_err(|e| SysError::failed(format!("s3: client: {}", error_chain(&e))))?;
        Ok(Conn {
            store: Arc::new(store),
            http,
        })
    }
}

/// One ListObjectsV2 page of keys under `prefix` (which ends with `/`).
async fn page(
    store: &AmazonS3,
    prefix: &str,
    token: Option<String>,
    max_keys: usize,
) -> SysResult<object_store::list::PaginatedListResult> {
    let opts = PaginatedListOptions {
        max_keys: Some(max_keys),
        page_token: token,
        ..Default::default()
    };
    store
        .list_paginated(Some(prefix), opts)
        .await
        .map_err(err("ListObjectsV2"))
}

/// Counts the objects under each of `prefixes` and sums their sizes, page by page
/// (continuation tokens), with `page_size` keys per page. Sizes come from the listing, never a
/// HEAD per object.
async fn listing(store: &AmazonS3, prefixes: &[String], page_size: usize) -> SysResult<Listing> {
    let mut out = Listing::default();
    for prefix in prefixes {
        let mut token = None;
        loop {
            let page = page(store, prefix, token, page_size).await?;
            out.pages += 1;
            out.objects += page.result.objects.len() as u64;
            out.bytes += page.result.objects.iter().map(|o| o.size).sum::<u64>();
            match page.page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
    }
    Ok(out)
}

/// The meter: a store of its own, which lists the lab's files.
struct S3Meter {
    store: Arc<AmazonS3>,
    /// The key prefixes of the containers.
    prefixes: Vec<String>,
    page_size: usize,
}

#[async_trait]
impl Measured for S3Meter {
    fn native_copies(&self) -> Option<u32> {
        // Plain S3 has no physical size function.
        None
    }

    async fn native_size(&mut self) -> SysResult<u64> {
        Err(SysError::failed(
            "s3: S3 has no physical size function (a listing gives logical bytes)",
        ))
    }
}

#[async_trait]
impl Meter for S3Meter {
    /// What S3 offers: the listing's objects and the sum of their sizes (logical bytes), and
    /// the ListObjectsV2 pages it took.
    async fn snapshot(&mut self) -> SysResult<BTreeMap<String, f64>> {
        let l = listing(&self.store, &self.prefixes, self.page_size).await?;
        Ok(BTreeMap::from([
            ("objects".to_string(), l.objects as f64),
            ("listed_bytes".to_string(), l.bytes as f64),
            ("list_pages".to_string(), l.pages as f64),
        ]))
    }
}

#[async_trait]
impl System for S3 {
    fn name(&self) -> &str {
        &self.name
    }

    fn target(&self) -> String {
        let s = &self.settings;
        format!(
            "{} bucket {} keys {}/ (path-style)",
            s.endpoint, s.bucket, self.prefix
        )
    }

    fn retried_requests(&self) -> u64 {
        self.observed
            .retried
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn connect(&mut self) -> SysResult<ServerInfo> {
        let observed = self.observed.clone();
        self.conn = Some(self.open(&observed)?);
        // One listing proves the endpoint, the credentials and the bucket.
        let prefix = format!("{}/", self.prefix);
        self.page(&prefix, None, 1).await.map_err(|mut e| {
            e.message = format!(
                "{} (endpoint {}, bucket {})",
                e.message, self.settings.endpoint, self.settings.bucket
            );
            e
        })?;
        let header = observed
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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

    async fn meter(&mut self) -> SysResult<Box<dyn Meter>> {
        // Its requests are not the stages': they count in an observer of their own.
        Ok(Box::new(S3Meter {
            store: self.open(&Observed::default())?.store,
            prefixes: self.files_prefixes(),
            page_size: self.settings.list_page_size,
        }))
    }

    async fn inspect(&mut self) -> SysResult<Holding> {
        let store = self.store()?;
        let prefix = format!("{}/", self.prefix);
        match store.get(&self.marker()).await {
            Ok(got) => {
                let text = got.bytes().await.map_err(err("GET marker"))?;
                Ok(Holding::Marked(String::from_utf8_lossy(&text).into_owned()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(
                if self.page(&prefix, None, 1).await?.result.objects.is_empty() {
                    Holding::Absent
                } else {
                    Holding::Foreign(format!(
                        "bucket {} holds objects under {prefix} but no {} marker",
                        self.settings.bucket,
                        self.marker()
                    ))
                },
            ),
            Err(e) => Err(classify("GET marker", e)),
        }
    }

    async fn recreate(&mut self, marker: &Marker) -> SysResult<()> {
        let store = self.store()?;
        let marker_key = self.marker();
        let prefix = format!("{}/", self.prefix);
        // The marker is written first and stays, so a reset cut short never leaves unmarked
        // lab objects behind.
        if marker.changed {
            store
                .put(
                    &marker_key,
                    PutPayload::from(marker.text.clone().into_bytes()),
                )
                .await
                .map_err(err("PUT marker"))?;
        }
        // First pages until only the marker is left: deleting never depends on a continuation
        // token staying valid.
        let mut previous: Option<Path> = None;
        loop {
            let page = self.page(&prefix, None, 1000).await?;
            let doomed: Vec<Path> = page
                .result
                .objects
                .into_iter()
                .map(|o| o.location)
                .filter(|p| *p != marker_key)
                .collect();
            let Some(first) = doomed.first().cloned() else {
                return Ok(());
            };
            if previous.as_ref() == Some(&first) {
                return Err(SysError::failed(format!(
                    "s3: {first} is still listed after DeleteObject succeeded"
                )));
            }
            previous = Some(first);
            let stream = futures_util::stream::iter(doomed.into_iter().map(Ok));
            let mut deleted = store.delete_stream(Box::pin(stream));
            while let Some(r) = futures_util::StreamExt::next(&mut deleted).await {
                r.map_err(err("DeleteObject"))?;
            }
        }
    }

    async fn bulk_insert(&mut self, ds: &DataSet) -> SysResult<()> {
        let uploader = self.uploader()?;
        let mut files = ds.stream();
        // Spawned, so that requests (and payload signing) proceed on every worker thread
        // while the next files are read.
        let mut window = Window::new(self.settings.concurrency, u64::MAX);
        while let Some(item) = files.next().await {
            let (f, content) = item.map_err(|e| SysError::failed(format!("{e:#}")))?;
            let (up, key) = (uploader.clone(), self.key(&f));
            window
                .push(0, || {
                    Ok(spawned(
                        "s3: PUT",
                        async move { up.put(key, content).await },
                    ))
                })
                .await?;
        }
        window.finish().await.map(drop)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds from a section with credentials in a secret file, plus `extra`.
    fn build(extra: &str) -> anyhow::Result<S3> {
        build_with(extra, Layout::default())
    }

    /// [`build`] with `layout`.
    fn build_with(extra: &str, layout: Layout) -> anyhow::Result<S3> {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "unit-test-key-value\n").unwrap();
        let section: toml::Table = toml::from_str(&format!(
            "access_key_file = {0:?}\nsecret_key_file = {0:?}\n{extra}",
            key.display().to_string()
        ))
        .unwrap();
        S3::new(&SystemContext {
            instance: "s3",
            section: Some(&section),
            experiment_dir: std::path::Path::new("."),
            layout,
        })
    }

    #[test]
    fn keys_name_the_container_prefix_only_when_there_are_several() {
        let f = FileEntry {
            id: 6,
            name: "f6".into(),
            size: 1,
            blake3: "ab12".into(),
            copy_of: None,
        };
        let key = |keys, containers| {
            let s3 = build_with("prefix = \"dedup_lab_x\"", Layout { keys, containers }).unwrap();
            (s3.key(&f).to_string(), s3.files_prefixes())
        };
        use crate::model::KeyMode::{Content, Name};
        assert_eq!(
            key(Name, 1),
            (
                "dedup_lab_x/files/f6".into(),
                vec!["dedup_lab_x/files/".into()]
            )
        );
        assert_eq!(key(Content, 1).0, "dedup_lab_x/files/ab12");
        let (k, prefixes) = key(Content, 4);
        assert_eq!(k, "dedup_lab_x/c2/files/ab12");
        assert_eq!(prefixes.len(), 4);
        assert_eq!(prefixes[3], "dedup_lab_x/c3/files/");
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
        let e = S3::new(&SystemContext {
            instance: "s3",
            section: None,
            experiment_dir: std::path::Path::new("."),
            layout: Default::default(),
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("access_key_env or access_key_file"), "{e}");
        assert!(refused("part_size_mib = 1").contains("5 to 5120"));
        assert!(refused("list_page_size = 5000").contains("list_page_size"));
        assert!(refused("garage_admin_token_env = \"X\"").contains("garage_admin"));
        assert!(refused("bucket_name = \"x\"").contains("unknown field"));
    }
}
