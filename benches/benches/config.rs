//! Config validation: the whole commented example file, parsed and checked.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_config_validate::{Options, validate};

const EXAMPLE: &str = include_str!("../../config/modelfleet.example.toml");

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("config");
    let env = |name: &str| {
        name.starts_with("MODELFLEET_KEY_")
            .then(|| "k".to_owned())
            .or_else(|| (name == "OPENAI_API_KEY").then(|| "sk".to_owned()))
    };
    let options =
        Options { env: &env, check_files: false, check_ports: false, check_tools: false, base_dir: ".".into() };
    group.bench_function("validate_example", |b| b.iter(|| validate(black_box(EXAMPLE), &options).errors.len()));
    group.finish();
}

criterion_group!(config, benches);
criterion_main!(config);
