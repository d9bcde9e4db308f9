//! An HTTP endpoint a probe reads (a metrics page, a Prometheus server): its URL checked once,
//! its bearer token read once from the environment or a file, and a client with a timeout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::error::usage;
use crate::secret::{Secret, SecretSource, redact};

/// The settings every HTTP probe takes besides its URL.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Environment variable holding a bearer token.
    pub token_env: Option<String>,
    /// File holding a bearer token.
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for an answer.
    pub timeout_s: u64,
}

/// A checked endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The URL as configured.
    pub url: reqwest::Url,
    token: Option<Secret>,
    client: reqwest::Client,
}

impl Endpoint {
    /// Checks `url` (http or https, a host, no credentials) and reads the token. `what` names
    /// the setting in errors (`config [systems.x] prometheus_probe`), `example` shows a good
    /// URL.
    pub fn new(what: &str, url: &str, access: &Access, example: &str) -> anyhow::Result<Self> {
        let parsed = http_url(what, url, example)?;
        let token = SecretSource::from_keys(access.token_env.clone(), access.token_file.clone())
            .resolve(&format!("{what} token"))?;
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(access.timeout_s))
            .build()
            .with_context(|| format!("building the HTTP client of {what}"))?;
        Ok(Endpoint {
            url: parsed,
            token,
            client,
        })
    }

    /// GETs `url` (the endpoint's own, or one derived from it) with the bearer token, and
    /// returns the status and the body.
    pub async fn get(&self, url: reqwest::Url) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let mut request = self.client.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.text().await?))
    }
}

/// Checks an http(s) URL of config section `what` that a bearer token goes with: it must
/// parse, have a host and carry no credentials (they belong in `token_env` or `token_file`,
/// never in a URL that may be logged). `example` shows the expected form.
pub fn http_url(what: &str, raw: &str, example: &str) -> anyhow::Result<reqwest::Url> {
    let bad = |why: String| usage(format!("{what}: {why}"));
    let url = reqwest::Url::parse(raw).map_err(|e| {
        bad(format!(
            "url \"{}\" is not a URL ({e}); write it as {example}",
            redact(raw)
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "the url carries credentials; remove them and set token_env or token_file".into(),
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad(format!(
            "url \"{url}\" needs an http or https scheme and a host"
        )));
    }
    Ok(url)
}
