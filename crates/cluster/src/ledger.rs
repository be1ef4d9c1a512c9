//! The shared ledger of hard budgets: holds and settlements every replica
//! makes against the same rows (see the crate docs for the design).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use modelfleet_registry::Money;
use tokio_postgres::NoTls;

use crate::{ClusterError, schema};

/// Expired holds one sweep transaction ends at most.
pub const SWEEP_BATCH: u64 = 1_000;

/// One budget's period, as every replica names it: its scope and period
/// (as the budget crate writes them: `provider:openai`, `monthly`) and the
/// period's start (Unix ms; 0 for a budget that never resets).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BudgetKey {
    /// `global`, `provider:NAME`, `model:ID`, `key:NAME`.
    pub scope: String,
    /// `daily`, `weekly`, `monthly` or `lifetime`.
    pub period: String,
    /// The period's start, Unix ms.
    pub period_start_ms: u64,
}

impl BudgetKey {
    pub(crate) fn start(&self) -> i64 {
        i64::try_from(self.period_start_ms).unwrap_or(i64::MAX)
    }
}

/// A budget period's money, as the shared ledger has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodRow {
    /// The limit.
    pub limit: Money,
    /// Spent this period.
    pub spent: Money,
    /// Held by requests in flight on any replica.
    pub held: Money,
}

/// Money held on some budgets, until [`SharedLedger::settle`]d (or swept
/// once it expired).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a hold is money kept from every replica until it is settled"]
pub struct Hold {
    /// Its row; `None` for a zero hold, which holds nothing.
    pub(crate) id: Option<i64>,
    /// The budgets it holds, sorted.
    pub(crate) keys: Vec<BudgetKey>,
    pub(crate) amount: Money,
}

impl Hold {
    /// The amount held on each of its budgets.
    #[must_use]
    pub fn amount(&self) -> Money {
        self.amount
    }
}

/// Why a hold was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HoldRefused {
    /// A budget has less left than the amount: nothing was held anywhere.
    #[error("hard budget {} {} has ${} left (limit ${}, spent ${}, held ${}), ${} asked", .key.scope, .key.period, remaining(.row), .row.limit, .row.spent, .row.held, .amount)]
    Exceeded {
        /// The budget.
        key: BudgetKey,
        /// Its money when it refused.
        row: PeriodRow,
        /// What was asked.
        amount: Money,
    },
    /// A budget the shared ledger does not know ([`SharedLedger::define`] it first).
    #[error("budget {} {} (period from {} ms) is not defined in the shared ledger", .0.scope, .0.period, .0.period_start_ms)]
    Undefined(BudgetKey),
    /// A lease that was swept (its replica was silent past its time to
    /// live) or closed: it holds nothing any more.
    #[error("the lease has ended (swept or closed)")]
    Ended,
    /// The store: fail closed.
    #[error(transparent)]
    Store(#[from] ClusterError),
}

pub(crate) fn remaining(row: &PeriodRow) -> Money {
    Money::from_nanos((row.limit.nanos() - row.spent.nanos() - row.held.nanos()).max(0))
}

/// The hard budgets every replica shares, in PostgreSQL.
#[derive(Clone)]
pub struct SharedLedger {
    pool: Pool,
    /// The connection settings (the catalog's listener opens a connection
    /// of its own). Hold the URL's password: never printed.
    pub(crate) config: Arc<tokio_postgres::Config>,
    /// Every table is `{schema}.…` (an identifier, checked).
    pub(crate) schema: String,
    /// The longest any call waits for the store before failing closed.
    pub(crate) timeout: Duration,
    /// This replica's name, on its holds.
    pub(crate) replica: String,
    stats: Arc<Counters>,
}

/// The calls a replica made to the shared store: how many, how many found
/// it unreachable (or timed out), and the time they took in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerStats {
    /// Calls (each a transaction or a statement).
    pub calls: u64,
    /// Calls that found the store unreachable or timed out.
    pub failures: u64,
    /// Their time in all, µs.
    pub micros: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
    /// Whether the last call found the store unreachable.
    last_failed: AtomicBool,
}

impl Counters {
    fn record(&self, took: Duration, failed: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.last_failed.store(failed, Ordering::Relaxed);
        self.micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn snapshot(&self) -> LedgerStats {
        LedgerStats {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            micros: self.micros.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for SharedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's settings hold the URL's password: never printed.
        f.debug_struct("SharedLedger")
            .field("schema", &self.schema)
            .field("replica", &self.replica)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL error as the caller must take it: the server refusing a
/// statement for its data (a constraint, an overflow) is `Invalid`, and
/// anything else (the connection, a timeout, a lock given up, a deadlock's
/// victim) is `Unavailable`, on which a hard budget refuses.
pub(crate) fn unavailable(err: &tokio_postgres::Error) -> ClusterError {
    use tokio_postgres::error::SqlState;
    // The server's message names no secret; the connection string is never in it.
    let data = err.code().is_some_and(|code| {
        code.code().starts_with("22") || code.code().starts_with("23") || *code == SqlState::UNDEFINED_TABLE
    });
    // The server's own words ("db error" alone says nothing).
    let message = err.as_db_error().map_or_else(|| err.to_string(), |db| format!("db error: {}", db.message()));
    if data { ClusterError::Invalid(message) } else { ClusterError::Unavailable(message) }
}

impl SharedLedger {
    /// Connects to `url` (`postgres://user@host:port/db`), creates or
    /// migrates `schema`, and names this replica's holds `replica`. Every
    /// later call fails with [`ClusterError::Unavailable`] past `timeout`.
    pub async fn connect(url: &str, schema: &str, replica: &str, timeout: Duration) -> Result<Self, ClusterError> {
        Self::connect_with(url, schema, replica, timeout, 16).await
    }

    /// [`SharedLedger::connect`] with at most `connections` connections.
    ///
    /// Every session is bounded on the server too, so a replica cut off in
    /// the middle of a transaction cannot keep a budget's row locked: its
    /// statements, its lock waits and its idle transactions end after the
    /// timeout (`statement_timeout`, `lock_timeout`,
    /// `idle_in_transaction_session_timeout`), and a silent network is
    /// noticed within it (TCP keepalives and `tcp_user_timeout`).
    pub async fn connect_with(
        url: &str,
        schema: &str,
        replica: &str,
        timeout: Duration,
        connections: usize,
    ) -> Result<Self, ClusterError> {
        let ledger = Self::pool(url, schema, replica, timeout, connections)?;
        ledger
            .within(async {
                let mut client = ledger.client().await?;
                schema::migrate(&mut client, &ledger.schema).await
            })
            .await?;
        Ok(ledger)
    }

    /// Opens `schema` to read it (one connection), creating and migrating
    /// nothing: refused when no replica has made it, or when it is at
    /// another version than this modelfleet's (for tools such as
    /// `modelfleet cluster status`).
    pub async fn inspect(url: &str, schema: &str, timeout: Duration) -> Result<Self, ClusterError> {
        let ledger = Self::pool(url, schema, "inspect", timeout, 1)?;
        ledger
            .within(async {
                let client = ledger.client().await?;
                schema::check(&client, &ledger.schema).await
            })
            .await?;
        Ok(ledger)
    }

    /// The pool, with every session bounded (see [`SharedLedger::connect_with`]).
    fn pool(
        url: &str,
        schema: &str,
        replica: &str,
        timeout: Duration,
        connections: usize,
    ) -> Result<Self, ClusterError> {
        let schema = schema::identifier(schema)?.to_owned();
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| ClusterError::Invalid(format!("postgres_url: {e}")))?;
        let ms = timeout.as_millis().max(1);
        config
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(timeout.max(Duration::from_secs(1)))
            .tcp_user_timeout(timeout)
            .options(format!(
                "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms} \
                 -c default_transaction_isolation=read\\ committed"
            ));
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .build()
            .map_err(|e| ClusterError::Invalid(format!("postgres pool: {e}")))?;
        Ok(SharedLedger {
            pool,
            config: Arc::new(config),
            schema,
            timeout,
            replica: replica.to_owned(),
            stats: Arc::default(),
        })
    }

    /// `work` within the timeout, or [`ClusterError::Unavailable`]; every
    /// call to the store goes through here and is counted
    /// ([`SharedLedger::stats`]).
    pub(crate) async fn within<T>(
        &self,
        work: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        self.within_for(self.timeout, work).await
    }

    /// [`SharedLedger::within`] with another bound (a report's long read).
    pub(crate) async fn within_for<T>(
        &self,
        limit: Duration,
        work: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(ClusterError::Unavailable(format!("no answer within {} ms", limit.as_millis()))));
        self.stats.record(started.elapsed(), matches!(outcome, Err(ClusterError::Unavailable(_))));
        outcome
    }

    /// The calls this replica made to the store so far.
    #[must_use]
    pub fn stats(&self) -> LedgerStats {
        self.stats.snapshot()
    }

    /// Whether the last call (a heartbeat goes every second) reached the
    /// store.
    #[must_use]
    pub fn reachable(&self) -> bool {
        !self.stats.last_failed.load(Ordering::Relaxed)
    }

    /// `sql`'s rows: one statement on a pooled connection, within the
    /// timeout (as every call, through [`SharedLedger::within`]).
    pub(crate) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, ClusterError> {
        self.within(async { self.client().await?.query(sql, params).await.map_err(|e| unavailable(&e)) }).await
    }

    /// `sql`'s first row, if any (see [`SharedLedger::rows`]).
    pub(crate) async fn row(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, ClusterError> {
        Ok(self.rows(sql, params).await?.into_iter().next())
    }

    /// How many rows `sql` changed (see [`SharedLedger::rows`]).
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, ClusterError> {
        self.within(async { self.client().await?.execute(sql, params).await.map_err(|e| unavailable(&e)) }).await
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, ClusterError> {
        self.pool.get().await.map_err(|e| ClusterError::Unavailable(format!("no connection: {e}")))
    }

    /// Creates `key`'s period with `limit`, or sets the limit of the one
    /// that exists (its spend and holds stay).
    pub async fn define(&self, key: &BudgetKey, limit: Money) -> Result<(), ClusterError> {
        self.upsert(key, limit, "DO UPDATE SET limit_nanos = EXCLUDED.limit_nanos").await
    }

    /// Creates `key`'s period with `limit` unless it exists (another
    /// replica's limit is never overwritten).
    pub async fn add(&self, key: &BudgetKey, limit: Money) -> Result<(), ClusterError> {
        self.upsert(key, limit, "DO NOTHING").await
    }

    /// Inserts `key`'s period, `on_conflict` deciding what an existing one
    /// keeps.
    async fn upsert(&self, key: &BudgetKey, limit: Money, on_conflict: &str) -> Result<(), ClusterError> {
        let s = &self.schema;
        self.execute(
            &format!(
                "INSERT INTO {s}.budget_periods (scope, period, period_start, limit_nanos)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (scope, period, period_start) {on_conflict}"
            ),
            &[&key.scope, &key.period, &key.start(), &limit.nanos()],
        )
        .await?;
        Ok(())
    }

    /// Holds `amount` on every budget of `keys`, until `ttl` from now (the
    /// database's clock) unless settled before: all of them, or none when
    /// one has less left than `amount` ([`HoldRefused::Exceeded`]). A zero
    /// amount holds nothing and always passes.
    pub async fn hold(&self, keys: &[BudgetKey], amount: Money, ttl: Duration) -> Result<Hold, HoldRefused> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Hold { id: None, keys, amount: Money::ZERO });
        }
        // A zero (or negative) amount holds nothing but still gets a row, so
        // that its settlement is counted once like any other.
        let amount = amount.max(Money::ZERO);
        let outcome = self
            .within(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
                // The hold's rows first, in one statement, and the budgets'
                // conditional updates last: a budget's row is locked only from
                // its update to the commit.
                let id = self.insert_hold(&tx, &keys, amount, None, ttl).await?;
                if amount > Money::ZERO {
                    for key in &keys {
                        if let Some(refused) = self.raise(&tx, key, amount).await? {
                            // Dropping the transaction rolls back the hold and what was raised.
                            return Ok(Err(refused));
                        }
                    }
                }
                tx.commit().await.map_err(|e| unavailable(&e))?;
                Ok::<_, ClusterError>(Ok(id))
            })
            .await;
        match outcome {
            Ok(Ok(id)) => Ok(Hold { id: Some(id), keys, amount }),
            Ok(Err(refused)) => Err(refused),
            Err(err) => Err(HoldRefused::Store(err)),
        }
    }

    /// A hold's rows, in one prepared statement: the hold (`in_flight`
    /// `None` for a request's own, charged in full if it expires; a lease's
    /// ceiling otherwise) and its keys. Its id.
    pub(crate) async fn insert_hold(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        keys: &[BudgetKey],
        amount: Money,
        in_flight: Option<Money>,
        ttl: Duration,
    ) -> Result<i64, ClusterError> {
        let s = &self.schema;
        let insert = tx
            .prepare_cached(&format!(
                "WITH hold AS (
                     INSERT INTO {s}.budget_holds (amount_nanos, replica, expires_at, in_flight_nanos)
                     VALUES ($1, $2, now() + make_interval(secs => $3), $7) RETURNING id
                 )
                 INSERT INTO {s}.budget_hold_keys (hold_id, scope, period, period_start)
                 SELECT hold.id, k.scope, k.period, k.period_start
                 FROM hold, unnest($4::text[], $5::text[], $6::bigint[]) AS k(scope, period, period_start)
                 RETURNING hold_id"
            ))
            .await
            .map_err(|e| unavailable(&e))?;
        let scopes: Vec<&str> = keys.iter().map(|k| k.scope.as_str()).collect();
        let periods: Vec<&str> = keys.iter().map(|k| k.period.as_str()).collect();
        let starts: Vec<i64> = keys.iter().map(BudgetKey::start).collect();
        let in_flight = in_flight.map(|money| money.nanos().max(0));
        let rows = tx
            .query(
                &insert,
                &[&amount.nanos(), &self.replica, &ttl.as_secs_f64(), &scopes, &periods, &starts, &in_flight],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        rows.first()
            .map(|row| row.get(0))
            .ok_or_else(|| ClusterError::Unavailable("the hold's insert returned no row".to_owned()))
    }

    /// Charges `spent` to each of `keys` and releases `released` of what
    /// they hold (a negative release holds more), in the keys' (sorted)
    /// order: how settlements, sweeps and lease folds move money.
    pub(crate) async fn fold(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        keys: &[BudgetKey],
        spent: i64,
        released: i64,
    ) -> Result<(), ClusterError> {
        let s = &self.schema;
        let update = tx
            .prepare_cached(&format!(
                "UPDATE {s}.budget_periods SET spent_nanos = spent_nanos + $4, held_nanos = held_nanos - $5
                 WHERE scope = $1 AND period = $2 AND period_start = $3"
            ))
            .await
            .map_err(|e| unavailable(&e))?;
        for key in keys {
            tx.execute(&update, &[&key.scope, &key.period, &key.start(), &spent, &released])
                .await
                .map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    /// Raises `key`'s held money by `amount` if it fits under its limit,
    /// in `tx`; the refusal when it does not.
    async fn raise(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        key: &BudgetKey,
        amount: Money,
    ) -> Result<Option<HoldRefused>, ClusterError> {
        let s = &self.schema;
        // The check and the raise are one statement under the row's lock.
        let update = tx
            .prepare_cached(&format!(
                "UPDATE {s}.budget_periods SET held_nanos = held_nanos + $4
                 WHERE scope = $1 AND period = $2 AND period_start = $3
                   AND spent_nanos::numeric + held_nanos + $4::bigint <= limit_nanos
                 RETURNING 1"
            ))
            .await
            .map_err(|e| unavailable(&e))?;
        let raised = tx
            .query_opt(&update, &[&key.scope, &key.period, &key.start(), &amount.nanos()])
            .await
            .map_err(|e| unavailable(&e))?;
        if raised.is_some() {
            return Ok(None);
        }
        Ok(Some(match self.read(tx, key).await? {
            None => HoldRefused::Undefined(key.clone()),
            Some(row) => HoldRefused::Exceeded { key: key.clone(), row, amount },
        }))
    }

    /// Settles `hold`: `actual` is spent on its budgets (in full, even above
    /// the hold) and what it held is released. Once: settling again changes
    /// nothing. A hold that expired was charged in full when it was swept
    /// (its replica may have died after the provider billed it); settled
    /// late, that charge is corrected to `actual`.
    pub async fn settle(&self, hold: &Hold, actual: Money) -> Result<(), ClusterError> {
        if actual < Money::ZERO {
            return Err(ClusterError::Invalid(format!("a settlement of ${actual}: money spent is never negative")));
        }
        let Some(id) = hold.id else { return Ok(()) };
        let s = &self.schema;
        self.within(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            let before = tx
                .query_opt(
                    &format!("SELECT state, amount_nanos FROM {s}.budget_holds WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )
                .await
                .map_err(|e| unavailable(&e))?
                .ok_or_else(|| {
                    ClusterError::Invalid(format!("hold {id} is unknown (never made, or long forgotten)"))
                })?;
            let (state, amount): (String, i64) = (before.get(0), before.get(1));
            // (spent, held) changes on each of its budgets.
            let (spent, released) = match state.as_str() {
                "held" => (actual.nanos(), amount),
                "swept" => (actual.nanos() - amount, 0),
                _ => return Ok(()),
            };
            tx.execute(&format!("UPDATE {s}.budget_holds SET state = 'settled' WHERE id = $1"), &[&id])
                .await
                .map_err(|e| unavailable(&e))?;
            self.fold(&tx, &hold.keys, spent, released).await?;
            tx.commit().await.map_err(|e| unavailable(&e))
        })
        .await
    }

    /// Extends `hold` to `ttl` from now (the database's clock), for a call
    /// that outlives its hold (a long stream): false when the hold is no
    /// longer held (settled, or already swept: its room was returned).
    pub async fn renew(&self, hold: &Hold, ttl: Duration) -> Result<bool, ClusterError> {
        let Some(id) = hold.id else { return Ok(true) };
        let s = &self.schema;
        let renewed = self
            .execute(
                &format!(
                    "UPDATE {s}.budget_holds SET expires_at = now() + make_interval(secs => $2)
                     WHERE id = $1 AND state = 'held'"
                ),
                &[&id, &ttl.as_secs_f64()],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Ends the expired holds of any replica: each is charged in full
    /// (moved from held to spent), for its replica may have died after the
    /// provider billed the call; a late settlement corrects it. An expired
    /// [lease](SharedLedger::lease) is charged what its replica last
    /// reported in flight (never more than it held unspent: a replica
    /// draws only what its lease holds), and the rest of it returns to its
    /// budgets.
    /// Returns how many there were. Works in batches of [`SWEEP_BATCH`], each its own
    /// transaction, locking budgets in the order holds do (no deadlock) and
    /// skipping holds being settled. Settled holds are forgotten after a
    /// day, swept ones after a week.
    pub async fn sweep(&self) -> Result<u64, ClusterError> {
        let mut total = 0;
        loop {
            let swept = self.sweep_batch().await?;
            total += swept;
            if swept < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    async fn sweep_batch(&self) -> Result<u64, ClusterError> {
        let s = &self.schema;
        self.within(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            let limit = i64::try_from(SWEEP_BATCH).unwrap_or(i64::MAX);
            let swept = tx
                .query(
                    &format!(
                        "WITH expired AS (
                             SELECT id FROM {s}.budget_holds WHERE state = 'held' AND expires_at < now()
                             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
                         )
                         UPDATE {s}.budget_holds h SET state = 'swept' FROM expired e WHERE h.id = e.id
                         RETURNING h.id"
                    ),
                    &[&limit],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            let ids: Vec<i64> = swept.iter().map(|row| row.get(0)).collect();
            let sums = tx
                .query(
                    &format!(
                        "SELECT k.scope, k.period, k.period_start, sum(h.amount_nanos)::bigint,
                                sum(h.spent_nanos + least(coalesce(h.in_flight_nanos, h.amount_nanos),
                                                          greatest(h.amount_nanos - h.spent_nanos, 0)))::bigint
                         FROM {s}.budget_hold_keys k JOIN {s}.budget_holds h ON h.id = k.hold_id
                         WHERE k.hold_id = ANY($1)
                         GROUP BY k.scope, k.period, k.period_start
                         ORDER BY k.scope, k.period, k.period_start"
                    ),
                    &[&ids],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            for row in &sums {
                let key = BudgetKey {
                    scope: row.get(0),
                    period: row.get(1),
                    period_start_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                };
                let (released, charged): (i64, i64) = (row.get(3), row.get(4));
                self.fold(&tx, std::slice::from_ref(&key), charged, released).await?;
            }
            tx.execute(
                &format!(
                    "DELETE FROM {s}.budget_holds
                     WHERE (state = 'settled' AND created_at < now() - interval '1 day')
                        OR (state = 'swept' AND created_at < now() - interval '7 days')"
                ),
                &[],
            )
            .await
            .map_err(|e| unavailable(&e))?;
            tx.commit().await.map_err(|e| unavailable(&e))?;
            Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
        })
        .await
    }

    /// Zeroes `key`'s spend this period (an administrator's reset); its
    /// holds stay. False when the ledger does not have it.
    pub async fn reset(&self, key: &BudgetKey) -> Result<bool, ClusterError> {
        let s = &self.schema;
        let reset = self
            .execute(
                &format!(
                    "UPDATE {s}.budget_periods SET spent_nanos = 0
                     WHERE scope = $1 AND period = $2 AND period_start = $3"
                ),
                &[&key.scope, &key.period, &key.start()],
            )
            .await?;
        Ok(reset == 1)
    }

    /// `key`'s money now, if the ledger has it: what open leases' requests
    /// spent counts as spent (their budgets still hold it until the lease
    /// folds it in).
    pub async fn status(&self, key: &BudgetKey) -> Result<Option<PeriodRow>, ClusterError> {
        let s = &self.schema;
        let row = self
            .row(
                &format!(
                    "SELECT p.limit_nanos, p.spent_nanos + l.spent, p.held_nanos - l.spent
                     FROM {s}.budget_periods p,
                          LATERAL (SELECT coalesce(sum(h.spent_nanos), 0)::bigint AS spent
                                   FROM {s}.budget_hold_keys k JOIN {s}.budget_holds h ON h.id = k.hold_id
                                   WHERE k.scope = p.scope AND k.period = p.period
                                     AND k.period_start = p.period_start AND h.state = 'held') l
                     WHERE p.scope = $1 AND p.period = $2 AND p.period_start = $3"
                ),
                &[&key.scope, &key.period, &key.start()],
            )
            .await?;
        Ok(row.map(|row| PeriodRow {
            limit: Money::from_nanos(row.get(0)),
            spent: Money::from_nanos(row.get(1)),
            held: Money::from_nanos(row.get(2)),
        }))
    }

    /// `key`'s row through `client` (a connection or a transaction).
    pub(crate) async fn read(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        key: &BudgetKey,
    ) -> Result<Option<PeriodRow>, ClusterError> {
        let s = &self.schema;
        let row = client
            .query_opt(
                &format!(
                    "SELECT limit_nanos, spent_nanos, held_nanos FROM {s}.budget_periods
                     WHERE scope = $1 AND period = $2 AND period_start = $3"
                ),
                &[&key.scope, &key.period, &key.start()],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(row.map(|row| PeriodRow {
            limit: Money::from_nanos(row.get(0)),
            spent: Money::from_nanos(row.get(1)),
            held: Money::from_nanos(row.get(2)),
        }))
    }
}

/// A replica as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Its name (`[cluster] replica`).
    pub name: String,
    /// Since its first heartbeat in this run, ms.
    pub up_ms: u64,
    /// Since its last heartbeat, ms (the database's clock).
    pub silent_ms: u64,
    /// Leases it held then.
    pub leases_open: u32,
    /// Its calls to the store so far.
    pub stats: LedgerStats,
}

/// A hold or lease as [`SharedLedger::holds`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    /// Its replica.
    pub replica: String,
    /// Whether it is a lease (else a request's own hold).
    pub lease: bool,
    /// Held on its budgets.
    pub amount: Money,
    /// Spent by a lease's requests, not yet folded into its budgets.
    pub spent: Money,
    /// What its replica last reported in flight (a lease).
    pub in_flight: Money,
    /// Until it expires, ms (negative: expired, not yet swept).
    pub expires_in_ms: i64,
    /// Its budgets, as `scope period`.
    pub budgets: Vec<String>,
}

impl SharedLedger {
    /// What a sweep would charge the open holds and leases, on top of the
    /// `spent` [`SharedLedger::status`] reports (which counts the leases'
    /// recorded spend), if their replicas all died now: a lease the
    /// ceiling its replica last reported, at most its unused amount; a
    /// hold its amount. So `status().spent + outstanding()` is what every
    /// budget would have spent.
    pub async fn outstanding(&self) -> Result<Money, ClusterError> {
        let s = &self.schema;
        let row = self
            .row(
                &format!(
                    "SELECT coalesce(sum(least(coalesce(in_flight_nanos, amount_nanos),
                                               greatest(amount_nanos - spent_nanos, 0))), 0)::bigint
                     FROM {s}.budget_holds WHERE state = 'held'"
                ),
                &[],
            )
            .await?;
        Ok(Money::from_nanos(row.map_or(0, |row| row.get(0))))
    }

    /// Says this replica lives, with its view of the store (`leases_open`
    /// and its [`SharedLedger::stats`]); `started` marks a new run.
    pub async fn heartbeat(&self, leases_open: usize, started: bool) -> Result<(), ClusterError> {
        let s = &self.schema;
        let stats = self.stats();
        let leases = i32::try_from(leases_open).unwrap_or(i32::MAX);
        let [calls, failures, micros] =
            [stats.calls, stats.failures, stats.micros].map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self.execute(
            &format!(
                "INSERT INTO {s}.replicas (name, leases_open, ledger_calls, ledger_failures, ledger_micros)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET seen_at = now(), leases_open = $2, ledger_calls = $3,
                     ledger_failures = $4, ledger_micros = $5,
                     started_at = CASE WHEN $6 THEN now() ELSE {s}.replicas.started_at END"
            ),
            &[&self.replica, &leases, &calls, &failures, &micros, &started],
        )
        .await?;
        Ok(())
    }

    /// The replicas that sent a heartbeat in the last `within`, by name.
    pub async fn replicas(&self, within: Duration) -> Result<Vec<ReplicaRow>, ClusterError> {
        let s = &self.schema;
        let rows = self
            .rows(
                &format!(
                    "SELECT name, (extract(epoch FROM now() - started_at) * 1000)::bigint,
                            (extract(epoch FROM now() - seen_at) * 1000)::bigint,
                            leases_open, ledger_calls, ledger_failures, ledger_micros
                     FROM {s}.replicas WHERE seen_at > now() - make_interval(secs => $1) ORDER BY name"
                ),
                &[&within.as_secs_f64()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
                ReplicaRow {
                    name: row.get(0),
                    up_ms: count(1),
                    silent_ms: count(2),
                    leases_open: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
                    stats: LedgerStats { calls: count(4), failures: count(5), micros: count(6) },
                }
            })
            .collect())
    }

    /// Every hold and lease not yet settled or swept, oldest first (at
    /// most `limit`).
    pub async fn holds(&self, limit: u32) -> Result<Vec<HoldRow>, ClusterError> {
        let s = &self.schema;
        let rows = self
            .rows(
                &format!(
                    "SELECT h.replica, h.in_flight_nanos IS NOT NULL, h.amount_nanos, h.spent_nanos,
                            coalesce(h.in_flight_nanos, 0),
                            (extract(epoch FROM h.expires_at - now()) * 1000)::bigint,
                            array_agg(k.scope || ' ' || k.period ORDER BY k.scope, k.period)
                     FROM {s}.budget_holds h JOIN {s}.budget_hold_keys k ON k.hold_id = h.id
                     WHERE h.state = 'held'
                     GROUP BY h.id ORDER BY h.id LIMIT $1"
                ),
                &[&i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| HoldRow {
                replica: row.get(0),
                lease: row.get(1),
                amount: Money::from_nanos(row.get(2)),
                spent: Money::from_nanos(row.get(3)),
                in_flight: Money::from_nanos(row.get(4)),
                expires_in_ms: row.get(5),
                budgets: row.get(6),
            })
            .collect())
    }
}

impl SharedLedger {
    /// Every budget period the ledger has, the latest first (at most
    /// `limit`), as [`SharedLedger::status`] reads each.
    pub async fn periods(&self, limit: u32) -> Result<Vec<(BudgetKey, PeriodRow)>, ClusterError> {
        let s = &self.schema;
        let rows = self
            .rows(
                &format!(
                    "SELECT scope, period, period_start FROM {s}.budget_periods
                     ORDER BY period_start DESC, scope, period LIMIT $1"
                ),
                &[&i64::from(limit)],
            )
            .await?;
        let keys = rows.iter().map(|row| BudgetKey {
            scope: row.get(0),
            period: row.get(1),
            period_start_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
        });
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(row) = self.status(&key).await? {
                out.push((key, row));
            }
        }
        Ok(out)
    }
}
