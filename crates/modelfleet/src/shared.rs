//! Hard budgets shared by several replicas (`[cluster]`): every hold the
//! local ledger makes under a hard budget is made in the shared ledger too
//! (`modelfleet-cluster`), and settled there with the same cost: drawn from
//! this replica's lease of those budgets ([`crate::leases`]), or, with
//! `leases = false`, held and settled request by request.

use std::{sync::Arc, time::Duration};

use modelfleet_budget::{Budgets, Charge, HardPeriod};
use modelfleet_cluster::{BudgetKey, ClusterError, Hold, HoldRefused, SharedLedger};

use crate::leases::{Drawn, Leases};
use modelfleet_errors::{ErrorClass, Failure};
use modelfleet_registry::Money;

/// The shared ledger, how long holds live, and the task sweeping expired
/// holds (stopped with the fleet).
pub(crate) struct SharedBudgets {
    ledger: SharedLedger,
    ttl: Duration,
    /// With `leases = true`: this replica's leases.
    leases: Option<Arc<Leases>>,
    /// How long an answer past its draw waits for the checkpoint that
    /// charges it.
    timeout: Duration,
    sweeper: tokio::task::JoinHandle<()>,
    /// When the store last failed, and how.
    down: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Drop for SharedBudgets {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl SharedBudgets {
    /// With `[cluster]`: connects, and gives the shared ledger the limits
    /// of every hard budget this replica was started with.
    pub(crate) async fn start(
        settings: Option<&modelfleet_config_validate::ClusterSettings>,
        budgets: &Budgets,
    ) -> Result<Option<Arc<Self>>, ClusterError> {
        let Some(settings) = settings else { return Ok(None) };
        let shared = Self::connect(settings).await?;
        shared.define_all(budgets).await?;
        Ok(Some(Arc::new(shared)))
    }

    /// Connects, migrates, and starts sweeping every quarter of `ttl`
    /// (at least every second).
    pub(crate) async fn connect(settings: &modelfleet_config_validate::ClusterSettings) -> Result<Self, ClusterError> {
        let replica = replica_name(settings);
        let ledger = SharedLedger::connect(
            &settings.postgres_url,
            &settings.schema,
            &replica,
            Duration::from_millis(settings.timeout_ms),
        )
        .await?;
        let ttl = Duration::from_millis(settings.hold_ttl_ms);
        let lease_ttl = Duration::from_millis(settings.lease_ttl_ms);
        let leases = settings.leases.then(|| Arc::new(Leases::new(ledger.clone(), lease_ttl)));
        let sweeping = ledger.clone();
        // Expired leases return their unused slices within a quarter of their life.
        let shortest = if settings.leases { ttl.min(lease_ttl) } else { ttl };
        let every = (shortest / 4).max(Duration::from_secs(1));
        let beating = leases.clone();
        // Every second a heartbeat (for `modelfleet cluster status`), and a
        // sweep every `every`.
        let sweeper = tokio::spawn(async move {
            let mut last_sweep = tokio::time::Instant::now();
            let mut started = true;
            loop {
                let open = beating.as_ref().map_or(0, |leases| leases.open());
                match sweeping.heartbeat(open, started).await {
                    Ok(()) => started = false,
                    Err(err) => tracing::debug!(%err, "could not send this replica's heartbeat"),
                }
                if last_sweep.elapsed() >= every {
                    last_sweep = tokio::time::Instant::now();
                    if let Err(err) = sweeping.sweep().await {
                        tracing::warn!(%err, "could not sweep the shared ledger's expired holds");
                    }
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
        Ok(SharedBudgets {
            ledger,
            ttl,
            leases,
            timeout: Duration::from_millis(settings.timeout_ms),
            sweeper,
            down: std::sync::Mutex::new(None),
        })
    }

    /// Why hard budgets refuse right now, if the shared store failed in
    /// the last [`DOWN_FOR`]: requests under them are refused at once
    /// (`503 budget_store_unavailable`) instead of each waiting for the
    /// timeout; after that, the next request tries the store again.
    pub(crate) fn down(&self) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        down.as_ref()
            .filter(|(since, _)| since.elapsed() < DOWN_FOR)
            .map(|(_, why)| format!("the shared budget store is unreachable ({why}): hard budgets refuse"))
    }

    fn failed(&self, err: &ClusterError) -> Failure {
        // The driver's words (a host, a user name) go to the log, not to clients.
        tracing::warn!(%err, "the shared budget store failed: hard budgets refuse");
        *self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), "no answer".to_owned()));
        Failure::new(ErrorClass::BudgetExceeded, "hard budgets refuse while the shared budget store is unreachable")
    }

    fn succeeded(&self) {
        *self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Holds `amount` on the hard budgets that pay for `charge`, in the
    /// shared ledger; `None` when none does. Budget periods the shared
    /// ledger does not have yet (a first request, a new period) are added
    /// with this replica's limits, never overwriting one another replica
    /// added. Refused: a budget failure; the store unreachable: the same,
    /// and requests refuse at once for a moment ([`SharedBudgets::down`]).
    pub(crate) async fn hold(
        self: &Arc<Self>,
        budgets: &Budgets,
        charge: &Charge<'_>,
        amount: Money,
    ) -> Result<Option<SharedHold>, Failure> {
        let periods = budgets.hard_periods(charge);
        if periods.is_empty() {
            return Ok(None);
        }
        if let Some(why) = self.down() {
            return Err(Failure::new(ErrorClass::BudgetExceeded, &why));
        }
        let mut keys: Vec<BudgetKey> = periods.iter().map(key_of).collect();
        keys.sort();
        keys.dedup();
        let mut added = false;
        loop {
            let held = match &self.leases {
                Some(leases) => leases.draw(&keys, amount).await.map(Held::Drawn),
                None => self.ledger.hold(&keys, amount, self.ttl).await.map(Held::Row),
            };
            match held {
                Ok(held) => {
                    self.succeeded();
                    return Ok(Some(SharedHold { shared: Arc::clone(self), held: Some(held), cost: None }));
                }
                Err(HoldRefused::Undefined(_)) if !added => {
                    added = true;
                    for period in &periods {
                        self.ledger.add(&key_of(period), period.limit).await.map_err(|e| self.failed(&e))?;
                    }
                }
                Err(refused @ HoldRefused::Exceeded { .. }) => {
                    self.succeeded();
                    return Err(Failure::new(ErrorClass::BudgetExceeded, &format!("budget exceeded: {refused}")));
                }
                Err(HoldRefused::Store(err)) => return Err(self.failed(&err)),
                Err(other) => return Err(Failure::new(ErrorClass::BudgetExceeded, &other.to_string())),
            }
        }
    }

    /// The shared ledger (its pool serves the catalog and the records too).
    pub(crate) fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    /// How long a call to the shared store may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The shared store as this replica sees it.
    pub(crate) fn status(&self) -> ClusterStatus {
        let reachable = self.ledger.reachable();
        ClusterStatus {
            reachable,
            reason: (!reachable).then(|| {
                "the shared budget store is unreachable (its last call failed): hard budgets refuse".to_owned()
            }),
            leases: self.leases.is_some(),
            leases_open: self.leases.as_ref().map_or(0, |leases| leases.open()),
            ledger_calls: self.ledger.stats().calls,
            ledger_failures: self.ledger.stats().failures,
            ledger_seconds: Duration::from_micros(self.ledger.stats().micros).as_secs_f64(),
            redis_reachable: None,
            records_shipped: 0,
            records_dropped: 0,
            records_pending: 0,
            catalog_revision: 0,
        }
    }

    /// Closes this replica's leases once their requests end (shutdown),
    /// waiting at most twice the store's timeout.
    pub(crate) async fn close_leases(&self) {
        if let Some(leases) = &self.leases {
            leases.close_all(self.timeout * 2).await;
        }
    }

    /// Gives the shared ledger this replica's limit for every hard budget,
    /// at start: the configuration is re-applied (and wins) each time a
    /// replica starts, so replicas must share one.
    pub(crate) async fn define_all(&self, budgets: &Budgets) -> Result<(), ClusterError> {
        for period in budgets.all_hard_periods() {
            self.ledger.define(&key_of(&period), period.limit).await?;
        }
        Ok(())
    }
}

/// The shared budget store (`[cluster]`) as this replica sees it: for
/// readiness and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterStatus {
    /// False from a call that found the store unreachable to the next
    /// that reaches it (a heartbeat tries every second): hard budgets
    /// refuse meanwhile (other requests are served).
    pub reachable: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// Whether requests draw from leases (`[cluster] leases`).
    pub leases: bool,
    /// Leases this replica holds now.
    pub leases_open: usize,
    /// Calls this replica made to the store so far.
    pub ledger_calls: u64,
    /// Of them, those that found it unreachable or timed out.
    pub ledger_failures: u64,
    /// Their time in all, seconds.
    pub ledger_seconds: f64,
    /// With `redis_url`: whether the last call to Redis got through (when
    /// not, ejections stay local to this replica).
    pub redis_reachable: Option<bool>,
    /// Requests whose records this replica shipped to every replica's
    /// history so far.
    pub records_shipped: u64,
    /// Requests whose records were dropped before they reached it (the
    /// store unreachable past the pending bound, or a batch it refused).
    pub records_dropped: u64,
    /// Requests whose records wait to be shipped now.
    pub records_pending: u64,
    /// The shared catalog's revision this replica serves (replicas that
    /// agree serve the same catalog).
    pub catalog_revision: u64,
}

/// How often a replica says it lives.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// This replica's name: `[cluster] replica`, else the host's name and the
/// process id.
pub(crate) fn replica_name(settings: &modelfleet_config_validate::ClusterSettings) -> String {
    settings.replica.clone().unwrap_or_else(|| {
        let host = sysinfo::System::host_name().unwrap_or_else(|_| "replica".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// How long hard budgets refuse at once after the shared store failed.
const DOWN_FOR: Duration = Duration::from_secs(1);

fn key_of(period: &HardPeriod) -> BudgetKey {
    BudgetKey {
        scope: period.scope.to_string(),
        period: period.period.as_str().to_owned(),
        period_start_ms: period.period_start_ms,
    }
}

/// A hold in the shared ledger, settled once with the call's cost. Dropped
/// unsettled (a caller gone mid-way, a stream's settlement dropped), it is
/// settled in the background with the cost recorded for it, else with its
/// whole amount: the shared ledger never keeps a hold nobody settles.
pub(crate) struct SharedHold {
    shared: Arc<SharedBudgets>,
    held: Option<Held>,
    /// The call's cost, once known.
    cost: Option<Money>,
}

/// A request's own hold, or its draw on the replica's lease.
enum Held {
    Row(Hold),
    Drawn(Drawn),
}

impl SharedHold {
    /// Records the call's cost before anything else is awaited, so a drop
    /// from here on settles with it.
    pub(crate) fn cost(&mut self, cost: Money) {
        self.cost = Some(cost);
    }

    /// Settles with `cost` before returning; when the store cannot take
    /// it now, it is retried in the background.
    ///
    /// Drawn on a lease, a cost within the draw returns at once: the store
    /// already counts the draw in the lease's ceiling, which an expired
    /// lease is charged, so the answer's money is covered whether or not
    /// the replica lives to checkpoint it. A cost past the draw (a provider
    /// that billed more than the worst case) is not covered by it: that
    /// answer waits (at most the store's timeout) for the checkpoint that
    /// charges it.
    pub(crate) async fn settle(mut self, cost: Money) {
        self.cost = Some(cost);
        let hold = match self.held.take() {
            None => return,
            Some(Held::Drawn(drawn)) => {
                let covered = cost <= drawn.reserved();
                let finished = drawn.finish(cost);
                if covered {
                    return;
                }
                let charged = tokio::time::timeout(self.shared.timeout, finished.charged()).await;
                if !matches!(charged, Ok(true)) {
                    tracing::warn!("an answer went out before the shared ledger charged it: its next checkpoint will");
                }
                return;
            }
            Some(Held::Row(hold)) => hold,
        };
        match self.shared.ledger.settle(&hold, cost).await {
            Ok(()) => self.shared.succeeded(),
            Err(err) => {
                tracing::warn!(%err, "the shared ledger did not take a settlement: retrying");
                detached(Arc::clone(&self.shared), hold, cost);
            }
        }
    }
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        match self.held.take() {
            Some(Held::Row(hold)) => {
                let cost = self.cost.unwrap_or_else(|| hold.amount());
                detached(Arc::clone(&self.shared), hold, cost);
            }
            Some(Held::Drawn(drawn)) => {
                let cost = self.cost.unwrap_or_else(|| drawn.reserved());
                // Charged at the lease's next checkpoint.
                let _ = drawn.finish(cost);
            }
            None => {}
        }
    }
}

/// Settles `hold` with `cost` in the background, retrying with a backoff up
/// to a minute apart for as long as the hold lives (a settlement after the
/// sweep still corrects its charge, so it keeps trying a while after).
fn detached(shared: Arc<SharedBudgets>, hold: Hold, cost: Money) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let deadline = tokio::time::Instant::now() + shared.ttl * 2;
        let mut wait = Duration::from_millis(200);
        while tokio::time::Instant::now() < deadline {
            if shared.ledger.settle(&hold, cost).await.is_ok() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_mins(1));
        }
        tracing::error!("a shared settlement was never taken: the sweep charged its hold in full");
    });
}

#[cfg(test)]
impl SharedBudgets {
    /// Leases on `ledger` with no sweeper and no heartbeat: what a test
    /// settles through the production [`SharedHold::settle`].
    pub(crate) fn for_test(ledger: SharedLedger, leases: Arc<Leases>) -> Arc<SharedBudgets> {
        Arc::new(SharedBudgets {
            ledger,
            ttl: Duration::from_mins(1),
            leases: Some(leases),
            // Longer than any test waits: a settlement that gives up is seen.
            timeout: Duration::from_mins(2),
            sweeper: tokio::spawn(async {}),
            down: std::sync::Mutex::new(None),
        })
    }

    /// A draw of `amount` on `keys`, as [`SharedBudgets::hold`] makes it.
    pub(crate) async fn draw_for_test(self: &Arc<Self>, keys: &[BudgetKey], amount: Money) -> SharedHold {
        let leases = self.leases.as_ref().expect("built with leases");
        let drawn = leases.draw(keys, amount).await.expect("the lease has room");
        SharedHold { shared: Arc::clone(self), held: Some(Held::Drawn(drawn)), cost: None }
    }
}
