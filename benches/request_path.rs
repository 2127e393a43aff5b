//! Cost of one request through the in-process path: a 4 KiB write and a
//! 4 KiB read through a `Volume`, on the memory and the file backend (each
//! engine), with an empty service stack and with one pass-through layer.
//! The difference between the two stacks is the price of one layer plus the
//! volume's admission gate.
//!
//!   cargo bench --bench request_path

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use umbra::backend::{EngineKind, FileBackend, FileOptions, MemoryBackend};
use umbra::device::BlockDevice;
use umbra::interposer::passthrough::Passthrough;
use umbra::interposer::Volume;

const VOLUME_BYTES: u64 = 64 << 20;
const IO_BYTES: usize = 4096;

fn volumes(dir: &std::path::Path) -> Vec<(String, Volume)> {
    let mut out = Vec::new();
    for layered in [false, true] {
        let stack = if layered { "passthrough" } else { "empty" };
        let mem = Volume::new(
            "m",
            Arc::new(MemoryBackend::new(VOLUME_BYTES)),
            String::new(),
        );
        out.push((format!("memory/{stack}"), mem));
        for engine in [EngineKind::Sync, EngineKind::Uring] {
            let path = dir.join(format!("{engine:?}-{stack}.img"));
            let be = FileBackend::create(
                &path,
                VOLUME_BYTES,
                FileOptions {
                    engine,
                    direct: false,
                    ..Default::default()
                },
            )
            .expect("create bench file");
            out.push((
                format!("file-{engine:?}/{stack}"),
                Volume::with_describe("f", be),
            ));
        }
        if layered {
            for (_, v) in out.iter().skip(out.len() - 3) {
                v.attach(Arc::new(Passthrough::new("pt"))).unwrap();
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let vols = volumes(dir.path());
    let data = vec![0x5au8; IO_BYTES];
    let mut buf = vec![0u8; IO_BYTES];
    let blocks = VOLUME_BYTES / IO_BYTES as u64;

    let mut g = c.benchmark_group("write_4k");
    g.throughput(Throughput::Bytes(IO_BYTES as u64));
    for (name, v) in &vols {
        let mut i = 0u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                i = (i + 7919) % blocks; // scattered, like a random workload
                v.write(&data, i * IO_BYTES as u64, false).unwrap();
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("read_4k");
    g.throughput(Throughput::Bytes(IO_BYTES as u64));
    for (name, v) in &vols {
        let mut i = 0u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                i = (i + 7919) % blocks;
                v.read(&mut buf, i * IO_BYTES as u64).unwrap();
            })
        });
    }
    g.finish();
}

/// What the statistics add to every request (`interposer/stats.rs`): the
/// in-flight count, two clock reads and the counter and histogram adds,
/// measured alone. `tools/bench-stats.sh` compares whole builds through
/// NBD, where this is below the run-to-run noise.
fn stats_cost(c: &mut Criterion) {
    use umbra::interposer::stats::{IoStats, Op};
    let s = IoStats::default();
    c.bench_function("io_stats_start_end", |b| {
        b.iter(|| {
            let t = s.start();
            s.end(t, Op::Write, 4096, true);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench, stats_cost
}
criterion_main!(benches);
