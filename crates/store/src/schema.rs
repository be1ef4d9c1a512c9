//! Opening a database: file checks, pragmas, integrity, migrations.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags};

use crate::Error;

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
/// Never edit one that has shipped: add the next.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );
    CREATE TABLE usage (
        model TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        requests INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        latency_us_sum INTEGER NOT NULL,
        quality_sum REAL NOT NULL,
        quality_count INTEGER NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL
    );
    CREATE TABLE perf_log (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        kind TEXT NOT NULL,
        language TEXT,
        latency_us INTEGER NOT NULL,
        ttft_us INTEGER,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        error TEXT,
        quality REAL
    );
    CREATE INDEX perf_log_model_time ON perf_log (model, at_ms);
    CREATE INDEX perf_log_time ON perf_log (at_ms);
    CREATE TABLE budget_spend (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        period_start_ms INTEGER NOT NULL,
        spent_nanos INTEGER NOT NULL,
        PRIMARY KEY (scope, period, period_start_ms)
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        scope TEXT NOT NULL,
        threshold INTEGER NOT NULL,
        spent_nanos INTEGER NOT NULL,
        limit_nanos INTEGER NOT NULL,
        period_start_ms INTEGER NOT NULL
    );
    CREATE TABLE cache (
        key BLOB PRIMARY KEY,
        value BLOB NOT NULL,
        checksum BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE INDEX cache_created ON cache (created_ms);
    CREATE INDEX cache_expires ON cache (expires_ms);
    ",
    // 2: spend per provider and model with the period's end; alerts name
    // their period; budgets created through the API and their audit trail.
    //
    // Old spend has no breakdown: it moves under provider '' and model ''.
    // Old alerts get the period they can be proven to have: 'none' when the
    // period started at 0 (only a lifetime budget does), else the one period
    // the old ledger holds for that scope and start; otherwise NULL, which
    // reads back as a lifetime budget's alert with a non-zero start, so it
    // never matches a current period (see `Store::alerts`).
    "
    CREATE TABLE budget_spend_v2 (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        period_start_ms INTEGER NOT NULL,
        period_end_ms INTEGER,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        spent_nanos INTEGER NOT NULL,
        PRIMARY KEY (scope, period, period_start_ms, provider, model)
    );
    INSERT INTO budget_spend_v2 (scope, period, period_start_ms, period_end_ms, provider, model, spent_nanos)
        SELECT scope, period, period_start_ms, NULL, '', '', spent_nanos FROM budget_spend;
    ALTER TABLE alerts ADD COLUMN period TEXT;
    UPDATE alerts SET period = CASE
        WHEN period_start_ms = 0 THEN '\"none\"'
        ELSE (SELECT CASE WHEN COUNT(DISTINCT s.period) = 1 THEN MIN(s.period) END FROM budget_spend s
              WHERE s.scope = alerts.scope AND s.period_start_ms = alerts.period_start_ms)
    END;
    DROP TABLE budget_spend;
    ALTER TABLE budget_spend_v2 RENAME TO budget_spend;
    CREATE TABLE budgets (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        spec TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, period)
    );
    CREATE TABLE budget_audit (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    ",
];

/// The schema version this build writes.
#[allow(clippy::cast_possible_wrap)] // a handful of migrations
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How strictly commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives the process being
    /// killed; the last commits may be lost on power failure or an OS crash.
    #[default]
    Process,
    /// `synchronous=FULL`: a commit also survives power failure, at the cost
    /// of an fsync per transaction.
    PowerLoss,
}

/// Refuses a file that exists, has content and is not SQLite.
fn check_header(path: &Path) -> Result<(), Error> {
    let Ok(mut file) = fs::File::open(path) else { return Ok(()) };
    let mut header = [0u8; 16];
    let read = file.read(&mut header).map_err(|e| Error::io(path, &e))?;
    if read == 0 {
        return Ok(()); // an empty file becomes a new database
    }
    if read < HEADER.len() || &header != HEADER {
        return Err(Error::NotSqlite { path: path.to_owned() });
    }
    Ok(())
}

/// Opens one connection with the store's pragmas.
pub(crate) fn connect(path: &Path, durability: Durability) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::open(path, &e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| Error::open(path, &e))?;
    let mode: String =
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(|e| Error::open(path, &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot switch to WAL mode (got {mode})"),
        });
    }
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::PowerLoss => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous).map_err(|e| Error::open(path, &e))?;
    conn.pragma_update(None, "foreign_keys", true).map_err(|e| Error::open(path, &e))?;
    // Committing connections never checkpoint: a checkpoint copies the WAL
    // into the database and syncs it, milliseconds that would fall on the
    // commit a request awaits. The checkpointer thread does it instead.
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| Error::open(path, &e))?;
    Ok(conn)
}

/// How often the checkpointer moves the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Starts the thread that checkpoints the WAL (`PASSIVE`: it never waits
/// for, nor blocks, the writer or readers), on a connection of its own,
/// every [`CHECKPOINT_EVERY`] until the sender it returns is dropped. A
/// failed checkpoint is retried at the next tick; SQLite checkpoints once
/// more when the last connection closes.
pub(crate) fn checkpointer(
    path: &Path,
    durability: Durability,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>), Error> {
    let conn = connect(path, durability)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("modelfleet-store-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
        .map_err(|e| Error::io(path, &e))?;
    Ok((stop, thread))
}

/// Checks, integrity-checks and migrates the database at `path`; the first
/// connection is returned for reuse.
pub(crate) fn open(path: &Path, durability: Durability) -> Result<Connection, Error> {
    check_header(path)?;
    let mut conn = connect(path, durability)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| Error::open(path, &e))?;
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew { path: path.to_owned(), found: version, supported: SCHEMA_VERSION });
    }
    let problems = quick_check(&conn).map_err(|e| Error::open(path, &e))?;
    if !problems.is_empty() {
        return Err(Error::Corrupt { path: path.to_owned(), detail: problems.join("; ") });
    }
    if version < SCHEMA_VERSION {
        let tx = conn.transaction().map_err(|e| Error::open(path, &e))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            tx.execute_batch(sql).map_err(|e| Error::sqlite("migrating the schema", &e))?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX))
                .map_err(|e| Error::sqlite("migrating the schema", &e))?;
        }
        tx.commit().map_err(|e| Error::sqlite("migrating the schema", &e))?;
    }
    Ok(conn)
}

/// `PRAGMA quick_check`'s complaints (none when the file is sound).
fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// Moves a database that cannot be opened (and its `-wal` and `-shm` files)
/// aside, to `<file>.corrupt-<unix ms>`, so a fresh one can be created. The
/// old file is kept for inspection, never deleted.
pub fn quarantine(path: &Path, now_ms: u64) -> Result<PathBuf, Error> {
    let aside = |p: &Path| {
        let mut name = p.as_os_str().to_owned();
        name.push(format!(".corrupt-{now_ms}"));
        PathBuf::from(name)
    };
    let target = aside(path);
    fs::rename(path, &target).map_err(|e| Error::io(path, &e))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            fs::rename(&side, aside(&side)).map_err(|e| Error::io(&side, &e))?;
        }
    }
    Ok(target)
}

/// What `modelfleet db check` reports about a database file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// The schema version found.
    pub schema_version: i64,
    /// The version this build writes.
    pub supported_version: i64,
    /// `PRAGMA quick_check` problems (empty when sound).
    pub problems: Vec<String>,
    /// The main file's size in bytes.
    pub file_bytes: u64,
    /// The write-ahead log's size in bytes.
    pub wal_bytes: u64,
    /// Rows per table.
    pub tables: Vec<(String, i64)>,
}

/// Inspects `path` read-only: header, version, integrity, sizes, row counts.
pub fn check(path: &Path) -> Result<CheckReport, Error> {
    if !path.exists() {
        return Err(Error::Io { path: path.to_owned(), message: "no such file".into() });
    }
    check_header(path)?;
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| Error::open(path, &e))?;
    let schema_version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| Error::open(path, &e))?;
    let problems = quick_check(&conn).map_err(|e| Error::open(path, &e))?;
    let mut tables = Vec::new();
    if problems.is_empty() {
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| Error::open(path, &e))?;
        for name in names {
            let rows: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM \"{}\"", name.replace('"', "\"\"")), [], |r| r.get(0))
                .map_err(|e| Error::open(path, &e))?;
            tables.push((name, rows));
        }
    }
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(CheckReport {
        schema_version,
        supported_version: SCHEMA_VERSION,
        problems,
        file_bytes: size(path),
        wal_bytes: size(Path::new(&wal)),
        tables,
    })
}
