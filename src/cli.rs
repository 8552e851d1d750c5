//! The command line: `run`, `replay`, `validate`, `graph`, `migrate`, `generate`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, SinkConfig, SourceConfig};
use crate::generate::{GenerateOptions, generate};
use crate::sinks::postgres;
use crate::sources::replay::{self, ReplayConfig};
use crate::topology::{self, GraphFormat};

/// A streaming pipeline for the events of a code-evaluation platform.
#[derive(Debug, Parser)]
#[command(name = "evalsink", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until its sources end (stdin closed) or SIGINT/SIGTERM, then drain.
    Run(RunArgs),
    /// Replay log files (plain, .gz, .zst; globs; - for stdin) through the pipeline.
    Replay {
        #[command(flatten)]
        run: RunArgs,
        /// Do not draw a progress bar, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Files, globs, or - for stdin.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Check the config and print the topology; changes nothing.
    Validate {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print the topology as a Mermaid flowchart or a Graphviz digraph.
    Graph {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Apply the PostgreSQL migrations to the database of every postgres sink of the config
    /// (or to --database-url), creating the database when it is missing.
    Migrate {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The database to migrate instead of the config's (a PostgreSQL URL).
        #[arg(long, env = "EVALSINK_MIGRATE_URL")]
        database_url: Option<String>,
    },
    /// Write realistic sample events to stdout.
    Generate(GenerateOptions),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pipeline config.
    #[arg(short, long, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Exit with code 3 when any line went to the dead letters.
    #[arg(long)]
    pub fail_on_dead_letter: bool,
    /// Do not apply the PostgreSQL migrations at start (the schema is managed elsewhere).
    #[arg(long)]
    pub no_migrate: bool,
}

impl RunArgs {
    /// Loads the config, with the command line's overrides.
    fn load(&self) -> Result<Config, config::ConfigError> {
        let mut c = Config::load(&self.config)?;
        if self.no_migrate {
            for sink in &mut c.sinks {
                if let SinkConfig::Postgres(p) = &mut sink.config {
                    p.migrate = false;
                }
            }
        }
        Ok(c)
    }
}

/// Exit codes: 0 done, 1 failed while running, 2 bad config or arguments, 3 dead letters with
/// `--fail-on-dead-letter`, 130 stopped by a second signal.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", topology::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Graph { config, format } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", topology::graph(&c, format));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Generate(options) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            match generate(&options, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                // A closed pipe (`| head`) is a normal end.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("evalsink: cannot write events: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate {
            config,
            database_url,
        } => {
            let urls = match database_url {
                Some(url) => vec![url],
                None => match Config::load(&config) {
                    Ok(c) => c
                        .sinks
                        .iter()
                        .filter_map(|s| match &s.config {
                            SinkConfig::Postgres(p) => Some(p.endpoint.clone()),
                            _ => None,
                        })
                        .collect(),
                    Err(e) => return config_error(&e),
                },
            };
            if urls.is_empty() {
                eprintln!(
                    "evalsink: {} has no postgres sink; pass --database-url URL to migrate a database.",
                    config.display()
                );
                return ExitCode::from(2);
            }
            migrate(&urls)
        }
        Command::Run(args) => match args.load() {
            Ok(c) => run_pipeline(c, args.fail_on_dead_letter),
            Err(e) => config_error(&e),
        },
        Command::Replay {
            run,
            no_progress,
            paths,
        } => {
            let c = match run.load() {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            let inputs = match replay::expand(&paths) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("evalsink: {e}");
                    return ExitCode::from(2);
                }
            };
            let max_line_bytes = c
                .sources
                .iter()
                .map(|s| match &s.config {
                    SourceConfig::Tcp(t) => t.max_line_bytes,
                    SourceConfig::File(f) => f.max_line_bytes,
                    SourceConfig::Stdin(s) => s.max_line_bytes,
                    SourceConfig::Replay(r) => r.max_line_bytes,
                })
                .next()
                .unwrap_or(crate::sources::DEFAULT_MAX_LINE_BYTES);
            let source = SourceConfig::Replay(ReplayConfig {
                inputs,
                max_line_bytes,
                progress: !no_progress && std::io::stderr().is_terminal(),
            });
            run_pipeline(
                c.with_single_source("replay", source),
                run.fail_on_dead_letter,
            )
        }
    }
}

/// Applies the migrations to each database in turn.
fn migrate(urls: &[String]) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("evalsink: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        for url in urls {
            let shown = crate::sinks::redis::redacted_url(url);
            let pool = match postgres::connect_pool(url, 1).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("evalsink: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = postgres::migrate(&pool, url).await {
                eprintln!("evalsink: {e}");
                return ExitCode::FAILURE;
            }
            let applied = postgres::MIGRATOR.iter().count();
            eprintln!("evalsink: {shown} is up to date ({applied} migrations).");
        }
        ExitCode::SUCCESS
    })
}

fn config_error(e: &config::ConfigError) -> ExitCode {
    eprintln!("evalsink: {e}");
    ExitCode::from(2)
}

fn run_pipeline(config: Config, fail_on_dead_letter: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("evalsink: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        match topology::run(&config, shutdown).await {
            Ok(report) => {
                eprint!("{}", report.stats.summary(&report.sinks));
                let dead = report.stats.dead_letters();
                if dead > 0 {
                    eprintln!("  dead letters are in {}", report.dead_letter_dir.display());
                }
                if fail_on_dead_letter && dead > 0 {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("evalsink: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // A source may still be blocked reading stdin; nothing is left to wait for.
    runtime.shutdown_background();
    code
}

/// First SIGINT or SIGTERM: stop reading and drain. Second: exit at once (checkpoints on disk
/// only ever cover acknowledged events, so they stay consistent).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("Cannot listen for signals; stop evalsink by closing its input.");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("Stopping: draining what was read. Send the signal again to exit at once.");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!(
        "evalsink: stopped at once by a second signal; unacknowledged events will be read again."
    );
    std::process::exit(130);
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVALSINK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
