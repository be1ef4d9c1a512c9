//! The shared ledger of hard budgets: holds and settlements every replica
//! makes against the same rows (see the crate docs for the design).

use std::{future::Future, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use modelfleet_registry::Money;
use tokio_postgres::{NoTls, Transaction};

use crate::{ClusterError, schema};

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
    fn start(&self) -> i64 {
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
    id: Option<i64>,
    /// The budgets it holds, sorted.
    keys: Vec<BudgetKey>,
    amount: Money,
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
    /// The store: fail closed.
    #[error(transparent)]
    Store(#[from] ClusterError),
}

fn remaining(row: &PeriodRow) -> Money {
    Money::from_nanos((row.limit.nanos() - row.spent.nanos() - row.held.nanos()).max(0))
}

/// The hard budgets every replica shares, in PostgreSQL.
#[derive(Clone)]
pub struct SharedLedger {
    pool: Pool,
    /// Every table is `{schema}.…` (an identifier, checked).
    schema: String,
    /// The longest any call waits for the store before failing closed.
    timeout: Duration,
    /// This replica's name, on its holds.
    replica: String,
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

fn unavailable(err: &tokio_postgres::Error) -> ClusterError {
    // The server's message names no secret; the connection string is never in it.
    ClusterError::Unavailable(err.to_string())
}

impl SharedLedger {
    /// Connects to `url` (`postgres://user@host:port/db`), creates or
    /// migrates `schema`, and names this replica's holds `replica`. Every
    /// later call fails with [`ClusterError::Unavailable`] past `timeout`.
    pub async fn connect(url: &str, schema: &str, replica: &str, timeout: Duration) -> Result<Self, ClusterError> {
        let schema = schema::identifier(schema)?.to_owned();
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| ClusterError::Invalid(format!("postgres_url: {e}")))?;
        config.connect_timeout(timeout);
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| ClusterError::Invalid(format!("postgres pool: {e}")))?;
        let ledger = SharedLedger { pool, schema, timeout, replica: replica.to_owned() };
        ledger
            .within(async {
                let mut client = ledger.client().await?;
                schema::migrate(&mut client, &ledger.schema).await.map_err(|e| unavailable(&e))
            })
            .await?;
        Ok(ledger)
    }

    /// `work` within the timeout, or [`ClusterError::Unavailable`].
    async fn within<T>(&self, work: impl Future<Output = Result<T, ClusterError>>) -> Result<T, ClusterError> {
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(ClusterError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis())))
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ClusterError> {
        self.pool.get().await.map_err(|e| ClusterError::Unavailable(format!("no connection: {e}")))
    }

    /// Creates `key`'s period with `limit`, or sets the limit of the one
    /// that exists (its spend and holds stay).
    pub async fn define(&self, key: &BudgetKey, limit: Money) -> Result<(), ClusterError> {
        let s = &self.schema;
        self.within(async {
            let client = self.client().await?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {s}.budget_periods (scope, period, period_start, limit_nanos)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (scope, period, period_start) DO UPDATE SET limit_nanos = EXCLUDED.limit_nanos"
                    ),
                    &[&key.scope, &key.period, &key.start(), &limit.nanos()],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(())
        })
        .await
    }

    /// Holds `amount` on every budget of `keys`, until `ttl` from now (the
    /// database's clock) unless settled before: all of them, or none when
    /// one has less left than `amount` ([`HoldRefused::Exceeded`]). A zero
    /// amount holds nothing and always passes.
    pub async fn hold(&self, keys: &[BudgetKey], amount: Money, ttl: Duration) -> Result<Hold, HoldRefused> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        if amount <= Money::ZERO || keys.is_empty() {
            return Ok(Hold { id: None, keys, amount: Money::ZERO });
        }
        let outcome = tokio::time::timeout(self.timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            for key in &keys {
                if let Some(refused) = self.raise(&tx, key, amount).await? {
                    // Dropping the transaction rolls back what was raised.
                    return Ok(Err(refused));
                }
            }
            let s = &self.schema;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO {s}.budget_holds (amount_nanos, replica, expires_at)
                         VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING id"
                    ),
                    &[&amount.nanos(), &self.replica, &ttl.as_secs_f64()],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            let id: i64 = row.get(0);
            for key in &keys {
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.budget_hold_keys (hold_id, scope, period, period_start) VALUES ($1, $2, $3, $4)"
                    ),
                    &[&id, &key.scope, &key.period, &key.start()],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            }
            tx.commit().await.map_err(|e| unavailable(&e))?;
            Ok::<_, ClusterError>(Ok(id))
        })
        .await
        .unwrap_or_else(|_| Err(ClusterError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))));
        match outcome {
            Ok(Ok(id)) => Ok(Hold { id: Some(id), keys, amount }),
            Ok(Err(refused)) => Err(refused),
            Err(err) => Err(HoldRefused::Store(err)),
        }
    }

    /// Raises `key`'s held money by `amount` if it fits under its limit,
    /// in `tx`; the refusal when it does not.
    async fn raise(
        &self,
        tx: &Transaction<'_>,
        key: &BudgetKey,
        amount: Money,
    ) -> Result<Option<HoldRefused>, ClusterError> {
        let s = &self.schema;
        // The check and the raise are one statement under the row's lock.
        let raised = tx
            .query_opt(
                &format!(
                    "UPDATE {s}.budget_periods SET held_nanos = held_nanos + $4
                     WHERE scope = $1 AND period = $2 AND period_start = $3
                       AND spent_nanos + held_nanos + $4 <= limit_nanos
                     RETURNING 1"
                ),
                &[&key.scope, &key.period, &key.start(), &amount.nanos()],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        if raised.is_some() {
            return Ok(None);
        }
        let row = tx
            .query_opt(
                &format!(
                    "SELECT limit_nanos, spent_nanos, held_nanos FROM {s}.budget_periods
                     WHERE scope = $1 AND period = $2 AND period_start = $3"
                ),
                &[&key.scope, &key.period, &key.start()],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Some(match row {
            None => HoldRefused::Undefined(key.clone()),
            Some(row) => HoldRefused::Exceeded {
                key: key.clone(),
                row: PeriodRow {
                    limit: Money::from_nanos(row.get(0)),
                    spent: Money::from_nanos(row.get(1)),
                    held: Money::from_nanos(row.get(2)),
                },
                amount,
            },
        }))
    }

    /// Settles `hold`: `actual` is spent on its budgets (in full, even above
    /// the hold) and what it held is released. Once: settling again, or a
    /// hold that expired and was swept, releases nothing more (a swept hold
    /// is still charged its actual cost).
    pub async fn settle(&self, hold: &Hold, actual: Money) -> Result<(), ClusterError> {
        let s = &self.schema;
        self.within(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            let released = match hold.id {
                None => Some(0),
                Some(id) => tx
                    .query_opt(
                        &format!(
                            "WITH old AS (SELECT state, amount_nanos FROM {s}.budget_holds WHERE id = $1 FOR UPDATE)
                             UPDATE {s}.budget_holds h SET state = 'settled' FROM old
                             WHERE h.id = $1 AND old.state <> 'settled'
                             RETURNING CASE WHEN old.state = 'held' THEN old.amount_nanos ELSE 0 END"
                        ),
                        &[&id],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?
                    .map(|row| row.get::<_, i64>(0)),
            };
            // None: settled before; nothing to do.
            let Some(released) = released else { return Ok(()) };
            for key in &hold.keys {
                tx.execute(
                    &format!(
                        "UPDATE {s}.budget_periods SET spent_nanos = spent_nanos + $4, held_nanos = held_nanos - $5
                         WHERE scope = $1 AND period = $2 AND period_start = $3"
                    ),
                    &[&key.scope, &key.period, &key.start(), &actual.nanos(), &released],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            }
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
        self.within(async {
            let client = self.client().await?;
            let renewed = client
                .execute(
                    &format!(
                        "UPDATE {s}.budget_holds SET expires_at = now() + make_interval(secs => $2)
                         WHERE id = $1 AND state = 'held'"
                    ),
                    &[&id, &ttl.as_secs_f64()],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(renewed == 1)
        })
        .await
    }

    /// Returns the expired holds (of any replica) to their budgets; how many
    /// there were. Settled and swept holds older than a day are forgotten.
    pub async fn sweep(&self) -> Result<u64, ClusterError> {
        let s = &self.schema;
        self.within(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            let expired = tx
                .query(
                    &format!(
                        "UPDATE {s}.budget_holds SET state = 'swept'
                         WHERE state = 'held' AND expires_at < now()
                         RETURNING id, amount_nanos"
                    ),
                    &[],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            for row in &expired {
                let (id, amount): (i64, i64) = (row.get(0), row.get(1));
                tx.execute(
                    &format!(
                        "UPDATE {s}.budget_periods p SET held_nanos = p.held_nanos - $2
                         FROM {s}.budget_hold_keys k
                         WHERE k.hold_id = $1 AND p.scope = k.scope AND p.period = k.period
                           AND p.period_start = k.period_start"
                    ),
                    &[&id, &amount],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            }
            tx.execute(
                &format!(
                    "DELETE FROM {s}.budget_holds WHERE state <> 'held' AND created_at < now() - interval '1 day'"
                ),
                &[],
            )
            .await
            .map_err(|e| unavailable(&e))?;
            tx.commit().await.map_err(|e| unavailable(&e))?;
            Ok(u64::try_from(expired.len()).unwrap_or(u64::MAX))
        })
        .await
    }

    /// `key`'s money now, if the ledger has it.
    pub async fn status(&self, key: &BudgetKey) -> Result<Option<PeriodRow>, ClusterError> {
        let s = &self.schema;
        self.within(async {
            let client = self.client().await?;
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
        })
        .await
    }
}
