//! Calibration: fixed work that uses no modelfleet crate, to say how fast
//! the machine running the benches is.
//!
//! `calibration/sort_and_hash` sorts 10,000 `f64` with `total_cmp` and hashes
//! 10,000 short strings with std's `DefaultHasher` (`SipHash` with fixed keys).
//! No modelfleet code can make it faster or slower (the toolchain and the
//! bench profile can: std's sort and hasher are its work), so `cargo xtask
//! bench` reports every other median also as a multiple of this one: a run
//! on a faster or busier machine can still be compared with the targets.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    hint::black_box,
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// How many floats are sorted and how many strings are hashed per iteration.
const N: u32 = 10_000;

/// `N` floats in [0, 1), unsorted, the same on every run and every machine:
/// a fixed 64-bit LCG (Knuth's MMIX constants), not a crate whose stream could
/// change with its version.
fn unsorted_floats() -> Vec<f64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..N)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // The top 53 bits, as a float in [0, 1).
            (state >> 11) as f64 / (1_u64 << 53) as f64
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let floats = unsorted_floats();
    let names: Vec<String> = (0..N).map(|i| format!("model-{i}")).collect();
    let mut group = c.benchmark_group("calibration");
    // The unsorted input is cloned in `iter_batched`'s setup with
    // `BatchSize::LargeInput`: the clone (and dropping the sorted copy) is
    // not timed, only the sort and the hashing are.
    group.bench_function("sort_and_hash", |b| {
        b.iter_batched(
            || floats.clone(),
            |mut floats| {
                floats.sort_by(f64::total_cmp);
                let mut sum: u64 = 0;
                for name in black_box(&names) {
                    let mut hasher = DefaultHasher::new();
                    name.hash(&mut hasher);
                    sum = sum.wrapping_add(hasher.finish());
                }
                black_box(sum);
                floats
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(calibration, benches);
criterion_main!(calibration);
