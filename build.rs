//! Records the git commit dedup-lab is built from, when the source is a git checkout.

fn main() {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("cargo:rustc-env=DEDUP_LAB_GIT_COMMIT={commit}");
    }
    // Integration tests against CockroachDB run only when a server is given.
    println!("cargo::rustc-check-cfg=cfg(cockroach)");
    println!("cargo:rerun-if-env-changed=DEDUP_LAB_COCKROACH_URL");
    if std::env::var_os("DEDUP_LAB_COCKROACH_URL").is_some() {
        println!("cargo:rustc-cfg=cockroach");
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
