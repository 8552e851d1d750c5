//! The running pipeline: components built from a validated config, connected by bounded
//! channels (a slow sink slows the sources instead of growing memory), and drained in order
//! when the sources end or on shutdown.
//!
//! Every edge holds at most [`QUEUE_BATCHES`] batches of at most about
//! [`crate::sources::CHUNK_BYTES`] of input each (a single line may be up to `max_line_bytes`),
//! and each source's decoding and each transform works on at most [`batches_in_flight`] at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkConfig, SourceConfig};
use crate::event::Batch;
use crate::sinks::blackhole::Blackhole;
use crate::sinks::console::Console;
use crate::sinks::dead_letter::{self, DeadLetters};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::postgres::PostgresSink;
use crate::sinks::redis::{RedisSink, cache_channel};
use crate::sinks::{BatchConfig, SinkContext, drive};
use crate::sources::{self, SourceContext};
use crate::stats::Stats;
use crate::transforms::Transform;
use crate::transforms::redact::Redactor;

/// Batches waiting on one edge of the graph.
pub const QUEUE_BATCHES: usize = 4;

/// How many batches a source's decoding, or a transform, works on at once: two per core, one
/// more than a core can take, so that a slow batch does not leave the core idle.
pub fn batches_in_flight() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The senders to every component downstream of one component. Sending shares the batch
/// (`Arc`) and waits while any downstream queue is full.
#[derive(Clone, Default)]
pub struct Fanout {
    senders: Vec<mpsc::Sender<Arc<Batch>>>,
}

/// Every downstream component has stopped.
#[derive(Debug)]
pub struct Closed;

impl Fanout {
    pub async fn send(&self, batch: Batch) -> Result<(), Closed> {
        let batch = Arc::new(batch);
        let mut delivered = false;
        // The last receiver gets this reference itself: with one downstream component the batch
        // arrives unshared, and a transform can take it without copying its events.
        let Some((last, others)) = self.senders.split_last() else {
            return Err(Closed);
        };
        for tx in others {
            delivered |= tx.send(batch.clone()).await.is_ok();
        }
        delivered |= last.send(batch).await.is_ok();
        if delivered { Ok(()) } else { Err(Closed) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{0}")]
    Build(String),
    #[error("sources.{name}: {message}")]
    Source { name: String, message: String },
}

/// What a finished run reports.
pub struct Report {
    pub stats: Arc<Stats>,
    pub sinks: Vec<String>,
    pub dead_letter_dir: PathBuf,
}

/// Runs the pipeline until its sources end, or until `shutdown` is cancelled, then drains:
/// returns when every accepted event is stored or in the dead letters.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<Report, TopologyError> {
    let stats = Arc::new(Stats::default());
    let dead_letter_dir = config.dead_letter_dir();
    let redactor = dead_letter_redactor(config)?;
    let (dead_letters, dead_letter_thread) =
        dead_letter::spawn(dead_letter_dir.clone(), redactor, stats.clone());
    let result = run_graph(config, shutdown, stats.clone(), dead_letters).await;
    tokio::task::spawn_blocking(move || dead_letter_thread.join())
        .await
        .ok();
    result?;
    Ok(Report {
        stats,
        sinks: config
            .sinks
            .iter()
            .filter(|s| !matches!(s.config, SinkConfig::DeadLetter(_)))
            .map(|s| s.name.clone())
            .collect(),
        dead_letter_dir,
    })
}

/// Dead letters are redacted with the rules of the pipeline's first redact transform, or the
/// built-in rules (`None`) when it has none: nothing secret leaves the process.
fn dead_letter_redactor(config: &Config) -> Result<Option<Arc<Redactor>>, TopologyError> {
    for t in &config.transforms {
        if let crate::config::TransformConfig::Redact(c) = &t.config {
            return Redactor::new(c)
                .map(|r| Some(Arc::new(r)))
                .map_err(|e| TopologyError::Build(format!("transforms.{}: {e}", t.name)));
        }
    }
    Ok(None)
}

async fn run_graph(
    config: &Config,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
    dead_letters: DeadLetters,
) -> Result<(), TopologyError> {
    // One bounded queue in front of every transform and sink.
    let mut senders: BTreeMap<String, mpsc::Sender<Arc<Batch>>> = BTreeMap::new();
    let mut receivers: BTreeMap<String, mpsc::Receiver<Arc<Batch>>> = BTreeMap::new();
    let consumers = config
        .transforms
        .iter()
        .map(|t| t.name.as_str())
        .chain(config.sinks.iter().map(|s| s.name.as_str()));
    for name in consumers {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        senders.insert(name.to_string(), tx);
        receivers.insert(name.to_string(), rx);
    }
    let fanout_of = |producer: &str| Fanout {
        senders: config
            .transforms
            .iter()
            .map(|t| (&t.name, &t.inputs))
            .chain(config.sinks.iter().map(|s| (&s.name, &s.inputs)))
            .filter(|(_, inputs)| inputs.iter().any(|i| i == producer))
            .map(|(name, _)| senders[name].clone())
            .collect(),
    };

    // The write-through cache: the postgres sinks send the rows they commit to the first redis
    // sink's evaluation cache. Each postgres sink gets a clone of `cache_tx`.
    let has = |type_name: &str| {
        config
            .sinks
            .iter()
            .any(|s| s.config.type_name() == type_name)
    };
    let (cache_tx, mut cache_rx) = if has("postgres") && has("redis") {
        let (tx, rx) = cache_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };

    let mut sink_tasks: Vec<JoinHandle<()>> = Vec::new();
    for sink in &config.sinks {
        let rx = receivers.remove(&sink.name).expect("made above");
        let ctx = |batch: BatchConfig| SinkContext {
            name: sink.name.clone(),
            batch,
            dead_letters: dead_letters.clone(),
            stats: stats.clone(),
        };
        let immediate = BatchConfig {
            max_events: 10_000,
            max_bytes: crate::sinks::DEFAULT_BATCH_MAX_BYTES,
            timeout_secs: 0.0,
        };
        let task = match &sink.config {
            SinkConfig::DeadLetter(_) => continue,
            SinkConfig::Console(_) => tokio::spawn(drive(Console::new(), rx, ctx(immediate))),
            SinkConfig::Blackhole(_) => tokio::spawn(drive(Blackhole, rx, ctx(immediate))),
            SinkConfig::Parquet(c) => {
                let store = crate::store::Store::open(&c.store).await.map_err(|e| {
                    TopologyError::Build(format!("sinks.{}: cannot open the store: {e}", sink.name))
                })?;
                let parquet = ParquetSink::new(&sink.name, store, c.clone());
                tokio::spawn(drive(parquet, rx, ctx(c.batch)))
            }
            SinkConfig::Postgres(c) => {
                let postgres = PostgresSink::connect(c, cache_tx.clone(), ctx(c.batch))
                    .await
                    .map_err(|e| TopologyError::Build(format!("sinks.{}: {e}", sink.name)))?;
                tokio::spawn(drive(postgres, rx, ctx(c.batch)))
            }
            SinkConfig::Redis(c) => {
                let build = |e| TopologyError::Build(format!("sinks.{}: {e}", sink.name));
                let redis = RedisSink::connect(&sink.name, c).await.map_err(build)?;
                if let Some(updates) = cache_rx.take() {
                    let cache = redis.eval_cache().map_err(build)?;
                    sink_tasks.push(tokio::spawn(cache.run(updates, ctx(c.batch))));
                }
                tokio::spawn(drive(redis, rx, ctx(c.batch)))
            }
        };
        sink_tasks.push(task);
    }
    // The postgres sinks hold their clones; the cache ends when the last of them stops.
    drop(cache_tx);

    let mut transform_tasks = Vec::new();
    for t in config.transforms_in_order() {
        let transform = Arc::new(
            Transform::build(&t.name, &t.config)
                .await
                .map_err(|e| TopologyError::Build(e.to_string()))?,
        );
        let rx = receivers.remove(&t.name).expect("made above");
        transform_tasks.push(tokio::spawn(run_transform(
            t.name.clone(),
            transform,
            rx,
            fanout_of(&t.name),
            dead_letters.clone(),
            stats.clone(),
        )));
    }

    let mut source_tasks = Vec::new();
    for s in &config.sources {
        let ctx = SourceContext {
            name: s.name.clone(),
            output: fanout_of(&s.name),
            dead_letters: dead_letters.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            data_dir: config.data_dir.clone(),
        };
        let name = s.name.clone();
        let task = match s.config.clone() {
            SourceConfig::Stdin(c) => tokio::spawn(sources::stdin::run(c, ctx)),
            SourceConfig::Tcp(c) => tokio::spawn(sources::tcp::run(c, ctx)),
            SourceConfig::File(c) => tokio::spawn(sources::file::run(c, ctx)),
            SourceConfig::Replay(c) => tokio::spawn(sources::replay::run(c, ctx)),
        };
        source_tasks.push((name, task));
    }
    // From here on only the components hold senders: the graph closes from the sources down.
    drop(senders);
    drop(dead_letters);

    let mut failure = None;
    for (name, task) in source_tasks {
        let outcome = task
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(message) = outcome {
            tracing::error!(source = %name, "The source stopped: {message}.");
            // One source failing stops the others, so that the run ends and says why.
            shutdown.cancel();
            failure.get_or_insert(TopologyError::Source { name, message });
        }
    }
    for task in transform_tasks.into_iter().chain(sink_tasks) {
        let _ = task.await;
    }
    failure.map_or(Ok(()), Err)
}

/// Applies a transform to batches on all cores, keeping their order.
async fn run_transform(
    name: String,
    transform: Arc<Transform>,
    input: mpsc::Receiver<Arc<Batch>>,
    output: Fanout,
    dead_letters: DeadLetters,
    stats: Arc<Stats>,
) {
    let counters = stats.component(&name);
    let batches =
        futures_util::stream::unfold(
            input,
            |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
        )
        .map(|batch| {
            let transform = transform.clone();
            let dead_letters = dead_letters.clone();
            async move {
                transform
                    .apply(Arc::unwrap_or_clone(batch), &dead_letters)
                    .await
            }
        })
        .buffered(batches_in_flight());
    futures_util::pin_mut!(batches);
    while let Some(batch) = batches.next().await {
        if batch.events.is_empty() {
            continue;
        }
        counters.events.fetch_add(
            batch.events.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if output.send(batch).await.is_err() {
            break;
        }
    }
}

/// The topology in words, for `evalsink validate`.
pub fn describe(config: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "config {} is valid", config.path.display());
    for c in &config.sources {
        let _ = writeln!(s, "  source    {} ({})", c.name, c.config.type_name());
    }
    for c in config.transforms_in_order() {
        let _ = writeln!(
            s,
            "  transform {} ({}) <- {}",
            c.name,
            c.config.type_name(),
            c.inputs.join(", ")
        );
    }
    for c in &config.sinks {
        let inputs = if c.inputs.is_empty() {
            "every component's dead letters".to_string()
        } else {
            c.inputs.join(", ")
        };
        let _ = writeln!(
            s,
            "  sink      {} ({}) <- {}",
            c.name,
            c.config.type_name(),
            inputs
        );
    }
    if !config
        .sinks
        .iter()
        .any(|c| matches!(c.config, SinkConfig::DeadLetter(_)))
    {
        let _ = writeln!(
            s,
            "  dead letters -> {}",
            config.dead_letter_dir().display()
        );
    }
    s
}

/// Graph output formats of `evalsink graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

/// The topology as a Mermaid flowchart or a Graphviz digraph.
pub fn graph(config: &Config, format: GraphFormat) -> String {
    let mut nodes: Vec<(String, String, &str)> = Vec::new();
    for c in &config.sources {
        nodes.push((c.name.clone(), c.config.type_name().to_string(), "source"));
    }
    for c in &config.transforms {
        nodes.push((
            c.name.clone(),
            c.config.type_name().to_string(),
            "transform",
        ));
    }
    for c in &config.sinks {
        nodes.push((c.name.clone(), c.config.type_name().to_string(), "sink"));
    }
    let edges: Vec<(&str, &str)> = config
        .transforms
        .iter()
        .map(|t| (&t.name, &t.inputs))
        .chain(config.sinks.iter().map(|s| (&s.name, &s.inputs)))
        .flat_map(|(to, inputs)| inputs.iter().map(move |from| (from.as_str(), to.as_str())))
        .collect();
    let id = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut s = String::new();
    match format {
        GraphFormat::Mermaid => {
            s.push_str("flowchart LR\n");
            for (name, type_name, role) in &nodes {
                let (open, close) = match *role {
                    "source" => ("([", "])"),
                    "transform" => ("[", "]"),
                    _ => ("[(", ")]"),
                };
                let _ = writeln!(s, "    {}{open}\"{name}<br/>{type_name}\"{close}", id(name));
            }
            for (from, to) in edges {
                let _ = writeln!(s, "    {} --> {}", id(from), id(to));
            }
        }
        GraphFormat::Dot => {
            s.push_str("digraph evalsink {\n    rankdir=LR;\n");
            for (name, type_name, role) in &nodes {
                let shape = match *role {
                    "source" => "ellipse",
                    "transform" => "box",
                    _ => "cylinder",
                };
                let _ = writeln!(
                    s,
                    "    \"{name}\" [label=\"{name}\\n{type_name}\", shape={shape}];"
                );
            }
            for (from, to) in edges {
                let _ = writeln!(s, "    \"{from}\" -> \"{to}\";");
            }
            s.push_str("}\n");
        }
    }
    s
}
