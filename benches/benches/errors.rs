//! Errors crate: sanitizing messages and classifying provider errors.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_errors::{classify_response, sanitize};

const CLEAN: &str =
    "upstream returned 503 Service Unavailable for model mistral-small after 1200 ms; retrying on another model";
const SECRETS: &str = "401 from https://api.example.com/v1/chat/completions: Incorrect API key sk-proj-abcdefghijklmnopqrstuv; \
     sent Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig while reading /home/alice/.config/modelfleet/keys.toml";
const BODY: &str = r#"{"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}"#;

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("errors");
    group.bench_function("sanitize_clean", |b| b.iter(|| sanitize(black_box(CLEAN)).len()));
    group.bench_function("sanitize_secrets", |b| b.iter(|| sanitize(black_box(SECRETS)).len()));
    group.bench_function("classify_openai_body", |b| {
        b.iter(|| classify_response(black_box(429), black_box(BODY), black_box(Some("2"))));
    });
    group.finish();
}

criterion_group!(errors, benches);
criterion_main!(errors);
