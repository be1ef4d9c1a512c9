//! Records of several replicas against a real PostgreSQL (see `tests.rs`
//! for the server and the schemas): summed on read, each batch counted
//! once however often it is sent, histograms merged by the caller's merge.

use modelfleet_registry::Money;

use crate::{
    HourRow, RecordBatch,
    tests::{Schema, ledger, postgres_url},
};

const HOUR: u64 = 3_600_000;
/// 2026-01-01T00:00:00Z.
const H0: u64 = 1_767_225_600_000;

/// The test's "histogram": bytes, merged by appending (so the order of
/// the merges shows).
fn append(stored: &[u8], added: &[u8]) -> Vec<u8> {
    [stored, added].concat()
}

/// `requests` answers of `model` at `provider` in the hour from `hour_ms`,
/// costing `cost_nanos`, their latency histogram `hist`.
fn row(model: &str, provider: &str, hour_ms: u64, requests: i64, cost_nanos: i64, hist: &[u8]) -> HourRow {
    HourRow {
        dim: "model".into(),
        value: model.into(),
        hour_ms,
        provider: provider.into(),
        requests,
        successes: requests,
        input_tokens: 10 * requests,
        cost: Money::from_nanos(cost_nanos),
        first_ms: i64::try_from(hour_ms).unwrap() + 1,
        last_ms: i64::try_from(hour_ms).unwrap() + requests,
        latency: vec![hist.to_vec()],
        ttft: vec![Vec::new()],
        ..HourRow::default()
    }
}

/// (value, provider, requests, successes, input tokens, cost nanos, ratings, sum, histograms) per group.
type Line = (String, String, i64, i64, i64, i64, i64, i64, Vec<Vec<u8>>);

fn lines(rows: &[HourRow]) -> Vec<Line> {
    rows.iter()
        .map(|r| {
            let mut hists = r.latency.clone();
            hists.sort();
            (
                r.value.clone(),
                r.provider.clone(),
                r.requests,
                r.successes,
                r.input_tokens,
                r.cost.nanos(),
                r.ratings,
                r.rating_sum,
                hists,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_records_add_up_and_a_batch_sent_again_counts_once() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "records");
    let (a, b) = tokio::join!(ledger(&url, &schema, "a"), ledger(&url, &schema, "b"));
    let first = RecordBatch {
        run: 7,
        seq: 1,
        rows: vec![row("m", "p", H0, 3, 3_000, b"a1"), row("n", "q", H0 + HOUR, 1, 500, b"a2")],
    };
    assert!(a.ship(&first, append).await.unwrap(), "applied");
    // Its reply lost, the same batch is sent again: nothing changes.
    assert!(!a.ship(&first, append).await.unwrap(), "sent again: counted once");
    // The next batch adds to A's row (merging its histogram), B's rows
    // are B's own; a rating of an earlier row lowers the sum.
    let mut rerated = row("m", "", H0, 0, 0, b"");
    (rerated.ratings, rerated.rating_sum, rerated.first_ms, rerated.last_ms) = (1, -2, i64::MAX, 0);
    let second = RecordBatch { run: 7, seq: 2, rows: vec![row("m", "p2", H0, 2, 2_000, b"a3"), rerated] };
    assert!(a.ship(&second, append).await.unwrap());
    assert!(!a.ship(&first, append).await.unwrap(), "an older batch is never applied after a newer");
    // B's run 7 is not A's; A restarted (another run) starts over at 1.
    assert!(
        b.ship(&RecordBatch { run: 7, seq: 1, rows: vec![row("m", "p", H0, 4, 4_000, b"b1")] }, append).await.unwrap()
    );
    assert!(a.ship(&RecordBatch { run: 8, seq: 1, rows: vec![row("n", "q", H0, 1, 1, b"a4")] }, append).await.unwrap());
    let s = String::from;
    let all = a.records(&["model", "provider"], H0, H0 + 2 * HOUR).await.unwrap();
    assert_eq!(
        lines(&all),
        [
            (s("m"), s("p"), 9, 9, 90, 9_000, 1, -2, vec![b"a1a3".to_vec(), b"b1".to_vec()]),
            (s("n"), s("q"), 2, 2, 20, 501, 0, 0, vec![b"a2".to_vec(), b"a4".to_vec()]),
        ],
        "summed over replicas and hours, the provider of the latest row (B's), each replica's merged histogram"
    );
    assert_eq!(all[0].first_ms, i64::try_from(H0).unwrap() + 1);
    // A range of one hour reads that hour only; the same from either replica.
    let first_hour = b.records(&["model"], H0, H0 + HOUR).await.unwrap();
    assert_eq!(first_hour.iter().map(|r| (r.value.as_str(), r.requests)).collect::<Vec<_>>(), [("m", 9), ("n", 1)]);
    assert!(a.records(&["provider"], H0, H0 + 2 * HOUR).await.unwrap().is_empty());
    // Pruned before the second hour: only its rows stay.
    assert_eq!(b.prune_records(H0 + HOUR).await.unwrap(), 3);
    let left = a.records(&["model"], 0, u64::MAX).await.unwrap();
    assert_eq!(left.iter().map(|r| (r.value.as_str(), r.requests)).collect::<Vec<_>>(), [("n", 1)]);
}
