//! `evalsink generate`: realistic, seeded sample events as NDJSON, for trying evalsink and for
//! benchmarks. Every event type appears; code is a few KB, outputs range from about 100 B to
//! tens of KB with a few over 1 MiB, and lines can be made bad or shuffled on request.

use std::io::{self, Write};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};

use crate::event::format_ts;

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateOptions {
    /// Number of lines to write.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Seed: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of bad lines (invalid JSON, unknown types, missing fields, ...).
    #[arg(long, default_value_t = 0.0)]
    pub bad_lines: f64,
    /// Fraction of completed evaluations whose output is over 1 MiB.
    #[arg(long, default_value_t = 0.001)]
    pub large_outputs: f64,
    /// Fraction of code, outputs and tracebacks that carry a (fake) secret.
    #[arg(long, default_value_t = 0.02)]
    pub secrets: f64,
    /// Shuffle events within windows of this many lines (out-of-order lifecycles); 0 keeps order.
    #[arg(long, default_value_t = 0)]
    pub shuffle_window: usize,
    /// Spread the events' timestamps evenly over this many days (a replay of months of logs);
    /// 0 spaces them 1 to 40 ms apart, as on a busy platform.
    #[arg(long, default_value_t = 0)]
    pub days: u32,
}

const LANGUAGES: &[(&str, &str)] = &[
    ("python", "python:3.12-slim"),
    ("javascript", "node:22-alpine"),
    ("rust", "rust:1.85"),
    ("go", "golang:1.24"),
    ("java", "eclipse-temurin:21"),
];

const CODE_LINES: &[&str] = &[
    "import json",
    "import sys",
    "from collections import defaultdict",
    "def solve(values):",
    "    total = 0",
    "    for i, v in enumerate(values):",
    "        if v % 2 == 0:",
    "            total += v * i",
    "        else:",
    "            total -= v",
    "    return total",
    "class Solution:",
    "    def __init__(self, n: int) -> None:",
    "        self.memo = {}",
    "        self.n = n",
    "    def fib(self, k):",
    "        if k in self.memo: return self.memo[k]",
    "        self.memo[k] = k if k < 2 else self.fib(k - 1) + self.fib(k - 2)",
    "        return self.memo[k]",
    "data = json.loads(sys.stdin.read() or '[]')",
    "print(solve(data), file=sys.stdout)",
    "# check the edge cases: empty input, one element, negative numbers",
    "assert solve([]) == 0, 'empty input'",
    "result = sorted(set(x.strip().lower() for x in open('words.txt')))",
    "matrix = [[0] * 64 for _ in range(64)]",
];

const OUTPUT_LINES: &[&str] = &[
    "test_empty_input ... ok",
    "test_single_element ... ok",
    "test_large_input ... ok (0.412s)",
    "test_negative_numbers ... FAILED",
    "Ran 12 tests in 1.204s",
    "result: [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]",
    "INFO processing batch 17/64 (rows=4096, elapsed=0.031s)",
    "{\"score\": 0.875, \"passed\": 7, \"total\": 8}",
    "Compiling solution v0.1.0 (/workspace)",
    "    Finished release [optimized] target(s) in 3.21s",
    "warning: unused variable: `tmp`",
    "checksum 3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
];

const SECRETS: &[&str] = &[
    "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
    "password = \"hunter2-correct-horse\"",
    "postgres://admin:s3cr3tP4ss@db.internal:5432/prod",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "GITHUB_TOKEN=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",
];

/// Writes `options.events` lines to `out`.
pub fn generate(options: &GenerateOptions, out: &mut impl Write) -> io::Result<()> {
    let mut g = Generator {
        rng: fastrand::Rng::with_seed(options.seed),
        options: options.clone(),
        clock: DateTime::from_timestamp(1_767_225_600, 0).expect("valid") // 2026-01-01
            + Duration::seconds((options.seed % 1000) as i64 * 86_400),
        next_eval: 0,
        live: Vec::new(),
        serial: 0,
        // Gaps of 1 to step_ms - 1 ms: about `days` days in all, or a busy platform's pace.
        step_ms: match options.days {
            0 => 40,
            days => (2 * days as u64 * 86_400_000 / options.events.max(1)).max(2) as i64,
        },
    };
    let mut window: Vec<String> = Vec::new();
    for _ in 0..options.events {
        let line = g.line();
        if options.shuffle_window > 1 {
            window.push(line);
            if window.len() >= options.shuffle_window {
                g.rng.shuffle(&mut window);
                for l in window.drain(..) {
                    writeln!(out, "{l}")?;
                }
            }
        } else {
            writeln!(out, "{line}")?;
        }
    }
    g.rng.shuffle(&mut window);
    for l in window {
        writeln!(out, "{l}")?;
    }
    out.flush()
}

/// An evaluation in flight and the next event of its lifecycle.
struct Live {
    eval_id: String,
    stage: u8,
}

struct Generator {
    rng: fastrand::Rng,
    options: GenerateOptions,
    clock: DateTime<Utc>,
    next_eval: u64,
    live: Vec<Live>,
    serial: u64,
    step_ms: i64,
}

impl Generator {
    fn line(&mut self) -> String {
        self.clock += Duration::milliseconds(self.rng.i64(1..self.step_ms));
        if self.options.bad_lines > 0.0 && self.rng.f64() < self.options.bad_lines {
            return self.bad_line();
        }
        let roll = self.rng.u32(0..100);
        let event = if roll < 6 {
            self.health()
        } else if roll < 10 {
            self.queue_metrics()
        } else if roll < 11 {
            self.violation()
        } else {
            self.lifecycle()
        };
        Value::Object(event).to_string()
    }

    fn base(&mut self, type_name: &str) -> Map<String, Value> {
        self.serial += 1;
        let mut m = Map::new();
        m.insert("type".into(), type_name.into());
        m.insert(
            "event_id".into(),
            format!("evt-{:016x}-{:08x}", self.options.seed, self.serial).into(),
        );
        m.insert("timestamp".into(), format_ts(&self.clock).into());
        if self.rng.u8(0..4) == 0 {
            m.insert(
                "tenant_id".into(),
                format!("tenant-{}", self.rng.u8(1..6)).into(),
            );
        }
        m
    }

    fn lifecycle(&mut self) -> Map<String, Value> {
        if self.live.len() < 8 || self.rng.u8(0..3) == 0 {
            self.next_eval += 1;
            let eval_id = format!(
                "eval-{:08x}-{:06}",
                self.options.seed as u32, self.next_eval
            );
            self.live.push(Live { eval_id, stage: 0 });
        }
        let i = self.rng.usize(0..self.live.len());
        let stage = self.live[i].stage;
        let eval_id = self.live[i].eval_id.clone();
        self.live[i].stage += 1;
        match stage {
            0 => self.queued(&eval_id),
            1 => self.container(&eval_id),
            2 => self.started(&eval_id),
            _ => {
                self.live.swap_remove(i);
                if self.rng.u8(0..10) == 0 {
                    self.failed(&eval_id)
                } else {
                    self.completed(&eval_id)
                }
            }
        }
    }

    fn queued(&mut self, eval_id: &str) -> Map<String, Value> {
        let (language, _) = LANGUAGES[self.rng.usize(0..LANGUAGES.len())];
        let size = self.rng.usize(800..8000);
        let code = self.text(CODE_LINES, size);
        let mut m = self.base("EVALUATION_QUEUED");
        m.insert("eval_id".into(), eval_id.into());
        m.insert("code".into(), code.into());
        m.insert("language".into(), language.into());
        m.insert("engine".into(), "docker".into());
        m.insert(
            "timeout".into(),
            json!([10, 30, 60, 300][self.rng.usize(0..4)]),
        );
        m.insert(
            "metadata".into(),
            json!({"user_id": format!("user-{}", self.rng.u32(1..5000)), "problem": format!("p{}", self.rng.u16(1..900)), "attempt": self.rng.u8(1..4)}),
        );
        m
    }

    fn container(&mut self, eval_id: &str) -> Map<String, Value> {
        let (_, image) = LANGUAGES[self.rng.usize(0..LANGUAGES.len())];
        let mut m = self.base("CONTAINER_CREATED");
        m.insert("container_id".into(), self.hex_id(64).into());
        m.insert("eval_id".into(), eval_id.into());
        m.insert("image".into(), image.into());
        m.insert(
            "limits".into(),
            json!({"memory_mb": 512, "cpus": 1.0, "pids": 128, "network": "none"}),
        );
        m
    }

    fn started(&mut self, eval_id: &str) -> Map<String, Value> {
        let mut m = self.base("EVALUATION_STARTED");
        m.insert("eval_id".into(), eval_id.into());
        m.insert(
            "executor_id".into(),
            format!("executor-{}", self.rng.u8(1..17)).into(),
        );
        m.insert("start_time".into(), format_ts(&self.clock).into());
        m
    }

    fn completed(&mut self, eval_id: &str) -> Map<String, Value> {
        let size = if self.rng.f64() < self.options.large_outputs {
            self.rng.usize(1_100_000..3_000_000)
        } else {
            // Mostly small, some tens of KB.
            let exp = self.rng.f64() * 9.0 + 6.6; // 2^6.6 ~ 100 B .. 2^15.6 ~ 50 KB
            2f64.powf(exp) as usize
        };
        let output = self.text(OUTPUT_LINES, size);
        let mut m = self.base("EVALUATION_COMPLETED");
        m.insert("eval_id".into(), eval_id.into());
        m.insert("output".into(), output.into());
        m.insert("success".into(), (self.rng.u8(0..5) != 0).into());
        m.insert(
            "end_time".into(),
            format_ts(&(self.clock + Duration::milliseconds(self.rng.i64(50..5000)))).into(),
        );
        m
    }

    fn failed(&mut self, eval_id: &str) -> Map<String, Value> {
        let mut m = self.base("EVALUATION_FAILED");
        m.insert("eval_id".into(), eval_id.into());
        m.insert(
            "error".into(),
            "TimeoutError: evaluation exceeded its time limit".into(),
        );
        let mut tb = String::from("Traceback (most recent call last):\n");
        for i in 0..self.rng.usize(2..12) {
            tb.push_str(&format!(
                "  File \"/workspace/solution.py\", line {}, in solve\n    total += v * i\n",
                10 + i * 7
            ));
        }
        if self.rng.f64() < self.options.secrets {
            tb.push_str(SECRETS[self.rng.usize(0..SECRETS.len())]);
            tb.push('\n');
        }
        tb.push_str("TimeoutError: evaluation exceeded its time limit\n");
        m.insert("traceback".into(), tb.into());
        m
    }

    fn health(&mut self) -> Map<String, Value> {
        let mut m = self.base("EXECUTOR_HEALTH");
        m.insert(
            "executor_id".into(),
            format!("executor-{}", self.rng.u8(1..17)).into(),
        );
        let status =
            ["healthy", "healthy", "healthy", "degraded", "draining"][self.rng.usize(0..5)];
        m.insert("status".into(), status.into());
        m.insert(
            "metrics".into(),
            json!({"cpu": (self.rng.f64() * 100.0 * 10.0).round() / 10.0, "memory_mb": self.rng.u32(200..8000), "running": self.rng.u8(0..9)}),
        );
        m
    }

    fn queue_metrics(&mut self) -> Map<String, Value> {
        let mut m = self.base("QUEUE_METRICS");
        m.insert("queue_length".into(), self.rng.u32(0..500).into());
        m.insert("processing_count".into(), self.rng.u32(0..64).into());
        m
    }

    fn violation(&mut self) -> Map<String, Value> {
        let mut m = self.base("RESOURCE_VIOLATION");
        m.insert("container_id".into(), self.hex_id(64).into());
        let kind = ["memory", "cpu", "pids", "network"][self.rng.usize(0..4)];
        m.insert("violation_type".into(), kind.into());
        m.insert(
            "details".into(),
            json!({"limit": 512, "observed": self.rng.u32(513..4096), "action": "killed"}),
        );
        m
    }

    fn bad_line(&mut self) -> String {
        match self.rng.u8(0..6) {
            0 => "{\"type\": \"EVALUATION_QUEUED\", \"eval_id\": ".into(),
            1 => "[1, 2, 3]".into(),
            2 => json!({"type": "EVALUATION_EXPLODED", "eval_id": "x"}).to_string(),
            3 => json!({"type": "EVALUATION_STARTED", "eval_id": "x"}).to_string(),
            4 => json!({"type": "QUEUE_METRICS", "queue_length": "many", "processing_count": 1})
                .to_string(),
            _ => "executor: warning: this is a plain log line, not JSON".into(),
        }
    }

    /// Lines from `vocabulary` up to about `size` bytes, sometimes with a secret in them.
    fn text(&mut self, vocabulary: &[&str], size: usize) -> String {
        let mut s = String::with_capacity(size + 64);
        let mut secret_at =
            (self.rng.f64() < self.options.secrets).then(|| self.rng.usize(0..size.max(1)));
        while s.len() < size {
            if secret_at.is_some_and(|at| s.len() >= at) {
                s.push_str(SECRETS[self.rng.usize(0..SECRETS.len())]);
                s.push('\n');
                secret_at = None;
            }
            s.push_str(vocabulary[self.rng.usize(0..vocabulary.len())]);
            s.push('\n');
        }
        s
    }

    fn hex_id(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit(self.rng.u32(0..16), 16).expect("hex"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_line;
    use crate::event::EventType;
    use std::collections::BTreeSet;

    fn options(events: u64) -> GenerateOptions {
        GenerateOptions {
            events,
            seed: 7,
            bad_lines: 0.0,
            large_outputs: 0.0,
            secrets: 0.0,
            shuffle_window: 0,
            days: 0,
        }
    }

    #[test]
    fn seeded_output_is_repeatable_and_valid() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate(&options(2000), &mut a).unwrap();
        generate(&options(2000), &mut b).unwrap();
        assert_eq!(a, b);
        let mut types = BTreeSet::new();
        for line in a.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let event = decode_line(line, Utc::now()).unwrap_or_else(|e| panic!("{e:?}"));
            types.insert(event.event_type());
        }
        assert_eq!(
            types.len(),
            EventType::ALL.len(),
            "every type appears: {types:?}"
        );
    }

    #[test]
    fn bad_lines_are_bad() {
        let mut out = Vec::new();
        generate(
            &GenerateOptions {
                bad_lines: 1.0,
                ..options(50)
            },
            &mut out,
        )
        .unwrap();
        for line in out.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            assert!(decode_line(line, Utc::now()).is_err());
        }
    }

    #[test]
    fn days_spread_the_timestamps_over_that_many_days() {
        let mut out = Vec::new();
        generate(
            &GenerateOptions {
                days: 30,
                ..options(5000)
            },
            &mut out,
        )
        .unwrap();
        let dates: BTreeSet<_> = out
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| decode_line(line, Utc::now()).unwrap().ts.date_naive())
            .collect();
        assert!((28..=32).contains(&dates.len()), "{} dates", dates.len());
    }
}
