//! Throughput of the redaction engine on 1 MiB of text: (a) realistic text without secrets
//! (Python code, JSON logs, tracebacks, base64 and hex), (b) the same kind of text with a secret
//! every ~200 bytes, (c) the strings of generated events, in bytes of NDJSON per second
//! (what the pipeline's redact transform does).

use std::hint::black_box;

use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use evalsink::decode::decode_chunk;
use evalsink::event::{Ack, Batch, Event};
use evalsink::generate::{GenerateOptions, generate};
use evalsink::sinks::dead_letter::Origin;
use evalsink::transforms::redact::Redactor;
use evalsink::transforms::redact_batch;

const SIZE: usize = 1 << 20;

/// A small deterministic generator, so that every run measures the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
    fn hex(&mut self, len: usize) -> String {
        self.string(b"0123456789abcdef", len)
    }
    fn uuid(&mut self) -> String {
        format!(
            "{}-{}-4{}-a{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }
}

const WORDS: &[&str] = &[
    "result",
    "value",
    "items",
    "config",
    "session",
    "request",
    "tokens",
    "index",
    "buffer",
    "parser",
    "handler",
    "message",
    "payload",
    "record",
    "user_id",
    "submission",
    "evaluation",
    "score",
];

const CODE: &[&str] = &[
    "def {a}(self, {b}, timeout=30):\n    \"\"\"Return the {b} of the {a}.\"\"\"\n    if not {b}:\n        raise ValueError(\"missing {b}\")\n    return self._{a}.get({b}, None)\n",
    "for key, {a} in sorted({b}.items(), key=lambda kv: kv[0]):\n    msg.append(f\"{{key}}={{{a}!r}}\")\n",
    "class {A}Handler(BaseHandler):\n    def __init__(self, {a}, {b}=None):\n        super().__init__()\n        self.{a} = {a}\n        self.{b} = {b} or []\n",
    "token = tokens[i]\nwhile token.type != NEWLINE:\n    i += 1\n    token = tokens[i]\n",
    "password = getpass()\nconn = connect(host=args.host, user=args.user, password=password)\n",
    "    url = \"https://example.com/api/v1/{a}?page={n}&limit=100\"\n    resp = session.get(url, headers={{\"Accept\": \"application/json\"}})\n",
    "import os, sys, json\nfrom collections import defaultdict\n\n{a} = defaultdict(list)\n",
    "    with open(path, \"rb\") as f:\n        digest = hashlib.sha256(f.read()).hexdigest()\n    assert digest == \"{hex64}\"\n",
    "# TODO({a}): handle the case where {b} is empty (see issue #{n})\n",
    "secret_key = settings.SECRET_KEY\napi_key = os.environ.get(\"API_KEY\")\n",
];

fn python(rng: &mut Rng) -> String {
    let a = rng.pick(WORDS);
    let b = rng.pick(WORDS);
    let mut capital = a.to_string();
    capital[..1].make_ascii_uppercase();
    rng.pick(CODE)
        .replace("{a}", a)
        .replace("{b}", b)
        .replace("{A}", &capital)
        .replace("{n}", &rng.below(10_000).to_string())
        .replace("{hex64}", &rng.hex(64))
        .replace("{{", "{")
        .replace("}}", "}")
}

fn json_log(rng: &mut Rng) -> String {
    let level = rng.pick(&["info", "debug", "warning", "error"]);
    let event = rng.pick(&[
        "evaluation.started",
        "evaluation.finished",
        "sandbox.output",
        "grader.score",
    ]);
    format!(
        "{{\"ts\":\"2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"level\":\"{level}\",\"event\":\"{event}\",\"event_id\":\"{}\",\"run\":\"{}\",\"commit\":\"{}\",\"duration_ms\":{},\"msg\":\"{} {} completed for user {}\",\"version\":\"1.{}.{}\"}}\n",
        rng.below(28) + 1,
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000),
        rng.uuid(),
        rng.uuid(),
        rng.hex(40),
        rng.below(100_000),
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.below(1_000_000),
        rng.below(30),
        rng.below(10),
    )
}

fn traceback(rng: &mut Rng) -> String {
    format!(
        "Traceback (most recent call last):\n  File \"/srv/runner/{a}.py\", line {}, in run\n    {a} = evaluate({b}, timeout=timeout)\n  File \"/usr/lib/python3.11/json/decoder.py\", line 355, in raw_decode\n    raise JSONDecodeError(\"Expecting value\", s, err.value) from None\njson.decoder.JSONDecodeError: Expecting value: line 1 column {} (char {})\n",
        rng.below(500),
        rng.below(80),
        rng.below(4000),
        a = rng.pick(WORDS),
        b = rng.pick(WORDS),
    )
}

fn base64_blob(rng: &mut Rng) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("\"image\": \"data:image/png;base64,");
    let len = 200 + rng.below(600);
    out.push_str(&rng.string(alphabet, len));
    out.push_str("==\",\n");
    out
}

fn hex_dump(rng: &mut Rng) -> String {
    (0..4)
        .map(|i| format!("{:08x}  {}  |................|\n", i * 16, rng.hex(32)))
        .collect()
}

fn ordinary(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=3 => python(rng),
        4..=6 => json_log(rng),
        7 => traceback(rng),
        8 => base64_blob(rng),
        _ => hex_dump(rng),
    }
}

/// (a) 1 MiB without secrets.
fn without_secrets() -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut text = String::with_capacity(SIZE + 4096);
    while text.len() < SIZE {
        text.push_str(&ordinary(&mut rng));
    }
    text
}

/// (b) 1 MiB with a secret about every 200 bytes: the examples of the built-in rules, between
/// ~150 bytes of ordinary text.
fn with_secrets() -> String {
    let secrets: Vec<String> = Redactor::builtin_rules()
        .into_iter()
        .flat_map(|r| r.examples)
        .filter(|e| e.len() < 300)
        .collect();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut text = String::with_capacity(SIZE + 4096);
    let mut filler = String::new();
    let mut i = 0;
    while text.len() < SIZE {
        while filler.len() < 150 {
            filler.push_str(&ordinary(&mut rng));
        }
        let cut = (0..=150)
            .rev()
            .find(|&c| filler.is_char_boundary(c))
            .unwrap();
        text.push_str(&filler[..cut]);
        filler.drain(..cut);
        text.push('\n');
        text.push_str(&secrets[i % secrets.len()]);
        text.push('\n');
        i += 1;
    }
    text
}

fn bench(c: &mut Criterion) {
    let redactor = Redactor::builtin();
    let mut group = c.benchmark_group("redact");
    group.sample_size(30);
    for (name, text) in [
        ("no_secrets_1MiB", without_secrets()),
        ("dense_secrets_1MiB", with_secrets()),
    ] {
        let out = redactor.redact_str(&text);
        eprintln!(
            "{name}: {} bytes, {} redactions",
            text.len(),
            out.matches("[REDACTED:").count()
        );
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| redactor.redact_str(black_box(&text)).len())
        });
    }

    // (c) The strings of realistic events (`evalsink generate`, 2% with a secret), as the
    // pipeline's redact transform sees them: many short fields besides code and outputs.
    let events = events();
    let bytes: usize = events.iter().map(|e| e.size).sum();
    let mut text_bytes = 0;
    let mut strings = 0;
    for e in &mut events.clone() {
        e.for_each_string_mut(&mut |s| {
            text_bytes += s.len();
            strings += 1;
        });
    }
    eprintln!(
        "events: {} events, {bytes} bytes of NDJSON, {strings} strings of {text_bytes} bytes",
        events.len()
    );
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("events_strings", |b| {
        b.iter_batched(
            || Batch::new(events.clone(), Ack::none()),
            |batch| redact_batch(redactor, batch),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// 5,000 generated events, decoded.
fn events() -> Vec<Event> {
    let options = GenerateOptions {
        events: 5_000,
        seed: 3,
        bad_lines: 0.0,
        large_outputs: 0.0,
        secrets: 0.02,
        shuffle_window: 0,
        days: 0,
    };
    let mut data = Vec::new();
    generate(&options, &mut data).unwrap();
    let decoded = decode_chunk(&data, 1, &Origin::new("bench"), 64 << 20, Utc::now());
    assert_eq!(decoded.events.len(), 5_000);
    decoded.events
}

criterion_group!(benches, bench);
criterion_main!(benches);
