//! TLS set-up shared by the HTTP clients (the S3 adapter, the `prometheus` probe).

/// Makes ring the process's rustls crypto provider. reqwest is built without a default
/// provider, and ring is what the rest of dedup-lab uses. Idempotent: an error only means a
/// provider is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
