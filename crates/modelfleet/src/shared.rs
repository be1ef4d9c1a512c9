//! Hard budgets shared by several replicas (`[cluster]`): every hold the
//! local ledger makes under a hard budget is made in the shared ledger too
//! (`modelfleet-cluster`), and settled there with the same cost.

use std::{sync::Arc, time::Duration};

use modelfleet_budget::{Budgets, Charge, HardPeriod};
use modelfleet_cluster::{BudgetKey, ClusterError, Hold, HoldRefused, SharedLedger};
use modelfleet_errors::{ErrorClass, Failure};
use modelfleet_registry::Money;

/// The shared ledger, how long holds live, and the task sweeping expired
/// holds (stopped with the fleet).
pub(crate) struct SharedBudgets {
    ledger: SharedLedger,
    ttl: Duration,
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
        let sweeping = ledger.clone();
        let every = (ttl / 4).max(Duration::from_secs(1));
        let sweeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(err) = sweeping.sweep().await {
                    tracing::warn!(%err, "could not sweep the shared ledger's expired holds");
                }
            }
        });
        Ok(SharedBudgets { ledger, ttl, sweeper, down: std::sync::Mutex::new(None) })
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
        let keys: Vec<BudgetKey> = periods.iter().map(key_of).collect();
        let mut added = false;
        loop {
            match self.ledger.hold(&keys, amount, self.ttl).await {
                Ok(hold) => {
                    self.succeeded();
                    return Ok(Some(SharedHold { shared: Arc::clone(self), hold: Some(hold), cost: None }));
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
    hold: Option<Hold>,
    /// The call's cost, once known.
    cost: Option<Money>,
}

impl SharedHold {
    /// Records the call's cost before anything else is awaited, so a drop
    /// from here on settles with it.
    pub(crate) fn cost(&mut self, cost: Money) {
        self.cost = Some(cost);
    }

    /// Settles with `cost` before returning; when the store cannot take
    /// it now, it is retried in the background.
    pub(crate) async fn settle(mut self, cost: Money) {
        self.cost = Some(cost);
        let Some(hold) = self.hold.take() else { return };
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
        if let Some(hold) = self.hold.take() {
            let cost = self.cost.unwrap_or_else(|| hold.amount());
            detached(Arc::clone(&self.shared), hold, cost);
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
