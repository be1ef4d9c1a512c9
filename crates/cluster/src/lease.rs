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
    /// The money its replica may have in flight on the lease until its
    /// next report (recorded with the grant: what an expired lease is
    /// charged).
    pub in_flight: Money,
}

/// What a replica reports of a lease at a [checkpoint](SharedLedger::checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Everything its requests spent since it was granted: a running
    /// total, so a checkpoint sent twice (its reply lost) charges once.
    pub total: Money,
    /// What the requests still running hold: the lease never keeps less.
    pub running: Money,
    /// The most that may be in flight until the next report (running,
    /// ended but not yet reported, and headroom for new draws): what the
    /// lease is charged if it expires.
    pub in_flight: Money,
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
                                 expires_at = now() + make_interval(secs => $3), in_flight_nanos = $4 WHERE id = $1"
                            ),
                            &[&id, &granted.nanos(), &ttl.as_secs_f64(), &slice.in_flight.nanos().max(0)],
                        )
                        .await
                        .map_err(|e| unavailable(&e))?;
                        id
                    }
                    None => self.insert_hold(&tx, &lease.keys, granted, Some(slice.in_flight), ttl).await?,
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

    /// The common checkpoint in one statement: a live lease whose spend,
    /// with what its running requests hold, stays within it. The unused
    /// amount, or `None` when the full transaction is needed.
    async fn fast_checkpoint(
        &self,
        id: i64,
        Report { total, running, in_flight }: Report,
        ttl: Duration,
    ) -> Result<Option<i64>, ClusterError> {
        let s = &self.schema;
        self.within(async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(&format!(
                    "UPDATE {s}.budget_holds
                     SET spent_nanos = spent_nanos + ($2 - reported_nanos), reported_nanos = $2,
                         in_flight_nanos = $3, expires_at = now() + make_interval(secs => $4)
                     WHERE id = $1 AND state = 'held' AND $2 >= reported_nanos
                       AND spent_nanos + ($2 - reported_nanos) <= amount_nanos - $5
                     RETURNING amount_nanos - spent_nanos"
                ))
                .await
                .map_err(|e| unavailable(&e))?;
            let row = client
                .query_opt(&statement, &[&id, &total.nanos(), &in_flight.nanos(), &ttl.as_secs_f64(), &running.nanos()])
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(row.map(|row| row.get::<_, i64>(0)))
        })
        .await
    }

    /// Checkpoints `lease` with its replica's [`Report`]: what is new in
    /// `report.total` is charged (in full, even above the lease); the lease
    /// keeps at most `keep` unused (the rest returns to its budgets), and
    /// never less than `report.running`; `report.in_flight` is recorded
    /// (charged if the lease expires); the lease is renewed for `ttl`.
    ///
    /// A lease that had ended (swept while its replica was cut off) still
    /// has what is new charged ([`Checkpoint::Ended`]): the sweep charged
    /// what was last reported in flight, so this may count some of it
    /// twice, never leave it out.
    pub async fn checkpoint(
        &self,
        lease: &mut Hold,
        report: Report,
        keep: Money,
        ttl: Duration,
    ) -> Result<Checkpoint, ClusterError> {
        self.write_checkpoint(lease, report, keep, Some(ttl)).await
    }

    /// Closes `lease`: what is new in `total` is charged (as by a
    /// checkpoint), and all it holds returns to its budgets. Its requests
    /// must all have ended.
    pub async fn close(&self, lease: &mut Hold, total: Money) -> Result<Checkpoint, ClusterError> {
        let report = Report { total, running: Money::ZERO, in_flight: Money::ZERO };
        self.write_checkpoint(lease, report, Money::ZERO, None).await
    }

    /// A checkpoint renewing for `ttl`, or closing the lease without one.
    async fn write_checkpoint(
        &self,
        lease: &mut Hold,
        Report { total, running, in_flight }: Report,
        keep: Money,
        ttl: Option<Duration>,
    ) -> Result<Checkpoint, ClusterError> {
        if total < Money::ZERO || in_flight < Money::ZERO || running < Money::ZERO {
            return Err(ClusterError::Invalid(format!(
                "a checkpoint of ${total} spent, ${in_flight} in flight: money is never negative"
            )));
        }
        let Some(id) = lease.id else {
            return Err(ClusterError::Invalid("a checkpoint of a lease never granted".to_owned()));
        };
        let s = &self.schema;
        // The common case in one statement (one round trip, its own
        // transaction): a live lease that keeps all it has and whose spend
        // stays within it. Anything else takes the transaction below.
        if let Some(ttl) = ttl
            && keep.nanos() == i64::MAX
        {
            let fast = self.fast_checkpoint(id, Report { total, running, in_flight }, ttl).await?;
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
                            "SELECT state, amount_nanos, spent_nanos, reported_nanos
                             FROM {s}.budget_holds WHERE id = $1 FOR UPDATE"
                        ),
                        &[&id],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?
                    .ok_or_else(|| {
                        ClusterError::Invalid(format!("lease {id} is unknown (never made, or long forgotten)"))
                    })?;
                let (state, amount, in_lease, reported): (String, i64, i64, i64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                // What this checkpoint adds (nothing when it repeats one).
                let new = (total.nanos() - reported).max(0);
                let reported = reported.max(total.nanos());
                if state != "held" {
                    // Ended: what is new is charged to its budgets all the same.
                    if new > 0 {
                        self.fold(&tx, &lease.keys, new, 0).await?;
                    }
                    tx.execute(
                        &format!("UPDATE {s}.budget_holds SET reported_nanos = $2 WHERE id = $1"),
                        &[&id, &reported],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                    tx.commit().await.map_err(|e| unavailable(&e))?;
                    return Ok(None);
                }
                let spent = in_lease.saturating_add(new);
                let unused = (amount - spent).max(0);
                let closed = ttl.is_none();
                // What it keeps: at most `keep` unused, but never less than
                // the requests still running need, even when spend passed
                // the lease (theirs would have been held on their own).
                let kept = unused.min(keep.nanos().max(0)).max(running.nanos());
                let ttl = ttl.unwrap_or_default().as_secs_f64();
                let left = if kept != unused || spent > amount || closed {
                    // Money moves between the budgets' spent and held: the
                    // lease's spend is charged and it holds `kept`, all at once.
                    self.fold(&tx, &lease.keys, spent, amount - kept).await?;
                    tx.execute(
                        &format!(
                            "UPDATE {s}.budget_holds SET amount_nanos = $2, spent_nanos = 0, reported_nanos = $6,
                                 in_flight_nanos = $3, expires_at = now() + make_interval(secs => $4),
                                 state = CASE WHEN $5 THEN 'settled' ELSE state END
                             WHERE id = $1"
                        ),
                        &[&id, &kept, &in_flight.nanos(), &ttl, &closed, &reported],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                    kept
                } else {
                    // Only the lease's own row: its spend stays inside what
                    // its budgets already hold for it, so no budget's row
                    // (which every replica's grants lock) is touched.
                    tx.execute(
                        &format!(
                            "UPDATE {s}.budget_holds SET spent_nanos = $2, reported_nanos = $5, in_flight_nanos = $3,
                                 expires_at = now() + make_interval(secs => $4)
                             WHERE id = $1"
                        ),
                        &[&id, &spent, &in_flight.nanos(), &ttl, &reported],
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                    unused
                };
                tx.commit().await.map_err(|e| unavailable(&e))?;
                Ok(Some(left))
            })
            .await?;
        lease.amount = Money::from_nanos(outcome.unwrap_or(0));
        Ok(if outcome.is_some() { Checkpoint::Held(lease.amount) } else { Checkpoint::Ended })
    }
}
