//! Parquet encoding: decoded events → zstd Parquet bytes (one file per event type), measured
//! in bytes of NDJSON in. The events are generated and decoded once, outside the timing.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use evalsink::decode::decode_chunk;
use evalsink::generate::{GenerateOptions, generate};
use evalsink::sinks::dead_letter::Origin;
use evalsink::sinks::parquet::encode_in_memory;

fn parquet_encode(c: &mut Criterion) {
    let options = GenerateOptions {
        events: 20_000,
        seed: 1,
        bad_lines: 0.0,
        large_outputs: 0.001,
        secrets: 0.02,
        shuffle_window: 0,
        days: 0,
    };
    let mut ndjson = Vec::new();
    generate(&options, &mut ndjson).expect("generate to memory");
    let decoded = decode_chunk(&ndjson, 1, &Origin::new("bench"), usize::MAX, Utc::now());
    assert!(decoded.dead.is_empty());
    let events = decoded.events;

    let mut group = c.benchmark_group("parquet");
    group.throughput(Throughput::Bytes(ndjson.len() as u64));
    group.sample_size(10);
    group.bench_function("encode_20k_events", |b| {
        b.iter(|| {
            let files = encode_in_memory(black_box(&events), 8 << 20).expect("encodes");
            black_box(files.iter().map(|(_, f)| f.len()).sum::<usize>())
        })
    });
    group.finish();

    let files = encode_in_memory(&events, 8 << 20).expect("encodes");
    let parquet: usize = files.iter().map(|(_, f)| f.len()).sum();
    eprintln!(
        "parquet: {} bytes of NDJSON -> {} bytes of Parquet ({:.1}x)",
        ndjson.len(),
        parquet,
        ndjson.len() as f64 / parquet as f64
    );
}

criterion_group!(benches, parquet_encode);
criterion_main!(benches);
