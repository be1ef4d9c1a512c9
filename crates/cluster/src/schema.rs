//! The PostgreSQL schema, created or brought up to date at connect, under
//! a transaction-scoped advisory lock so replicas starting together do not
//! race their DDL.

use tokio_postgres::Client;

use crate::ClusterError;

/// The advisory lock every replica's migration takes (an arbitrary
/// constant: "modelfleet" in ASCII, truncated to 63 bits).
const MIGRATION_LOCK: i64 = 0x006d_6f64_656c_666c;

/// The migrations, in order; the schema's `schema_version` says how many
/// ran. `{s}` is the schema's name.
const MIGRATIONS: &[&str] = &[
    // 1: the shared ledger of hard budgets.
    "CREATE TABLE {s}.budget_periods (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        period_start BIGINT NOT NULL,
        limit_nanos BIGINT NOT NULL,
        spent_nanos BIGINT NOT NULL DEFAULT 0,
        held_nanos BIGINT NOT NULL DEFAULT 0 CHECK (held_nanos >= 0),
        PRIMARY KEY (scope, period, period_start)
    );
    CREATE TABLE {s}.budget_holds (
        id BIGSERIAL PRIMARY KEY,
        amount_nanos BIGINT NOT NULL CHECK (amount_nanos >= 0),
        replica TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'swept', 'settled')),
        expires_at TIMESTAMPTZ NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX budget_holds_open ON {s}.budget_holds (expires_at) WHERE state = 'held';
    CREATE TABLE {s}.budget_hold_keys (
        hold_id BIGINT NOT NULL REFERENCES {s}.budget_holds (id) ON DELETE CASCADE,
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        period_start BIGINT NOT NULL,
        PRIMARY KEY (hold_id, scope, period, period_start)
    );",
    // 2: leases: a hold a replica draws many requests from. It records what
    // its requests spent (still inside what its budgets hold for it, so a
    // checkpoint writes this row only), the running total its replica last
    // reported (a checkpoint repeated charges once) and the money its replica last
    // reported in flight (charged if it expires; NULL for a request's own
    // hold, charged in full). The keys' index finds a budget's leases.
    "ALTER TABLE {s}.budget_holds ADD COLUMN spent_nanos BIGINT NOT NULL DEFAULT 0 CHECK (spent_nanos >= 0);
     ALTER TABLE {s}.budget_holds ADD COLUMN reported_nanos BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE {s}.budget_holds ADD COLUMN in_flight_nanos BIGINT CHECK (in_flight_nanos >= 0);
     CREATE INDEX budget_hold_keys_budget ON {s}.budget_hold_keys (scope, period, period_start);",
    // 3: heartbeats: each replica says every second or so that it lives,
    // with its view of the store (for `modelfleet cluster status`).
    "CREATE TABLE {s}.replicas (
        name TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        leases_open INT NOT NULL DEFAULT 0,
        ledger_calls BIGINT NOT NULL DEFAULT 0,
        ledger_failures BIGINT NOT NULL DEFAULT 0,
        ledger_micros BIGINT NOT NULL DEFAULT 0
    );",
    // 4: the shared catalog: a row per model (its spec as JSON, the
    // revision of its last change, where it comes from) and every change,
    // whose sequence number is the revision it gave.
    "CREATE TABLE {s}.catalog_models (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        revision BIGINT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('config', 'api'))
    );
    CREATE TABLE {s}.catalog_changes (
        seq BIGSERIAL PRIMARY KEY,
        model TEXT NOT NULL,
        action TEXT NOT NULL,
        who TEXT NOT NULL,
        replica TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT now(),
        before TEXT,
        after TEXT
    );
    CREATE INDEX catalog_changes_model ON {s}.catalog_changes (model, seq);",
    // 5: records (see `RECORDS`).
    RECORDS,
];

/// Spend and performance records of every replica (`records.rs`): each
/// replica's hourly aggregates per grouping and value, its own rows (so
/// replicas never wait on one another's row locks), summed on read; and
/// per replica and run the last batch applied, so a batch sent again after
/// a lost reply counts once. Written to stand at any place in the list.
const RECORDS: &str = "CREATE TABLE {s}.perf_hourly (
        replica TEXT NOT NULL,
        dim TEXT NOT NULL,
        value TEXT NOT NULL,
        hour_ms BIGINT NOT NULL,
        provider TEXT NOT NULL DEFAULT '',
        requests BIGINT NOT NULL DEFAULT 0,
        successes BIGINT NOT NULL DEFAULT 0,
        failures BIGINT NOT NULL DEFAULT 0,
        client_faults BIGINT NOT NULL DEFAULT 0,
        aborted BIGINT NOT NULL DEFAULT 0,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        cost_nanos BIGINT NOT NULL DEFAULT 0,
        fallbacks BIGINT NOT NULL DEFAULT 0,
        ratings BIGINT NOT NULL DEFAULT 0,
        rating_sum BIGINT NOT NULL DEFAULT 0,
        first_ms BIGINT NOT NULL,
        last_ms BIGINT NOT NULL,
        latency BYTEA NOT NULL,
        ttft BYTEA NOT NULL,
        PRIMARY KEY (replica, dim, value, hour_ms)
    );
    CREATE INDEX perf_hourly_range ON {s}.perf_hourly (dim, hour_ms);
    CREATE TABLE {s}.perf_batches (
        replica TEXT NOT NULL,
        run BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        shipped_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (replica, run)
    );";

/// `name` if it is a plain lower-case SQL identifier (it is written into
/// statements, so nothing else is accepted).
pub(crate) fn identifier(name: &str) -> Result<&str, ClusterError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if first_ok && name.len() <= 63 && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        Ok(name)
    } else {
        Err(ClusterError::Invalid(format!(
            "schema {name:?}: a lower-case identifier of at most 63 letters, digits and underscores"
        )))
    }
}

/// Creates `schema` and runs the migrations it has not run yet; refuses a
/// schema a newer version migrated further than this one knows.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), ClusterError> {
    run(client, schema).await.map_err(|e| match e {
        Migration::Postgres(e) => crate::ledger::unavailable(&e),
        Migration::Newer { found, known } => ClusterError::Invalid(format!(
            "schema {schema} is at version {found}, newer than the {known} this modelfleet knows: upgrade it"
        )),
    })
}

/// Checks that `schema` exists at this modelfleet's version, changing
/// nothing.
pub(crate) async fn check(client: &Client, schema: &str) -> Result<(), ClusterError> {
    let row =
        client.query_opt(&format!("SELECT version FROM {schema}.schema_version"), &[]).await.map_err(|e| {
            match e.code() {
                Some(code) if *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE => ClusterError::Invalid(
                    format!("schema {schema} does not exist: no replica has started with it (or the name is wrong)"),
                ),
                _ => crate::ledger::unavailable(&e),
            }
        })?;
    let found = row.map_or(0, |row| usize::try_from(row.get::<_, i32>(0)).unwrap_or(0));
    if found == MIGRATIONS.len() {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "schema {schema} is at version {found}, this modelfleet knows {}: use the replicas' version",
            MIGRATIONS.len()
        )))
    }
}

enum Migration {
    Postgres(tokio_postgres::Error),
    Newer { found: usize, known: usize },
}

impl From<tokio_postgres::Error> for Migration {
    fn from(e: tokio_postgres::Error) -> Self {
        Migration::Postgres(e)
    }
}

async fn run(client: &mut Client, schema: &str) -> Result<(), Migration> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (version INT NOT NULL);
         INSERT INTO {schema}.schema_version (version)
             SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {schema}.schema_version);"
    ))
    .await?;
    let row = tx.query_one(&format!("SELECT version FROM {schema}.schema_version"), &[]).await?;
    let done = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
    if done > MIGRATIONS.len() {
        // A newer modelfleet migrated this schema: this one would misread it.
        return Err(Migration::Newer { found: done, known: MIGRATIONS.len() });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(&migration.replace("{s}", schema)).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(&format!("UPDATE {schema}.schema_version SET version = $1"), &[&version]).await?;
    }
    Ok(tx.commit().await?)
}
