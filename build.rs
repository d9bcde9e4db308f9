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
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
