//! `dedup-lab k8s`: the Kubernetes objects that run a config's experiment in a cluster.
//!
//! - a Namespace;
//! - a ConfigMap holding the config file as it is;
//! - for every `*_file` key of a system section (passwords, tokens, CA files): a volume of the
//!   Secret `dedup-lab-<instance>` mounted so the file is where the key says; for every
//!   `*_env` key: the variable, from the same Secret. Only references: no value is rendered,
//!   and the Secrets are created beforehand (the header lists them);
//! - a PersistentVolumeClaim for the results, ReadWriteMany so shards on several nodes write
//!   their own directories in it;
//! - an Indexed Job with one completion per shard: pod `i` runs `run --shard /N` and takes
//!   shard i + 1 from `JOB_COMPLETION_INDEX`. Bad input (exit 2) fails the Job, failed cells
//!   (exit 1) fail their index only, neither is retried (it would repeat); a crash or an
//!   eviction is retried and resumes from the shard's journal;
//! - a report Job that waits for every shard to finish, then merges them (`report --wait`).
//!
//! A config that names paths on this machine (probe paths, data directories, sources) is
//! refused: a pod has the config, its Secrets and the results volume only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::Resolved;
use crate::error::usage;
use crate::model::ShardBy;

/// Where the config is mounted in a pod.
pub const CONFIG_DIR: &str = "/etc/dedup-lab";
/// The config's file name in the ConfigMap and the mount.
pub const CONFIG_FILE: &str = "config.toml";
/// Where the results volume is mounted in a pod.
pub const RESULTS_DIR: &str = "/results";
/// The container's name in both Jobs.
pub const CONTAINER: &str = "dedup-lab";
/// The user the image runs as (see the Containerfile).
pub const USER: u32 = 10001;

/// How to run it, beyond the config.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace of every object.
    pub namespace: String,
    /// The container image (built from the Containerfile).
    pub image: String,
    /// Shards; default: the config's `shards`, else one per system instance.
    pub shards: Option<u32>,
    /// What a shard's slice is made of.
    pub shard_by: ShardBy,
    /// Storage class of the results volume; default: the cluster's.
    pub storage_class: Option<String>,
    /// Size of the results volume, e.g. `20Gi`.
    pub results_size: String,
    /// CPU each shard's pod requests, e.g. `1`.
    pub cpu: String,
    /// Memory each shard's pod requests and is limited to, e.g. `2Gi`.
    pub memory: String,
    /// Seconds the report Job waits for the shards.
    pub wait_s: u64,
}

/// The rendered objects.
pub struct Rendered {
    /// Every object, in the order to apply them.
    pub objects: Vec<Value>,
    /// The Secrets the objects refer to, with their keys: to be created beforehand.
    pub secrets: BTreeMap<String, Vec<String>>,
    /// Shards the Indexed Job runs.
    pub shards: u32,
}

impl Rendered {
    /// A YAML stream: a header naming the Secrets to create, then one document per object.
    pub fn yaml(&self) -> anyhow::Result<String> {
        let mut out = String::from(
            "# Rendered by `dedup-lab k8s`. Apply with `kubectl apply -f`; see docs/kubernetes.md.\n",
        );
        if self.secrets.is_empty() {
            out.push_str("# It refers to no Secret.\n");
        } else {
            out.push_str("# Create these Secrets first (this file holds no secret value):\n");
            let ns = self.objects[0]["metadata"]["name"]
                .as_str()
                .unwrap_or_default();
            for (name, keys) in &self.secrets {
                let from: Vec<String> = keys
                    .iter()
                    .map(|k| format!("--from-file={k}=<path of its value>"))
                    .collect();
                out.push_str(&format!(
                    "#   kubectl -n {ns} create secret generic {name} {}\n",
                    from.join(" ")
                ));
            }
        }
        for o in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_norway::to_string(o)?);
        }
        Ok(out)
    }
}

/// Renders the objects that run `config` (read from the file whose text is `text`).
pub fn render(text: &str, config: &Resolved, opts: &Options) -> anyhow::Result<Rendered> {
    check_name("--namespace", &opts.namespace)?;
    let mounts = Mounts::of(config)?;
    let shards = shard_count(config, opts)?;
    let name = job_name(&config.id);
    let labels = |component: &str| {
        json!({
            "app.kubernetes.io/name": "dedup-lab",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": component,
        })
    };
    let meta = |object: &str, component: &str| json!({"name": object, "namespace": opts.namespace, "labels": labels(component)});
    let config_path = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let pod = |component: &str, args: Vec<String>, resources: Value| {
        let mut volume_mounts = vec![
            json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
            json!({"name": "results", "mountPath": RESULTS_DIR}),
            json!({"name": "tmp", "mountPath": "/tmp"}),
        ];
        let mut volumes = vec![
            json!({"name": "config", "configMap": {"name": name}}),
            json!({"name": "results", "persistentVolumeClaim": {"claimName": format!("{name}-results")}}),
            json!({"name": "tmp", "emptyDir": {}}),
        ];
        for (i, (dir, files)) in mounts.dirs.iter().enumerate() {
            let volume = format!("secrets-{i}");
            volume_mounts.push(
                json!({"name": volume, "mountPath": dir.display().to_string(), "readOnly": true}),
            );
            let sources: Vec<Value> = files
                .iter()
                .map(|f| {
                    json!({"secret": {
                        "name": f.secret,
                        "items": [{"key": f.key, "path": f.file_name, "mode": 0o440}],
                    }})
                })
                .collect();
            volumes.push(json!({"name": volume, "projected": {"sources": sources}}));
        }
        let env: Vec<Value> = mounts
            .env
            .iter()
            .map(|(var, r)| {
                json!({"name": var, "valueFrom": {"secretKeyRef": {"name": r.secret, "key": r.key}}})
            })
            .collect();
        json!({
            "metadata": {"labels": labels(component)},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": USER,
                    "runAsGroup": USER,
                    "fsGroup": USER,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": CONTAINER,
                    "image": opts.image,
                    "args": args,
                    "env": env,
                    "resources": resources,
                    "volumeMounts": volume_mounts,
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }],
                "volumes": volumes,
            },
        })
    };
    let exit = |action: &str, codes: &[u8]| {
        let on = json!({"containerName": CONTAINER, "operator": "In", "values": codes});
        json!({"action": action, "onExitCodes": on})
    };
    let evicted = json!({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]});
    let run_args = [
        "run",
        "--config",
        &config_path,
        "--results-dir",
        RESULTS_DIR,
        "--shard",
        &format!("/{shards}"),
        "--shard-by",
        &opts.shard_by.to_string(),
        "--no-progress",
    ];
    let report_args = [
        "report",
        "--config",
        &config_path,
        "--results-dir",
        RESULTS_DIR,
        "--shards",
        &shards.to_string(),
        "--wait",
        &opts.wait_s.to_string(),
    ];
    let mut pvc_spec = json!({
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": opts.results_size}},
    });
    if let Some(class) = &opts.storage_class {
        pvc_spec["storageClassName"] = json!(class);
    }
    let objects = vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": opts.namespace, "labels": labels("namespace")},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(&name, "config"),
            "data": {CONFIG_FILE: text},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta(&format!("{name}-results"), "results"),
            "spec": pvc_spec,
        }),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta(&name, "shard"),
            "spec": {
                "completionMode": "Indexed",
                "completions": shards,
                "parallelism": shards,
                "backoffLimitPerIndex": 2,
                "maxFailedIndexes": shards,
                // Bad input is the same for every shard; failed cells are this shard's.
                "podFailurePolicy": {"rules": [
                    exit("FailJob", &[2]),
                    exit("FailIndex", &[1]),
                    evicted.clone(),
                ]},
                "template": pod(
                    "shard",
                    run_args.map(String::from).to_vec(),
                    json!({
                        "requests": {"cpu": opts.cpu, "memory": opts.memory},
                        "limits": {"memory": opts.memory},
                    }),
                ),
            },
        }),
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta(&format!("{name}-report"), "report"),
            "spec": {
                "backoffLimit": 2,
                "podFailurePolicy": {"rules": [exit("FailJob", &[1, 2]), evicted]},
                "template": pod(
                    "report",
                    report_args.map(String::from).to_vec(),
                    json!({
                        "requests": {"cpu": "100m", "memory": "256Mi"},
                        "limits": {"memory": "1Gi"},
                    }),
                ),
            },
        }),
    ];
    Ok(Rendered {
        objects,
        secrets: mounts.secrets(),
        shards,
    })
}

/// The shard count: `--shards`, the config's `shards`, or one shard per system instance.
fn shard_count(config: &Resolved, opts: &Options) -> anyhow::Result<u32> {
    let systems = config.systems.len() as u32;
    let n = opts
        .shards
        .or(config.config.experiment.shards)
        .unwrap_or(systems);
    if n == 0 {
        return Err(usage(
            "--shards 0: the Indexed Job needs at least 1 shard; use e.g. --shards 2",
        ));
    }
    if opts.shard_by == ShardBy::System && n > systems {
        return Err(usage(format!(
            "{n} shards of {systems} system instances split by system leave {} shards without \
             cells; use --shards {systems} or fewer, or --shard-by cell",
            n - systems
        )));
    }
    Ok(n)
}

/// A Kubernetes object name for experiment `id`: lower case, `-` for what DNS names do not
/// allow, short enough that an Indexed Job's pod host names (`<job>-<index>`) fit in 63.
fn job_name(id: &str) -> String {
    let cleaned: String = id
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut name = format!("dedup-lab-{}", cleaned.trim_matches('-'));
    name.truncate(48);
    name.trim_end_matches('-').to_string()
}

/// Refuses a name that is not a DNS label.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "{what} \"{name}\" is not a Kubernetes name: use a-z, 0-9 and -, at most 63 \
             characters, starting and ending with a letter or digit"
        )))
    }
}

/// One key of a Secret.
#[derive(Clone, Debug, PartialEq)]
struct SecretRef {
    secret: String,
    key: String,
}

/// A file a `*_file` key names, from a Secret's key.
#[derive(Clone, Debug)]
struct SecretFile {
    secret: String,
    key: String,
    file_name: String,
}

/// The Secrets a config refers to: files by the directory they are mounted in, and
/// environment variables.
#[derive(Default)]
struct Mounts {
    dirs: BTreeMap<PathBuf, Vec<SecretFile>>,
    env: BTreeMap<String, SecretRef>,
}

impl Mounts {
    /// Walks every selected instance's section (probe tables included).
    fn of(config: &Resolved) -> anyhow::Result<Mounts> {
        let mut m = Mounts::default();
        if let Some((dataset, _)) = config.config.dataset.sources.first_key_value() {
            return Err(usage(format!(
                "config [dataset.sources] {dataset} names a directory on this machine, which a \
                 pod does not have: `dedup-lab k8s` runs synthetic payloads only; remove it"
            )));
        }
        for instance in &config.systems {
            let Some(section) = config.config.systems.get(&instance.name) else {
                continue;
            };
            m.walk(&instance.name, &[], section)?;
        }
        Ok(m)
    }

    fn walk(&mut self, instance: &str, at: &[&str], table: &toml::Table) -> anyhow::Result<()> {
        let secret = format!("dedup-lab-{}", instance.replace('_', "-"));
        for (key, value) in table {
            let path: Vec<&str> = at.iter().copied().chain([key.as_str()]).collect();
            let dotted = path.join(".");
            let secret_key = |suffix: &str| {
                let mut p = path.clone();
                let last = p.pop().unwrap_or_default();
                p.push(last.strip_suffix(suffix).unwrap_or(last));
                p.join("-").replace('_', "-")
            };
            match value {
                toml::Value::Table(t) => self.walk(instance, &path, t)?,
                toml::Value::String(file) if key.ends_with("_file") => {
                    let file = Path::new(file);
                    let (Some(dir), Some(file_name)) = (file.parent(), file.file_name()) else {
                        return Err(usage(format!(
                            "config [systems.{instance}] {dotted} = \"{}\" is not a file path",
                            file.display()
                        )));
                    };
                    if !file.is_absolute() || is_reserved(dir) {
                        return Err(usage(format!(
                            "config [systems.{instance}] {dotted} = \"{}\": in a pod the Secret \
                             is mounted where the key says, so it must be an absolute path \
                             outside {CONFIG_DIR}, {RESULTS_DIR} and /tmp, e.g. \
                             /run/secrets/dedup-lab/{instance}/{}",
                            file.display(),
                            secret_key("_file")
                        )));
                    }
                    let files = self.dirs.entry(dir.to_path_buf()).or_default();
                    let file_name = file_name.to_string_lossy().into_owned();
                    if files.iter().any(|f| f.file_name == file_name) {
                        return Err(usage(format!(
                            "config [systems.{instance}] {dotted} = \"{}\": another *_file key \
                             names the same file; give each secret its own file",
                            file.display()
                        )));
                    }
                    files.push(SecretFile {
                        secret: secret.clone(),
                        key: secret_key("_file"),
                        file_name,
                    });
                }
                toml::Value::String(var) if key.ends_with("_env") => {
                    let r = SecretRef {
                        secret: secret.clone(),
                        key: secret_key("_env"),
                    };
                    if let Some(other) = self.env.get(var).filter(|o| **o != r) {
                        return Err(usage(format!(
                            "config [systems.{instance}] {dotted} = \"{var}\": the variable \
                             also carries key {} of Secret {}; give each secret its own \
                             variable, or use *_file keys",
                            other.key, other.secret
                        )));
                    }
                    self.env.insert(var.clone(), r);
                }
                other => {
                    if let Some(p) = local_path(other) {
                        return Err(usage(format!(
                            "config [systems.{instance}] {dotted} names {p}, a path on this \
                             machine, which a pod does not have: remove it (probes of a \
                             cluster's storage use promql_probe; embedded systems keep their \
                             files in the results volume)"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Secret name → its keys.
    fn secrets(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let refs = self
            .dirs
            .values()
            .flatten()
            .map(|f| (&f.secret, &f.key))
            .chain(self.env.values().map(|r| (&r.secret, &r.key)));
        for (secret, key) in refs {
            let keys = out.entry(secret.clone()).or_default();
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        out
    }
}

/// Whether secrets may not be mounted at `dir`: it is, or is inside, a directory the pod
/// mounts for itself.
fn is_reserved(dir: &Path) -> bool {
    [CONFIG_DIR, RESULTS_DIR, "/tmp"]
        .iter()
        .any(|r| dir.starts_with(r) || Path::new(r).starts_with(dir))
}

/// The first absolute path in a value that is not a `*_file` key's.
fn local_path(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) if s.starts_with('/') => Some(s.clone()),
        toml::Value::Array(items) => items.iter().find_map(local_path),
        _ => None,
    }
}
