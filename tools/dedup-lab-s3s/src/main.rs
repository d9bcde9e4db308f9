//! `dedup-lab-s3s --host HOST --port PORT ROOT`: s3s-fs serving the directory ROOT (each
//! bucket is a directory in it) on HOST:PORT, path-style, with one key pair read from the
//! environment variables `S3S_ACCESS_KEY` and `S3S_SECRET_KEY`. It refuses to start without
//! them: an S3 server without authentication is never what the lab wants.

use std::error::Error;
use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use s3s_fs::FileSystem;
use tokio::net::TcpListener;

const USAGE: &str = "usage: dedup-lab-s3s --host HOST --port PORT ROOT \
                     (with S3S_ACCESS_KEY and S3S_SECRET_KEY in the environment)";

/// Where to listen and what to serve.
struct Opts {
    host: String,
    port: u16,
    root: PathBuf,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let (mut host, mut port, mut root) = (None, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next(),
            "--port" => port = args.next().and_then(|p| p.parse().ok()),
            _ if !arg.starts_with('-') && root.is_none() => root = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}; {USAGE}")),
        }
    }
    match (host, port, root) {
        (Some(host), Some(port), Some(root)) => Ok(Opts { host, port, root }),
        _ => Err(USAGE.to_string()),
    }
}

fn key(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{name} is not set; {USAGE}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let opts = parse(std::env::args().skip(1))?;
    let auth = SimpleAuth::from_single(key("S3S_ACCESS_KEY")?, key("S3S_SECRET_KEY")?);
    let fs = FileSystem::new(&opts.root)
        .map_err(|e| format!("serving {}: {e:?}", opts.root.display()))?;
    let mut service = S3ServiceBuilder::new(fs);
    service.set_auth(auth);
    let service = service.build();
    let listener = TcpListener::bind((opts.host.as_str(), opts.port)).await?;
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("dedup-lab-s3s: accepting a connection: {e}");
                continue;
            }
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(conn);
    }
}
