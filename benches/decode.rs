//! Decode + classify of realistic events (`evalsink generate`), in bytes of NDJSON per second
//! on one core.

use std::hint::black_box;

use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use evalsink::decode::decode_chunk;
use evalsink::generate::{GenerateOptions, generate};
use evalsink::sinks::dead_letter::Origin;
use evalsink::sources::lines::{Frame, LineFramer};
use evalsink::transforms::classify::Classification;
use tokio_util::codec::Decoder;

fn input() -> Vec<u8> {
    let options = GenerateOptions {
        events: 20_000,
        seed: 1,
        bad_lines: 0.0,
        large_outputs: 0.0,
        secrets: 0.02,
        shuffle_window: 0,
        days: 0,
    };
    let mut out = Vec::new();
    generate(&options, &mut out).unwrap();
    out
}

fn decode_classify(c: &mut Criterion) {
    let data = input();
    let origin = Origin::new("bench");
    let rules = Classification::builtin();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    group.bench_function("frame+decode+classify", |b| {
        // The input is copied into a new buffer outside the timed part: copying 54 MB into
        // fresh pages was about 30% of the time measured.
        b.iter_batched(
            || bytes::BytesMut::from(&data[..]),
            |mut buf| {
                let mut framer = LineFramer::new(64 << 20, 1 << 20);
                let mut events = 0;
                while let Some(frame) = framer.decode_eof(&mut buf).unwrap() {
                    if let Frame::Lines {
                        data, first_line, ..
                    } = frame
                    {
                        let decoded =
                            decode_chunk(&data, first_line, &origin, 64 << 20, Utc::now());
                        for e in &decoded.events {
                            black_box(rules.routes(e.event_type()));
                        }
                        events += decoded.events.len();
                    }
                }
                assert_eq!(events, 20_000);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, decode_classify);
criterion_main!(benches);
