//! Leases: a slice of a hot budget's remaining money that one replica
//! holds and draws many requests from, so a request costs the shared
//! ledger no transaction of its own.
//!
//! A lease is a hold ([`Hold`]) like a request's, with three differences:
//! it is sized by the ledger (at least what the replica needs, at most
//! what it wants, and never more than half of what is left once the
//! budget is nearly spent, so the other replicas keep room); its replica
//! [checkpoints](SharedLedger::checkpoint) it, charging what its requests
//! spent, reporting what is still in flight, and renewing it; and when it
//! expires (its replica died or was cut off), the sweep charges only the
//! money last reported in flight and returns the rest to its budgets.
//!
//! Every statement that touches a lease locks its hold's row first, then
//! its budgets' rows in their sorted order, as [`SharedLedger::hold`],
//! [`SharedLedger::settle`] and the sweep do: no two transactions wait on
//! each other in a cycle.

use std::time::Duration;

use modelfleet_registry::Money;

use crate::{
    BudgetKey, ClusterError, Hold, HoldRefused, PeriodRow, SharedLedger,
    ledger::{remaining, unavailable},
};

/// How big a slice [`SharedLedger::lease`] and [`SharedLedger::extend`]
/// grant: at least `need`, at most `want`, and no more than half of the
/// room the fullest budget has left when that is more than `need`; what
/// they grant past `need` is a whole number of `step`s (a request's hold:
/// a lease drawn on by equal requests then leaves no fragment too small
/// for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// The least that is any use.
    pub need: Money,
    /// The most asked for.
    pub want: Money,
    /// The grain past `need` (zero: any amount).
    pub step: Money,
}

/// A lease's state after a [checkpoint](SharedLedger::checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The lease lives, holding this much until its new expiry.
    Held(Money),
    /// The lease had ended (swept, or closed): the charge was made on its
    /// budgets all the same, and it holds nothing.
    Ended,
}

impl SharedLedger {
    /// Leases a [`Slice`] of every budget of `keys` for `ttl` (the
    /// database's clock). The slice is held on every budget (the sum of
    /// the leases and holds never passes a limit); [`Hold::amount`] says
    /// how much. Refused as a hold is when a budget has less than
    /// `slice.need` left.
    pub async fn lease(&self, keys: &[BudgetKey], slice: Slice, ttl: Duration) -> Result<Hold, HoldRefused> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        let mut lease = Hold { id: None, keys, amount: Money::ZERO };
        self.grant(&mut lease, slice, ttl).await?;
        Ok(lease)
    }

    /// Adds a [`Slice`] to `lease` and renews it for `ttl`: the amount
    /// added. [`HoldRefused::Ended`] when it was swept or closed.
    pub async fn extend(&self, lease: &mut Hold, slice: Slice, ttl: Duration) -> Result<Money, HoldRefused> {
        if lease.id.is_none() {
            return Err(HoldRefused::Ended);
        }
        self.grant(lease, slice, ttl).await
    }

    /// Grants a slice to `lease` (a new lease's row when it has none): the
    /// amount granted, also added to `lease`.
    async fn grant(&self, lease: &mut Hold, slice: Slice, ttl: Duration) -> Result<Money, HoldRefused> {
        if lease.keys.is_empty() {
            return Ok(Money::ZERO);
        }
        let need = slice.need.max(Money::ZERO);
        let want = slice.want.max(need);
        let step = slice.step.nanos().max(1);
        let s = &self.schema;
        let outcome = self
            .within(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
                if let Some(id) = lease.id {
                    let state = tx
                        .query_opt(&format!("SELECT state FROM {s}.budget_holds WHERE id = $1 FOR UPDATE"), &[&id])
                        .await
                        .map_err(|e| unavailable(&e))?;
                    if state.is_none_or(|row| row.get::<_, &str>(0) != "held") {
                        return Ok(Err(HoldRefused::Ended));
                    }
                }
                // The budgets' rows, locked in the keys' (sorted) order.
                let mut rooms = Vec::with_capacity(lease.keys.len());
                for key in &lease.keys {
                    let Some(row) = self.lock(&tx, key).await? else {
                        return Ok(Err(HoldRefused::Undefined(key.clone())));
                    };
                    rooms.push((key, row));
                }
                let Some((tightest, row)) = rooms.iter().min_by_key(|(_, row)| remaining(row)) else {
                    return Err(ClusterError::Invalid("a lease on no budget".to_owned()));
                };
                let room = remaining(row);
                if room < need {
                    return Ok(Err(HoldRefused::Exceeded { key: (*tightest).clone(), row: *row, amount: need }));
                }
                let sized = want.min(need.max(Money::from_nanos(room.nanos() / 2)));
                let extra = sized.nanos() - need.nanos();
                let granted = Money::from_nanos(need.nanos() + extra - extra % step);
                for key in &lease.keys {
                    tx.execute(
                        &format!(
                            "UPDATE {s}.budget_periods SET held_nanos = held_nanos + $4
                         WHERE scope = $1 AND period = $2 AND period_start = $3"
                        ),
                        &[&key.scope, &key.period, &key.start(), &granted.nanos()],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                }
                let id = match lease.id {
                    Some(id) => {
                        tx.execute(
                            &format!(
                                "UPDATE {s}.budget_holds SET amount_nanos = amount_nanos + $2,
                                 expires_at = now() + make_interval(secs => $3) WHERE id = $1"
                            ),
                            &[&id, &granted.nanos(), &ttl.as_secs_f64()],
                        )
                        .await
                        .map_err(|e| unavailable(&e))?;
                        id
                    }
                    None => self.insert_lease(&tx, &lease.keys, granted, ttl).await?,
                };
                tx.commit().await.map_err(|e| unavailable(&e))?;
                Ok::<_, ClusterError>(Ok((id, granted)))
            })
            .await;
        match outcome {
            Ok(Ok((id, granted))) => {
                lease.id = Some(id);
                lease.amount = lease.amount.saturating_add(granted);
                Ok(granted)
            }
            Ok(Err(refused)) => Err(refused),
            Err(err) => Err(HoldRefused::Store(err)),
        }
    }

    /// `key`'s row, locked until `tx` ends.
    async fn lock(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        key: &BudgetKey,
    ) -> Result<Option<PeriodRow>, ClusterError> {
        let s = &self.schema;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT limit_nanos, spent_nanos, held_nanos FROM {s}.budget_periods
                     WHERE scope = $1 AND period = $2 AND period_start = $3 FOR UPDATE"
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

    /// Charges `spent` to each of `keys` and releases `released` of what
    /// they hold, in the keys' (sorted) order.
    async fn fold(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        keys: &[BudgetKey],
        spent: i64,
        released: i64,
    ) -> Result<(), ClusterError> {
        let s = &self.schema;
        for key in keys {
            tx.execute(
                &format!(
                    "UPDATE {s}.budget_periods SET spent_nanos = spent_nanos + $4, held_nanos = held_nanos - $5
                     WHERE scope = $1 AND period = $2 AND period_start = $3"
                ),
                &[&key.scope, &key.period, &key.start(), &spent, &released],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    /// A new lease's rows: the hold (nothing in flight yet) and its keys.
    async fn insert_lease(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        keys: &[BudgetKey],
        amount: Money,
        ttl: Duration,
    ) -> Result<i64, ClusterError> {
        let s = &self.schema;
        let scopes: Vec<&str> = keys.iter().map(|k| k.scope.as_str()).collect();
        let periods: Vec<&str> = keys.iter().map(|k| k.period.as_str()).collect();
        let starts: Vec<i64> = keys.iter().map(BudgetKey::start).collect();
        let rows = tx
            .query(
                &format!(
                    "WITH hold AS (
                         INSERT INTO {s}.budget_holds (amount_nanos, replica, expires_at, in_flight_nanos)
                         VALUES ($1, $2, now() + make_interval(secs => $3), 0) RETURNING id
                     )
                     INSERT INTO {s}.budget_hold_keys (hold_id, scope, period, period_start)
                     SELECT hold.id, k.scope, k.period, k.period_start
                     FROM hold, unnest($4::text[], $5::text[], $6::bigint[]) AS k(scope, period, period_start)
                     RETURNING hold_id"
                ),
                &[&amount.nanos(), &self.replica, &ttl.as_secs_f64(), &scopes, &periods, &starts],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        rows.first()
            .map(|row| row.get(0))
            .ok_or_else(|| ClusterError::Unavailable("the lease's insert returned no row".to_owned()))
    }

    /// Checkpoints `lease`, in one transaction: `spent` (what its requests
    /// spent since the last checkpoint, in full even above the lease) is
    /// charged to its budgets, what it holds shrinks by as much (never
    /// below zero) and then to at most `keep` (the rest returns to its
    /// budgets), `in_flight` (the money of requests still running, charged
    /// if the lease expires) is recorded, and it is renewed for `ttl`.
    ///
    /// A lease that had ended (swept while its replica was cut off) still
    /// has `spent` charged ([`Checkpoint::Ended`]): the sweep charged what
    /// was last reported in flight, so this may count some of it twice,
    /// never leave it out.
    pub async fn checkpoint(
        &self,
        lease: &mut Hold,
        spent: Money,
        keep: Money,
        in_flight: Money,
        ttl: Duration,
    ) -> Result<Checkpoint, ClusterError> {
        self.write_checkpoint(lease, spent, keep, in_flight, Some(ttl)).await
    }

    /// Closes `lease`: `spent` is charged (as by a checkpoint), and all it
    /// holds returns to its budgets. Its requests must all have ended.
    pub async fn close(&self, lease: &mut Hold, spent: Money) -> Result<Checkpoint, ClusterError> {
        self.write_checkpoint(lease, spent, Money::ZERO, Money::ZERO, None).await
    }

    /// A checkpoint renewing for `ttl`, or closing the lease without one.
    async fn write_checkpoint(
        &self,
        lease: &mut Hold,
        spent: Money,
        keep: Money,
        in_flight: Money,
        ttl: Option<Duration>,
    ) -> Result<Checkpoint, ClusterError> {
        if spent < Money::ZERO || in_flight < Money::ZERO {
            return Err(ClusterError::Invalid(format!(
                "a checkpoint of ${spent} spent, ${in_flight} in flight: money is never negative"
            )));
        }
        let Some(id) = lease.id else {
            return Ok(if spent > Money::ZERO { Checkpoint::Ended } else { Checkpoint::Held(Money::ZERO) });
        };
        let s = &self.schema;
        // The common case in one statement (one round trip, its own
        // transaction): a live lease that keeps all it has and whose spend
        // stays within it. Anything else takes the transaction below.
        if let Some(ttl) = ttl
            && keep.nanos() == i64::MAX
        {
            let fast = self
                .within(async {
                    let client = self.client().await?;
                    let statement = client
                        .prepare_cached(&format!(
                            "UPDATE {s}.budget_holds SET spent_nanos = spent_nanos + $2, in_flight_nanos = $3,
                                 expires_at = now() + make_interval(secs => $4)
                             WHERE id = $1 AND state = 'held' AND spent_nanos + $2 <= amount_nanos
                             RETURNING amount_nanos - spent_nanos"
                        ))
                        .await
                        .map_err(|e| unavailable(&e))?;
                    let row = client
                        .query_opt(&statement, &[&id, &spent.nanos(), &in_flight.nanos(), &ttl.as_secs_f64()])
                        .await
                        .map_err(|e| unavailable(&e))?;
                    Ok(row.map(|row| row.get::<_, i64>(0)))
                })
                .await?;
            if let Some(unused) = fast {
                lease.amount = Money::from_nanos(unused);
                return Ok(Checkpoint::Held(lease.amount));
            }
        }
        let outcome = self
            .within(async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
                let row = tx
                    .query_opt(
                        &format!(
                            "SELECT state, amount_nanos, spent_nanos FROM {s}.budget_holds WHERE id = $1 FOR UPDATE"
                        ),
                        &[&id],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?
                    .ok_or_else(|| {
                        ClusterError::Invalid(format!("lease {id} is unknown (never made, or long forgotten)"))
                    })?;
                let (state, amount, in_lease): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
                if state != "held" {
                    // Ended: the spend is charged to its budgets all the same.
                    if spent > Money::ZERO {
                        self.fold(&tx, &lease.keys, spent.nanos(), 0).await?;
                    }
                    tx.commit().await.map_err(|e| unavailable(&e))?;
                    return Ok(None);
                }
                let total = in_lease.saturating_add(spent.nanos());
                let unused = (amount - total).max(0);
                let kept = unused.min(keep.nanos().max(0));
                let closed = ttl.is_none();
                let ttl = ttl.unwrap_or_default().as_secs_f64();
                if kept < unused || total > amount || closed {
                    // Money moves between the budgets' spent and held: the
                    // lease's spend is charged and what it does not keep
                    // returns, all at once.
                    self.fold(&tx, &lease.keys, total, amount - kept).await?;
                    tx.execute(
                        &format!(
                            "UPDATE {s}.budget_holds SET amount_nanos = $2, spent_nanos = 0, in_flight_nanos = $3,
                                 expires_at = now() + make_interval(secs => $4),
                                 state = CASE WHEN $5 THEN 'settled' ELSE state END
                             WHERE id = $1"
                        ),
                        &[&id, &kept, &in_flight.nanos(), &ttl, &closed],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                } else {
                    // Only the lease's own row: its spend stays inside what
                    // its budgets already hold for it, so no budget's row
                    // (which every replica's grants lock) is touched.
                    tx.execute(
                        &format!(
                            "UPDATE {s}.budget_holds SET spent_nanos = $2, in_flight_nanos = $3,
                                 expires_at = now() + make_interval(secs => $4)
                             WHERE id = $1"
                        ),
                        &[&id, &total, &in_flight.nanos(), &ttl],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                }
                let left = if kept < unused || total > amount || closed { kept } else { unused };
                tx.commit().await.map_err(|e| unavailable(&e))?;
                Ok(Some(left))
            })
            .await?;
        lease.amount = Money::from_nanos(outcome.unwrap_or(0));
        Ok(if outcome.is_some() { Checkpoint::Held(lease.amount) } else { Checkpoint::Ended })
    }
}
