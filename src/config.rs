//! The pipeline config (TOML, Vector-style): read, `${VAR}` interpolation, parse into typed
//! component configs, and validation of the graph. Every problem is collected and reported
//! with its file, line and key before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::sinks::blackhole::BlackholeConfig;
use crate::sinks::console::ConsoleConfig;
use crate::sinks::dead_letter::DeadLetterConfig;
use crate::sinks::parquet::ParquetConfig;
use crate::sinks::postgres::PostgresConfig;
use crate::sinks::redis::RedisConfig;
use crate::sources::file::FileConfig;
use crate::sources::replay::ReplayConfig;
use crate::sources::stdin::StdinConfig;
use crate::sources::tcp::TcpConfig;
use crate::transforms::classify::ClassifyConfig;
use crate::transforms::redact::RedactConfig;
use crate::transforms::split::SplitConfig;

/// The config used when `-c` is not given.
pub const DEFAULT_PATH: &str = "config/evalsink.toml";

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Every component table's section, name and inputs, whether or not its keys parsed
    /// (so that one bad component does not cause follow-on problems).
    nodes: Vec<Node>,
    /// Where checkpoints, dead letters and local objects live (default `./data`).
    pub data_dir: PathBuf,
    pub sources: Vec<Component<SourceConfig>>,
    pub transforms: Vec<Component<TransformConfig>>,
    pub sinks: Vec<Component<SinkConfig>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    kind: &'static str,
    name: String,
    inputs: Vec<String>,
    dead_letter: bool,
}

/// One `[sources.NAME]`, `[transforms.NAME]` or `[sinks.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Component<T> {
    pub name: String,
    pub inputs: Vec<String>,
    pub config: T,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Stdin(StdinConfig),
    Tcp(TcpConfig),
    File(FileConfig),
    /// The files of `evalsink replay` (not written in configs).
    Replay(ReplayConfig),
}

#[derive(Debug, Clone)]
pub enum TransformConfig {
    Classify(ClassifyConfig),
    Redact(RedactConfig),
    Split(SplitConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    DeadLetter(DeadLetterConfig),
    Console(ConsoleConfig),
    Blackhole(BlackholeConfig),
    Parquet(ParquetConfig),
    Postgres(PostgresConfig),
    Redis(RedisConfig),
}

impl SourceConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Stdin(_) => "stdin",
            SourceConfig::Tcp(_) => "tcp",
            SourceConfig::File(_) => "file",
            SourceConfig::Replay(_) => "replay",
        }
    }
}

impl TransformConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            TransformConfig::Classify(_) => "classify",
            TransformConfig::Redact(_) => "redact",
            TransformConfig::Split(_) => "split",
        }
    }
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::DeadLetter(_) => "dead_letter",
            SinkConfig::Console(_) => "console",
            SinkConfig::Blackhole(_) => "blackhole",
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Redis(_) => "redis",
        }
    }
}

const SOURCE_TYPES: &[&str] = &["stdin", "tcp", "file"];
const TRANSFORM_TYPES: &[&str] = &["classify", "redact", "split"];
const SINK_TYPES: &[&str] = &[
    "dead_letter",
    "console",
    "blackhole",
    "parquet",
    "postgres",
    "redis",
];

/// One thing wrong with a config, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    /// Dotted key path, `sinks.pg.batch.max_events`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.key,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read the config file {path}: {source}. Pass another file with -c FILE, or run from the directory that holds config/evalsink.toml."
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", problems_text(.0))]
    Invalid(Vec<Problem>),
}

fn problems_text(problems: &[Problem]) -> String {
    let mut s = format!(
        "the config has {} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

impl Config {
    /// Reads, interpolates, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `env` looks up variables for `${VAR}`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let doc = Document {
            path: path.to_path_buf(),
            text: interpolate(text, path, env).map_err(ConfigError::Invalid)?,
        };
        let table: toml::Table = toml::from_str(&doc.text).map_err(|e| {
            let line = e.span().map_or(1, |s| doc.line_of(s.start));
            ConfigError::Invalid(vec![Problem {
                file: path.to_path_buf(),
                line,
                key: "(syntax)".into(),
                message: e.message().to_string(),
            }])
        })?;
        let mut problems = Vec::new();
        let config = doc.build(table, &mut problems);
        config.validate_graph(&doc, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            problems.sort_by_key(|p| p.line);
            Err(ConfigError::Invalid(problems))
        }
    }

    pub fn component_names(&self) -> impl Iterator<Item = &str> {
        self.sources
            .iter()
            .map(|c| c.name.as_str())
            .chain(self.transforms.iter().map(|c| c.name.as_str()))
            .chain(self.sinks.iter().map(|c| c.name.as_str()))
    }

    /// Transforms in an order where every transform comes after its inputs.
    pub fn transforms_in_order(&self) -> Vec<&Component<TransformConfig>> {
        let mut done: BTreeSet<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        let mut order = Vec::new();
        let mut left: Vec<&Component<TransformConfig>> = self.transforms.iter().collect();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|t| {
                if t.inputs.iter().all(|i| done.contains(i.as_str())) {
                    done.insert(&t.name);
                    order.push(*t);
                    false
                } else {
                    true
                }
            });
            assert!(left.len() < before, "validated configs have no cycles");
        }
        order
    }

    /// The dead letter directory: the `dead_letter` sink's `path`, or `{data_dir}/dead-letter`.
    pub fn dead_letter_dir(&self) -> PathBuf {
        self.sinks
            .iter()
            .find_map(|s| match &s.config {
                SinkConfig::DeadLetter(d) => d.path.clone(),
                _ => None,
            })
            .unwrap_or_else(|| self.data_dir.join("dead-letter"))
    }

    /// The same pipeline with its sources replaced by one source `name`, fed into everything
    /// the original sources fed (for `evalsink replay`).
    pub fn with_single_source(&self, name: &str, source: SourceConfig) -> Config {
        let source_names: BTreeSet<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        let rewire = |inputs: &[String]| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for i in inputs {
                let i = if source_names.contains(i.as_str()) {
                    name.to_string()
                } else {
                    i.clone()
                };
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            out
        };
        let mut config = self.clone();
        config.sources = vec![Component {
            name: name.to_string(),
            inputs: Vec::new(),
            config: source,
        }];
        for t in &mut config.transforms {
            t.inputs = rewire(&t.inputs);
        }
        for s in &mut config.sinks {
            s.inputs = rewire(&s.inputs);
        }
        config
    }

    fn validate_graph(&self, doc: &Document, problems: &mut Vec<Problem>) {
        let found = problems.len();
        let names_of = |kind: &str| -> BTreeSet<&str> {
            self.nodes
                .iter()
                .filter(|n| n.kind == kind)
                .map(|n| n.name.as_str())
                .collect()
        };
        let sources = names_of("sources");
        let transforms = names_of("transforms");
        let sinks = names_of("sinks");
        let mut seen = BTreeMap::new();
        for node in &self.nodes {
            if let Some(first) = seen.insert(node.name.as_str(), node.kind) {
                problems.push(doc.problem(
                    node.kind,
                    &node.name,
                    None,
                    format!(
                        "the name {:?} is also used by [{first}.{}]; component names must be unique",
                        node.name, node.name
                    ),
                ));
            }
        }
        if sources.is_empty() {
            problems.push(doc.top_problem(
                "sources",
                "no sources: add a [sources.NAME] table, for example type = \"stdin\"",
            ));
        }
        if !self
            .nodes
            .iter()
            .any(|n| n.kind == "sinks" && !n.dead_letter)
        {
            problems.push(doc.top_problem(
                "sinks",
                "no sinks: add a [sinks.NAME] table with inputs, for example type = \"console\"",
            ));
        }
        let known = || {
            sources
                .iter()
                .chain(transforms.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        };
        for node in self.nodes.iter().filter(|n| n.kind != "sources") {
            let (kind, name) = (node.kind, node.name.as_str());
            if node.dead_letter {
                if !node.inputs.is_empty() {
                    problems.push(doc.problem(kind, name, Some("inputs"), "the dead_letter sink takes no inputs: it receives the dead letters of every component; remove `inputs`".into()));
                }
                continue;
            }
            if node.inputs.is_empty() {
                problems.push(doc.problem(
                    kind,
                    name,
                    Some("inputs"),
                    format!(
                        "no inputs: set inputs = [\"...\"] to one or more of: {}",
                        known()
                    ),
                ));
            }
            for input in &node.inputs {
                if input == name {
                    problems.push(doc.problem(
                        kind,
                        name,
                        Some("inputs"),
                        format!("{input:?} lists itself as an input"),
                    ));
                } else if !sources.contains(input.as_str()) && !transforms.contains(input.as_str())
                {
                    let what = if sinks.contains(input.as_str()) {
                        format!("{input:?} is a sink; sinks cannot feed other components")
                    } else {
                        format!(
                            "{input:?} names no source or transform (known: {})",
                            known()
                        )
                    };
                    problems.push(doc.problem(kind, name, Some("inputs"), what));
                }
            }
        }
        for name in self.transforms_in_cycles() {
            problems.push(doc.problem(
                "transforms",
                &name,
                Some("inputs"),
                format!("{name:?} is part of a cycle of inputs; the pipeline must be a graph without loops"),
            ));
        }
        // A component that feeds nothing would lose its events; reported only when the graph
        // has no other problem, since those often cause it.
        if problems.len() == found {
            let fed: BTreeSet<&str> = self
                .nodes
                .iter()
                .flat_map(|n| &n.inputs)
                .map(String::as_str)
                .collect();
            for node in self.nodes.iter().filter(|n| n.kind != "sinks") {
                if !fed.contains(node.name.as_str()) {
                    problems.push(doc.problem(
                        node.kind,
                        &node.name,
                        None,
                        format!("{:?} feeds nothing, so its events would be lost; list it in the inputs of a transform or sink", node.name),
                    ));
                }
            }
        }
    }

    /// Transforms that can reach themselves through their inputs.
    fn transforms_in_cycles(&self) -> Vec<String> {
        let inputs: BTreeMap<&str, Vec<&str>> = self
            .transforms
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.inputs.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let reaches_itself = |start: &str| {
            let mut stack: Vec<&str> = inputs.get(start).cloned().unwrap_or_default();
            let mut seen = BTreeSet::new();
            while let Some(n) = stack.pop() {
                if n == start {
                    return true;
                }
                if seen.insert(n) {
                    stack.extend(inputs.get(n).into_iter().flatten().copied());
                }
            }
            false
        };
        self.transforms
            .iter()
            .filter(|t| !t.inputs.contains(&t.name) && reaches_itself(&t.name))
            .map(|t| t.name.clone())
            .collect()
    }
}

/// The interpolated text of a config file, to find lines for messages.
struct Document {
    path: PathBuf,
    text: String,
}

impl Document {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn top_problem(&self, key: &str, message: &str) -> Problem {
        let line = self
            .text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("[{key}")))
            .map_or(1, |i| i + 1);
        Problem {
            file: self.path.clone(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }

    fn problem(&self, kind: &str, name: &str, key: Option<&str>, message: String) -> Problem {
        let mut path = format!("{kind}.{name}");
        if let Some(k) = key {
            path.push('.');
            path.push_str(k);
        }
        Problem {
            file: self.path.clone(),
            line: locate(&self.text, kind, name, key),
            key: path,
            message,
        }
    }

    fn build(&self, mut table: toml::Table, problems: &mut Vec<Problem>) -> Config {
        let mut config = Config {
            path: self.path.clone(),
            nodes: Vec::new(),
            data_dir: PathBuf::from("./data"),
            sources: Vec::new(),
            transforms: Vec::new(),
            sinks: Vec::new(),
        };
        if let Some(v) = table.remove("data_dir") {
            match v {
                toml::Value::String(s) => config.data_dir = PathBuf::from(s),
                _ => problems.push(
                    self.top_problem("data_dir", "data_dir must be a string (a directory path)"),
                ),
            }
        }
        for (kind, value) in std::mem::take(&mut table) {
            let toml::Value::Table(components) = value else {
                problems.push(self.top_problem(&kind, &format!("`{kind}` must be a table")));
                continue;
            };
            for (name, body) in components {
                let toml::Value::Table(body) = body else {
                    problems.push(self.problem(
                        &kind,
                        &name,
                        None,
                        format!("must be a table: write [{kind}.{name}] with a type"),
                    ));
                    continue;
                };
                let nodes = &mut config.nodes;
                match kind.as_str() {
                    "sources" => self.component(&name, body, nodes, &mut config.sources, problems),
                    "transforms" => {
                        self.component(&name, body, nodes, &mut config.transforms, problems)
                    }
                    "sinks" => self.component(&name, body, nodes, &mut config.sinks, problems),
                    _ => {
                        problems.push(self.top_problem(&kind, &format!("unknown key `{kind}`: the top level holds data_dir, [sources.*], [transforms.*] and [sinks.*]")));
                        break;
                    }
                }
            }
        }
        config
    }

    /// Parses the component `name` of section `T::SECTION` into `out`. Once it has a `type`, its
    /// node goes into `nodes` even when its keys have problems, so that the checks of inputs
    /// still know its name.
    fn component<T: ComponentKind>(
        &self,
        name: &str,
        mut body: toml::Table,
        nodes: &mut Vec<Node>,
        out: &mut Vec<Component<T>>,
        problems: &mut Vec<Problem>,
    ) {
        let kind = T::SECTION;
        let type_name = match body.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                problems.push(self.problem(
                    kind,
                    name,
                    Some("type"),
                    "type must be a string".into(),
                ));
                return;
            }
            None => {
                problems.push(self.problem(
                    kind,
                    name,
                    None,
                    format!("missing key `type`: one of {}", T::TYPES.join(", ")),
                ));
                return;
            }
        };
        let mut inputs = Vec::new();
        if T::HAS_INPUTS {
            match body.remove("inputs") {
                None => {}
                Some(toml::Value::Array(items)) => {
                    for item in items {
                        match item {
                            toml::Value::String(s) => inputs.push(s),
                            _ => problems.push(self.problem(
                                kind,
                                name,
                                Some("inputs"),
                                "inputs must be a list of component names (strings)".into(),
                            )),
                        }
                    }
                }
                Some(_) => problems.push(self.problem(
                    kind,
                    name,
                    Some("inputs"),
                    "inputs must be a list, for example inputs = [\"in\"]".into(),
                )),
            }
        }
        nodes.push(Node {
            kind: T::SECTION,
            name: name.to_string(),
            inputs: inputs.clone(),
            dead_letter: type_name == "dead_letter",
        });
        if !T::TYPES.contains(&type_name.as_str()) {
            problems.push(self.problem(
                kind,
                name,
                Some("type"),
                format!(
                    "unknown {} type {type_name:?}; known types: {}",
                    &kind[..kind.len() - 1],
                    T::TYPES.join(", ")
                ),
            ));
            return;
        }
        match T::parse(&type_name, body) {
            Ok(config) => {
                for (key, message) in config.check() {
                    problems.push(self.problem(kind, name, Some(&key), message));
                }
                out.push(Component {
                    name: name.to_string(),
                    inputs,
                    config,
                });
            }
            Err(e) => {
                let message = e.message().to_string();
                let key = unknown_field(&message);
                problems.push(self.problem(kind, name, key.as_deref(), describe(&message)));
            }
        }
    }
}

/// The typed config of one section (sources, transforms, sinks).
trait ComponentKind: Sized {
    const SECTION: &'static str;
    /// Whether the component takes `inputs` (transforms and sinks do, sources do not).
    const HAS_INPUTS: bool = true;
    const TYPES: &'static [&'static str];
    fn parse(type_name: &str, body: toml::Table) -> Result<Self, toml::de::Error>;
    /// Checks that need no I/O; returns (key, message) pairs.
    fn check(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

fn typed<T: DeserializeOwned>(body: toml::Table) -> Result<T, toml::de::Error> {
    toml::Value::Table(body).try_into()
}

impl ComponentKind for SourceConfig {
    const SECTION: &'static str = "sources";
    const HAS_INPUTS: bool = false;
    const TYPES: &'static [&'static str] = SOURCE_TYPES;
    fn parse(type_name: &str, body: toml::Table) -> Result<Self, toml::de::Error> {
        Ok(match type_name {
            "stdin" => SourceConfig::Stdin(typed(body)?),
            "tcp" => SourceConfig::Tcp(typed(body)?),
            _ => SourceConfig::File(typed(body)?),
        })
    }
    fn check(&self) -> Vec<(String, String)> {
        match self {
            SourceConfig::Tcp(c) => c.check(),
            SourceConfig::File(c) => c.check(),
            SourceConfig::Stdin(_) | SourceConfig::Replay(_) => Vec::new(),
        }
    }
}

impl ComponentKind for TransformConfig {
    const SECTION: &'static str = "transforms";
    const TYPES: &'static [&'static str] = TRANSFORM_TYPES;
    fn parse(type_name: &str, body: toml::Table) -> Result<Self, toml::de::Error> {
        Ok(match type_name {
            "classify" => TransformConfig::Classify(typed(body)?),
            "split" => TransformConfig::Split(typed(body)?),
            _ => TransformConfig::Redact(typed(body)?),
        })
    }
    fn check(&self) -> Vec<(String, String)> {
        match self {
            TransformConfig::Classify(c) => c.check(),
            TransformConfig::Redact(c) => match crate::transforms::redact::Redactor::new(c) {
                Ok(_) => Vec::new(),
                Err(e) => vec![("rules".into(), e.to_string())],
            },
            TransformConfig::Split(c) => c.check(),
        }
    }
}

impl ComponentKind for SinkConfig {
    const SECTION: &'static str = "sinks";
    const TYPES: &'static [&'static str] = SINK_TYPES;
    fn parse(type_name: &str, body: toml::Table) -> Result<Self, toml::de::Error> {
        Ok(match type_name {
            "dead_letter" => SinkConfig::DeadLetter(typed(body)?),
            "console" => SinkConfig::Console(typed(body)?),
            "parquet" => SinkConfig::Parquet(typed(body)?),
            "postgres" => SinkConfig::Postgres(typed(body)?),
            "redis" => SinkConfig::Redis(typed(body)?),
            _ => SinkConfig::Blackhole(typed(body)?),
        })
    }
    fn check(&self) -> Vec<(String, String)> {
        match self {
            SinkConfig::Parquet(c) => c.check(),
            SinkConfig::Postgres(c) => c.check(),
            SinkConfig::Redis(c) => c.check(),
            _ => Vec::new(),
        }
    }
}

/// The key named in serde's "unknown field `x`" or "missing field `x`" messages.
fn unknown_field(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            return rest.find('`').map(|end| rest[..end].to_string());
        }
    }
    None
}

fn describe(message: &str) -> String {
    let message = message.trim();
    if message.starts_with("unknown field") {
        format!("unknown key: {message}")
    } else {
        message.to_string()
    }
}

/// The line of `key` inside `[kind.name]` (or of the table's header when the key is not
/// written there, or 1).
fn locate(text: &str, kind: &str, name: &str, key: Option<&str>) -> usize {
    let mut header_line = None;
    let mut in_section = false;
    let last = key.map(|k| k.rsplit('.').next().unwrap_or(k));
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let path = header_path(line);
            in_section = path.len() >= 2 && path[0] == kind && path[1] == name;
            if in_section && header_line.is_none() {
                header_line = Some(i + 1);
            }
            continue;
        }
        if !in_section {
            continue;
        }
        let Some(want) = last else {
            continue;
        };
        if let Some((lhs, _)) = line.split_once('=') {
            let lhs = lhs.trim();
            let leaf = lhs
                .rsplit('.')
                .next()
                .unwrap_or(lhs)
                .trim()
                .trim_matches('"');
            if leaf == want || lhs.starts_with(&format!("{want}.")) {
                return i + 1;
            }
            if let Some(inline) = line.split_once('{').map(|(_, r)| r)
                && inline.contains(&format!("{want} ="))
            {
                return i + 1;
            }
        }
    }
    header_line.unwrap_or(1)
}

fn header_path(line: &str) -> Vec<String> {
    line.trim_matches(|c| c == '[' || c == ']')
        .split('.')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Comment lines are left alone.
fn interpolate(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{')
                && let Some(end) = inner.find('}')
            {
                let expr = &inner[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                let value = if !valid {
                    problems.push(Problem {
                        file: path.to_path_buf(),
                        line: i + 1,
                        key: format!("${{{expr}}}"),
                        message: "not a valid variable name (letters, digits and _); write $$ for a literal $".into(),
                    });
                    String::new()
                } else {
                    match (
                        env(name).filter(|v| !v.is_empty() || default.is_none()),
                        default,
                    ) {
                        (Some(v), _) => v,
                        (None, Some(d)) => d.to_string(),
                        (None, None) => {
                            problems.push(Problem {
                                file: path.to_path_buf(),
                                line: i + 1,
                                key: format!("${{{name}}}"),
                                message: format!("environment variable {name} is not set; set it, or give a default with ${{{name}:-value}}"),
                            });
                            String::new()
                        }
                    }
                };
                out.push_str(&value);
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let env = |name: &str| match name {
            "HOST" => Some("db.example".to_string()),
            _ => None,
        };
        Config::parse(text, Path::new("test.toml"), &env).map_err(|e| match e {
            ConfigError::Invalid(p) => p,
            other => panic!("{other}"),
        })
    }

    fn one_problem(text: &str) -> Problem {
        let problems = parse(text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems.into_iter().next().unwrap()
    }

    const GOOD: &str = r#"
data_dir = "/tmp/x"
[sources.in]
type = "stdin"

[transforms.classify]
type = "classify"
inputs = ["in"]

[sinks.out]
type = "console"
inputs = ["classify"]
"#;

    #[test]
    fn a_good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.sources[0].name, "in");
        assert_eq!(c.transforms[0].inputs, vec!["in"]);
        assert_eq!(c.sinks[0].config.type_name(), "console");
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            Config::parse(&text, &path, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn rejects_an_unknown_key_with_its_line() {
        let p = one_problem(&GOOD.replace("type = \"console\"", "type = \"console\"\ncolour = 1"));
        assert_eq!(p.key, "sinks.out.colour");
        assert_eq!(p.line, 12);
        assert!(p.message.contains("unknown"), "{p}");
        assert!(p.to_string().starts_with("test.toml:12: sinks.out.colour:"));
    }

    #[test]
    fn rejects_an_unknown_key_in_every_component_type() {
        let cases = [
            ("sources", "stdin", ""),
            ("sources", "tcp", ""),
            ("sources", "file", "include = [\"/tmp/*.log\"]\n"),
            ("transforms", "classify", "inputs = [\"in\"]\n"),
            ("transforms", "redact", "inputs = [\"in\"]\n"),
            ("transforms", "split", "inputs = [\"in\"]\n"),
            ("sinks", "console", "inputs = [\"in\"]\n"),
            ("sinks", "blackhole", "inputs = [\"in\"]\n"),
            ("sinks", "parquet", "inputs = [\"in\"]\n"),
            ("sinks", "postgres", "inputs = [\"in\"]\n"),
            ("sinks", "redis", "inputs = [\"in\"]\n"),
            ("sinks", "dead_letter", ""),
        ];
        for (kind, type_name, extra) in cases {
            let text = format!(
                "[sources.in]\ntype = \"stdin\"\n[sinks.keep]\ntype = \"blackhole\"\ninputs = [\"in\"]\n[{kind}.x]\ntype = \"{type_name}\"\n{extra}bogus_key = 1\n"
            );
            let problems = parse(&text).unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.key == format!("{kind}.x.bogus_key")
                        && p.line == 8 + extra.lines().count()),
                "{kind} {type_name}: {problems:#?}"
            );
        }
    }

    #[test]
    fn rejects_an_unknown_type() {
        let p = one_problem(&GOOD.replace("\"console\"", "\"kafka\""));
        assert_eq!(p.key, "sinks.out.type");
        assert_eq!(p.line, 11);
        assert!(p.message.contains("kafka") && p.message.contains("blackhole"));
    }

    #[test]
    fn rejects_inputs_that_name_nothing() {
        let p = one_problem(&GOOD.replace("inputs = [\"classify\"]", "inputs = [\"clasify\"]"));
        assert_eq!(p.key, "sinks.out.inputs");
        assert_eq!(p.line, 12);
        assert!(p.message.contains("clasify"), "{p}");
    }

    #[test]
    fn rejects_a_cycle() {
        let text = r#"
[sources.in]
type = "stdin"
[transforms.a]
type = "classify"
inputs = ["in", "b"]
[transforms.b]
type = "classify"
inputs = ["a"]
[sinks.out]
type = "console"
inputs = ["b"]
"#;
        let problems = parse(text).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems.iter().all(|p| p.message.contains("cycle")));
        assert_eq!(problems[0].line, 6);
    }

    #[test]
    fn rejects_a_sink_with_no_inputs() {
        let p = one_problem(&GOOD.replace("inputs = [\"classify\"]", ""));
        assert_eq!(p.key, "sinks.out.inputs");
        assert!(p.message.contains("no inputs"));
    }

    #[test]
    fn rejects_a_missing_variable() {
        let p = one_problem(&GOOD.replace("/tmp/x", "${NOPE}"));
        assert_eq!(p.line, 2);
        assert!(p.message.contains("NOPE is not set"), "{p}");
    }

    #[test]
    fn interpolates_variables_and_defaults() {
        let c = parse(&GOOD.replace("/tmp/x", "/${HOST}/${MISSING:-d}/$$HOME")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/db.example/d/$HOME"));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = GOOD
            .replace("\"console\"", "\"kafka\"")
            .replace("inputs = [\"in\"]", "inputs = [\"nope\"]");
        assert_eq!(parse(&text).unwrap_err().len(), 2);
    }

    #[test]
    fn a_syntax_error_has_its_line() {
        let p = one_problem("[sources.in]\ntype = \"stdin\"\n[sinks.out\n");
        assert_eq!(p.line, 3);
    }

    #[test]
    fn replay_rewires_sources() {
        let c = parse(GOOD).unwrap();
        let r = c.with_single_source("replay", SourceConfig::Stdin(StdinConfig::default()));
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.transforms[0].inputs, vec!["replay"]);
    }
}
