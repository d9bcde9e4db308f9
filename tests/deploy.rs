//! What runs dedup-lab elsewhere, checked as far as it can be without a cluster or a container
//! engine: `dedup-lab k8s` output against the Kubernetes OpenAPI schemas of three versions
//! (kubernetes-validate, strict) and parsed back; the Containerfile with hadolint; the CI
//! examples with SchemaStore's schemas (check-jsonschema) and actionlint. scripts/ci-tools
//! installs the checkers into target/ci-tools (scripts/test runs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, text};
use serde::Deserialize as _;
use serde_json::Value;

/// Kubernetes versions the manifests must validate against.
const VERSIONS: [&str; 3] = ["1.35.0", "1.36.0", "1.37.0"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where scripts/ci-tools put the checkers.
fn tools() -> PathBuf {
    let dir = std::env::var_os("DEDUP_LAB_CI_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ci-tools"));
    assert!(
        dir.join("installed").exists(),
        "no checkers in {}: run scripts/ci-tools (scripts/test does)",
        dir.display()
    );
    dir
}

fn checker(name: &str) -> Command {
    Command::new(tools().join("venv/bin").join(name))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()))
}

/// A config with secrets of every form: files (a password, a CA, a probe's token) and an
/// environment variable.
const CONFIG: &str = r#"[experiment]
runs = 2
systems = ["postgres", "redis", "pg_lz4", "sqlite"]
grades = [0, 90]

[systems.postgres]
host = "pg.databases.svc"
user = "bench"
password_file = "/run/secrets/dedup-lab/postgres/password"
tls = true
ca_file = "/run/secrets/dedup-lab/postgres/ca.crt"

[systems.pg_lz4]
kind = "postgres"
host = "pg-lz4.databases.svc"
user = "bench"
password_file = "/run/secrets/dedup-lab/pg-lz4/password"
schema = "dedup_lab_lz4"

[systems.redis]
host = "redis.databases.svc"
password_env = "REDISCLI_AUTH"

[systems.redis.promql_probe]
url = "http://prometheus.monitoring:9090"
query = 'redis_memory_used_bytes{namespace="${namespace}"}'
vars = { namespace = "databases" }
token_file = "/run/secrets/dedup-lab/prometheus/token"
"#;

/// Renders CONFIG with `args`; returns the YAML text.
fn render(dir: &Path, args: &[&str]) -> String {
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out_file = dir.join("dedup-lab.yaml");
    let out = run(bin()
        .args(["k8s", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out_file)
        .args(args)
        // A value in the variable the config names must never reach the manifests.
        .env("REDISCLI_AUTH", "redis-secret-value-5d1"));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(&out_file).unwrap()
}

/// The documents of a YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(objects: &'a [Value], kind: &str, component: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind && o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .unwrap_or_else(|| panic!("no {kind} {component}"))
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    render(
        tmp.path(),
        &["--shards", "3", "--storage-class", "longhorn"],
    );
    let file = tmp.path().join("dedup-lab.yaml");
    for version in VERSIONS {
        let out = run(checker("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file));
        assert!(out.status.success(), "{version}: {}", text(&out));
        assert_eq!(
            text(&out).matches(" passed for resource ").count(),
            5,
            "{version}: {}",
            text(&out)
        );
    }
    // The validator is strict: a field the schema does not have fails it.
    let broken = tmp.path().join("broken.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &broken,
        yaml.replace(
            "  completionMode: Indexed",
            "  completionMode: Indexed\n  shards: 3",
        ),
    )
    .unwrap();
    let out = run(checker("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", VERSIONS[0]])
        .arg(&broken));
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn manifests_parse_back_to_what_the_config_asks() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = render(tmp.path(), &["--shards", "3", "--namespace", "bench"]);
    assert!(
        !yaml.contains("redis-secret-value-5d1"),
        "a secret value leaked"
    );
    let objects = documents(&yaml);
    assert_eq!(objects.len(), 5);
    assert!(
        objects.iter().all(|o| o["kind"] != "Secret"),
        "Secrets are referred to, never rendered"
    );
    assert!(
        objects
            .iter()
            .all(|o| o["kind"] == "Namespace" || o["metadata"]["namespace"] == "bench")
    );

    // The ConfigMap holds the config file as it is.
    let config_map = kind(&objects, "ConfigMap", "config");
    assert_eq!(config_map["data"]["config.toml"], CONFIG);

    // One completion per shard; each pod takes its shard from its index.
    let shards = kind(&objects, "Job", "shard");
    assert_eq!(shards["spec"]["completionMode"], "Indexed");
    assert_eq!(shards["spec"]["completions"], 3);
    assert_eq!(shards["spec"]["parallelism"], 3);
    // Bad input fails the Job, failed cells their index; neither is retried.
    let rules = &shards["spec"]["podFailurePolicy"]["rules"];
    assert_eq!(rules[0]["action"], "FailJob");
    assert_eq!(rules[0]["onExitCodes"]["values"], serde_json::json!([2]));
    assert_eq!(rules[1]["action"], "FailIndex");
    assert_eq!(rules[1]["onExitCodes"]["values"], serde_json::json!([1]));
    let container = &shards["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "run",
            "--config",
            "/etc/dedup-lab/config.toml",
            "--results-dir",
            "/results",
            "--shard",
            "/3",
            "--shard-by",
            "system",
            "--no-progress"
        ]
    );
    assert_eq!(container["resources"]["requests"]["cpu"], "1");
    let report = kind(&objects, "Job", "report");
    let report_args = report["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        report_args.contains("\"--shards\",\"3\",\"--wait\""),
        "{report_args}"
    );

    // Every *_file key names a file that a Secret's key is mounted as, and every *_env key a
    // variable taken from a Secret.
    let spec = &shards["spec"]["template"]["spec"];
    let mut files = Vec::new();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let secret = &source["secret"];
            assert!(secret["name"].as_str().unwrap().starts_with("dedup-lab-"));
            for item in secret["items"].as_array().unwrap() {
                files.push((
                    format!(
                        "{}/{}",
                        mount["mountPath"].as_str().unwrap(),
                        item["path"].as_str().unwrap()
                    ),
                    format!(
                        "{}:{}",
                        secret["name"].as_str().unwrap(),
                        item["key"].as_str().unwrap()
                    ),
                ));
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            (
                "/run/secrets/dedup-lab/pg-lz4/password".to_string(),
                "dedup-lab-pg-lz4:password".to_string()
            ),
            (
                "/run/secrets/dedup-lab/postgres/ca.crt".into(),
                "dedup-lab-postgres:ca".into()
            ),
            (
                "/run/secrets/dedup-lab/postgres/password".into(),
                "dedup-lab-postgres:password".into()
            ),
            (
                "/run/secrets/dedup-lab/prometheus/token".into(),
                "dedup-lab-redis:promql-probe-token".into()
            ),
        ]
    );
    let env = container["env"].as_array().unwrap();
    assert_eq!(env.len(), 1);
    assert_eq!(env[0]["name"], "REDISCLI_AUTH");
    assert_eq!(
        env[0]["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "dedup-lab-redis", "key": "password"})
    );
    assert!(env[0].get("value").is_none());
    // The header says which Secrets to create, with their keys.
    assert!(yaml.contains(
        "create secret generic dedup-lab-redis --from-file=promql-probe-token=<path of its \
         value> --from-file=password=<path of its value>"
    ));
}

#[test]
fn shards_default_to_one_per_system() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = documents(&render(tmp.path(), &[]));
    assert_eq!(kind(&objects, "Job", "shard")["spec"]["completions"], 4);
    let objects = documents(&render(
        tmp.path(),
        &["--shards", "6", "--shard-by", "cell"],
    ));
    assert_eq!(kind(&objects, "Job", "shard")["spec"]["completions"], 6);
}

#[test]
fn the_containerfile_passes_hadolint() {
    let out = run(checker("hadolint").arg(root().join("Containerfile")));
    assert!(out.status.success(), "{}", text(&out));
    // hadolint reads what it is given: a broken file fails it.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("Containerfile");
    std::fs::write(&broken, "FROM debian:bookworm-slim\nRUN cd /tmp && make\n").unwrap();
    let out = run(checker("hadolint").arg(&broken));
    assert!(text(&out).contains("DL3003"), "{}", text(&out));
}

#[test]
fn the_ci_examples_pass_their_linters() {
    let ci = root().join("docs/ci");
    for (file, schema) in [
        ("github-actions.yml", "vendor.github-workflows"),
        ("gitlab-ci.yml", "vendor.gitlab-ci"),
    ] {
        let path = ci.join(file);
        let out = run(checker("check-jsonschema")
            .args(["--builtin-schema", schema])
            .arg(&path));
        assert!(out.status.success(), "{file}: {}", text(&out));
        // The schema check sees a misspelt key.
        let tmp = tempfile::tempdir().unwrap();
        let broken = tmp.path().join(file);
        let yaml = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &broken,
            yaml.replace("    steps:", "    step:")
                .replace("  script:", "  scripts:"),
        )
        .unwrap();
        let out = run(checker("check-jsonschema")
            .args(["--builtin-schema", schema])
            .arg(&broken));
        assert!(!out.status.success(), "{file}: {}", text(&out));
    }
    let actionlint = |file: &Path| {
        run(Command::new("node")
            .arg(root().join("scripts/actionlint.mjs"))
            .arg(tools().join("npm"))
            .arg(file))
    };
    let workflow = ci.join("github-actions.yml");
    let out = actionlint(&workflow);
    assert!(out.status.success(), "{}", text(&out));
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("workflow.yml");
    let yaml = std::fs::read_to_string(&workflow).unwrap();
    std::fs::write(&broken, yaml.replace("matrix.shard }}", "matrix.shrd }}")).unwrap();
    let out = actionlint(&broken);
    assert!(
        text(&out).contains("property \"shrd\" is not defined"),
        "{}",
        text(&out)
    );
}

/// The config in docs/kubernetes.md renders, asks for the Secrets the guide creates, and its
/// promql probes build (the Longhorn query with its timestamp query, MinIO's plain selector).
#[test]
fn the_guides_example_renders() {
    let guide = std::fs::read_to_string(root().join("docs/kubernetes.md")).unwrap();
    let example = guide
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/kubernetes.md has a toml example");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("cluster.toml");
    std::fs::write(&config, example).unwrap();
    let out = run(bin()
        .arg("k8s")
        .arg("--config")
        .arg(&config)
        .args(["--shards", "2"]));
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    for create in [
        "create secret generic dedup-lab-minio --from-file=access-key=<path of its value> \
         --from-file=secret-key=<path of its value>",
        "create secret generic dedup-lab-postgres --from-file=password=<path of its value> \
         --from-file=promql-probe-token=<path of its value>",
    ] {
        assert!(yaml.contains(create), "{create}\n{yaml}");
    }
    assert!(guide.contains("--from-file=password=./pg.password --from-file=promql-probe-token="));
    let doc: toml::Table = toml::from_str(example).unwrap();
    for (instance, want) in [
        (
            "postgres",
            "timestamp(longhorn_volume_actual_size_bytes) * on(volume)",
        ),
        (
            "minio",
            "minio_bucket_usage_total_bytes{bucket=\"dedup-lab\"}",
        ),
    ] {
        let mut probe = doc["systems"][instance]["promql_probe"].clone();
        probe.as_table_mut().unwrap().remove("token_file");
        let c: dedup_lab::probe::promql::PromqlConfig = probe.try_into().unwrap();
        let built = dedup_lab::probe::promql::Promql::new(instance, &c).unwrap();
        assert!(
            built.query().contains(want) || c.timestamp_query.unwrap().contains(want),
            "{instance}: {}",
            built.query()
        );
    }
}
