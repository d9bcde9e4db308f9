//! Every bad input of docs/bad-input.md: one clear message naming the problem and the fix,
//! the documented exit code, and nothing written.

mod common;

use std::path::Path;

use common::{bin, lab_section, text};

/// One case: a config file (if any), the arguments, the exit code, and words the message must
/// contain. `{config}` and `{results}` in arguments are replaced by the paths of the case.
struct Case {
    name: &'static str,
    config: Option<&'static str>,
    args: &'static [&'static str],
    code: i32,
    words: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "unknown system",
        config: None,
        args: &["run", "--systems", "postgress"],
        code: 2,
        words: &["unknown system 'postgress'", "valid names"],
    },
    Case {
        name: "unknown payload",
        config: None,
        args: &["run", "--payloads", "jpeg"],
        code: 2,
        words: &["unknown payload type 'jpeg'", "random_binary"],
    },
    Case {
        name: "missing config file",
        config: None,
        args: &["run", "--config", "/nonexistent/dedup.toml"],
        code: 2,
        words: &["/nonexistent/dedup.toml", "--config"],
    },
    Case {
        name: "config path is a directory",
        config: None,
        args: &["run", "--config", "/tmp"],
        code: 2,
        words: &["cannot read config file /tmp"],
    },
    Case {
        name: "bad TOML",
        config: Some("[experiment]\nruns = \n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["is invalid", "line 2"],
    },
    Case {
        name: "unknown key",
        config: Some("[experiment]\nrunz = 3\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["unknown field `runz`", "runs"],
    },
    Case {
        name: "wrong type",
        config: Some("[experiment]\nruns = \"three\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["invalid type", "runs"],
    },
    Case {
        name: "grade above 99",
        config: None,
        args: &["run", "--grades", "0,100"],
        code: 2,
        words: &["grade 100", "0 to 99"],
    },
    Case {
        name: "negative grade",
        config: None,
        args: &["run", "--grades", "-5"],
        code: 2,
        words: &["grade -5", "0 to 99"],
    },
    Case {
        name: "no grades",
        config: Some("[experiment]\ngrades = []\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["no grades"],
    },
    Case {
        name: "zero files",
        config: None,
        args: &["run", "--files", "0"],
        code: 2,
        words: &["at least one file"],
    },
    Case {
        name: "zero file size",
        config: None,
        args: &["run", "--file-size", "0"],
        code: 2,
        words: &["zero", "1 byte"],
    },
    Case {
        name: "unparseable size",
        config: None,
        args: &["run", "--file-size", "lots"],
        code: 2,
        words: &["'lots' is not a size", "64KiB"],
    },
    Case {
        name: "inverted size range",
        config: None,
        args: &["run", "--file-size", "2KiB..1KiB"],
        code: 2,
        words: &["minimum above its maximum"],
    },
    Case {
        name: "preset without a source directory",
        config: None,
        args: &["run", "--payloads", "gutenberg_text"],
        code: 2,
        words: &[
            "[dataset.sources] gutenberg_text = ",
            "--source gutenberg_text=",
        ],
    },
    Case {
        name: "missing source directory",
        config: Some("[dataset.sources]\ngithub_events = \"/nonexistent/events\"\n"),
        args: &["run", "--config", "{config}", "--payloads", "github_events"],
        code: 2,
        words: &[
            "/nonexistent/events cannot be read",
            "point github_events at",
        ],
    },
    Case {
        name: "chunk knob without a chunk unit",
        config: None,
        args: &["run", "--shift", "7"],
        code: 2,
        words: &["shift applies to chunk duplicates only", "dedup_unit"],
    },
    Case {
        name: "dedup unit out of range",
        config: None,
        args: &["run", "--dedup-unit", "2KiB"],
        code: 2,
        words: &["out of range", "4KiB"],
    },
    Case {
        name: "file size not a multiple of the dedup unit",
        config: None,
        args: &["run", "--dedup-unit", "4KiB", "--file-size", "10000"],
        code: 2,
        words: &["not a multiple of dedup_unit 4096", "8192 or 12288"],
    },
    Case {
        name: "compress out of range",
        config: Some("[dataset]\ncompress = 100\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["compress = 100 is out of range", "0 to 99"],
    },
    Case {
        name: "zero runs",
        config: None,
        args: &["run", "--runs", "0"],
        code: 2,
        words: &["runs = 0", "1 to 1000"],
    },
    Case {
        name: "non-numeric flag",
        config: None,
        args: &["run", "--runs", "abc"],
        code: 2,
        words: &["invalid value 'abc'"],
    },
    Case {
        name: "unknown flag",
        config: None,
        args: &["run", "--frobnicate"],
        code: 2,
        words: &["unexpected argument '--frobnicate'"],
    },
    Case {
        name: "unknown system section",
        config: Some("[systems.oracle]\nhost = \"x\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[systems.oracle]", "valid names"],
    },
    Case {
        name: "unknown kind of an instance",
        config: Some("[systems.pg2]\nkind = \"postgress\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &[
            "[systems.pg2] kind = \"postgress\" is not a system kind",
            "postgres",
        ],
    },
    Case {
        name: "instance named after another kind",
        config: Some("[systems.redis]\nkind = \"postgres\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["named after the kind redis", "another name"],
    },
    Case {
        name: "duplicate instance name",
        config: Some(
            "[systems.pg_lz4]\nkind = \"postgres\"\n[systems.pg_lz4]\nkind = \"postgres\"\n",
        ),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["duplicate key", "pg_lz4"],
    },
    Case {
        name: "instance name not an identifier",
        config: Some("[systems.\"PG-1\"]\nkind = \"postgres\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[systems.PG-1]", "only a-z, 0-9 and _"],
    },
    Case {
        name: "dedupe block size out of range",
        config: Some("[storage]\ndedupe_block = \"3KiB\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["dedupe block size 3072 bytes is out of range", "128KiB"],
    },
    Case {
        name: "potential block size not a size",
        config: Some("[potential]\nblocks = [\"4KiB\", \"lots\"]\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[potential] blocks", "lots"],
    },
    Case {
        name: "system not configured",
        config: None,
        args: &["run", "--systems", "postgres"],
        code: 2,
        words: &["not configured", "[systems.postgres]"],
    },
    Case {
        name: "unknown key in a system section",
        config: Some("[systems.postgres]\nhots = \"x\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["[systems.postgres]", "unknown field `hots`"],
    },
    Case {
        name: "namespace not lab-owned",
        config: Some("[systems.postgres]\nschema = \"public\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["schema = \"public\"", "must start with \"dedup_lab\""],
    },
    Case {
        name: "password variable not set",
        config: Some("[systems.postgres]\npassword_env = \"DEDUP_LAB_UNSET_VARIABLE\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["DEDUP_LAB_UNSET_VARIABLE is not set"],
    },
    Case {
        name: "password file missing",
        config: Some("[systems.postgres]\npassword_file = \"/nonexistent/pw\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["cannot read secret file /nonexistent/pw"],
    },
    Case {
        name: "two password sources",
        config: Some("[systems.postgres]\npassword_env = \"X\"\npassword_file = \"/x\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["keep one"],
    },
    Case {
        name: "CA file without TLS",
        config: Some("[systems.postgres]\nca_file = \"/etc/hostname\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["ca_file is set but tls = false"],
    },
    Case {
        name: "unreadable CA file",
        config: Some("[systems.postgres]\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n"),
        args: &["run", "--config", "{config}", "--systems", "postgres"],
        code: 2,
        words: &["ca_file /nonexistent/ca.pem"],
    },
    Case {
        name: "missing data directory for the fs probe",
        config: Some("[systems.postgres]\nfs_probe = [\"/nonexistent/pgdata\"]\n"),
        args: &[
            "run",
            "--config",
            "{config}",
            "--systems",
            "postgres",
            "--dry-run",
        ],
        code: 2,
        words: &["probe path /nonexistent/pgdata does not exist"],
    },
    Case {
        name: "credentials in a prometheus probe URL",
        config: Some(
            "[systems.minio.prometheus_probe]\nurl = \"http://admin:pw@127.0.0.1:9000/metrics\"\n\
             metric = \"minio_bucket_usage_total_bytes\"\n",
        ),
        args: &["run", "--config", "{config}", "--systems", "minio"],
        code: 2,
        words: &["prometheus_probe", "carries credentials", "token_file"],
    },
    Case {
        name: "prometheus probe token file missing",
        config: Some(
            "[systems.minio.prometheus_probe]\nurl = \"http://127.0.0.1:9000/metrics\"\n\
             metric = \"minio_bucket_usage_total_bytes\"\ntoken_file = \"/nonexistent/token\"\n",
        ),
        args: &["run", "--config", "{config}", "--systems", "minio"],
        code: 2,
        words: &["cannot read secret file /nonexistent/token"],
    },
    Case {
        name: "invalid experiment id",
        config: None,
        args: &["run", "--id", "../escape"],
        code: 2,
        words: &["experiment id '../escape' is not valid"],
    },
    Case {
        name: "repeat of a system not in the experiment",
        config: None,
        args: &["run", "--repeat", "postgres", "--results-dir", "{results}"],
        code: 2,
        words: &["--repeat postgres", "sqlite, fs"],
    },
    Case {
        name: "unwritable results directory",
        config: None,
        args: &["run", "--results-dir", "/proc/dedup-lab"],
        code: 2,
        words: &["cannot create results directory", "--results-dir"],
    },
    Case {
        name: "bad retry settings",
        config: Some("[retry]\nmax_attempts = 0\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[retry]", "max_attempts >= 1"],
    },
    Case {
        name: "bad redis db",
        config: Some("[systems.redis]\ndb = -1\n"),
        args: &["run", "--config", "{config}", "--systems", "redis"],
        code: 2,
        words: &["[systems.redis]", "db must be 0 or more"],
    },
    Case {
        name: "bad layout keys",
        config: Some("[layout]\nkeys = \"hash\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["unknown variant `hash`", "`name`", "`content`"],
    },
    Case {
        name: "too many containers",
        config: None,
        args: &["run", "--containers", "65"],
        code: 2,
        words: &["containers = 65", "1 to 64 containers"],
    },
    Case {
        name: "bad instance layout",
        config: Some("[systems.sqlite]\nkeys = \"hash\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[systems.sqlite]", "keys is \"name\" or \"content\""],
    },
    Case {
        name: "bad trace interval",
        config: Some("[trace]\ninterval_ms = 50\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &[
            "interval_ms = 50",
            "100 to 60000 ms",
            "0 to turn the trace off",
        ],
    },
    Case {
        name: "ClickHouse MergeTree with content keys",
        config: Some("[systems.clickhouse]\nengine = \"MergeTree\"\nkeys = \"content\"\n"),
        args: &["run", "--config", "{config}", "--systems", "clickhouse"],
        code: 2,
        words: &[
            "[systems.clickhouse] engine = \"MergeTree\" with keys = \"content\"",
            "use engine = \"ReplacingMergeTree\"",
        ],
    },
    Case {
        name: "unknown sink",
        config: Some("[export.kafak]\nbootstrap = \"127.0.0.1:9092\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["there is no sink 'kafak'", "kafka, pushgateway, git"],
    },
    Case {
        name: "unknown key in a sink section",
        config: Some("[export.kafka]\ntopc = \"x\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[export.kafka]", "unknown field `topc`", "topic_stages"],
    },
    Case {
        name: "bad sink queue",
        config: Some("[export.kafka]\nqueue = 0\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[export.kafka]", "queue must be at least 1"],
    },
    Case {
        name: "bad Kafka topic name",
        config: Some("[export.kafka]\ntopic_stages = \"a b\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["topic_stages = \"a b\" is not a Kafka topic name"],
    },
    Case {
        name: "content keys on Kafka topics that keep every record",
        config: Some("[systems.kafka]\nkeys = \"content\"\ndelete_mode = \"delete_records\"\n"),
        args: &["run", "--config", "{config}", "--systems", "kafka"],
        code: 2,
        words: &[
            "keys = \"content\" needs compacted topics",
            "set delete_mode = \"tombstone\"",
        ],
    },
    Case {
        name: "bad pushgateway URL",
        config: Some("[export.pushgateway]\nurl = \"not a url\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["[export.pushgateway]", "is not a URL", "http://host:9091"],
    },
    Case {
        name: "credentials in a pushgateway URL",
        config: Some("[export.pushgateway]\nurl = \"http://admin:pw-in-url@127.0.0.1:9091\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["carries credentials", "token_env or token_file"],
    },
    Case {
        name: "credentials in a git remote URL",
        config: Some(
            "[export.git]\nrepo = \"r.git\"\nremote = \"https://user:tok@example.com/r.git\"\n",
        ),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &[
            "remote https://example.com/r.git carries credentials",
            "credential helper",
        ],
    },
    Case {
        name: "git export repo that is not a repository",
        config: Some("[export.git]\nrepo = \"/proc\"\n"),
        args: &["run", "--config", "{config}"],
        code: 2,
        words: &["repo = \"/proc\" exists but is not a git repository"],
    },
    Case {
        name: "report of a non-experiment",
        config: None,
        args: &["report", "/tmp"],
        code: 2,
        words: &["no journal", "not an experiment directory"],
    },
    Case {
        name: "unknown lab server",
        config: None,
        args: &["lab", "status", "--systems", "oracle", "--dir", "{results}"],
        code: 2,
        words: &["the lab has no server 'oracle'"],
    },
    Case {
        name: "scan of a missing path",
        config: None,
        args: &["scan", "/nonexistent/pgdata"],
        code: 2,
        words: &[
            "/nonexistent/pgdata does not exist",
            "name an existing file",
        ],
    },
    Case {
        name: "zero block size",
        config: None,
        args: &["scan", "--block", "0", "{results}"],
        code: 2,
        words: &["block size 0 is not a block", "4KiB,128KiB"],
    },
    Case {
        name: "CDC size out of range",
        config: None,
        args: &["scan", "--cdc", "100", "{results}"],
        code: 2,
        words: &[
            "CDC average chunk size 100 is outside",
            "between 256 and 2 MiB",
        ],
    },
    Case {
        name: "scan with nothing to compute",
        config: None,
        args: &["scan", "--block", "none", "--cdc", "none", "{results}"],
        code: 2,
        words: &["nothing to compute", "give a block size or CDC"],
    },
    Case {
        name: "shard index above the count",
        config: None,
        args: &["run", "--shard", "3/2", "--results-dir", "{results}"],
        code: 2,
        words: &["shard 3/2 does not exist", "use 1/2 to 2/2"],
    },
    Case {
        name: "zero shards",
        config: None,
        args: &["run", "--shard", "0/0", "--results-dir", "{results}"],
        code: 2,
        words: &["shard count 0", "at least 1 shard"],
    },
    Case {
        name: "shard without its index",
        config: None,
        args: &["run", "--shard", "/3", "--results-dir", "{results}"],
        code: 2,
        words: &["give --shard I/3", "set JOB_COMPLETION_INDEX (from 0"],
    },
    Case {
        name: "zero shards in the config",
        config: Some("[experiment]\nshards = 0\n"),
        args: &["run", "--config", "{config}", "--results-dir", "{results}"],
        code: 2,
        words: &["shards = 0", "remove the key"],
    },
    Case {
        name: "promql query whose sample times are unknown",
        config: Some(
            "[systems.sqlite.promql_probe]\nurl = \"http://127.0.0.1:9090\"\n\
             query = \"sum(redis_memory_used_bytes)\"\n",
        ),
        args: &["run", "--config", "{config}", "--results-dir", "{results}"],
        code: 2,
        words: &["not a plain selector", "add timestamp_query"],
    },
    Case {
        name: "promql variable without a value",
        config: Some(
            "[systems.sqlite.promql_probe]\nurl = \"http://127.0.0.1:9090\"\n\
             query = 'm{persistentvolumeclaim=\"${pvc}\"}'\n",
        ),
        args: &["run", "--config", "{config}", "--results-dir", "{results}"],
        code: 2,
        words: &["${pvc} has no value", "set it in vars"],
    },
    Case {
        name: "k8s of a config naming paths of this machine",
        config: Some("[systems.fs]\nfs_probe = [\"/srv/store\"]\n"),
        args: &["k8s", "--config", "{config}"],
        code: 2,
        words: &[
            "fs_probe names /srv/store",
            "a pod does not have: remove it",
        ],
    },
    Case {
        name: "k8s secret file at a relative path",
        config: Some(
            "[experiment]\nsystems = [\"postgres\"]\n[systems.postgres]\n\
             password_file = \"secrets/pg\"\n",
        ),
        args: &["k8s", "--config", "{config}"],
        code: 2,
        words: &[
            "must be an absolute path",
            "/run/secrets/dedup-lab/postgres/password",
        ],
    },
    Case {
        name: "k8s with more shards than systems",
        config: Some("[experiment]\nruns = 1\n"),
        args: &["k8s", "--config", "{config}", "--shards", "5"],
        code: 2,
        words: &["5 shards of 2 system instances", "--shard-by cell"],
    },
];

fn expand(arg: &str, config: &Path, results: &Path) -> String {
    arg.replace("{config}", config.to_str().unwrap())
        .replace("{results}", results.to_str().unwrap())
}

#[test]
fn every_documented_bad_input_gets_one_clear_message_and_its_exit_code() {
    assert!(CASES.len() >= 30);
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bad-input.md"))
            .unwrap();
    for case in CASES {
        assert!(
            doc.contains(case.name),
            "docs/bad-input.md lacks \"{}\"",
            case.name
        );
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config.toml");
        if let Some(c) = case.config {
            std::fs::write(&config, c).unwrap();
        }
        let results = tmp.path().join("results");
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| expand(a, &config, &results))
            .collect();
        let out = bin().args(&args).current_dir(tmp.path()).output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(case.code), "{}: {t}", case.name);
        for w in case.words {
            assert!(t.contains(w), "{}: message lacks \"{w}\": {t}", case.name);
        }
        assert!(
            t.lines().count() <= 12,
            "{}: not one clear message: {t}",
            case.name
        );
        assert!(
            !t.contains("pw-in-url") && !t.contains("tok@"),
            "{}: a credential leaked: {t}",
            case.name
        );
        assert!(
            !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
            "{}: {t}",
            case.name
        );
        assert!(
            !results.exists(),
            "{}: wrote {}",
            case.name,
            results.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "config.toml")
            .collect();
        assert!(leftovers.is_empty(), "{}: left {leftovers:?}", case.name);
    }
}

/// Runtime failures against the lab server: exit 1, the reason named.
#[test]
fn wrong_password_is_named_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let mut section = lab_section("postgres");
    let pw = tmp.path().join("wrong.password");
    std::fs::write(&pw, "not-the-password").unwrap();
    section.insert("password_file".into(), pw.to_str().unwrap().into());
    let mut systems = toml::Table::new();
    systems.insert("postgres".into(), section.into());
    let mut doc = toml::Table::new();
    doc.insert("systems".into(), systems.into());
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, toml::to_string(&doc).unwrap()).unwrap();
    let out = bin()
        .args(["preflight", "--systems", "postgres", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("not-the-password"),
        "the secret leaked: {}",
        text(&out)
    );
}

/// Shards that are not of one experiment and one split are refused by `report`, naming the
/// difference; nothing is merged.
#[test]
fn shards_of_another_experiment_or_split_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let shard = |spec: &str, seed: &str| {
        let out = bin()
            .args(["run", "--shard", spec, "--seed", seed, "--runs", "1"])
            .args(["--payloads", "uuid_keys", "--grades", "0", "--files", "2"])
            .args(["--no-progress", "--results-dir"])
            .arg(&results)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let line = text(&out);
        let dir = line
            .rsplit("results in ")
            .next()
            .unwrap()
            .trim()
            .to_string();
        std::path::PathBuf::from(dir)
    };
    let mine = shard("1/2", "1");
    let theirs = shard("2/2", "2");
    let out = bin()
        .arg("report")
        .arg(&mine)
        .arg(&theirs)
        .output()
        .unwrap();
    common::assert_fails_with(
        &out,
        2,
        &[
            "was run with another config than shard 1/2",
            "experiment.seed: 1 -> 2",
        ],
    );
    let other_split = shard("2/3", "1");
    let experiment = mine.parent().unwrap().parent().unwrap();
    assert_eq!(other_split.parent(), mine.parent());
    let out = bin().arg("report").arg(experiment).output().unwrap();
    common::assert_fails_with(&out, 2, &["different splits (1-of-2, 2-of-3)"]);
    assert!(!experiment.join("results.csv").exists(), "nothing merged");
}
