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
    // 3: cache entries name the model that answered, so a model's entries
    // can be dropped when its spec changes. Old entries do not say which
    // model answered: they are deleted (a cache, not history).
    "
    DELETE FROM cache;
    ALTER TABLE cache ADD COLUMN model TEXT NOT NULL DEFAULT '';
    CREATE INDEX cache_model ON cache (model);
    ",
    // 4: performance rows say which request, key, route and attempt they
    // are, and carry the user's rating; ratings keep their comment; hourly
    // aggregates per model, provider, category, language and key outlive
    // the raw rows (see `history.rs`). The aggregates of the rows already
    // kept are built after this script (`history::backfill`).
    "
    ALTER TABLE perf_log ADD COLUMN request_id TEXT;
    ALTER TABLE perf_log ADD COLUMN key_name TEXT;
    ALTER TABLE perf_log ADD COLUMN route TEXT;
    ALTER TABLE perf_log ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE perf_log ADD COLUMN fallback INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE perf_log ADD COLUMN rating INTEGER;
    CREATE INDEX perf_log_request ON perf_log (request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE feedback (
        request_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        rating INTEGER NOT NULL,
        comment TEXT,
        who TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX feedback_time ON feedback (at_ms);
    CREATE TABLE perf_hourly (
        dim TEXT NOT NULL,
        value TEXT NOT NULL,
        hour_ms INTEGER NOT NULL,
        provider TEXT NOT NULL,
        requests INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        client_faults INTEGER NOT NULL,
        aborted INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        fallbacks INTEGER NOT NULL,
        ratings INTEGER NOT NULL,
        rating_sum INTEGER NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        latency BLOB NOT NULL,
        ttft BLOB NOT NULL,
        PRIMARY KEY (dim, value, hour_ms)
    ) WITHOUT ROWID;
    CREATE INDEX perf_hourly_time ON perf_hourly (dim, hour_ms);
    ",
];

/// The schema version this build writes.
#[allow(clippy::cast_possible_wrap)] // a handful of migrations
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The `PRAGMA application_id` of a modelfleet database: `MFLT` in ASCII.
/// Set on every file this build creates or migrates; files of schema
/// versions 1 and 2 were written without one (0) and are stamped when
/// opened.
pub const APPLICATION_ID: u32 = 0x4D46_4C54;

/// Files up to this size (256 MiB) are integrity-checked (`PRAGMA
/// quick_check`) before they are opened read-write; larger ones after, in
/// the background (see [`Integrity`]), so opening a big file does not take
/// minutes. The default of [`StoreConfig::check_on_open_max_bytes`].
///
/// [`StoreConfig::check_on_open_max_bytes`]: crate::StoreConfig::check_on_open_max_bytes
pub const CHECK_ON_OPEN_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The tables of schema version `version` (at least 1), sorted: what tells a
/// modelfleet file without an application id from somebody else's. Extend it
/// when a migration adds or drops a table.
fn tables_of(version: i64) -> &'static [&'static str] {
    const V1: &[&str] = &["alerts", "budget_spend", "cache", "models", "perf_log", "usage"];
    const V2: &[&str] = &["alerts", "budget_audit", "budget_spend", "budgets", "cache", "models", "perf_log", "usage"];
    const V4: &[&str] = &[
        "alerts",
        "budget_audit",
        "budget_spend",
        "budgets",
        "cache",
        "feedback",
        "models",
        "perf_hourly",
        "perf_log",
        "usage",
    ];
    match version {
        ..=1 => V1,
        2 | 3 => V2,
        _ => V4,
    }
}

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

/// Where the integrity check (`PRAGMA quick_check`) of an open store's file
/// stands: see [`Store::integrity`](crate::Store::integrity).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum Integrity {
    /// The check passed (before the file was opened read-write, or in the
    /// background), or the file was created empty.
    Sound,
    /// The file is larger than `check_on_open_max_bytes`: it was opened
    /// unchecked and the check runs in the background.
    Checking,
    /// The background check found problems, or could not run (sanitized).
    /// The store goes on serving; the file wants `modelfleet db check`.
    Failed(String),
}

/// `path` with `suffix` appended (`fleet.db-wal`).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What the first 100 bytes of an SQLite file say, read without SQLite.
struct Header {
    /// The application id in the main file (a newer one may wait in the WAL).
    application_id: u32,
    /// Whether the file is in WAL mode.
    wal: bool,
}

/// The header of the file at `path`; `None` when there is no file or it is
/// empty (a new database). Refuses a file that is not SQLite.
fn read_header(path: &Path) -> Result<Option<Header>, Error> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io(path, &err)),
    };
    let mut header = Vec::with_capacity(100);
    file.take(100).read_to_end(&mut header).map_err(|e| Error::io(path, &e))?;
    if header.is_empty() {
        return Ok(None); // an empty file becomes a new database
    }
    if header.len() < 100 || !header.starts_with(HEADER) {
        return Err(Error::NotSqlite { path: path.to_owned() });
    }
    // The fields SQLite itself insists on: the page size (a power of two
    // from 512 to 65,536, which is written 1), the format versions, the
    // payload fractions. Without them the rest of the header (the
    // application id) means nothing.
    let page_size = u16::from_be_bytes([header[16], header[17]]);
    let sane = (page_size == 1 || (page_size >= 512 && page_size.is_power_of_two()))
        && (1..=2).contains(&header[18])
        && (1..=2).contains(&header[19])
        && header[21..24] == [64, 32, 32];
    if !sane {
        return Err(Error::Corrupt { path: path.to_owned(), detail: "its SQLite header is damaged".into() });
    }
    Ok(Some(Header {
        application_id: u32::from_be_bytes([header[68], header[69], header[70], header[71]]),
        wal: header[18] == 2 || header[19] == 2,
    }))
}

/// The `file:` URI of `path` with `immutable=1`, every byte but the
/// unreserved ones percent-encoded (so `?`, `#`, `%` and non-UTF-8 names
/// survive).
fn immutable_uri(path: &Path) -> String {
    let bytes = path.as_os_str().as_encoded_bytes();
    // An absolute path gets an empty authority: `file:///abs`, never `file://abs`.
    let mut uri = String::from(if bytes.first() == Some(&b'/') { "file://" } else { "file:" });
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            uri.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            uri.extend(['%', char::from(HEX[usize::from(b >> 4)]), char::from(HEX[usize::from(b & 0xF)])]);
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// A read-only connection to an existing file that changes nothing on disk.
///
/// SQLite opening a WAL-mode file read-only creates `-wal` and `-shm`
/// beside it and leaves them; when there is no `-wal` (no connection has
/// the file open in WAL mode, so its content is all in the main file) the
/// file is opened `immutable` instead, which creates nothing. A
/// rollback-journal file opened read-only gets nothing beside it either; one
/// with a hot journal is refused (`SQLITE_READONLY_ROLLBACK`), not recovered.
fn open_read_only(path: &Path, header: &Header) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if header.wal && !beside(path, "-wal").exists() {
        Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)
    } else {
        Connection::open_with_flags(path, flags)
    }
    .map_err(|e| Error::open(path, &e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| Error::open(path, &e))?;
    Ok(conn)
}

/// `PRAGMA application_id` (a signed 32-bit integer) as the unsigned id.
fn application_id(raw: i64) -> u32 {
    i32::try_from(raw).map_or_else(|_| u32::try_from(raw).unwrap_or(u32::MAX), i32::cast_unsigned)
}

/// What a read-only look at an existing file found.
struct Inspection {
    /// The read-only connection, for more reads ([`check`]).
    conn: Connection,
    /// Its `user_version`.
    version: i64,
    /// Its application id.
    application_id: u32,
    /// `PRAGMA quick_check`'s complaints; `None` when not run.
    problems: Option<Vec<String>>,
}

/// Looks at the existing file at `path` read-only, changing nothing on
/// disk: refuses it when it is not a modelfleet database (see
/// [`identify`]), and runs `PRAGMA quick_check` when `quick_check`.
fn inspect(path: &Path, header: &Header, quick_check: bool) -> Result<Inspection, Error> {
    if header.application_id != 0 && header.application_id != APPLICATION_ID {
        // Not ours whatever it holds: not even opened by SQLite.
        return Err(foreign_id(path, header.application_id));
    }
    let conn = open_read_only(path, header)?;
    let read = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(|e| Error::open(path, &e));
    let id = application_id(read("PRAGMA application_id")?);
    let version = read("PRAGMA user_version")?;
    let objects = read("SELECT COUNT(*) FROM sqlite_master")?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite^_%' ESCAPE '^'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| Error::open(path, &e))?;
    identify(path, id, version, objects == 0, &tables)?;
    let problems = if quick_check { Some(self::quick_check(&conn).map_err(|e| Error::open(path, &e))?) } else { None };
    Ok(Inspection { conn, version, application_id: id, problems })
}

fn foreign_id(path: &Path, id: u32) -> Error {
    Error::Foreign {
        path: path.to_owned(),
        reason: format!("its application_id is {id:#010x}, modelfleet's is {APPLICATION_ID:#010x}"),
    }
}

/// Whether a file with application id `id`, `user_version` `version`,
/// nothing in its schema (`empty`) or these `tables` is a modelfleet
/// database this build may open:
///
/// - another application id: somebody else's ([`Error::Foreign`]);
/// - an empty schema at version 0: a new database (it holds nothing);
/// - modelfleet's application id, or 0 (what schema versions 1 and 2 were
///   written with), with a version from 1 to [`SCHEMA_VERSION`] and that
///   version's tables: ours (extra tables are allowed). Missing tables are
///   [`Error::Foreign`] without the id and [`Error::Corrupt`] with it;
/// - modelfleet's id and a newer version: ours, refused as too new by the caller;
/// - anything else: [`Error::Foreign`].
fn identify(path: &Path, id: u32, version: i64, empty: bool, tables: &[String]) -> Result<(), Error> {
    let ours = id == APPLICATION_ID;
    let foreign = |reason: String| Err(Error::Foreign { path: path.to_owned(), reason });
    if !ours && id != 0 {
        return Err(foreign_id(path, id));
    }
    if version == 0 && empty {
        return Ok(());
    }
    if version > SCHEMA_VERSION && ours {
        return Ok(());
    }
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return foreign(format!(
            "it has no modelfleet application_id and its user_version {version} is no modelfleet schema version"
        ));
    }
    let missing: Vec<&str> = tables_of(version).iter().copied().filter(|t| !tables.iter().any(|n| n == t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing.join(", ");
    if ours {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("schema version {version} without its tables {missing}"),
        });
    }
    foreign(format!("user_version {version} but not modelfleet's tables (no {missing})"))
}

/// Opens one read-write connection with the store's pragmas.
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

/// Checks and migrates the database at `path` and returns the first
/// read-write connection, and whether the file still wants its integrity
/// check (it is larger than `check_max_bytes`: see [`background_check`]).
///
/// An existing file is looked at read-only first ([`inspect`]): header,
/// application id, schema version and tables, and `PRAGMA quick_check` when
/// it is at most `check_max_bytes` long. Only a file that passes is opened
/// read-write (WAL mode and the other pragmas), migrated and stamped with
/// [`APPLICATION_ID`], in one transaction. A refused file is left exactly as
/// it was, with nothing created beside it.
pub(crate) fn open(path: &Path, durability: Durability, check_max_bytes: u64) -> Result<(Connection, bool), Error> {
    let mut unchecked = false;
    if let Some(header) = read_header(path)? {
        let bytes = fs::metadata(path).map_err(|e| Error::io(path, &e))?.len();
        let check_now = bytes <= check_max_bytes;
        let inspection = inspect(path, &header, check_now)?;
        if inspection.version > SCHEMA_VERSION {
            return Err(too_new(path, inspection.version));
        }
        if let Some(problems) = inspection.problems.filter(|p| !p.is_empty()) {
            return Err(Error::Corrupt { path: path.to_owned(), detail: problems.join("; ") });
        }
        unchecked = !check_now;
    }
    let mut conn = connect(path, durability)?;
    let read = |conn: &Connection, sql: &str| {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(|e| Error::open(path, &e))
    };
    // Read again on the connection that writes: what was checked is what is migrated.
    let version = read(&conn, "PRAGMA user_version")?;
    let id = application_id(read(&conn, "PRAGMA application_id")?);
    if id != 0 && id != APPLICATION_ID {
        return Err(foreign_id(path, id));
    }
    if version > SCHEMA_VERSION {
        return Err(too_new(path, version));
    }
    if version < SCHEMA_VERSION || id != APPLICATION_ID {
        let migrating = |e: rusqlite::Error| Error::sqlite("migrating the schema", &e);
        let tx = conn.transaction().map_err(|e| Error::open(path, &e))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            tx.execute_batch(sql).map_err(migrating)?;
            if i + 1 == 4 {
                crate::history::backfill(&tx).map_err(migrating)?;
            }
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX)).map_err(migrating)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID.cast_signed()).map_err(migrating)?;
        tx.commit().map_err(migrating)?;
    }
    Ok((conn, unchecked))
}

fn too_new(path: &Path, found: i64) -> Error {
    Error::TooNew { path: path.to_owned(), found, supported: SCHEMA_VERSION }
}

/// `PRAGMA quick_check`'s complaints (none when the file is sound).
fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// The integrity check of a file opened unchecked (too large to check
/// first): `PRAGMA quick_check` on a read-only connection of its own, in a
/// thread, its outcome written to `state` (and logged when it fails). The
/// handle interrupts it (when the store closes: the state stays
/// [`Integrity::Checking`]).
///
/// While it reads, the WAL cannot be checkpointed past what it reads, so the
/// WAL grows with the writes meanwhile and starts over once it is done.
pub(crate) fn background_check(
    path: &Path,
    state: std::sync::Arc<std::sync::Mutex<Integrity>>,
) -> Result<(rusqlite::InterruptHandle, std::thread::JoinHandle<()>), Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::open(path, &e))?;
    let interrupt = conn.get_interrupt_handle();
    let thread = std::thread::Builder::new()
        .name("modelfleet-store-check".into())
        .spawn(move || {
            let outcome = match quick_check(&conn) {
                Ok(problems) if problems.is_empty() => Integrity::Sound,
                Ok(problems) => Integrity::Failed(modelfleet_errors::sanitize(&problems.join("; ")).into_owned()),
                Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => return,
                Err(err) => Integrity::Failed(modelfleet_errors::sanitize(&err.to_string()).into_owned()),
            };
            if let Integrity::Failed(problems) = &outcome {
                tracing::error!(
                    %problems,
                    "the database failed its integrity check (PRAGMA quick_check) after opening; \
                     it keeps serving: run `modelfleet db check`"
                );
            }
            *crate::writer::lock(&state) = outcome;
        })
        .map_err(|e| Error::io(path, &e))?;
    Ok((interrupt, thread))
}

/// Moves a database that cannot be opened (and its `-wal` and `-shm` files)
/// aside, to `<file>.corrupt-<unix ms>`, so a fresh one can be created. The
/// old file is kept for inspection, never deleted.
pub fn quarantine(path: &Path, now_ms: u64) -> Result<PathBuf, Error> {
    let aside = |p: &Path| beside(p, &format!(".corrupt-{now_ms}"));
    let target = aside(path);
    fs::rename(path, &target).map_err(|e| Error::io(path, &e))?;
    for suffix in ["-wal", "-shm"] {
        let side = beside(path, suffix);
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
    /// The file's `PRAGMA application_id`: [`APPLICATION_ID`], or 0 for a
    /// file of schema version 1 or 2 (stamped at its next open) or an empty one.
    pub application_id: u32,
    /// `PRAGMA quick_check` problems (empty when sound).
    pub problems: Vec<String>,
    /// The main file's size in bytes.
    pub file_bytes: u64,
    /// The write-ahead log's size in bytes.
    pub wal_bytes: u64,
    /// Rows per table.
    pub tables: Vec<(String, i64)>,
}

/// Inspects `path` read-only, by the rules [`Store::open`] applies before it
/// writes anything (header, application id, schema version and tables) and
/// always with `PRAGMA quick_check` whatever the file's size; then sizes and
/// row counts. Nothing is created or changed on disk.
///
/// A file `Store::open` would refuse as not SQLite, corrupted or not a
/// modelfleet database is an `Err`; a schema newer than this build, or
/// `quick_check` problems, are in the report (open refuses those too).
///
/// [`Store::open`]: crate::Store::open
pub fn check(path: &Path) -> Result<CheckReport, Error> {
    if !path.exists() {
        return Err(Error::Io { path: path.to_owned(), message: "no such file".into() });
    }
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let wal_bytes = size(&beside(path, "-wal"));
    let Some(header) = read_header(path)? else {
        // Empty: `Store::open` makes a new database of it.
        return Ok(CheckReport {
            schema_version: 0,
            supported_version: SCHEMA_VERSION,
            application_id: 0,
            problems: Vec::new(),
            file_bytes: 0,
            wal_bytes,
            tables: Vec::new(),
        });
    };
    let Inspection { conn, version, application_id, problems } = inspect(path, &header, true)?;
    let problems = problems.unwrap_or_default();
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
    Ok(CheckReport {
        schema_version: version,
        supported_version: SCHEMA_VERSION,
        application_id,
        problems,
        file_bytes: size(path),
        wal_bytes,
        tables,
    })
}

#[cfg(test)]
mod header_tests {
    //! The checks made before SQLite touches a file, one field at a time
    //! (cargo-mutants found the file-level tests left them unpinned).

    use super::*;

    /// A 100-byte header SQLite would accept: 4 KiB pages, rollback
    /// journal, application id `id`; `edit` changes it.
    fn header(id: u32, edit: impl FnOnce(&mut [u8; 100])) -> [u8; 100] {
        let mut h = [0u8; 100];
        h[..16].copy_from_slice(HEADER);
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        (h[18], h[19]) = (1, 1);
        h[21..24].copy_from_slice(&[64, 32, 32]);
        h[68..72].copy_from_slice(&id.to_be_bytes());
        edit(&mut h);
        h
    }

    fn read(bytes: &[u8]) -> Result<Option<(u32, bool)>, Error> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("x.db");
        fs::write(&path, bytes).expect("written");
        read_header(&path).map(|h| h.map(|h| (h.application_id, h.wal)))
    }

    fn damaged(bytes: &[u8]) -> bool {
        matches!(read(bytes), Err(Error::Corrupt { .. }))
    }

    #[test]
    fn a_missing_or_empty_file_is_a_new_database() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert!(matches!(read_header(&dir.path().join("absent.db")), Ok(None)));
        assert!(matches!(read(b""), Ok(None)));
    }

    #[test]
    fn a_sound_header_gives_its_application_id_and_journal_mode() {
        assert_eq!(read(&header(APPLICATION_ID, |_| {})).ok().flatten(), Some((APPLICATION_ID, false)));
        assert_eq!(read(&header(7, |h| h[18] = 2)).ok().flatten(), Some((7, true)), "WAL by its read version");
        assert_eq!(read(&header(7, |h| h[19] = 2)).ok().flatten(), Some((7, true)), "WAL by its write version");
        assert_eq!(read(&header(0, |h| (h[18], h[19]) = (2, 2))).ok().flatten(), Some((0, true)));
        // Page size 1 means 65,536; 512 is the smallest.
        assert!(read(&header(0, |h| h[16..18].copy_from_slice(&1u16.to_be_bytes()))).is_ok());
        assert!(read(&header(0, |h| h[16..18].copy_from_slice(&512u16.to_be_bytes()))).is_ok());
    }

    #[test]
    fn a_file_that_is_not_sqlite_or_too_short_is_refused() {
        let short = &header(0, |_| {})[..99];
        assert!(matches!(read(short), Err(Error::NotSqlite { .. })), "99 bytes");
        assert!(matches!(read(&header(0, |h| h[0] = b's')), Err(Error::NotSqlite { .. })), "another magic");
    }

    #[test]
    fn every_field_sqlite_insists_on_is_checked() {
        for size in [0u16, 2, 256, 1000, 4095] {
            assert!(damaged(&header(0, |h| h[16..18].copy_from_slice(&size.to_be_bytes()))), "page size {size}");
        }
        for (at, value) in [(18, 0), (18, 3), (19, 0), (19, 3), (21, 63), (22, 31), (23, 33)] {
            assert!(damaged(&header(0, |h| h[at] = value)), "byte {at} = {value}");
        }
    }

    #[test]
    fn the_immutable_uri_encodes_every_byte_but_the_unreserved() {
        assert_eq!(immutable_uri(Path::new("/tmp/a b?c#d%e/x.db")), "file:///tmp/a%20b%3Fc%23d%25e/x.db?immutable=1");
        assert_eq!(immutable_uri(Path::new("rel/x-y_z.~db")), "file:rel/x-y_z.~db?immutable=1");
        assert_eq!(immutable_uri(Path::new("/é")), "file:///%C3%A9?immutable=1", "each byte, high and low nibble");
    }

    #[test]
    fn the_size_checked_on_open_is_256_mib() {
        assert_eq!(CHECK_ON_OPEN_MAX_BYTES, 268_435_456);
    }

    #[test]
    fn identify_tells_ours_from_foreign_at_every_boundary() {
        let path = Path::new("/x.db");
        let all = |v: i64| tables_of(v).iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        let now = SCHEMA_VERSION;
        assert!(identify(path, APPLICATION_ID, now, false, &all(now)).is_ok());
        assert!(identify(path, 0, now, false, &all(now)).is_ok(), "an earlier build's file, not yet stamped");
        assert!(identify(path, 0, 1, false, &all(1)).is_ok(), "the first schema version");
        assert!(identify(path, 0, 0, true, &[]).is_ok(), "an empty database");
        assert!(matches!(identify(path, 0, 0, false, &["t".to_owned()]), Err(Error::Foreign { .. })));
        assert!(identify(path, APPLICATION_ID, now + 1, false, &[]).is_ok(), "ours and newer: the caller refuses it");
        assert!(matches!(identify(path, 0, now + 1, false, &all(now)), Err(Error::Foreign { .. })), "newer, not ours");
        assert!(matches!(identify(path, 1, now, false, &all(now)), Err(Error::Foreign { .. })), "another id");
        let mut short = all(now);
        short.pop();
        assert!(matches!(identify(path, APPLICATION_ID, now, false, &short), Err(Error::Corrupt { .. })));
        assert!(matches!(identify(path, 0, now, false, &short), Err(Error::Foreign { .. })));
    }
}
