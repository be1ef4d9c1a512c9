//! Wire-format translation on the request path, as the gateway's Anthropic
//! adapter runs it: a typical chat request (a system prompt, a short
//! conversation, one tool), already parsed (the gateway parses a client's
//! body once, for every purpose), translated to an Anthropic Messages body
//! and written out; then Anthropic's answer parsed from its bytes,
//! translated to a chat completion and written out.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_translate::{Unsupported, anthropic_to_chat, chat_to_anthropic};
use serde_json::{Map, Value, json};

fn request() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "claude-sonnet-4",
        "max_tokens": 1024,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for an engineering team. Cite the notes you rely on."},
            {"role": "user", "content": "What did we decide about the database migration alert, and who owns it?"},
            {"role": "assistant", "content": "We agreed to alert on replication lag above thirty seconds. Priya owns the alert."},
            {"role": "user", "content": "Good. Look up the current lag for the orders service and tell me if it is above the threshold."}
        ],
        "tools": [{"type": "function", "function": {
            "name": "replication_lag",
            "description": "The current replication lag of a service, in seconds.",
            "parameters": {"type": "object", "properties": {"service": {"type": "string"}}, "required": ["service"]}
        }}]
    }))
    .expect("serialises")
}

fn answer() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4",
        "content": [
            {"type": "text", "text": "I'll check the current replication lag for the orders service."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "replication_lag", "input": {"service": "orders"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 412, "output_tokens": 58, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 128}
    }))
    .expect("serialises")
}

fn benches(c: &mut Criterion) {
    let chat: Map<String, Value> = serde_json::from_slice(&request()).expect("a chat body");
    let answer = answer();
    let mut group = c.benchmark_group("translate");
    group.bench_function("chat_to_anthropic_and_back", |b| {
        b.iter(|| {
            let body =
                chat_to_anthropic(black_box(&chat), "claude-sonnet-4", 4_096, Unsupported::Drop).expect("translates");
            let sent = serde_json::to_vec(&body).expect("serialises");
            let message: Value = serde_json::from_slice(black_box(&answer)).expect("an answer");
            let completion = anthropic_to_chat(&message).expect("translates");
            (sent, serde_json::to_vec(&completion).expect("serialises"))
        });
    });
    group.finish();
}

criterion_group!(translate, benches);
criterion_main!(translate);
