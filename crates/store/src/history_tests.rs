//! History reports on real files: the hourly aggregates against the raw rows
//! they fold (whole hours, a range inside one hour, partial edges around
//! whole hours), totals that agree whichever way a range is grouped (also
//! while rows are being committed), ratings, retention of rows and of
//! aggregates, the schema-4 backfill and rotten histograms.
//!
//! Every expectation is either written out by hand or a reference fold of
//! the rows written here, computed without the store's own
//! `Aggregate::add`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, Clock, ManualClock, Money};
use proptest::prelude::*;
use rusqlite::{Connection, params};

use super::*;

/// 2026-01-01T00:00:00Z, an hour boundary.
const H0: u64 = 1_767_225_600_000;
const MIN: u64 = 60 * 1_000;
const HOUR: u64 = HOUR_MS;
const DAY: u64 = 24 * HOUR;

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    (dir, path)
}

/// A store whose clock is `clock`.
fn open(path: &Path, clock: &Arc<ManualClock>, config: StoreConfig) -> Store {
    let shared = Arc::clone(clock);
    Store::open_with_clock(path, config, move || shared.now_ms()).unwrap()
}

/// A success of `model` at `at_ms`, with nothing else to it.
fn perf(at_ms: u64, model: &str, provider: &str) -> PerfRecord {
    PerfRecord {
        at_ms,
        model: model.into(),
        provider: provider.into(),
        kind: Category::Code,
        language: None,
        latency_us: 100,
        ttft_us: None,
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        cost: Money::ZERO,
        error: None,
        quality: None,
        request_id: Some(format!("req-{model}-{at_ms}")),
        key_name: None,
        route: None,
        attempt: 1,
        fallback: false,
        rating: None,
    }
}

/// A row of [`rows`]: at, model, provider, kind, language, key, error,
/// latency µs, ttft µs, tokens in/out/cached, cost nanos, fallback, rating.
type Spec = (
    u64,
    &'static str,
    &'static str,
    Category,
    Option<&'static str>,
    Option<&'static str>,
    Option<ErrorClass>,
    u64,
    Option<u64>,
    [u64; 3],
    i64,
    bool,
    Option<u8>,
);

fn spec(s: Spec) -> PerfRecord {
    let (at_ms, model, provider, kind, language, key, error, latency_us, ttft_us, tokens, cost, fallback, rating) = s;
    PerfRecord {
        kind,
        language: language.map(str::to_owned),
        key_name: key.map(str::to_owned),
        error,
        latency_us,
        ttft_us,
        input_tokens: tokens[0],
        output_tokens: tokens[1],
        cached_tokens: tokens[2],
        cost: Money::from_nanos(cost),
        fallback,
        rating,
        ..perf(at_ms, model, provider)
    }
}

/// Fourteen rows: twelve over the three hours from `H0` (every verdict,
/// fallbacks on a success, a failure and an abort, languages and keys some
/// `None`, one model moving to another provider), one just before and one
/// just after. Latencies below 128 µs, so quantiles are exact.
fn rows() -> Vec<PerfRecord> {
    use Category::{Code, Conversation, Translation};
    use ErrorClass::{BadRequest, BudgetExceeded, Cancelled, ContentPolicy, ServerError, Timeout};
    let (h1, h2) = (H0 + HOUR, H0 + 2 * HOUR);
    #[rustfmt::skip]
    let specs: [Spec; 14] = [
        (H0, "m-a", "openai", Code, Some("en"), Some("k1"), None, 40, Some(10), [100, 20, 5], 1_000, false, None),
        (H0 + 20 * MIN, "m-a", "openai", Code, Some("en"), None, Some(ServerError), 120, None, [50, 0, 0], 0, false, None),
        (H0 + 30 * MIN, "m-b", "anthropic", Conversation, Some("fr"), Some("k1"), None, 60, Some(20), [200, 80, 0], 3_000, true, None),
        (H0 + 50 * MIN, "m-b", "anthropic", Conversation, None, Some("k2"), Some(BadRequest), 5, None, [10, 0, 0], 0, false, None),
        (h1 + 10 * MIN, "m-a", "openai", Code, Some("en"), Some("k2"), Some(Timeout), 127, None, [80, 0, 0], 0, true, None),
        (h1 + 30 * MIN, "m-a", "openai", Translation, Some("de"), None, None, 30, Some(25), [300, 100, 50], 4_500, false, Some(4)),
        (h1 + 45 * MIN, "m-b", "anthropic", Code, Some("fr"), Some("k1"), Some(Cancelled), 90, Some(15), [40, 10, 0], 500, false, None),
        (h2 - 1, "m-c", "mistral", Conversation, Some("en"), Some("k1"), None, 70, None, [120, 60, 0], 2_000, true, None),
        (h2, "m-c", "azure", Conversation, Some("en"), None, None, 75, Some(5), [110, 55, 0], 1_900, false, None),
        (h2 + 15 * MIN, "m-a", "openai", Code, None, Some("k1"), None, 45, None, [90, 30, 0], 1_200, false, None),
        (h2 + 35 * MIN, "m-a", "openai", Code, Some("en"), Some("k1"), Some(ContentPolicy), 8, None, [70, 0, 0], 0, false, None),
        (h2 + 40 * MIN, "m-b", "anthropic", Translation, Some("de"), Some("k2"), Some(BudgetExceeded), 0, None, [0, 0, 0], 0, true, None),
        (H0 - 1, "m-a", "openai", Code, Some("en"), Some("k1"), None, 50, None, [10, 10, 0], 100, false, None),
        (H0 + 3 * HOUR, "m-a", "openai", Code, Some("en"), Some("k1"), None, 50, None, [10, 10, 0], 100, false, None),
    ];
    specs.into_iter().map(spec).collect()
}

/// The groups of `rows` with `from <= at_ms < to` under each of `dims`,
/// folded here rather than by the store's `Aggregate::add`.
fn reference(rows: &[PerfRecord], from: u64, to: u64, dims: &[Dim]) -> History {
    let mut groups = BTreeMap::new();
    for &dim in dims {
        let mut by: BTreeMap<String, Aggregate> = BTreeMap::new();
        for r in rows.iter().filter(|r| from <= r.at_ms && r.at_ms < to) {
            let value = match dim {
                Dim::Model => r.model.clone(),
                Dim::Provider => r.provider.clone(),
                Dim::Category => r.kind.as_str().to_owned(),
                Dim::Language => r.language.clone().unwrap_or_default(),
                Dim::Key => r.key_name.clone().unwrap_or_default(),
            };
            let g = by.entry(value.clone()).or_insert_with(|| Aggregate {
                value,
                first_ms: u64::MAX,
                ..Aggregate::default()
            });
            g.requests += 1;
            let judged = match r.error {
                None => {
                    g.successes += 1;
                    g.fallbacks += u64::from(r.fallback);
                    true
                }
                Some(ErrorClass::BadRequest | ErrorClass::ContentPolicy | ErrorClass::ContextWindowExceeded) => {
                    g.client_faults += 1;
                    false
                }
                Some(ErrorClass::Cancelled | ErrorClass::BudgetExceeded) => {
                    g.aborted += 1;
                    false
                }
                Some(_) => {
                    g.failures += 1;
                    true
                }
            };
            if judged {
                g.latency.record(r.latency_us);
            }
            if let Some(ttft) = r.ttft_us {
                g.ttft.record(ttft);
            }
            g.input_tokens += r.input_tokens;
            g.output_tokens += r.output_tokens;
            g.cached_tokens += r.cached_tokens;
            g.cost = Money::from_nanos(g.cost.nanos() + r.cost.nanos());
            if let Some(rating) = r.rating.filter(|x| (1..=5).contains(x)) {
                g.ratings += 1;
                g.rating_sum += u64::from(rating);
            }
            g.first_ms = g.first_ms.min(r.at_ms);
            if r.at_ms >= g.last_ms {
                g.last_ms = r.at_ms;
                if dim == Dim::Model {
                    g.provider.clone_from(&r.provider);
                }
            }
        }
        groups.insert(dim, by.into_values().collect());
    }
    History { from_ms: from, to_ms: to.max(from), groups }
}

/// A quantile, `-` when empty.
fn q(hist: &Hist, at: f64) -> String {
    hist.quantile(at).map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One line per group, times in ms after `H0`.
fn render(history: &History) -> String {
    let mut out = String::new();
    for (dim, groups) in &history.groups {
        for g in groups {
            let at = |ms: u64| i128::from(ms) - i128::from(H0);
            writeln!(
                out,
                "{dim} {:?} [{}] n{} ok{} fail{} client{} abort{} tok{}/{}/{} cost{} fb{} rated{}/{} {}..{} \
                 lat{}:{}/{} ttft{}:{}/{}",
                g.value,
                g.provider,
                g.requests,
                g.successes,
                g.failures,
                g.client_faults,
                g.aborted,
                g.input_tokens,
                g.output_tokens,
                g.cached_tokens,
                g.cost.nanos(),
                g.fallbacks,
                g.ratings,
                g.rating_sum,
                at(g.first_ms),
                at(g.last_ms),
                g.latency.count(),
                q(&g.latency, 0.5),
                q(&g.latency, 1.0),
                g.ttft.count(),
                q(&g.ttft, 0.5),
                q(&g.ttft, 1.0),
            )
            .unwrap();
        }
    }
    out
}

/// Asserts the report of `[from, to)` is exactly `expect` (written by hand)
/// and the reference fold of `rows`.
fn check(store: &Store, rows: &[PerfRecord], (from, to): (u64, u64), dims: &[Dim], expect: &str) {
    let history = store.history(from, to, dims).unwrap();
    assert_eq!(render(&history), expect, "[{from}, {to}) by hand");
    assert_eq!(history, reference(rows, from, to, dims), "[{from}, {to}) against the reference fold");
}

/// The whole three hours: aggregates only.
const WHOLE: &str = "\
model \"m-a\" [openai] n6 ok3 fail2 client1 abort0 tok690/150/55 cost6700 fb0 rated1/4 0..9300000 lat5:45/127 ttft2:10/25
model \"m-b\" [anthropic] n4 ok1 fail0 client1 abort2 tok250/90/0 cost3500 fb1 rated0/0 1800000..9600000 lat1:60/60 ttft2:15/20
model \"m-c\" [azure] n2 ok2 fail0 client0 abort0 tok230/115/0 cost3900 fb1 rated0/0 7199999..7200000 lat2:70/75 ttft1:5/5
provider \"anthropic\" [] n4 ok1 fail0 client1 abort2 tok250/90/0 cost3500 fb1 rated0/0 1800000..9600000 lat1:60/60 ttft2:15/20
provider \"azure\" [] n1 ok1 fail0 client0 abort0 tok110/55/0 cost1900 fb0 rated0/0 7200000..7200000 lat1:75/75 ttft1:5/5
provider \"mistral\" [] n1 ok1 fail0 client0 abort0 tok120/60/0 cost2000 fb1 rated0/0 7199999..7199999 lat1:70/70 ttft0:-/-
provider \"openai\" [] n6 ok3 fail2 client1 abort0 tok690/150/55 cost6700 fb0 rated1/4 0..9300000 lat5:45/127 ttft2:10/25
category \"code\" [] n6 ok2 fail2 client1 abort1 tok430/60/5 cost2700 fb0 rated0/0 0..9300000 lat4:45/127 ttft2:10/15
category \"conversation\" [] n4 ok3 fail0 client1 abort0 tok440/195/0 cost6900 fb2 rated0/0 1800000..7200000 lat3:70/75 ttft2:5/20
category \"translation\" [] n2 ok1 fail0 client0 abort1 tok300/100/50 cost4500 fb0 rated1/4 5400000..9600000 lat1:30/30 ttft1:25/25
language \"\" [] n2 ok1 fail0 client1 abort0 tok100/30/0 cost1200 fb0 rated0/0 3000000..8100000 lat1:45/45 ttft0:-/-
language \"de\" [] n2 ok1 fail0 client0 abort1 tok300/100/50 cost4500 fb0 rated1/4 5400000..9600000 lat1:30/30 ttft1:25/25
language \"en\" [] n6 ok3 fail2 client1 abort0 tok530/135/5 cost4900 fb1 rated0/0 0..9300000 lat5:75/127 ttft2:5/10
language \"fr\" [] n2 ok1 fail0 client0 abort1 tok240/90/0 cost3500 fb1 rated0/0 1800000..6300000 lat1:60/60 ttft2:15/20
key \"\" [] n3 ok2 fail1 client0 abort0 tok460/155/50 cost6400 fb0 rated1/4 1200000..7200000 lat3:75/120 ttft2:5/25
key \"k1\" [] n6 ok4 fail0 client1 abort1 tok620/200/5 cost7700 fb2 rated0/0 0..9300000 lat4:45/70 ttft3:15/20
key \"k2\" [] n3 ok0 fail1 client1 abort1 tok90/0/0 cost0 fb0 rated0/0 3000000..9600000 lat1:127/127 ttft0:-/-
";

/// `[H0 + 1 h 10 min, H0 + 1 h 45 min)`: raw rows of one hour only.
const INSIDE: &str = "\
model \"m-a\" [openai] n2 ok1 fail1 client0 abort0 tok380/100/50 cost4500 fb0 rated1/4 4200000..5400000 lat2:30/127 ttft1:25/25
";

/// `[H0 + 30 min, H0 + 2 h 40 min)`: raw edges around the hour from H0 + 1 h.
const MIXED: &str = "\
model \"m-a\" [openai] n4 ok2 fail1 client1 abort0 tok540/130/50 cost5700 fb0 rated1/4 4200000..9300000 lat3:45/127 ttft1:25/25
model \"m-b\" [anthropic] n3 ok1 fail0 client1 abort1 tok250/90/0 cost3500 fb1 rated0/0 1800000..6300000 lat1:60/60 ttft2:15/20
model \"m-c\" [azure] n2 ok2 fail0 client0 abort0 tok230/115/0 cost3900 fb1 rated0/0 7199999..7200000 lat2:70/75 ttft1:5/5
";

const WHOLE_RANGE: (u64, u64) = (H0, H0 + 3 * HOUR);
const INSIDE_RANGE: (u64, u64) = (H0 + HOUR + 10 * MIN, H0 + HOUR + 45 * MIN);
const MIXED_RANGE: (u64, u64) = (H0 + 30 * MIN, H0 + 2 * HOUR + 40 * MIN);

#[tokio::test]
async fn reports_over_whole_hours_one_hour_and_mixed_ranges_are_the_rows_figures() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 4 * HOUR));
    let store = open(&path, &clock, StoreConfig::default());
    let rows = rows();
    for r in &rows {
        store.record(r.clone()).await.unwrap();
    }
    store.flush_async().await.unwrap();

    check(&store, &rows, WHOLE_RANGE, &Dim::ALL, WHOLE);
    check(&store, &rows, INSIDE_RANGE, &[Dim::Model], INSIDE);
    assert_eq!(
        store.history(INSIDE_RANGE.0, INSIDE_RANGE.1, &Dim::ALL).unwrap(),
        reference(&rows, INSIDE_RANGE.0, INSIDE_RANGE.1, &Dim::ALL)
    );
    check(&store, &rows, MIXED_RANGE, &[Dim::Model], MIXED);
    assert_eq!(
        store.history(MIXED_RANGE.0, MIXED_RANGE.1, &Dim::ALL).unwrap(),
        reference(&rows, MIXED_RANGE.0, MIXED_RANGE.1, &Dim::ALL)
    );
    // Everything, from before the first row to after the last.
    assert_eq!(
        store.history(H0 - HOUR + 1, H0 + 4 * HOUR - 1, &Dim::ALL).unwrap(),
        reference(&rows, H0 - HOUR + 1, H0 + 4 * HOUR - 1, &Dim::ALL)
    );
    // An empty and a reversed range: nothing, and the range says so.
    let empty: BTreeMap<Dim, Vec<Aggregate>> = Dim::ALL.into_iter().map(|d| (d, Vec::new())).collect();
    let none = store.history(H0 + 5 * MIN, H0 + 5 * MIN, &Dim::ALL).unwrap();
    assert_eq!((none.from_ms, none.to_ms, &none.groups), (H0 + 5 * MIN, H0 + 5 * MIN, &empty));
    let reversed = store.history(H0 + HOUR, H0, &Dim::ALL).unwrap();
    assert_eq!((reversed.from_ms, reversed.to_ms, &reversed.groups), (H0 + HOUR, H0 + HOUR, &empty));

    // Which source each shape reads: with the raw rows gone, whole hours
    // stand (aggregates), a range inside an hour is empty (raw rows), and
    // the mixed range keeps only its middle hour.
    Connection::open(&path).unwrap().execute("DELETE FROM perf_log", []).unwrap();
    assert_eq!(render(&store.history(WHOLE_RANGE.0, WHOLE_RANGE.1, &Dim::ALL).unwrap()), WHOLE);
    assert_eq!(store.history(INSIDE_RANGE.0, INSIDE_RANGE.1, &Dim::ALL).unwrap().groups, empty);
    let middle = store.history(MIXED_RANGE.0, MIXED_RANGE.1, &Dim::ALL).unwrap();
    assert_eq!(middle.groups, reference(&rows, H0 + HOUR, H0 + 2 * HOUR, &Dim::ALL).groups);
    assert_eq!((middle.from_ms, middle.to_ms), MIXED_RANGE, "no edge widened: nothing is past retention");
}

#[tokio::test]
async fn asking_for_a_grouping_twice_counts_each_row_once() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 4 * HOUR));
    let store = open(&path, &clock, StoreConfig::default());
    for r in rows() {
        store.record(r).await.unwrap();
    }
    store.flush_async().await.unwrap();
    let once = store.history(MIXED_RANGE.0, MIXED_RANGE.1, &[Dim::Model]).unwrap();
    let twice = store.history(MIXED_RANGE.0, MIXED_RANGE.1, &[Dim::Model, Dim::Key, Dim::Model]).unwrap();
    assert_eq!(render(&once), MIXED);
    assert_eq!(twice.by(Dim::Model), once.by(Dim::Model), "the whole hour is not counted twice");
}

// ---- Totals agree whichever way, and equal the rows ----------------------------

/// Models with their one provider each.
const MODELS: [(&str, &str); 4] = [("m0", "p0"), ("m1", "p0"), ("m2", "p1"), ("m3", "p2")];

/// An offset from `H0`, often on or next to an hour boundary.
fn offset(hours: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..hours * HOUR,
        1 => (0..=hours).prop_map(|h| h * HOUR),
        1 => (1..=hours).prop_map(|h| h * HOUR - 1),
        1 => (0..=hours).prop_map(|h| h * HOUR + 1),
    ]
}

fn arb_row() -> impl Strategy<Value = PerfRecord> {
    let error = prop_oneof![3 => Just(None), 2 => prop::sample::select(ErrorClass::ALL.to_vec()).prop_map(Some)];
    let rating = prop_oneof![6 => Just(None), 3 => (1u8..=5).prop_map(Some), 1 => prop::sample::select(vec![0u8, 6, 255]).prop_map(Some)];
    (
        (
            offset(5),
            0..MODELS.len(),
            prop::sample::select(vec![Category::Code, Category::Conversation, Category::Translation]),
        ),
        (
            prop::option::of(prop::sample::select(vec!["en", "fr", "de"])),
            prop::option::of(prop::sample::select(vec!["k1", "k2"])),
        ),
        (error, prop_oneof![0u64..128, 0u64..20_000_000], prop::option::of(0u64..5_000_000)),
        ([0u64..10_000, 0u64..10_000, 0u64..1_000], 0i64..1_000_000, any::<bool>(), rating),
    )
        .prop_map(
            |((at, m, kind), (language, key), (error, latency_us, ttft_us), (tokens, cost, fallback, rating))| {
                spec((
                    H0 + at,
                    MODELS[m].0,
                    MODELS[m].1,
                    kind,
                    language,
                    key,
                    error,
                    latency_us,
                    ttft_us,
                    tokens,
                    cost,
                    fallback,
                    rating,
                ))
            },
        )
}

/// The sums over a grouping's groups: requests, successes, failures,
/// client faults, aborted, tokens in/out/cached, cost, fallbacks, ratings,
/// their sum, latencies and times to first token recorded.
fn totals(groups: &[Aggregate]) -> [i64; 14] {
    let mut t = [0i64; 14];
    for g in groups {
        let figures = [
            g.requests,
            g.successes,
            g.failures,
            g.client_faults,
            g.aborted,
            g.input_tokens,
            g.output_tokens,
            g.cached_tokens,
            0,
            g.fallbacks,
            g.ratings,
            g.rating_sum,
            g.latency.count(),
            g.ttft.count(),
        ];
        for (sum, figure) in t.iter_mut().zip(figures) {
            *sum += i64::try_from(figure).unwrap();
        }
        t[8] += g.cost.nanos();
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn totals_agree_across_groupings_and_equal_the_rows_in_range(
        mut rows in prop::collection::vec(arb_row(), 0..200),
        from in offset(6),
        to in offset(6),
        batch_rows in 1usize..64,
        split in any::<prop::sample::Index>(),
        ratings in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=5), 0..4),
    ) {
        let (from, to) = (from + H0 - 30 * MIN, to + H0 - 30 * MIN);
        for (i, r) in rows.iter_mut().enumerate() {
            r.request_id = Some(format!("req-{i}"));
        }
        let (_dir, path) = db();
        let clock = Arc::new(ManualClock::new(H0 + 6 * HOUR));
        let store = open(&path, &clock, StoreConfig { batch_rows, ..StoreConfig::default() });
        // Two flushes: aggregates of the second part merge into stored ones.
        let split = if rows.is_empty() { 0 } else { split.index(rows.len()) };
        for (i, r) in rows.iter().enumerate() {
            if i == split {
                store.flush().unwrap();
            }
            store.record_detached(r.clone());
        }
        store.flush().unwrap();
        for (at, rating) in ratings {
            if rows.is_empty() {
                break;
            }
            let i = at.index(rows.len());
            let rated = store.rate(&format!("req-{i}"), rating, None, ("prop", None), H0).unwrap();
            prop_assert_eq!(rated.is_some(), rows[i].error.is_none(), "only an answer is rated");
            if rated.is_some() {
                rows[i].rating = Some(rating);
            }
        }

        let history = store.history(from, to, &Dim::ALL).unwrap();
        let expect = reference(&rows, from, to, &Dim::ALL);
        let want = totals(expect.by(Dim::Model));
        for dim in Dim::ALL {
            prop_assert_eq!(totals(history.by(dim)), want, "totals by {}", dim);
        }
        prop_assert_eq!(history, expect);
    }
}

// ---- Ratings ----------------------------------------------------------------------

/// `(request_id, model, rating, quality)` of every row in the first hour.
fn rated_rows(store: &Store) -> Vec<(String, String, Option<u8>, Option<f64>)> {
    let rows = store.perf_log(None, H0, H0 + HOUR, 100).unwrap();
    rows.into_iter().map(|r| (r.request_id.unwrap_or_default(), r.model, r.rating, r.quality)).collect()
}

/// `(ratings, rating_sum)` of `value` under `dim` over the first hour,
/// read from the aggregates (the whole hour) and from the raw rows.
fn ratings_of(store: &Store, dim: Dim, value: &str) -> [(u64, u64); 2] {
    [(H0, H0 + HOUR), (H0 + 1, H0 + HOUR - 1)].map(|(from, to)| {
        let history = store.history(from, to, &[dim]).unwrap();
        let group = history.by(dim).iter().find(|g| g.value == value).unwrap();
        (group.ratings, group.rating_sum)
    })
}

fn avg_quality(store: &Store, model: &str) -> Option<f64> {
    store.usage().unwrap().into_iter().find(|u| u.model == model).unwrap().avg_quality
}

fn feedback(path: &Path) -> Vec<(String, String, i64, Option<String>, String, i64)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT request_id, model, rating, comment, who, at_ms FROM feedback ORDER BY request_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn request(at_ms: u64, model: &str, provider: &str, id: &str, error: Option<ErrorClass>) -> PerfRecord {
    PerfRecord { request_id: Some(id.into()), error, ..perf(at_ms, model, provider) }
}

/// A store holding four rows in the hour from `H0`: `req-1` failed on m-a
/// then was answered by m-b (a fallback, key k1, English), `req-2` failed,
/// `req-3` was answered by m-a (no language, no key). Committed one by one.
async fn rating_store() -> (tempfile::TempDir, PathBuf, Store) {
    let (dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 2 * HOUR));
    let store = open(&path, &clock, StoreConfig::default());
    let en_k1 = |r: PerfRecord| PerfRecord { language: Some("en".into()), key_name: Some("k1".into()), ..r };
    let rows = [
        en_k1(request(H0 + 10 * MIN, "m-a", "openai", "req-1", Some(ErrorClass::Timeout))),
        PerfRecord { fallback: true, attempt: 2, ..en_k1(request(H0 + 11 * MIN, "m-b", "anthropic", "req-1", None)) },
        request(H0 + 20 * MIN, "m-a", "openai", "req-2", Some(ErrorClass::ServerError)),
        request(H0 + 30 * MIN, "m-a", "openai", "req-3", None),
    ];
    for r in rows {
        store.commit(Vec::new(), Some(r)).await.unwrap();
    }
    (dir, path, store)
}

#[tokio::test]
async fn a_rating_reaches_the_row_usage_feedback_and_every_grouping_and_replaces_the_last() {
    let (_dir, path, store) = rating_store().await;
    let rated = store.rate("req-1", 4, Some("good"), ("alice", Some("k1")), H0 + HOUR).unwrap();
    let expect = Rated {
        request_id: "req-1".into(),
        model: "m-b".into(),
        provider: "anthropic".into(),
        rating: 4,
        model_quality: (0.75, 1),
    };
    assert_eq!(rated, Some(expect), "the answer, not the failed first attempt");
    let s = String::from;
    assert_eq!(
        rated_rows(&store),
        [
            (s("req-1"), s("m-a"), None, None),
            (s("req-1"), s("m-b"), Some(4), Some(0.75)),
            (s("req-2"), s("m-a"), None, None),
            (s("req-3"), s("m-a"), None, None)
        ]
    );
    assert_eq!((avg_quality(&store, "m-b"), avg_quality(&store, "m-a")), (Some(0.75), None));
    assert_eq!(ratings_of(&store, Dim::Model, "m-b"), [(1, 4); 2]);
    assert_eq!(ratings_of(&store, Dim::Model, "m-a"), [(0, 0); 2]);
    assert_eq!(ratings_of(&store, Dim::Provider, "anthropic"), [(1, 4); 2]);
    assert_eq!(ratings_of(&store, Dim::Category, "code"), [(1, 4); 2]);
    assert_eq!(ratings_of(&store, Dim::Language, "en"), [(1, 4); 2]);
    assert_eq!(ratings_of(&store, Dim::Key, "k1"), [(1, 4); 2]);
    assert_eq!(ratings_of(&store, Dim::Key, ""), [(0, 0); 2]);
    let hour = i64::try_from(H0 + HOUR).unwrap();
    assert_eq!(feedback(&path), [(s("req-1"), s("m-b"), 4, Some(s("good")), s("alice"), hour)]);

    // Rated again: replaced, still one rating.
    let again = store.rate("req-1", 2, None, ("bob", None), H0 + HOUR + 1).unwrap().unwrap();
    assert_eq!((again.rating, again.model_quality), (2, (0.25, 1)), "one rating, now 2 (quality 0.25)");
    assert_eq!(rated_rows(&store)[1], (s("req-1"), s("m-b"), Some(2), Some(0.25)));
    assert_eq!(avg_quality(&store, "m-b"), Some(0.25));
    assert_eq!(ratings_of(&store, Dim::Model, "m-b"), [(1, 2); 2]);
    assert_eq!(ratings_of(&store, Dim::Key, "k1"), [(1, 2); 2]);
    assert_eq!(feedback(&path), [(s("req-1"), s("m-b"), 2, None, s("bob"), hour + 1)]);

    // A request without a language or a key.
    let third = store.rate("req-3", 5, Some("perfect"), ("carol", None), H0 + HOUR).unwrap();
    assert_eq!(third.map(|r| r.model), Some(s("m-a")));
    assert_eq!(avg_quality(&store, "m-a"), Some(1.0));
    assert_eq!(ratings_of(&store, Dim::Model, "m-a"), [(1, 5); 2]);
    assert_eq!(ratings_of(&store, Dim::Language, ""), [(1, 5); 2]);
    assert_eq!(ratings_of(&store, Dim::Key, ""), [(1, 5); 2]);
    assert_eq!(ratings_of(&store, Dim::Category, "code"), [(2, 7); 2]);
    assert_eq!(store.usage().unwrap().iter().map(|u| u.requests).sum::<u64>(), 4, "a rating is not a request");
}

#[tokio::test]
async fn what_cannot_be_rated_changes_nothing_and_the_last_answer_is_rated() {
    let (_dir, path, store) = rating_store().await;
    let before = store.history(H0, H0 + HOUR, &Dim::ALL).unwrap();
    assert_eq!(store.rate("req-unknown", 3, None, ("x", None), H0 + HOUR), Ok(None));
    assert_eq!(store.rate("req-2", 3, None, ("x", None), H0 + HOUR), Ok(None), "its only row failed");
    assert_eq!(store.rate("req-1", 3, None, ("x", Some("k2")), H0 + HOUR), Ok(None), "another key's request");
    assert_eq!(store.rate("req-3", 3, None, ("x", Some("k1")), H0 + HOUR), Ok(None), "sent without a key");
    for rating in [0, 6] {
        let err = Error::Invalid(format!("a rating is an integer from 1 to 5, not {rating}"));
        assert_eq!(store.rate("req-3", rating, None, ("x", None), H0 + HOUR), Err(err));
    }
    assert_eq!(store.history(H0, H0 + HOUR, &Dim::ALL).unwrap(), before);
    assert!(rated_rows(&store).iter().all(|r| r.2.is_none() && r.3.is_none()), "no row rated");
    assert_eq!(feedback(&path), []);
    assert!(store.usage().unwrap().iter().all(|u| u.avg_quality.is_none()));

    // Two answers to one request: the last is the one rated.
    let first = request(H0 + 40 * MIN, "m-a", "openai", "req-4", None);
    let second = PerfRecord { attempt: 2, ..request(H0 + 41 * MIN, "m-c", "mistral", "req-4", None) };
    store.commit(Vec::new(), Some(first)).await.unwrap();
    store.commit(Vec::new(), Some(second)).await.unwrap();
    let rated = store.rate("req-4", 1, None, ("x", None), H0 + HOUR).unwrap();
    assert_eq!(rated.map(|r| r.model), Some("m-c".to_owned()));
    assert_eq!(ratings_of(&store, Dim::Model, "m-c"), [(1, 1); 2]);
    assert_eq!(ratings_of(&store, Dim::Model, "m-a"), [(0, 0); 2]);
}

#[test]
fn a_row_still_queued_is_found_and_rated() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 2 * HOUR));
    // A batch of rows alone would wait 10 minutes: only rate's flush commits it.
    let config = StoreConfig { batch_wait: Duration::from_mins(10), ..StoreConfig::default() };
    let store = open(&path, &clock, config);
    store.record_detached(request(H0 + 40 * MIN, "m-a", "openai", "req-q", None));
    let rated = store.rate("req-q", 3, None, ("dave", None), H0 + HOUR).unwrap();
    assert_eq!(rated.map(|r| (r.model, r.rating)), Some(("m-a".to_owned(), 3)));
    assert_eq!(rated_rows(&store), [("req-q".to_owned(), "m-a".to_owned(), Some(3), Some(0.5))]);
    assert_eq!(ratings_of(&store, Dim::Model, "m-a"), [(1, 3); 2]);
    assert_eq!(avg_quality(&store, "m-a"), Some(0.5));
}

#[test]
fn rating_a_row_that_carried_a_quality_replaces_it_in_the_usage_mean() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 2 * HOUR));
    let store = open(&path, &clock, StoreConfig::default());
    store.record_detached(PerfRecord { quality: Some(0.75), ..request(H0, "m-a", "openai", "req-1", None) });
    store.record_detached(PerfRecord { quality: Some(0.25), ..request(H0 + 1, "m-a", "openai", "req-2", None) });
    store.flush().unwrap();
    assert_eq!(avg_quality(&store, "m-a"), Some(0.5));
    let rated = store.rate("req-1", 5, None, ("erin", None), H0 + HOUR).unwrap().unwrap();
    assert_eq!(rated.model_quality, (1.25, 2), "the row's 0.75 replaced by 1.0, beside the other's 0.25");
    let qualities: Vec<_> = rated_rows(&store).into_iter().map(|r| r.3).collect();
    assert_eq!(qualities, [Some(1.0), Some(0.25)], "the row's quality is replaced");
    // The usage mean is the mean of the rows' qualities: (1.0 + 0.25) / 2.
    assert_eq!(avg_quality(&store, "m-a"), Some(0.625), "the totals hold the row's new quality, not its old one too");
}

// ---- Retention ----------------------------------------------------------------------

#[test]
fn aggregates_outlive_pruned_rows_edges_past_retention_widen_and_old_aggregates_go() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0));
    let config = StoreConfig { retain_days: 1, aggregate_retain_days: 2, ..StoreConfig::default() };
    let latency = |r: PerfRecord, latency_us: u64| PerfRecord { latency_us, ..r };
    let rows = [
        perf(H0 + 10 * MIN, "m-a", "openai"), // A: row and aggregate go
        latency(perf(H0 + DAY + HOUR + 5 * MIN, "m-a", "openai"), 40), // B: the row goes
        latency(perf(H0 + DAY + HOUR + 40 * MIN, "m-b", "openai"), 60), // C: the row goes
        perf(H0 + 2 * DAY + 10 * MIN, "m-a", "openai"), // D: the row goes
        perf(H0 + 2 * DAY + 45 * MIN, "m-a", "openai"), // E: kept
        perf(H0 + 3 * DAY + 5 * MIN, "m-a", "openai"), // F: kept
    ];
    {
        // Written while the clock says H0: none is old yet.
        let store = open(&path, &clock, config);
        for r in &rows {
            store.record_detached(r.clone());
        }
        store.close().unwrap();
    }
    // Now: rows before H0 + 2 d 30 min and aggregates of hours before H0 + 1 d 30 min go.
    clock.set_ms(H0 + 3 * DAY + 30 * MIN);
    let store = open(&path, &clock, config);
    store.flush().unwrap();
    let left: Vec<u64> = store.perf_log(None, 0, u64::MAX, 100).unwrap().iter().map(|r| r.at_ms).collect();
    assert_eq!(left, [rows[4].at_ms, rows[5].at_ms]);
    assert_eq!(store.perf_rows_pruned(), 4);
    let conn = Connection::open(&path).unwrap();
    let first_hour: i64 = conn.query_row("SELECT MIN(hour_ms) FROM perf_hourly", [], |r| r.get(0)).unwrap();
    assert_eq!(first_hour, i64::try_from(H0 + DAY + HOUR).unwrap(), "the aggregates of A's hour are gone");

    let check = |asked: (u64, u64), covered: (u64, u64)| {
        let history = store.history(asked.0, asked.1, &Dim::ALL).unwrap();
        assert_eq!((history.from_ms, history.to_ms), covered, "asked {asked:?}");
        assert_eq!(history, reference(&rows, covered.0, covered.1, &Dim::ALL), "asked {asked:?}");
    };
    // Inside one old hour: its whole hour, B (before the range asked) included.
    let old = (H0 + DAY + HOUR + 20 * MIN, H0 + DAY + HOUR + 50 * MIN);
    check(old, (H0 + DAY + HOUR, H0 + DAY + 2 * HOUR));
    assert_eq!(
        render(&store.history(old.0, old.1, &[Dim::Model]).unwrap()),
        "model \"m-a\" [openai] n1 ok1 fail0 client0 abort0 tok0/0/0 cost0 fb0 rated0/0 90300000..90300000 lat1:40/40 \
         ttft0:-/-\nmodel \"m-b\" [openai] n1 ok1 fail0 client0 abort0 tok0/0/0 cost0 fb0 rated0/0 92400000..92400000 \
         lat1:60/60 ttft0:-/-\n"
    );
    // Both edges before the cutoff: both widen (E, after the range asked, comes with D's hour).
    check((H0 + DAY + HOUR + 20 * MIN, H0 + 2 * DAY + 20 * MIN), (H0 + DAY + HOUR, H0 + 2 * DAY + HOUR));
    // The left edge before the cutoff, the right one after it: only the left widens.
    check((H0 + 2 * DAY + 20 * MIN, H0 + 3 * DAY + 30 * MIN), (H0 + 2 * DAY, H0 + 3 * DAY + 30 * MIN));
    // An edge after the cutoff is read from the raw rows, exactly: E without D.
    check((H0 + 2 * DAY + 40 * MIN, H0 + 3 * DAY + 10 * MIN), (H0 + 2 * DAY + 40 * MIN, H0 + 3 * DAY + 10 * MIN));
    // Past the aggregates' retention: A is gone with its hour.
    let gone = store.history(H0, H0 + DAY + HOUR, &Dim::ALL).unwrap();
    assert_eq!((gone.from_ms, gone.to_ms), (H0, H0 + DAY + HOUR));
    assert!(gone.groups.values().all(Vec::is_empty), "{gone:?}");
}

#[test]
fn an_hour_keeps_its_aggregates_while_it_holds_rows_younger_than_their_retention() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0));
    let config = StoreConfig { retain_days: 1, aggregate_retain_days: 1, ..StoreConfig::default() };
    let rows = [perf(H0 + 10 * MIN, "m-a", "openai"), perf(H0 + 50 * MIN, "m-a", "openai")];
    {
        let store = open(&path, &clock, config);
        for r in &rows {
            store.record_detached(r.clone());
        }
        store.close().unwrap();
    }
    // Both cutoffs at H0 + 30 min: the first row is older than a day, the second is not.
    clock.set_ms(H0 + DAY + 30 * MIN);
    let store = open(&path, &clock, config);
    store.flush().unwrap();
    let left: Vec<u64> = store.perf_log(None, 0, u64::MAX, 100).unwrap().iter().map(|r| r.at_ms).collect();
    assert_eq!(left, [H0 + 50 * MIN], "the raw log still holds the second row");
    // A report whose edge is past the raw cutoff reads the whole hour: its
    // aggregates must still be there, the second row's age is under a day.
    let history = store.history(H0 + 20 * MIN, H0 + HOUR, &[Dim::Model]).unwrap();
    assert_eq!((history.from_ms, history.to_ms), (H0, H0 + HOUR));
    let requests: u64 = history.by(Dim::Model).iter().map(|g| g.requests).sum();
    assert_eq!(requests, 2, "the hour's report holds the rows the log still has (and the pruned one)");
}

// ---- Migration ------------------------------------------------------------------------

#[test]
fn a_schema_3_log_gets_its_aggregates_when_migrated() {
    let (_dir, path) = db();
    let kinds = [Category::Code, Category::Conversation, Category::Translation];
    let errors =
        [None, None, Some(ErrorClass::Timeout), Some(ErrorClass::BadRequest), None, Some(ErrorClass::Cancelled)];
    let rows: Vec<PerfRecord> = (0..40u64)
        .map(|i| {
            let m = usize::try_from(i % 3).unwrap();
            PerfRecord {
                kind: kinds[usize::try_from(i / 2 % 3).unwrap()],
                language: [None, Some("en".to_owned()), Some("fr".to_owned())][usize::try_from(i / 3 % 3).unwrap()]
                    .clone(),
                latency_us: (i * 7_919) % 3_000_000,
                ttft_us: (i % 4 == 0).then_some(i * 1_000),
                input_tokens: i * 11,
                output_tokens: i * 3,
                cached_tokens: i % 5,
                cost: Money::from_nanos(i64::try_from(i * 1_234).unwrap()),
                error: errors[usize::try_from(i % 6).unwrap()],
                quality: None,
                request_id: None,
                ..perf(H0 + i * 5 * MIN + i * 1_001, MODELS[m].0, MODELS[m].1)
            }
        })
        .collect();
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &crate::schema::MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID.cast_signed()).unwrap();
        for (i, r) in rows.iter().enumerate() {
            // One error class this build does not know: a failure of the model.
            let error = if i == 2 { Some("gremlins") } else { r.error.map(ErrorClass::as_str) };
            conn.execute(
                "INSERT INTO perf_log (at_ms, model, provider, kind, language, latency_us, ttft_us, input_tokens, \
                 output_tokens, cached_tokens, cost_nanos, error, quality) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL)",
                params![
                    i64::try_from(r.at_ms).unwrap(),
                    r.model,
                    r.provider,
                    r.kind.as_str(),
                    r.language,
                    i64::try_from(r.latency_us).unwrap(),
                    r.ttft_us.map(|t| i64::try_from(t).unwrap()),
                    i64::try_from(r.input_tokens).unwrap(),
                    i64::try_from(r.output_tokens).unwrap(),
                    i64::try_from(r.cached_tokens).unwrap(),
                    r.cost.nanos(),
                    error,
                ],
            )
            .unwrap();
        }
    }
    let clock = Arc::new(ManualClock::new(H0 + 4 * HOUR));
    let store = open(&path, &clock, StoreConfig::default());
    assert_eq!(crate::check(&path).unwrap().schema_version, SCHEMA_VERSION);
    // Whole hours: the aggregates the migration built, and nothing else.
    let whole = store.history(H0, H0 + 4 * HOUR, &Dim::ALL).unwrap();
    assert_eq!(whole, reference(&rows, H0, H0 + 4 * HOUR, &Dim::ALL));
    assert_eq!(whole.by(Dim::Model).iter().map(|g| g.failures).sum::<u64>(), 7, "gremlins count against the model");
    assert_eq!(whole.by(Dim::Model).iter().map(|g| g.requests).sum::<u64>(), 40);
    let (from, to) = (H0 + 17 * MIN, H0 + 2 * HOUR + 23 * MIN);
    assert_eq!(store.history(from, to, &Dim::ALL).unwrap(), reference(&rows, from, to, &Dim::ALL));
}

// ---- A rotten histogram ----------------------------------------------------------------

/// Sets both histograms of every group of the hour from `H0` to the SQL
/// values `latency` and `ttft`, then asserts the report keeps the counts
/// without those percentiles and a new row still merges into the hour.
fn check_rotten(latency: &str, ttft: &str) {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 2 * HOUR));
    let hour = |rows: &[PerfRecord]| reference(rows, H0, H0 + HOUR, &Dim::ALL);
    let mut rows: Vec<PerfRecord> = rows().into_iter().filter(|r| r.at_ms >= H0 && r.at_ms < H0 + HOUR).collect();
    assert_eq!(rows.len(), 4);
    {
        let store = open(&path, &clock, StoreConfig::default());
        for r in &rows {
            store.record_detached(r.clone());
        }
        store.close().unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    let rotten = conn
        .execute(
            &format!("UPDATE perf_hourly SET latency = {latency}, ttft = {ttft} WHERE hour_ms = ?1"),
            params![i64::try_from(H0).unwrap()],
        )
        .unwrap();
    assert_eq!(rotten, 12, "every group of the hour: 2 models, 2 providers, 2 categories, 3 languages, 3 keys");
    drop(conn);

    let store = open(&path, &clock, StoreConfig::default());
    let without_percentiles = |mut history: History| {
        for g in history.groups.values_mut().flatten() {
            (g.latency, g.ttft) = (Hist::new(), Hist::new());
        }
        history
    };
    assert_eq!(store.history(H0, H0 + HOUR, &Dim::ALL), Ok(without_percentiles(hour(&rows))));
    // Raw rows still have theirs.
    assert_eq!(store.history(H0 + 1, H0 + HOUR, &Dim::ALL).unwrap(), reference(&rows, H0 + 1, H0 + HOUR, &Dim::ALL));

    // A new row of m-a in the hour: counts go on adding; its groups' histograms
    // start over from it.
    let new = spec((
        H0 + 55 * MIN,
        "m-a",
        "openai",
        Category::Code,
        Some("en"),
        Some("k1"),
        None,
        99,
        Some(33),
        [1, 2, 3],
        4,
        false,
        None,
    ));
    store.record_detached(new.clone());
    assert_eq!(store.flush(), Ok(()), "the batch is written");
    assert_eq!(store.write_counts(), (1, 0));
    rows.push(new.clone());
    let mut expect = without_percentiles(hour(&rows));
    let fresh = reference(std::slice::from_ref(&new), H0, H0 + HOUR, &Dim::ALL);
    for (dim, groups) in &mut expect.groups {
        for g in groups.iter_mut() {
            if let Some(mine) = fresh.by(*dim).iter().find(|f| f.value == g.value) {
                (g.latency, g.ttft) = (mine.latency.clone(), mine.ttft.clone());
            }
        }
    }
    let history = store.history(H0, H0 + HOUR, &Dim::ALL).unwrap();
    assert_eq!(history, expect);
    assert_eq!(history.by(Dim::Model)[0].requests, 3, "m-a: two rows before, one after");
}

#[test]
fn a_rotten_histogram_blob_loses_its_percentiles_not_its_counts_and_new_rows_still_merge() {
    // Garbage bytes, and a blob cut in the middle of a varint.
    check_rotten("x'deadbeef'", "x'01ff'");
}

#[test]
fn a_histogram_that_is_not_a_blob_loses_its_percentiles_not_the_hours_report_or_writes() {
    // What a damaged record header or another tool can leave in the columns:
    // SQLite keeps a value's own type whatever the column says.
    check_rotten("'rotten'", "42");
}

#[test]
fn totals_agree_across_groupings_while_rows_are_being_committed() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 2 * HOUR));
    let store = Arc::new(open(&path, &clock, StoreConfig::default()));
    // One transaction per row, in the hour read: every commit changes every grouping.
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            for i in 0..300 {
                store.record_detached(perf(H0 + i * MIN / 5, "m-a", "openai"));
                store.flush().unwrap();
            }
        })
    };
    let (mut reads, mut torn) = (0, Vec::new());
    while !writer.is_finished() {
        let history = store.history(H0, H0 + HOUR, &Dim::ALL).unwrap();
        let requests = Dim::ALL.map(|dim| totals(history.by(dim))[0]);
        reads += 1;
        if requests.iter().any(|&n| n != requests[0]) && torn.len() < 5 {
            torn.push(requests);
        }
    }
    writer.join().unwrap();
    assert!(reads > 0);
    assert_eq!(torn, [[0; 5]; 0], "requests by model, provider, category, language, key in one report ({reads} reads)");
    assert_eq!(totals(store.history(H0, H0 + HOUR, &[Dim::Key]).unwrap().by(Dim::Key))[0], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ratings_of_one_request_leave_exactly_one_everywhere() {
    let (_dir, _path, store) = rating_store().await;
    let store = Arc::new(store);
    // Two raters at once, 50 ratings each: the writer reads the earlier
    // rating inside its own transaction, so each replaces the one before.
    let raters: Vec<_> = [2u8, 4u8]
        .into_iter()
        .map(|score| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    store.rate("req-3", score, None, ("rater", None), H0 + HOUR).unwrap().unwrap();
                }
            })
        })
        .collect();
    for rater in raters {
        rater.join().unwrap();
    }
    let rows = store.perf_log(Some("m-a"), 0, u64::MAX >> 1, 100).unwrap();
    let rated: Vec<Option<u8>> =
        rows.iter().filter(|r| r.request_id.as_deref() == Some("req-3")).map(|r| r.rating).collect();
    assert_eq!(rated.len(), 1);
    let last = rated[0].unwrap();
    assert!([2, 4].contains(&last));
    let usage = store.usage().unwrap().into_iter().find(|u| u.model == "m-a").unwrap();
    assert_eq!(usage.rated, 1, "one rated answer in the usage totals");
    assert_eq!(usage.avg_quality, Some(f64::from(last - 1) / 4.0));
    let history = store.history(H0, H0 + HOUR, &Dim::ALL).unwrap();
    for dim in Dim::ALL {
        let (ratings, sum) = history.by(dim).iter().fold((0, 0), |(n, s), g| (n + g.ratings, s + g.rating_sum));
        assert_eq!((ratings, sum), (1, u64::from(last)), "{dim}: one rating, the last one");
    }
}

/// Folds exported deltas of the hours in `[from, to)` as another store
/// keeping the same aggregates would.
fn fold_exported(deltas: &[HourDelta], (from, to): (u64, u64), dims: &[Dim]) -> History {
    let mut groups: BTreeMap<Dim, BTreeMap<String, Aggregate>> = dims.iter().map(|&d| (d, BTreeMap::new())).collect();
    for delta in deltas.iter().filter(|d| (from..to).contains(&d.hour_ms)) {
        let Some(into) = groups.get_mut(&delta.dim) else { continue };
        let group = into.entry(delta.added.value.clone()).or_insert_with(|| Aggregate {
            value: delta.added.value.clone(),
            first_ms: u64::MAX,
            ..Aggregate::default()
        });
        group.merge(&delta.added);
        group.ratings = group.ratings.checked_add_signed(delta.rerated.0).unwrap();
        group.rating_sum = group.rating_sum.checked_add_signed(delta.rerated.1).unwrap();
    }
    History {
        from_ms: from,
        to_ms: to,
        groups: groups.into_iter().map(|(dim, by)| (dim, by.into_values().collect())).collect(),
    }
}

#[tokio::test]
async fn what_is_exported_after_each_commit_adds_up_to_the_stores_own_aggregates() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(H0 + 4 * HOUR));
    let store = open(&path, &clock, StoreConfig::default());
    let exported = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&exported);
    assert!(store.export_history(move |deltas| sink.lock().unwrap().extend(deltas)));
    assert!(!store.export_history(|_| {}), "one export per store");
    // Several transactions: one row each, then the rest in one batch.
    let rows = rows();
    for row in &rows[..4] {
        store.commit(Vec::new(), Some(row.clone())).await.unwrap();
    }
    for row in &rows[4..] {
        store.record(row.clone()).await.unwrap();
    }
    store.flush().unwrap();
    let whole = store.history(WHOLE_RANGE.0, WHOLE_RANGE.1, &Dim::ALL).unwrap();
    assert_eq!(render(&fold_exported(&exported.lock().unwrap(), WHOLE_RANGE, &Dim::ALL)), WHOLE);
    assert_eq!(render(&whole), WHOLE);
    // Ratings of earlier rows, a first one and a replaced one, go out as changes.
    store.rate("req-m-a-1767225600000", 5, None, ("alice", None), H0 + 4 * HOUR).unwrap().unwrap();
    store.rate("req-m-a-1767225600000", 2, None, ("alice", None), H0 + 4 * HOUR).unwrap().unwrap();
    let rated = store.history(WHOLE_RANGE.0, WHOLE_RANGE.1, &Dim::ALL).unwrap();
    assert_ne!(rated, whole, "the ratings changed the aggregates");
    assert_eq!(fold_exported(&exported.lock().unwrap(), WHOLE_RANGE, &Dim::ALL), rated);
}
