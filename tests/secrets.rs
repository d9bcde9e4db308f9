//! Secrets: a run with a distinctive password leaves it nowhere — not in logs, the journal,
//! metadata, exports or process arguments — and a dry run writes nothing to any system.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, lab_section};

const PASSWORD: &str = "Zebra-Secret-7f3e9c1d-Quokka";
const ROLE: &str = "dedup_lab_secret_test";

async fn admin() -> tokio_postgres::Client {
    let s = lab_section("postgres");
    let pw = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(s["port"].as_integer().unwrap() as u16)
        .user(s["user"].as_str().unwrap())
        .dbname("postgres")
        .password(pw.trim());
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

fn write_config(dir: &Path, user: &str, schema: &str) -> std::path::PathBuf {
    let mut section = lab_section("postgres");
    section.remove("password_file");
    section.insert("password_env".into(), "DEDUP_LAB_TEST_DISTINCT_PW".into());
    section.insert("user".into(), user.into());
    section.insert("schema".into(), schema.into());
    let mut systems = toml::Table::new();
    systems.insert("postgres".into(), section.into());
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), systems.into());
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// Every process's command line on this machine.
fn all_cmdlines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .collect()
}

/// A run with debug logging, the distinctive password in the environment its config names,
/// one uuid_keys data set of `files` files.
fn debug_run(config: &Path, results: &Path, systems: &str, files: u32) -> Command {
    let mut c = bin();
    c.env("DEDUP_LAB_TEST_DISTINCT_PW", PASSWORD)
        .args([
            "-vv",
            "run",
            "--systems",
            systems,
            "--payloads",
            "uuid_keys",
        ])
        .args([
            "--grades",
            "0",
            "--runs",
            "1",
            "--files",
            &files.to_string(),
        ])
        .args(["--no-progress", "--config"])
        .arg(config)
        .arg("--results-dir")
        .arg(results);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_distinctive_password_appears_nowhere() {
    let c = admin().await;
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS dedup_lab_t_secret CASCADE;
         DROP ROLE IF EXISTS {ROLE};
         CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';
         GRANT CREATE ON DATABASE postgres TO {ROLE};
         GRANT pg_checkpoint TO {ROLE};"
    ))
    .await
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), ROLE, "dedup_lab_t_secret");
    let results = tmp.path().join("results");
    let mut child = debug_run(&config, &results, "postgres,sqlite", 200)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, no process shows the password in its arguments.
    let mut looks = 0;
    while child.try_wait().unwrap().is_none() {
        let leaked: Vec<String> = all_cmdlines()
            .into_iter()
            .filter(|c| c.contains(PASSWORD))
            .collect();
        assert!(
            leaked.is_empty(),
            "password in process arguments: {leaked:?}"
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(looks > 3, "the run ended before ps could look at it");
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{logs}");
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert!(!logs.contains(PASSWORD), "password in the logs");

    // A failing connection with the same password: its error message is clean too.
    let wrong = write_config(tmp.path(), "dedup_lab_no_such_role", "dedup_lab_t_secret");
    let out = debug_run(&wrong, &results, "postgres", 5).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSWORD));

    let mut files = 0;
    for entry in walkdir::WalkDir::new(&results) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            files += 1;
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(PASSWORD),
                "password in {}",
                entry.path().display()
            );
        }
    }
    assert!(
        files >= 6,
        "journal, config, metadata and exports were written"
    );
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS dedup_lab_t_secret CASCADE;
         REVOKE CREATE ON DATABASE postgres FROM {ROLE};
         DROP ROLE {ROLE};"
    ))
    .await
    .unwrap();
}

/// Redis write commands processed so far (from INFO commandstats).
fn redis_writes() -> u64 {
    let s = lab_section("redis");
    let pw = std::fs::read_to_string(s["password_file"].as_str().unwrap()).unwrap();
    let out = Command::new("redis-cli")
        .env("REDISCLI_AUTH", pw.trim())
        .args(["-p", &s["port"].as_integer().unwrap().to_string()])
        .args(["INFO", "commandstats"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["cmdstat_set:", "cmdstat_del:", "cmdstat_unlink:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The identity of the lab table (changes if a reset recreated it), or None.
async fn lab_table(c: &tokio_postgres::Client) -> Option<u32> {
    c.query_one("SELECT to_regclass('dedup_lab.files')::oid", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_to_no_system_and_no_disk() {
    let c = admin().await;
    let tmp = tempfile::tempdir().unwrap();
    let (table, writes) = (lab_table(&c).await, redis_writes());
    let out = bin()
        .args(["run", "--dry-run", "--systems", "all", "--config"])
        .arg(common::lab_config())
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let t = common::text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("postgres") && t.contains("redis") && t.contains("nothing was written"));
    assert_eq!(redis_writes(), writes, "redis saw a write");
    assert_eq!(lab_table(&c).await, table, "postgres saw a reset");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "a file was created"
    );
}
