//! Store tests on real files: opening and refusing, migrations, the batching
//! writer, commits (group commit, the spend backlog, the overflow), budgets
//! and their audit trail, restart, the response cache, durability under
//! SIGKILL, and round trips of every record type.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use modelfleet_budget::{Alert, BudgetSpec, Enforcement, Period, Scope};
use modelfleet_errors::{DegradationConfig, ErrorClass};
use modelfleet_registry::{Category, Clock, ManualClock, ModelSpec, Money, Pricing, default_catalog};
use proptest::prelude::*;
use rusqlite::{Connection, params};

use super::*;

fn record(model: &str, at_ms: u64, error: Option<ErrorClass>) -> PerfRecord {
    PerfRecord {
        at_ms,
        model: model.into(),
        provider: "openai".into(),
        kind: Category::Conversation,
        language: Some("fr".into()),
        latency_us: 120_000,
        ttft_us: Some(40_000),
        input_tokens: 100,
        output_tokens: 30,
        cached_tokens: 10,
        cost: Money::from_nanos(2_500),
        error,
        quality: Some(0.75),
        request_id: Some(format!("req-{model}-{at_ms}")),
        key_name: Some("team-a".into()),
        route: None,
        attempt: 1,
        fallback: false,
        rating: None,
    }
}

fn db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    (dir, path)
}

#[test]
fn a_new_database_is_created_migrated_and_reopened() {
    let (_dir, path) = db();
    drop(Store::open(&path, StoreConfig::default()).unwrap());
    let report = check(&path).unwrap();
    assert_eq!((report.schema_version, report.supported_version), (SCHEMA_VERSION, SCHEMA_VERSION));
    assert!(report.problems.is_empty());
    let tables: Vec<&str> = report.tables.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tables,
        [
            "alerts",
            "budget_audit",
            "budget_spend",
            "budgets",
            "cache",
            "feedback",
            "models",
            "perf_hourly",
            "perf_log",
            "usage"
        ]
    );
    drop(Store::open(&path, StoreConfig::default()).unwrap()); // migrations are idempotent
    let created_in_a_missing_directory = path.parent().unwrap().join("a/b/c.db");
    drop(Store::open(&created_in_a_missing_directory, StoreConfig::default()).unwrap());
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_untouched() {
    let (_dir, path) = db();
    let content = b"{\"this is\": \"a JSON config, not a database\"}".repeat(20);
    std::fs::write(&path, &content).unwrap();
    let err = Store::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(&err, Error::NotSqlite { path: p } if p == &path), "{err}");
    assert!(err.to_string().contains("is not an SQLite database; it was left untouched"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), content, "never overwritten");
    assert!(matches!(check(&path), Err(Error::NotSqlite { .. })));
    // Moved aside on request, a fresh database takes its place; the old file is kept.
    let aside = quarantine(&path, 42).unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), content);
    assert!(aside.to_string_lossy().ends_with("fleet.db.corrupt-42"));
    assert!(Store::open(&path, StoreConfig::default()).is_ok());
}

#[test]
fn a_corrupted_database_is_refused_and_untouched() {
    let (_dir, path) = db();
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        for i in 0..2_000 {
            store.record_detached(record("m", i, None));
        }
        store.close().unwrap();
    }
    // Checkpoint the WAL into the main file, then damage pages past the header.
    Connection::open(&path).unwrap().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096, "enough pages to damage");
    for b in &mut bytes[4096 * 3..4096 * 8] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. } | Error::NotSqlite { .. }), "{err}");
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "never overwritten");
}

#[test]
fn a_newer_schema_is_refused_and_untouched() {
    let (_dir, path) = db();
    drop(Store::open(&path, StoreConfig::default()).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, StoreConfig::default()).unwrap_err();
    assert_eq!(err, Error::TooNew { path: path.clone(), found: 99, supported: SCHEMA_VERSION });
    let expected =
        format!("written by a newer modelfleet (schema version 99, this build knows up to {SCHEMA_VERSION})");
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn batched_records_update_the_log_and_usage() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig { batch_rows: 64, ..StoreConfig::default() }).unwrap();
    for i in 0..1_000 {
        let error = (i % 10 == 0).then_some(ErrorClass::Timeout);
        store.record_detached(record(if i % 2 == 0 { "a" } else { "b" }, 1_000 + i, error));
    }
    store.flush().unwrap();
    assert_eq!(store.write_counts(), (1_000, 0));
    let usage = store.usage().unwrap();
    assert_eq!(usage.len(), 2);
    let a = &usage[0];
    assert_eq!((a.model.as_str(), a.requests, a.failures, a.successes), ("a", 500, 100, 400));
    assert_eq!((a.input_tokens, a.cost), (50_000, Money::from_nanos(500 * 2_500)));
    assert_eq!((a.first_ms, a.last_ms), (1_000, 1_998));
    assert_eq!(a.avg_quality, Some(0.75));
    let window = store.perf_log(Some("b"), 1_100, 1_200, 1_000).unwrap();
    assert_eq!(window.len(), 50);
    assert!(window.iter().all(|r| r.model == "b" && (1_100..1_200).contains(&r.at_ms)));
    assert_eq!(store.perf_log(None, 0, u64::MAX, 10).unwrap().len(), 10, "limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_queue_applies_back_pressure_and_loses_nothing() {
    let (_dir, path) = db();
    let config = StoreConfig { queue_capacity: 4, batch_rows: 8, ..StoreConfig::default() };
    let store = Arc::new(Store::open(&path, config).unwrap());
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..500 {
                    store.record(record(&format!("m{t}"), i, None)).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    store.flush_async().await.unwrap();
    let total: u64 = store.usage().unwrap().iter().map(|u| u.requests).sum();
    assert_eq!(total, 2_000);
}

// ---- Commits: spend and performance rows, acknowledged after COMMIT ---------

/// One budget's share of a request, in the period [77, 99).
fn entry(scope: &Scope, period: Period, provider: &str, model: &str, nanos: i64) -> SpendEntry {
    SpendEntry {
        scope: scope.clone(),
        period,
        period_start_ms: 77,
        period_end_ms: Some(99),
        provider: provider.into(),
        model: model.into(),
        amount: Money::from_nanos(nanos),
    }
}

/// The spend of a request served by `provider`/`model` on the global and the provider budgets.
fn settlement(provider: &str, model: &str, nanos: i64) -> Vec<SpendEntry> {
    vec![
        entry(&Scope::Global, Period::Monthly, provider, model, nanos),
        entry(&Scope::Provider(provider.into()), Period::Daily, provider, model, nanos),
    ]
}

/// Spent per scope, from what the store reads back.
fn spent(store: &Store) -> Vec<(Scope, Period, i64)> {
    store.spend().unwrap().into_iter().map(|r| (r.scope, r.period, r.spent.nanos())).collect()
}

#[tokio::test]
async fn a_commit_is_on_disk_when_it_returns_and_after_a_reopen() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    store.commit(settlement("openai", "gpt-4o", 7), Some(record("gpt-4o", 5, None))).await.unwrap();
    store.commit(settlement("openai", "gpt-4o-mini", 5), Some(record("gpt-4o-mini", 6, None))).await.unwrap();
    store.commit(settlement("anthropic", "claude", 11), None).await.unwrap();
    // Another connection sees it at once: no flush needed.
    let (rows, perf): (i64, i64) = Connection::open(&path)
        .unwrap()
        .query_row("SELECT (SELECT SUM(spent_nanos) FROM budget_spend), (SELECT COUNT(*) FROM perf_log)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, perf), (2 * (7 + 5 + 11), 2));
    store.close().unwrap();

    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let global = store.spend().unwrap().into_iter().find(|r| r.scope == Scope::Global).unwrap();
    let m = Money::from_nanos;
    assert_eq!(
        global,
        SpendRow {
            scope: Scope::Global,
            period: Period::Monthly,
            period_start_ms: 77,
            period_end_ms: Some(99),
            spent: m(23),
            by_provider: [("anthropic".to_owned(), m(11)), ("openai".to_owned(), m(12))].into(),
            by_model: [("claude".to_owned(), m(11)), ("gpt-4o".to_owned(), m(7)), ("gpt-4o-mini".to_owned(), m(5))]
                .into(),
        }
    );
    assert_eq!(
        spent(&store),
        [
            (Scope::Global, Period::Monthly, 23),
            (Scope::Provider("anthropic".into()), Period::Daily, 11),
            (Scope::Provider("openai".into()), Period::Daily, 12),
        ]
    );
    assert_eq!(store.usage().unwrap().iter().map(|u| u.requests).sum::<u64>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_all_acknowledged_exact_and_grouped() {
    const TASKS: i64 = 64;
    const COMMITS: i64 = 50;
    let (_dir, path) = db();
    let store = Arc::new(Store::open(&path, StoreConfig::default()).unwrap());
    let before = store.transactions();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..COMMITS {
                    let model = format!("m{}", t % 4);
                    let perf = record(&model, u64::try_from(i).unwrap(), None);
                    store.commit(settlement("openai", &model, t * 1_000 + i), Some(perf)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total: i64 = (0..TASKS).flat_map(|t| (0..COMMITS).map(move |i| t * 1_000 + i)).sum();
    assert_eq!(
        spent(&store),
        [(Scope::Global, Period::Monthly, total), (Scope::Provider("openai".into()), Period::Daily, total)]
    );
    let global = &store.spend().unwrap()[0];
    assert_eq!(global.by_model.values().copied().sum::<Money>(), Money::from_nanos(total));
    let commits = u64::try_from(TASKS * COMMITS).unwrap();
    assert_eq!(store.usage().unwrap().iter().map(|u| u.requests).sum::<u64>(), commits);
    let transactions = store.transactions() - before;
    assert!(transactions * 4 < commits, "group commit: {transactions} transactions for {commits} commits");
    assert_eq!(store.write_counts(), (commits, 0));
}

/// Makes every spend write fail until the returned guard's [`Refusal::lift`].
struct Refusal(Connection);

impl Refusal {
    fn new(path: &Path) -> Refusal {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse_spend BEFORE INSERT ON budget_spend BEGIN SELECT RAISE(ABORT, 'spend refused by the test'); END;",
        )
        .unwrap();
        Refusal(conn)
    }

    fn lift(self) {
        self.0.execute_batch("DROP TRIGGER refuse_spend").unwrap();
    }
}

#[tokio::test]
async fn spend_of_a_failed_commit_waits_in_the_backlog_until_a_commit_succeeds() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    store.commit(settlement("openai", "a", 5), Some(record("a", 1, None))).await.unwrap();
    assert_eq!(store.spend_backlog(), None);

    let refusal = Refusal::new(&path);
    let err = store.commit(settlement("openai", "b", 7), Some(record("b", 2, None))).await.unwrap_err();
    assert!(matches!(&err, Error::Write(m) if m.contains("spend refused by the test")), "{err}");
    let reason = store.spend_backlog().expect("spend waits");
    assert!(reason.contains("spend refused by the test"), "{reason}");
    // Still refused: the backlog grows, nothing is written twice or lost.
    assert!(store.commit(settlement("anthropic", "c", 11), None).await.is_err());
    assert_eq!(spent(&store)[0], (Scope::Global, Period::Monthly, 5), "only the first commit is on disk");
    assert_eq!(store.write_counts().1, 1, "the perf row of the failed commit was dropped");
    let failing = store.write_failing().expect("writing fails now");
    assert!(failing.contains("spend refused by the test"), "{failing}");

    refusal.lift();
    store.commit(settlement("openai", "d", 13), None).await.unwrap();
    assert_eq!(store.spend_backlog(), None);
    assert_eq!(store.write_failing(), None, "a commit again: the failure is history");
    assert_eq!(store.write_counts().1, 1, "still counted");
    assert_eq!(
        spent(&store),
        [
            (Scope::Global, Period::Monthly, 5 + 7 + 11 + 13),
            (Scope::Provider("anthropic".into()), Period::Daily, 11),
            (Scope::Provider("openai".into()), Period::Daily, 5 + 7 + 13),
        ]
    );
    let models = &store.spend().unwrap()[0].by_model;
    assert_eq!(models.values().map(|m| m.nanos()).collect::<Vec<_>>(), [5, 7, 11, 13]);
    // Nothing stays queued: a flush and a reopen change nothing.
    store.close().unwrap();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(spent(&store)[0], (Scope::Global, Period::Monthly, 36));
}

/// Holds the database's write lock (the writer waits on it) until dropped.
fn hold_write_lock(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[test]
fn detached_commits_on_a_full_queue_go_to_the_overflow_and_lose_nothing() {
    let (_dir, path) = db();
    let config = StoreConfig { queue_capacity: 1, batch_rows: 4, ..StoreConfig::default() };
    let store = Store::open(&path, config).unwrap();
    let lock = hold_write_lock(&path);
    // The writer is stuck on the lock with its first batch: the queue (one op)
    // fills and the rest overflows. None of these calls waits.
    for i in 0..2_000 {
        store.commit_detached(settlement("openai", "m", i), Some(record("m", 0, None)));
        store.record_detached(record("n", 0, None));
    }
    drop(lock);
    store.flush().unwrap();
    let total: i64 = (0..2_000).sum();
    assert_eq!(spent(&store)[0], (Scope::Global, Period::Monthly, total));
    assert_eq!(store.usage().unwrap().iter().map(|u| u.requests).sum::<u64>(), 4_000);
    assert_eq!(store.write_counts(), (4_000, 0));
}

#[tokio::test]
async fn flush_works_inside_a_runtime_and_a_dropped_commit_still_commits() {
    let (_dir, path) = db();
    let config = StoreConfig { queue_capacity: 1, batch_rows: 1, ..StoreConfig::default() };
    let store = Store::open(&path, config).unwrap();
    let lock = hold_write_lock(&path);
    for _ in 0..8 {
        store.commit_detached(settlement("openai", "m", 1), None);
    }
    // The queue is full: the commit waits for room, and is dropped waiting.
    tokio::select! {
        biased;
        _ = store.commit(settlement("openai", "m", 100), None) => {}
        () = std::future::ready(()) => {}
    }
    drop(lock);
    store.flush().unwrap(); // blocking, on a runtime thread: allowed, never panics
    assert_eq!(spent(&store)[0], (Scope::Global, Period::Monthly, 108));
    store.flush_async().await.unwrap();
}

// ---- Opening: read-only first, refused files untouched ------------------------

/// Every file of `dir` with its SHA-256: what "untouched" compares.
fn snapshot(dir: &Path) -> Vec<(String, [u8; 32])> {
    use sha2::Digest;
    let mut files: Vec<(String, [u8; 32])> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                sha2::Sha256::digest(std::fs::read(e.path()).unwrap()).into(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Opens `path` (and checks it) expecting a refusal, and asserts nothing in
/// its directory changed, not a byte nor a file beside it; returns the error.
fn refused_untouched(path: &Path) -> Error {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    let err = Store::open(path, StoreConfig::default()).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "names the file: {err}");
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(snapshot(dir), before, "{err}: the file and its directory are unchanged");
    let checked = check(path).map(|_| ()).unwrap_err();
    assert_eq!(checked, err, "check applies the open rules");
    assert_eq!(snapshot(dir), before, "check changed nothing either");
    err
}

/// A database somebody else wrote, in `journal_mode`, with a table of theirs.
fn foreign_database(path: &Path, journal_mode: &str, setup: &str) {
    let conn = Connection::open(path).unwrap();
    let mode: String = conn.query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |r| r.get(0)).unwrap();
    assert!(mode.eq_ignore_ascii_case(journal_mode));
    conn.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('mine')",
    )
    .unwrap();
    conn.execute_batch(setup).unwrap();
}

#[test]
fn a_foreign_rollback_journal_database_is_refused_and_untouched() {
    let (dir, path) = db();
    foreign_database(&path, "DELETE", "");
    assert_eq!(snapshot(dir.path()).len(), 1);
    let err = refused_untouched(&path);
    assert!(matches!(&err, Error::Foreign { path: p, .. } if p == &path), "{err}");
    assert!(err.to_string().contains("is not a modelfleet database"), "{err}");
    // Its owner still reads it, in its own journal mode.
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn a_foreign_wal_database_is_refused_without_files_beside_it() {
    let (dir, path) = db();
    foreign_database(&path, "WAL", "");
    assert_eq!(snapshot(dir.path()).len(), 1, "closed: no -wal, no -shm");
    let err = refused_untouched(&path);
    assert!(matches!(err, Error::Foreign { .. }), "{err}");
}

#[test]
fn foreign_schemas_are_refused_and_untouched() {
    // A schema version modelfleet never had, and one it had without its tables.
    for setup in ["PRAGMA user_version = 7", "PRAGMA user_version = 2"] {
        let (_dir, path) = db();
        foreign_database(&path, "DELETE", setup);
        let err = refused_untouched(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{setup}: {err}");
    }
}

#[test]
fn a_foreign_application_id_is_refused_and_untouched() {
    let (_dir, path) = db();
    {
        // Even with modelfleet's tables: the application id decides.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(crate::schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch("PRAGMA user_version = 1; PRAGMA application_id = 305419896").unwrap();
    }
    let err = refused_untouched(&path);
    assert!(err.to_string().contains("its application_id is 0x12345678, modelfleet's is 0x4d464c54"), "{err}");
}

#[test]
fn a_new_file_gets_the_application_id() {
    let (_dir, path) = db();
    drop(Store::open(&path, StoreConfig::default()).unwrap());
    let report = check(&path).unwrap();
    assert_eq!((report.application_id, report.schema_version), (APPLICATION_ID, SCHEMA_VERSION));
    let id: i64 = Connection::open(&path).unwrap().query_row("PRAGMA application_id", [], |r| r.get(0)).unwrap();
    assert_eq!(id, 0x4D46_4C54);
    // An empty file is a new database too.
    let empty = path.with_file_name("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(check(&empty).unwrap().schema_version, 0);
    drop(Store::open(&empty, StoreConfig::default()).unwrap());
    assert_eq!(check(&empty).unwrap().application_id, APPLICATION_ID);
}

#[test]
fn an_older_schema_is_migrated_whether_or_not_it_carries_the_id_and_a_current_one_is_stamped() {
    // Schema version 2 already stamped (a build between): still migrated.
    let (_dir, path) = db();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(crate::schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(crate::schema::MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID.cast_signed()).unwrap();
    }
    Store::open(&path, StoreConfig::default()).unwrap().close().unwrap();
    let report = check(&path).unwrap();
    assert_eq!((report.application_id, report.schema_version), (APPLICATION_ID, SCHEMA_VERSION));

    // The current version without the id: stamped, nothing else done.
    let (_dir, path) = db();
    {
        let conn = Connection::open(&path).unwrap();
        for sql in crate::schema::MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).unwrap();
    }
    Store::open(&path, StoreConfig::default()).unwrap().close().unwrap();
    let report = check(&path).unwrap();
    assert_eq!((report.application_id, report.schema_version), (APPLICATION_ID, SCHEMA_VERSION));
}

#[test]
fn a_modelfleet_file_without_an_application_id_is_accepted_and_stamped() {
    let (_dir, path) = db();
    {
        // What schema version 2 wrote: WAL, no application id.
        let conn = Connection::open(&path).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch(crate::schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(crate::schema::MIGRATIONS[1]).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO budget_spend VALUES ('{\"kind\":\"global\"}', '\"none\"', 0, NULL, 'openai', 'gpt-4o', 42)",
            [],
        )
        .unwrap();
        conn.execute("INSERT INTO cache VALUES (x'01', '{}', x'02', 0, 9999999999999, 2)", []).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let report = check(&path).unwrap();
    assert_eq!((report.application_id, report.schema_version), (0, 2));
    assert_eq!(std::fs::read(&path).unwrap(), before, "check stamps nothing");

    let store = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(spent(&store), [(Scope::Global, Period::None, 42)], "spend kept");
    store.close().unwrap();
    let report = check(&path).unwrap();
    assert_eq!((report.application_id, report.schema_version), (APPLICATION_ID, SCHEMA_VERSION));
    let cache = report.tables.iter().find(|(t, _)| t == "cache").unwrap();
    assert_eq!(cache.1, 0, "cache entries that do not name their model are dropped by the migration");
    drop(Store::open(&path, StoreConfig::default()).unwrap());
}

#[test]
fn truncated_and_garbage_files_are_refused_and_untouched() {
    // A modelfleet file cut in half.
    let (_dir, path) = db();
    {
        let store = Store::open(&path, StoreConfig { retain_days: 0, ..StoreConfig::default() }).unwrap();
        for i in 0..3_000 {
            store.record_detached(record("m", i, None));
        }
        store.close().unwrap();
    }
    Connection::open(&path).unwrap().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 32 * 4096, "{} bytes", bytes.len());
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = refused_untouched(&path);
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    // The SQLite header, then garbage; the header alone, cut short.
    let mut garbage = b"SQLite format 3\0".to_vec();
    garbage.extend((0..8_192u32).map(|i| u8::try_from(i * 7 % 251).unwrap()));
    for content in [garbage, b"SQLite format 3\0\x10\x00".to_vec()] {
        let (_dir, path) = db();
        std::fs::write(&path, &content).unwrap();
        let err = refused_untouched(&path);
        assert!(matches!(err, Error::NotSqlite { .. } | Error::Corrupt { .. }), "{err}");
    }
}

#[test]
fn a_large_file_is_checked_in_the_background() {
    let (_dir, path) = db();
    drop(Store::open(&path, StoreConfig::default()).unwrap());
    let config = StoreConfig { check_on_open_max_bytes: 0, retain_days: 0, ..StoreConfig::default() };
    let store = Store::open(&path, config).unwrap();
    assert!(matches!(store.integrity(), Integrity::Checking | Integrity::Sound));
    store.wait_for_integrity_check();
    assert_eq!(store.integrity(), Integrity::Sound);
    drop(store);
    let small = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(small.integrity(), Integrity::Sound, "checked before opening");
}

#[test]
fn a_background_check_that_fails_is_reported() {
    let (_dir, path) = db();
    {
        let store = Store::open(&path, StoreConfig { retain_days: 0, ..StoreConfig::default() }).unwrap();
        for i in 0..2_000 {
            store.record_detached(record("m", i, None));
        }
        store.close().unwrap();
    }
    Connection::open(&path).unwrap().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[4096 * 3..4096 * 8] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Store::open(&path, StoreConfig::default()), Err(Error::Corrupt { .. })), "checked on open");
    // Too large to check first (as far as this config says): opened, then checked.
    let config = StoreConfig { check_on_open_max_bytes: 0, retain_days: 0, ..StoreConfig::default() };
    let store = Store::open(&path, config).unwrap();
    store.wait_for_integrity_check();
    assert!(matches!(store.integrity(), Integrity::Failed(problems) if !problems.is_empty()));
}

#[test]
fn a_background_check_that_finds_problems_rather_than_failing_reports_them() {
    let (_dir, path) = db();
    Store::open(&path, StoreConfig::default()).unwrap().close().unwrap();
    Connection::open(&path).unwrap().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    // A freelist count that lies: quick_check answers with a problem row
    // ("Freelist: size is 0 but should be 5"), not with an error.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[36..40].copy_from_slice(&5u32.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let config = StoreConfig { check_on_open_max_bytes: 0, retain_days: 0, ..StoreConfig::default() };
    let store = Store::open(&path, config).unwrap();
    store.wait_for_integrity_check();
    let integrity = store.integrity();
    assert!(
        matches!(&integrity, Integrity::Failed(problems) if problems.contains("Freelist: size is 0 but should be 5")),
        "{integrity:?}"
    );
}

// ---- Budgets and their audit trail --------------------------------------------

#[tokio::test]
async fn budgets_and_their_audit_trail_round_trip() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let team = Scope::Key("team-a".into());
    let monthly = BudgetSpec::hard(team.clone(), Period::Monthly, Money::from_dollars(100));
    let daily = BudgetSpec {
        enforcement: Enforcement::Soft,
        thresholds: vec![80],
        ..BudgetSpec::hard(team.clone(), Period::Daily, Money::from_dollars(5))
    };
    store.save_budget(&monthly, "admin", 1).await.unwrap();
    store.save_budget(&daily, "admin", 2).await.unwrap();
    let raised = BudgetSpec { limit: Money::from_dollars(150), ..monthly.clone() };
    store.save_budget(&raised, "ops", 3).await.unwrap();
    assert_eq!(store.budgets().unwrap(), [daily.clone(), raised.clone()]);

    store.commit(vec![entry(&team, Period::Monthly, "openai", "gpt-4o", 40)], None).await.unwrap();
    store.commit(vec![entry(&team, Period::Daily, "openai", "gpt-4o", 2)], None).await.unwrap();
    store.reset_spend(&team, Period::Monthly, 77, Money::from_nanos(40), "ops", 4).await.unwrap();
    assert_eq!(spent(&store), [(team.clone(), Period::Daily, 2)], "only the monthly spend was reset");
    store.remove_budget(&team, Period::Daily, "admin", 5).await.unwrap();
    assert_eq!(store.restore().unwrap().budgets, [raised]);

    let audit: Vec<(u64, String, String, Period, String)> = store
        .budget_audit()
        .unwrap()
        .into_iter()
        .inspect(|row| assert_eq!(row.scope, team))
        .map(|row| (row.at_ms, row.who, row.action, row.period, row.detail))
        .collect();
    let row = |at, who: &str, action: &str, period, detail: &str| {
        (at, who.to_owned(), action.to_owned(), period, detail.to_owned())
    };
    assert_eq!(
        audit,
        [
            row(1, "admin", "set", Period::Monthly, "limit $100 (hard), alerts at 50, 75, 90, 100%"),
            row(2, "admin", "set", Period::Daily, "limit $5 (soft), alerts at 80%"),
            row(3, "ops", "set", Period::Monthly, "limit $150 (hard), alerts at 50, 75, 90, 100%"),
            row(4, "ops", "reset", Period::Monthly, "spent $0.00000004 in the period starting at 77 ms, reset to $0"),
            row(5, "admin", "remove", Period::Daily, "removed"),
        ]
    );
}

// ---- Migrations -----------------------------------------------------------------

#[test]
fn a_version_1_database_migrates_and_keeps_its_spend_and_alerts() {
    let (_dir, path) = db();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(crate::schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let insert_spend =
            "INSERT INTO budget_spend (scope, period, period_start_ms, spent_nanos) VALUES (?1, ?2, ?3, ?4)";
        conn.execute(insert_spend, params![r#"{"kind":"global"}"#, r#""monthly""#, 1_000, 42]).unwrap();
        conn.execute(insert_spend, params![r#"{"kind":"model","name":"m"}"#, r#""daily""#, 1_000, 3]).unwrap();
        conn.execute(insert_spend, params![r#"{"kind":"model","name":"m"}"#, r#""weekly""#, 1_000, 4]).unwrap();
        let insert_alert = "INSERT INTO alerts (at_ms, scope, threshold, spent_nanos, limit_nanos, period_start_ms) \
                            VALUES (5, ?1, 50, 1, 2, ?2)";
        conn.execute(insert_alert, params![r#"{"kind":"global"}"#, 1_000]).unwrap(); // one period: monthly
        conn.execute(insert_alert, params![r#"{"kind":"global"}"#, 0]).unwrap(); // starts at 0: lifetime
        conn.execute(insert_alert, params![r#"{"kind":"model","name":"m"}"#, 1_000]).unwrap(); // ambiguous
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(check(&path).unwrap().schema_version, SCHEMA_VERSION);
    let m = Money::from_nanos;
    let legacy = |nanos| [(String::new(), m(nanos))].into();
    let global = SpendRow {
        scope: Scope::Global,
        period: Period::Monthly,
        period_start_ms: 1_000,
        period_end_ms: None,
        spent: m(42),
        by_provider: legacy(42),
        by_model: legacy(42),
    };
    assert_eq!(store.spend().unwrap()[0], global);
    assert_eq!(
        spent(&store)[1..],
        [(Scope::Model("m".into()), Period::Daily, 3), (Scope::Model("m".into()), Period::Weekly, 4)]
    );
    let periods: Vec<(u64, Period)> = store.alerts().unwrap().iter().map(|a| (a.period_start_ms, a.period)).collect();
    assert_eq!(periods, [(1_000, Period::Monthly), (0, Period::None), (1_000, Period::None)]);

    // New spend adds to the old, with its breakdown.
    let mut new = entry(&Scope::Global, Period::Monthly, "openai", "gpt-4o", 8);
    new.period_start_ms = 1_000;
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(store.commit(vec![new], None)).unwrap();
    let row = &store.spend().unwrap()[0];
    assert_eq!((row.spent, row.period_end_ms, row.by_provider.len()), (m(50), Some(99), 2));
}

#[test]
fn a_restart_restores_catalog_usage_and_spend() {
    let (_dir, path) = db();
    let catalog = default_catalog().unwrap();
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        store.save_catalog(&catalog).unwrap();
        store.record_detached(record("gpt-4o", 5, None));
        store.commit_detached(
            vec![entry(&Scope::Provider("openai".into()), Period::Daily, "openai", "gpt-4o", 3)],
            None,
        );
        // Dropped without an explicit flush: dropping flushes.
    }
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let restored = store.restore().unwrap();
    let mut expected = catalog.clone();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(restored.models, expected);
    assert_eq!(restored.usage.len(), 1);
    let three = Money::from_nanos(3);
    assert_eq!(
        restored.spend,
        [SpendRow {
            scope: Scope::Provider("openai".into()),
            period: Period::Daily,
            period_start_ms: 77,
            period_end_ms: Some(99),
            spent: three,
            by_provider: [("openai".to_owned(), three)].into(),
            by_model: [("gpt-4o".to_owned(), three)].into(),
        }]
    );
    assert!(store.remove_model("gpt-4o").unwrap());
    assert!(!store.remove_model("gpt-4o").unwrap());
}

#[test]
fn an_unreadable_catalog_row_is_reported_not_skipped() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    Connection::open(&path).unwrap().execute("INSERT INTO models VALUES ('broken', '{\"id\":', 0)", []).unwrap();
    let err = store.load_catalog().unwrap_err();
    assert!(err.to_string().starts_with("stored models row \"broken\" cannot be read: "), "{err}");
}

// ---- Response cache ---------------------------------------------------------

fn cache_store(path: &Path, clock: &Arc<ManualClock>, config: StoreConfig) -> Store {
    let shared = Arc::clone(clock);
    Store::open_with_clock(path, config, move || shared.now_ms()).unwrap()
}

#[test]
fn cache_hits_expire_and_keys_ignore_field_order() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = cache_store(&path, &clock, StoreConfig::default());
    let a: serde_json::Value =
        serde_json::from_str(r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(r#"{"messages":[{"content":"hi","role":"user"}],"model":"x"}"#).unwrap();
    assert_eq!(cache_key(&a), cache_key(&b));
    let key = cache_key(&a);
    assert_eq!(store.cache_get(&key).unwrap(), None);
    store.cache_put(key, "m", &serde_json::json!({"answer": 42}), Duration::from_mins(1)).unwrap();
    store.flush().unwrap();
    assert_eq!(store.cache_get(&key).unwrap(), Some(serde_json::json!({"answer": 42})));
    clock.advance_ms(60_000);
    assert_eq!(store.cache_get(&key).unwrap(), None, "expired");
    let stats = store.cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 2));
}

#[test]
fn the_cache_keeps_to_its_entry_and_byte_limits() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(1));
    let store = cache_store(
        &path,
        &clock,
        StoreConfig { cache_max_entries: 5, cache_max_bytes: 1_000_000, ..StoreConfig::default() },
    );
    for i in 0..8u8 {
        store.cache_put([i; 32], "m", &serde_json::json!(i), Duration::from_mins(1)).unwrap();
        clock.advance_ms(1);
    }
    store.flush().unwrap();
    assert_eq!(store.cache_get(&[0; 32]).unwrap(), None, "oldest evicted");
    assert_eq!(store.cache_get(&[7; 32]).unwrap(), Some(serde_json::json!(7)));
    let rows: i64 = Connection::open(&path).unwrap().query_row("SELECT COUNT(*) FROM cache", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 5);

    let (_dir2, path2) = db();
    let store = cache_store(
        &path2,
        &clock,
        StoreConfig { cache_max_entries: 100, cache_max_bytes: 50, ..StoreConfig::default() },
    );
    for i in 0..4u8 {
        store.cache_put([i; 32], "m", &serde_json::json!("twenty bytes of text"), Duration::from_mins(1)).unwrap();
        clock.advance_ms(1);
    }
    store.flush().unwrap();
    let bytes: i64 =
        Connection::open(&path2).unwrap().query_row("SELECT SUM(size) FROM cache", [], |r| r.get(0)).unwrap();
    assert!(bytes <= 50, "{bytes}");
}

/// Overwrites entry `key`'s stored bytes (and optionally its checksum).
fn corrupt(path: &Path, key: [u8; 32], value: &[u8], fix_checksum: bool) {
    let conn = Connection::open(path).unwrap();
    if fix_checksum {
        use sha2::Digest;
        let checksum: [u8; 32] = sha2::Sha256::digest(value).into();
        conn.execute(
            "UPDATE cache SET value = ?1, checksum = ?2 WHERE key = ?3",
            params![value, &checksum[..], &key[..]],
        )
        .unwrap();
    } else {
        conn.execute("UPDATE cache SET value = ?1 WHERE key = ?2", params![value, &key[..]]).unwrap();
    }
}

#[test]
fn corrupted_entries_are_removed_one_by_one_and_valid_ones_stay() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(1));
    // Five corruptions in a row would degrade the default cache (tested below).
    let tolerant = DegradationConfig { failure_threshold: 10, ..DegradationConfig::default() };
    let store = cache_store(&path, &clock, StoreConfig { cache_degradation: tolerant, ..StoreConfig::default() });
    for i in 0..10u8 {
        store.cache_put([i; 32], "m", &serde_json::json!({"n": i}), Duration::from_mins(10)).unwrap();
    }
    store.flush().unwrap();
    // With a valid checksum so each check below is what catches it.
    corrupt(&path, [0; 32], br#"{"n": 0"#, true); // truncated JSON
    corrupt(&path, [1; 32], b"{n: 1}", true); // invalid JSON
    corrupt(&path, [2; 32], &[0xff, 0xfe, 0x7b], true); // invalid UTF-8
    corrupt(&path, [3; 32], b"{\"n\": \"\0\"}", true); // NUL byte
    corrupt(&path, [4; 32], br#"{"n": 44}"#, false); // checksum mismatch
    for i in 0..5u8 {
        assert_eq!(store.cache_get(&[i; 32]).unwrap(), None, "entry {i} is corrupted");
    }
    for i in 5..10u8 {
        assert_eq!(store.cache_get(&[i; 32]).unwrap(), Some(serde_json::json!({"n": i})), "entry {i} stays");
    }
    let stats = store.cache_stats();
    assert_eq!((stats.corrupted, stats.hits, stats.degraded), (5, 5, false));
    let rows: i64 = Connection::open(&path).unwrap().query_row("SELECT COUNT(*) FROM cache", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 5, "the corrupted rows were deleted");
}

#[test]
fn repeated_corruption_degrades_the_cache_until_writes_succeed() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(1));
    let config = StoreConfig {
        cache_degradation: DegradationConfig { failure_threshold: 3, recovery_threshold: 2, enabled: true },
        ..StoreConfig::default()
    };
    let store = cache_store(&path, &clock, config);
    for i in 0..4u8 {
        store.cache_put([i; 32], "m", &serde_json::json!(i), Duration::from_mins(10)).unwrap();
    }
    store.flush().unwrap();
    for i in 0..4u8 {
        corrupt(&path, [i; 32], b"garbage", true);
    }
    for i in 0..3u8 {
        assert_eq!(store.cache_get(&[i; 32]).unwrap(), None);
    }
    assert!(store.cache_stats().degraded);
    assert_eq!(store.cache_get(&[3; 32]).unwrap(), None);
    assert_eq!(store.cache_stats().bypassed, 1, "degraded: the read was bypassed");
    // Serving goes on; successful writes bring the cache back.
    store.cache_put([9; 32], "m", &serde_json::json!("fresh"), Duration::from_mins(10)).unwrap();
    store.cache_put([8; 32], "m", &serde_json::json!("fresh"), Duration::from_mins(10)).unwrap();
    store.flush().unwrap();
    assert!(!store.cache_stats().degraded);
    assert_eq!(store.cache_get(&[9; 32]).unwrap(), Some(serde_json::json!("fresh")));
    assert_eq!(store.cache_scrub().unwrap(), 1, "the one corrupted entry never read is found by a scrub");
}

#[test]
fn a_store_opened_on_a_corrupted_cache_serves() {
    let (_dir, path) = db();
    {
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        store.cache_put([1; 32], "m", &serde_json::json!("ok"), Duration::from_mins(10)).unwrap();
        store.cache_put([2; 32], "m", &serde_json::json!("ok"), Duration::from_mins(10)).unwrap();
    }
    corrupt(&path, [1; 32], b"\xff\xff", false);
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    assert_eq!(store.cache_get(&[1; 32]).unwrap(), None);
    assert_eq!(store.cache_get(&[2; 32]).unwrap(), Some(serde_json::json!("ok")));
    store.record_detached(record("m", 1, None));
    store.flush().unwrap();
}

// ---- Retention of the performance log -------------------------------------------

const DAY: u64 = 24 * 60 * 60 * 1_000;
const HOUR: u64 = 60 * 60 * 1_000;

/// The `at_ms` of the performance rows on file, oldest first.
fn perf_times(store: &Store) -> Vec<u64> {
    store.perf_log(None, 0, u64::MAX, 1_000_000).unwrap().into_iter().map(|r| r.at_ms).collect()
}

#[tokio::test]
async fn old_performance_rows_are_pruned_hourly_and_spend_stays() {
    let (_dir, path) = db();
    let now = 100 * DAY;
    let clock = Arc::new(ManualClock::new(now));
    let store = cache_store(&path, &clock, StoreConfig { retain_days: 30, ..StoreConfig::default() });
    // The prune at open found nothing; these land after it.
    let times = [now - 40 * DAY, now - 30 * DAY - 1, now - 30 * DAY + 10 * 60 * 1_000, now - DAY];
    for at in times {
        store.commit(settlement("openai", "m", 5), Some(record("m", at, None))).await.unwrap();
    }
    store.flush().unwrap();
    assert_eq!(perf_times(&store), times, "no prune until an hour has passed");
    clock.advance_ms(HOUR / 2);
    store.flush().unwrap();
    assert_eq!(perf_times(&store).len(), 4, "at most one prune an hour");
    clock.advance_ms(HOUR / 2);
    // A prune due runs before the next transaction: done when the flush returns.
    store.flush().unwrap();
    assert_eq!(perf_times(&store), [now - DAY], "rows older than 30 days at now + 1 h are gone");
    assert_eq!(store.perf_rows_pruned(), 3);
    assert_eq!(spent(&store)[0], (Scope::Global, Period::Monthly, 20), "spend is never pruned");
    assert_eq!(store.usage().unwrap()[0].requests, 4, "usage totals stay");
}

#[test]
fn the_writer_prunes_when_the_store_opens() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(10 * DAY));
    {
        let store = cache_store(&path, &clock, StoreConfig::default());
        for day in 0..10 {
            store.record_detached(record("m", day * DAY, None));
        }
        store.close().unwrap();
    }
    clock.advance_ms(25 * DAY); // now: day 35, the window starts at day 5
    let store = cache_store(&path, &clock, StoreConfig::default());
    store.flush().unwrap();
    assert_eq!(perf_times(&store), (5..10).map(|d| d * DAY).collect::<Vec<_>>());
    assert_eq!(store.usage().unwrap()[0].requests, 10);
}

#[test]
fn retention_zero_keeps_every_row() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(1_000 * DAY));
    let config = StoreConfig { retain_days: 0, ..StoreConfig::default() };
    {
        let store = cache_store(&path, &clock, config);
        for day in 0..10 {
            store.record_detached(record("m", day * DAY, None));
        }
        store.close().unwrap();
    }
    clock.advance_ms(1_000 * DAY);
    let store = cache_store(&path, &clock, config);
    clock.advance_ms(2 * HOUR);
    store.flush().unwrap();
    assert_eq!(perf_times(&store).len(), 10);
    assert_eq!(store.perf_rows_pruned(), 0);
}

#[test]
fn a_prune_deletes_in_bounded_batches_oldest_first() {
    let (_dir, path) = db();
    {
        let store = Store::open(&path, StoreConfig { retain_days: 0, ..StoreConfig::default() }).unwrap();
        for at in [50, 10, 40, 20, 30, 60] {
            store.record_detached(record("m", at, None));
        }
        store.close().unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    let left = |conn: &Connection| -> Vec<i64> {
        conn.prepare("SELECT at_ms FROM perf_log ORDER BY at_ms")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert_eq!(crate::writer::prune_perf(&conn, 55, 3).unwrap(), 3, "a full batch: more may be left");
    assert_eq!(left(&conn), [40, 50, 60]);
    assert_eq!(crate::writer::prune_perf(&conn, 55, 3).unwrap(), 2, "short: the prune is done");
    assert_eq!(left(&conn), [60]);
    assert_eq!(crate::writer::PRUNE_BATCH_ROWS, 10_000);
}

// ---- Cache entries per model, memory ---------------------------------------------

#[test]
fn dropping_a_models_cache_entries_keeps_the_others() {
    let (_dir, path) = db();
    let clock = Arc::new(ManualClock::new(1));
    let store = cache_store(&path, &clock, StoreConfig::default());
    for i in 0..4u8 {
        let model = if i % 2 == 0 { "A" } else { "B" };
        store.cache_put([i; 32], model, &serde_json::json!(i), Duration::from_mins(10)).unwrap();
    }
    store.flush().unwrap();
    // Queued, not yet committed: dropped too (the drop is ordered after it).
    store.cache_put([8; 32], "A", &serde_json::json!(8), Duration::from_mins(10)).unwrap();
    store.cache_drop_model("A").unwrap();
    for i in [0u8, 2, 8] {
        assert_eq!(store.cache_get(&[i; 32]).unwrap(), None, "A's entry {i} is gone");
    }
    for i in [1u8, 3] {
        assert_eq!(store.cache_get(&[i; 32]).unwrap(), Some(serde_json::json!(i)), "B's entry {i} stays");
    }
    let stats = store.cache_stats();
    assert_eq!((stats.corrupted, stats.degraded), (0, false));
    store.cache_drop_model("nobody").unwrap();
}

#[test]
fn shrinking_memory_keeps_the_store_working() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    store.cache_put([1; 32], "m", &serde_json::json!("kept"), Duration::from_mins(1)).unwrap();
    store.shrink_memory().unwrap();
    store.flush().unwrap();
    assert_eq!(store.cache_get(&[1; 32]).unwrap(), Some(serde_json::json!("kept")));
    store.shrink_memory().unwrap();
    store.record_detached(record("m", 1, None));
    store.flush().unwrap();
    assert_eq!(store.usage().unwrap()[0].requests, 1);
}

// ---- Durability: SIGKILL in the middle of a write load ----------------------

const CHILD: &str = "MODELFLEET_STORE_KILL_CHILD";

/// In the child role: write rows as fast as possible, announcing each flush.
fn child_writer(path: &str) {
    let store = Store::open(path, StoreConfig { batch_rows: 256, ..StoreConfig::default() }).unwrap();
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < Duration::from_mins(1) {
        for _ in 0..250 {
            store.record_detached(record("m", written, None));
            written += 1;
        }
        store.flush().unwrap();
        println!("flushed {written}");
    }
}

#[test]
fn flushed_rows_survive_sigkill() {
    if let Ok(path) = std::env::var(CHILD) {
        child_writer(&path);
        return;
    }
    let (_dir, path) = db();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["tests::flushed_rows_survive_sigkill", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut flushed = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("flushed ") {
            flushed = n.trim().parse().unwrap();
            if flushed >= 5_000 {
                break; // the writer is mid-load: unflushed rows are queued right now
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(flushed >= 5_000, "the child never got going");
    let report = check(&path).unwrap();
    assert!(report.problems.is_empty(), "integrity after the kill: {:?}", report.problems);
    // The child's rows are timestamped from 0: kept, not pruned as old.
    let store = Store::open(&path, StoreConfig { retain_days: 0, ..StoreConfig::default() }).unwrap();
    let rows = store.perf_log(Some("m"), 0, u64::MAX, usize::MAX >> 1).unwrap().len() as u64;
    assert!(rows >= flushed, "{rows} rows survived, {flushed} had been flushed");
    let usage = store.usage().unwrap();
    assert_eq!(usage[0].requests, rows, "usage and log were committed together");
}

// ---- Round trips of every record type ---------------------------------------

fn arb_perf() -> impl Strategy<Value = PerfRecord> {
    (
        0u64..4_000_000_000_000,
        "[a-z0-9.-]{1,20}",
        proptest::sample::select(Category::ALL.to_vec()),
        proptest::option::of("[a-z]{2}"),
        (0u64..3_600_000_000, proptest::option::of(0u64..3_600_000_000)),
        (0u64..1_000_000, 0u64..1_000_000, 0u64..1_000_000),
        0i64..1_000_000_000_000,
        proptest::option::of(proptest::sample::select(ErrorClass::ALL.to_vec())),
        proptest::option::of(0.0f64..=1.0),
    )
        .prop_map(
            |(at_ms, model, kind, language, (latency_us, ttft_us), (input, output, cached), cost, error, quality)| {
                PerfRecord {
                    at_ms,
                    model,
                    provider: "p".into(),
                    kind,
                    language,
                    latency_us,
                    ttft_us,
                    input_tokens: input,
                    output_tokens: output,
                    cached_tokens: cached,
                    cost: Money::from_nanos(cost),
                    error,
                    quality,
                    request_id: None,
                    key_name: None,
                    route: None,
                    attempt: 1,
                    fallback: false,
                    rating: None,
                }
            },
        )
}

fn arb_scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just(Scope::Global),
        "[a-z]{1,8}".prop_map(Scope::Provider),
        "[a-z0-9-]{1,12}".prop_map(Scope::Model),
        ".{0,12}".prop_map(Scope::Key),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn perf_records_round_trip(records in proptest::collection::vec(arb_perf(), 1..20)) {
        let (_dir, path) = db();
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        for r in &records {
            store.record_detached(r.clone());
        }
        store.flush().unwrap();
        let mut expected = records.clone();
        expected.sort_by_key(|r| r.at_ms);
        let mut loaded = store.perf_log(None, 0, u64::MAX, 1_000).unwrap();
        loaded.sort_by_key(|r| r.at_ms);
        // Rows with equal timestamps come back in insertion order; compare as multisets.
        prop_assert_eq!(loaded.len(), expected.len());
        for r in &expected {
            prop_assert!(loaded.contains(r), "{:?} missing", r);
        }
    }

    #[test]
    fn specs_spend_and_alerts_round_trip(
        quality in proptest::option::of(0.0f64..=1.0),
        price in 0i64..100_000_000_000,
        scope in arb_scope(),
        period in proptest::sample::select(vec![Period::Daily, Period::Weekly, Period::Monthly, Period::None]),
        amounts in proptest::collection::vec(0i64..1_000_000_000, 1..10),
        threshold in 1u8..=200,
    ) {
        let (_dir, path) = db();
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let mut spec = ModelSpec::new("round-trip", "p");
        spec.quality = quality;
        spec.pricing = Some(Pricing { input_per_mtok: Money::from_nanos(price), ..Pricing::FREE });
        store.save_model(&spec).unwrap();
        prop_assert_eq!(store.load_catalog().unwrap(), vec![spec]);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for a in &amounts {
            let spend = vec![entry(&scope, period, "p", "round-trip", *a)];
            runtime.block_on(store.commit(spend, None)).unwrap();
        }
        let total = Money::from_nanos(amounts.iter().sum());
        let spend = store.spend().unwrap();
        prop_assert_eq!(spend, vec![SpendRow {
            scope: scope.clone(),
            period,
            period_start_ms: 77,
            period_end_ms: Some(99),
            spent: total,
            by_provider: [("p".to_owned(), total)].into(),
            by_model: [("round-trip".to_owned(), total)].into(),
        }]);
        let alert = Alert { scope, period, threshold, spent: Money::from_nanos(5), limit: Money::from_nanos(9), period_start_ms: 77, at_ms: 78 };
        store.save_alert(&alert).unwrap();
        store.flush().unwrap();
        prop_assert_eq!(store.alerts().unwrap(), vec![alert]);
    }

    #[test]
    fn cache_values_round_trip(value in proptest::collection::btree_map("[a-z]{1,6}", ".{0,30}", 0..6)) {
        let (_dir, path) = db();
        let store = Store::open(&path, StoreConfig::default()).unwrap();
        let json = serde_json::to_value(&value).unwrap();
        let key = cache_key(&json);
        store.cache_put(key, "m", &json, Duration::from_mins(1)).unwrap();
        store.flush().unwrap();
        prop_assert_eq!(store.cache_get(&key).unwrap(), Some(json));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_off_the_commit_path_and_stays_bounded() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let wal_bytes = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // 6,000 commits of a few pages each: some 125 MB of WAL if nothing moved
    // it into the database; the checkpoints let it start over every 1,000 to
    // 2,000 or so (it never shrinks: its largest size is what it reached).
    let mut largest = 0;
    for i in 0..6_000 {
        store.commit(settlement("openai", "gpt-4o", 1), Some(record("gpt-4o", i, None))).await.unwrap();
        largest = largest.max(wal_bytes());
    }
    // Generous: on a loaded 2-core machine the checkpointer (a thread of
    // its own) runs late, and the WAL reached 60 MB once; without it, 125.
    assert!(largest < 96 * 1024 * 1024, "the WAL grew to {largest} bytes");
    assert_eq!(spent(&store)[0].2, 6_000);
}

#[test]
fn flush_and_checkpoint_leaves_everything_in_the_file_and_an_empty_wal() {
    let (_dir, path) = db();
    let store = Store::open(&path, StoreConfig::default()).unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let marker = "an answer only the checkpoint can move into the file";
    store.cache_put([7; 32], "m", &serde_json::json!(marker), Duration::from_mins(1)).unwrap();
    store.flush().unwrap();
    // Flushed: committed, but in the WAL (a passive checkpoint never truncates it).
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "a flush leaves the WAL as it is");
    store.flush_and_checkpoint().unwrap();
    // The store is still open, yet the file alone holds the answer.
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "the WAL is truncated");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "the answer is in the database file");
    assert_eq!(store.cache_get(&[7; 32]).unwrap(), Some(serde_json::json!(marker)));
}
