//! The `dedup-lab` binary: parses arguments and calls the library.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, LabAction};
use dedup_lab::config::{Config, Resolved};
use dedup_lab::deploy::k8s;
use dedup_lab::error::exit_code;
use dedup_lab::experiment::progress::{Progress, Unit};
use dedup_lab::experiment::{self, ReportRequest, RunOptions};
use dedup_lab::model::{INDEX_ENV, Shard};
use dedup_lab::results::export::table::terminal;
use dedup_lab::secret::redact;
use dedup_lab::{dataset, lab, preflight, results, scan};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}

fn load(args: &cli::ConfigArgs) -> anyhow::Result<Resolved> {
    Config::load(args.config.as_deref(), &args.overrides())
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let mut config = load(&args.config)?;
            config.shard = Shard::choose(
                args.shard.as_deref(),
                args.shard_by,
                config.config.experiment.shards,
                std::env::var(INDEX_ENV).ok().as_deref(),
            )?;
            if args.dry_run {
                print!("{}", experiment::plan(&config).await?);
                return Ok(ExitCode::SUCCESS);
            }
            let outcome = experiment::run(
                &config,
                &RunOptions {
                    repeat: args.repeat,
                    progress: !args.no_progress && !cli.quiet,
                },
            )
            .await?;
            let report = results::report(&outcome.dir)?;
            print!("{}", terminal(&report.summary, &outcome.dir, args.details));
            println!(
                "{} cells measured, {} already complete; results in {}",
                outcome.completed,
                outcome.skipped,
                outcome.dir.display()
            );
            for (sink, s) in outcome.exports.iter().filter(|(_, s)| s.dropped > 0) {
                println!(
                    "export {sink}: {} of {} items not delivered (last error: {}); counts in \
                     metadata.json",
                    s.dropped,
                    s.items,
                    s.last_error
                        .as_deref()
                        .unwrap_or("none: newer items pushed them out of its queue")
                );
            }
            if outcome.failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} cells FAILED:", outcome.failed.len());
                for (cell, error) in &outcome.failed {
                    eprintln!("  {cell}: {}", redact(error));
                }
                Ok(ExitCode::from(1))
            }
        }
        Command::Generate(args) => {
            let config = load(&args.config)?;
            let out = args
                .out
                .unwrap_or_else(|| config.experiment_dir().join("datasets"));
            let progress = Progress::new(!cli.quiet);
            for run in 1..=config.config.experiment.runs {
                for &payload in &config.payloads {
                    for &grade in &config.grades {
                        let spec = experiment::dataset_spec(&config, run, payload, grade);
                        let dir = experiment::dataset_dir(&out, run, payload, grade);
                        let clock = std::time::Instant::now();
                        let task = progress.task(
                            format!("generating {}", dir.display()),
                            Unit::Bytes,
                            Some(spec.byte_counts().0),
                        );
                        let ds = dataset::DataSet::generate_with(&spec, &dir, &task.counter())?;
                        drop(task);
                        let m = &ds.manifest;
                        println!(
                            "{}: {} files, {} unique, {} duplicates ({}), achieved grade {:.1} %, L {} B, U {} B, {:.0} MB/s",
                            dir.display(),
                            m.files.len(),
                            m.uniques,
                            m.duplicates,
                            m.dedup,
                            m.achieved_grade,
                            m.logical_bytes,
                            m.unique_bytes,
                            m.logical_bytes as f64 / clock.elapsed().as_secs_f64() / 1e6
                        );
                    }
                }
            }
            if let Some(rss) = experiment::peak_rss_bytes() {
                println!("peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preflight(args) => {
            let config = load(&args)?;
            let (text, ok) = preflight::render(&preflight::check(&config).await?);
            print!("{text}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Report(args) => {
            let mut request = ReportRequest {
                dirs: args.dirs,
                out: args.out,
                shards: args.shards,
                wait: args.wait.map(std::time::Duration::from_secs),
            };
            if request.dirs.is_empty() || args.config.config.is_some() {
                let config = load(&args.config)?;
                request.shards = request.shards.or(config.config.experiment.shards);
                if request.dirs.is_empty() {
                    request.dirs.push(config.experiment_root());
                }
            }
            let outcome = experiment::report(&request)?;
            print!(
                "{}",
                terminal(&outcome.report.summary, &outcome.dir, args.details)
            );
            if outcome.merged > 0 {
                println!(
                    "merged {} shards into {}",
                    outcome.merged,
                    outcome.dir.display()
                );
            }
            if outcome.problems.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("the report is incomplete:");
                for p in &outcome.problems {
                    eprintln!("  {p}");
                }
                Ok(ExitCode::from(1))
            }
        }
        Command::Systems(mut args) => {
            args.systems = Some(vec!["all".into()]);
            let checks = preflight::check(&load(&args)?).await?;
            print!("{}", preflight::render_registry(&checks));
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => {
            let lab = lab::Lab::new(
                &args.dir,
                &dedup_lab::systems::lab_servers(),
                args.systems.as_deref(),
            )?;
            match args.action {
                LabAction::Up(up) => {
                    let lab = lab.with_storage(up.storage, up.storage_size.map(|s| s.as_u64()))?;
                    let config = lab.up().await?;
                    println!("lab is up; config written to {}", config.display());
                }
                LabAction::Down => lab.down()?,
                LabAction::Wipe => {
                    lab.wipe()?;
                    println!("lab servers stopped and their data deleted");
                }
                LabAction::Status => print!("{}", lab.status()?),
                LabAction::Dedupe(d) => {
                    for (name, run) in lab.dedupe(d.block_size.as_u64())? {
                        println!(
                            "{name}: {:.2} s at {} B blocks\n{}",
                            run.duration.as_secs_f64(),
                            run.block_size,
                            run.summary
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::K8s(args) => {
            let text = std::fs::read_to_string(&args.config).map_err(|e| {
                dedup_lab::error::usage(format!(
                    "cannot read config file {}: {e}; check the path given to --config",
                    args.config.display()
                ))
            })?;
            let config = Config::load(Some(&args.config), &Default::default())?;
            let rendered = k8s::render(
                &text,
                &config,
                &k8s::Options {
                    namespace: args.namespace,
                    image: args.image,
                    shards: args.shards,
                    shard_by: args.shard_by,
                    storage_class: args.storage_class,
                    results_size: args.results_size,
                    cpu: args.cpu,
                    memory: args.memory,
                    wait_s: args.wait,
                },
            )?;
            let yaml = rendered.yaml()?;
            match args.out {
                Some(path) => {
                    std::fs::write(&path, yaml)?;
                    eprintln!(
                        "wrote {} objects ({} shards) to {}",
                        rendered.objects.len(),
                        rendered.shards,
                        path.display()
                    );
                }
                None => print!("{yaml}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan(args) => {
            let result = scan::scan(&args.paths, &args.config())?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", scan::render(&result));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs go to stderr with every known secret redacted.
fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("DEDUP_LAB_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},tokio_postgres=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| RedactingStderr)
        .init();
}

/// Writes to stderr with secrets replaced; tracing writes one whole event per call.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
