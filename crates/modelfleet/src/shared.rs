//! Hard budgets shared by several replicas (`[cluster]`): every hold the
//! local ledger makes under a hard budget is made in the shared ledger too
//! (`modelfleet-cluster`), and settled there with the same cost.

use std::{sync::Arc, time::Duration};

use modelfleet_budget::{Budgets, Charge, HardPeriod, Period, Scope};
use modelfleet_cluster::{BudgetKey, ClusterError, Hold, HoldRefused, SharedLedger};
use modelfleet_errors::{ErrorClass, Failure};
use modelfleet_registry::Money;

/// The shared ledger, how long holds live, and the task sweeping expired
/// holds (stopped with the fleet).
pub(crate) struct SharedBudgets {
    ledger: SharedLedger,
    ttl: Duration,
    sweeper: tokio::task::JoinHandle<()>,
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
        let replica = settings.replica.clone().unwrap_or_else(|| {
            let host = sysinfo::System::host_name().unwrap_or_else(|_| "replica".to_owned());
            format!("{host}-{}", std::process::id())
        });
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
        Ok(SharedBudgets { ledger, ttl, sweeper })
    }

    /// Holds `amount` on the hard budgets that pay for `charge`, in the
    /// shared ledger; `None` when none does. A budget period the shared
    /// ledger does not have yet (a first request, a new period) is defined
    /// with this replica's limit. Refused, or the store unreachable: a
    /// budget failure (a hard budget never guesses).
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
        let keys: Vec<BudgetKey> = periods.iter().map(key_of).collect();
        let mut defined = false;
        loop {
            match self.ledger.hold(&keys, amount, self.ttl).await {
                Ok(hold) => return Ok(Some(SharedHold { shared: Arc::clone(self), hold })),
                Err(HoldRefused::Undefined(key)) if !defined => {
                    defined = true;
                    for period in periods.iter().filter(|p| key_of(p) == key) {
                        self.ledger.define(&key, period.limit).await.map_err(|e| unavailable(&e))?;
                    }
                }
                Err(refused @ HoldRefused::Exceeded { .. }) => {
                    return Err(Failure::new(ErrorClass::BudgetExceeded, &format!("budget exceeded: {refused}")));
                }
                Err(HoldRefused::Store(err)) => return Err(unavailable(&err)),
                Err(other) => return Err(Failure::new(ErrorClass::BudgetExceeded, &other.to_string())),
            }
        }
    }
}

impl SharedBudgets {
    /// Gives the shared ledger this replica's limit for every hard budget
    /// (at start, and when an administrator changes one).
    pub(crate) async fn define_all(&self, budgets: &Budgets) -> Result<(), ClusterError> {
        for period in budgets.all_hard_periods() {
            self.ledger.define(&key_of(&period), period.limit).await?;
        }
        Ok(())
    }

    /// Zeroes a budget's shared spend this period (an administrator's reset).
    pub(crate) async fn reset(&self, budgets: &Budgets, scope: &Scope, period: Period) -> Result<(), ClusterError> {
        for hard in budgets.all_hard_periods().iter().filter(|p| p.scope == *scope && p.period == period) {
            self.ledger.reset(&key_of(hard)).await?;
        }
        Ok(())
    }
}

fn key_of(period: &HardPeriod) -> BudgetKey {
    BudgetKey {
        scope: period.scope.to_string(),
        period: period.period.as_str().to_owned(),
        period_start_ms: period.period_start_ms,
    }
}

fn unavailable(err: &ClusterError) -> Failure {
    Failure::new(
        ErrorClass::BudgetExceeded,
        &format!("hard budgets refuse while the shared budget store is unreachable ({err})"),
    )
}

/// A hold in the shared ledger, settled with the call's cost.
pub(crate) struct SharedHold {
    shared: Arc<SharedBudgets>,
    hold: Hold,
}

impl SharedHold {
    /// Settles with `cost` before returning; when the store cannot take
    /// it now, it is retried in the background until the hold would have
    /// expired (after which the sweep charges the hold in full).
    pub(crate) async fn settle(self, cost: Money) {
        if let Err(err) = self.shared.ledger.settle(&self.hold, cost).await {
            tracing::warn!(%err, "the shared ledger did not take a settlement: retrying");
            self.settle_detached(cost);
        }
    }

    /// Settles with `cost` in the background (a call dropped mid-way).
    pub(crate) fn settle_detached(self, cost: Money) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + self.shared.ttl;
            while tokio::time::Instant::now() < deadline {
                if self.shared.ledger.settle(&self.hold, cost).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tracing::error!("a shared settlement was never taken: the sweep charges its hold in full");
        });
    }
}
