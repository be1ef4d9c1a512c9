//! Token estimate: a realistic chat request of about 1,000 tokens (4.8 KB of
//! English in JSON), its bytes counted as the gateway estimates a request
//! (`estimate_json`, walking the parsed prompt); and, to show where the time goes, the same prompt
//! serialised into a counter, the counter on the messages' text, and the
//! serialisation alone.

use std::{hint::black_box, io};

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_translate::{TokenCounter, estimate_json, estimate_tokens};
use serde_json::{Value, json};

const SYSTEM: &str = "You are a careful assistant for an engineering team. Answer in plain English, \
cite the part of the notes you rely on, and say so when the notes do not contain the answer. Keep \
answers under 300 words unless asked for more detail.";

const NOTES: &str = "Here are the notes from this week's infrastructure review. Please summarise the \
decisions, list the open questions with their owners, and flag anything that looks risky.

1. Database migration. The team finished moving the orders service from the old cluster to the new \
managed instance on Tuesday night. The cut-over took forty minutes instead of the planned fifteen, \
because the final replication step stalled twice while a long-running analytics query held a lock on \
the largest table. Nobody noticed the query until the on-call engineer checked the replication lag \
dashboard. We agreed to add an alert on replication lag above thirty seconds, and to ask the analytics \
team to run their heavy reports against the read replica from now on. Priya owns the alert; Marco \
will talk to the analytics team.

2. Cost review. Cloud spending was eleven percent above budget in the last month. About half of the \
overrun comes from storage snapshots that were never deleted after the migration tests, and the rest \
from a batch job that was accidentally scheduled every hour instead of every day. The batch job has \
already been fixed. For the snapshots, we will write a small script that lists snapshots older than \
thirty days without an owner tag, and we will delete them after a one-week notice in the team channel. \
Jonas owns the script. Someone asked whether we should move cold logs to cheaper storage; we did not \
decide, and Jonas will bring numbers to the next review.

3. Incident follow-up. The login outage two weeks ago was caused by an expired certificate on an \
internal load balancer. The certificate had been issued manually three years ago and was not covered \
by the automatic renewal. We found two more certificates in the same situation, both expiring within \
the next four months. Both will be moved to automatic renewal this sprint, and we will add a weekly \
check that lists every certificate expiring within sixty days. Amira owns both tasks. The postmortem \
document is finished and will be shared with the wider engineering group on Friday.

4. Deployment pipeline. Build times have crept up from eight minutes to almost twenty over the past \
quarter. Most of the increase comes from the integration test suite, which now starts a fresh \
database for every test file. Two options were discussed: sharing one database per test run with \
transactions rolled back after each test, or splitting the suite across more parallel runners. The \
first option is cheaper but needs changes to roughly forty test files; the second costs more each \
month but needs no code changes. We did not reach a decision. Chen will prototype the shared database \
approach on one module and report how long the conversion took.

5. On-call rotation. Two people are leaving the rotation at the end of the month, which would leave \
five engineers sharing on-call duty, meaning each of them would be on call every five weeks. The team \
felt that this is too often. Options include bringing in engineers from the platform team for a \
trial period, or reducing the hours covered by the secondary on-call. Sofia will collect opinions and \
propose a plan by next Wednesday.

6. Capacity planning. Traffic on the public API grew by about a third since the start of the year, \
and the busiest hour now reaches seventy percent of what the current fleet can serve before latency \
degrades. The marketing team plans a campaign in the autumn that could double the peak for a few \
days. We agreed to run a load test against the staging environment at twice the current peak before \
the end of next month, and to prepare an autoscaling policy that adds capacity when the request queue \
grows, rather than when processor usage is high, since the service spends most of its time waiting \
on the database. Priya and Chen will run the load test together.

7. Documentation. New team members keep asking the same questions about how to get access to the \
production dashboards and how to request a database snapshot for debugging. We will add both answers \
to the onboarding guide and link the guide from the team channel's description. Amira volunteered to \
review the whole guide, since several pages still describe the old deployment process.

8. Miscellaneous. The monitoring vendor announced a price increase starting next quarter. Marco will \
check whether our contract protects us until the renewal date. The team also agreed to retire the old \
status page, since the new one has been live for two months without problems.

Please be concise, and group the open questions by owner.";

/// The messages of a chat request, as the gateway estimates them.
fn prompt() -> Value {
    json!([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": NOTES},
    ])
}

fn benches(c: &mut Criterion) {
    let messages = prompt();
    let json = serde_json::to_string(&messages).expect("serialises");
    // About 1,000 tokens: cl100k_base counts 956 for the JSON text, o200k_base 955; the
    // estimate is 1,359.
    assert!((1_000..=1_600).contains(&estimate_tokens(&json)), "{}", estimate_tokens(&json));

    // The gateway walks the parsed prompt (what it reads as prompt: here the messages).
    let mut group = c.benchmark_group("tokens");
    group.bench_function("estimate_1k_tokens_prompt", |b| b.iter(|| estimate_json(black_box(&messages))));
    group.bench_function("estimate_1k_tokens_serialized", |b| {
        b.iter(|| {
            let mut counter = TokenCounter::new();
            serde_json::to_writer(&mut counter, black_box(&messages)).expect("a counter never fails");
            counter.tokens()
        });
    });
    group.bench_function("estimate_1k_tokens_text", |b| b.iter(|| estimate_tokens(black_box(&json))));
    group.bench_function("serialize_1k_tokens_only", |b| {
        b.iter(|| serde_json::to_writer(io::sink(), black_box(&messages)).expect("a sink never fails"));
    });
    group.finish();
}

criterion_group!(tokens, benches);
criterion_main!(tokens);
