//! The ledger: budgets, reservations, spend, alerts, status and forecasts.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use modelfleet_errors::{Classify, ErrorClass};
use modelfleet_registry::{Clock, Money, SystemClock};
use serde::{Deserialize, Serialize};
use time::UtcOffset;

use crate::{
    Error, Period,
    period::{bounds, rfc3339},
};

/// What a budget covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Scope {
    /// Every request.
    Global,
    /// Requests served by one provider.
    Provider(String),
    /// Requests served by one model.
    Model(String),
    /// Requests made with one API key or for one tenant.
    Key(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Provider(p) => write!(f, "provider:{p}"),
            Scope::Model(m) => write!(f, "model:{m}"),
            Scope::Key(k) => write!(f, "key:{k}"),
        }
    }
}

/// Whether a budget refuses requests or only warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Requests that would take spending past the limit are refused.
    #[default]
    Hard,
    /// Spending may pass the limit; the thresholds still alert.
    Soft,
}

/// A budget's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSpec {
    /// What it covers.
    pub scope: Scope,
    /// When it starts over.
    pub period: Period,
    /// The limit per period.
    pub limit: Money,
    /// Hard or soft.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Alert thresholds in percent of the limit (default 50, 75, 90, 100).
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<u8>,
}

fn default_thresholds() -> Vec<u8> {
    vec![50, 75, 90, 100]
}

impl BudgetSpec {
    /// A hard budget with the default thresholds.
    #[must_use]
    pub fn hard(scope: Scope, period: Period, limit: Money) -> BudgetSpec {
        BudgetSpec { scope, period, limit, enforcement: Enforcement::Hard, thresholds: default_thresholds() }
    }
}

/// Who a request's spend is charged to: every budget whose scope matches applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge<'a> {
    /// The provider serving it.
    pub provider: &'a str,
    /// The model serving it.
    pub model: &'a str,
    /// The API key or tenant, when known.
    pub key: Option<&'a str>,
}

impl Scope {
    fn covers(&self, charge: &Charge<'_>) -> bool {
        match self {
            Scope::Global => true,
            Scope::Provider(p) => p == charge.provider,
            Scope::Model(m) => m == charge.model,
            Scope::Key(k) => charge.key == Some(k.as_str()),
        }
    }
}

/// A threshold crossed: delivered to subscribers once per period and kept in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// The budget's scope.
    pub scope: Scope,
    /// The threshold, in percent.
    pub threshold: u8,
    /// Spent when it fired.
    pub spent: Money,
    /// The limit.
    pub limit: Money,
    /// The period's start (Unix ms).
    pub period_start_ms: u64,
    /// When it fired (Unix ms).
    pub at_ms: u64,
}

/// A request refused by a hard budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "budget exceeded for {scope}: limit ${limit}, spent ${spent}, reserved ${reserved}, this request needs ${requested}{}",
    resets_at_ms.map_or_else(|| "; the budget never resets".to_owned(), |ms| format!("; resets at {}", rfc3339(ms)))
)]
pub struct Exceeded {
    /// The budget's scope.
    pub scope: Scope,
    /// Its limit.
    pub limit: Money,
    /// Spent this period.
    pub spent: Money,
    /// Reserved by requests in flight.
    pub reserved: Money,
    /// What this request asked for.
    pub requested: Money,
    /// When the period ends (Unix ms), unless it never does.
    pub resets_at_ms: Option<u64>,
}

impl Classify for Exceeded {
    fn class(&self) -> ErrorClass {
        ErrorClass::BudgetExceeded
    }
}

/// One finished period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodRecord {
    /// Its start (Unix ms).
    pub start_ms: u64,
    /// Its end (Unix ms).
    pub end_ms: u64,
    /// Spent in it.
    pub spent: Money,
    /// The limit then.
    pub limit: Money,
}

/// The end-of-period projection from the burn rate so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Forecast {
    /// Too early in the period (under an hour and under 5% of it), or nothing spent.
    NotEnoughData,
    /// A lifetime budget has no period end to project to.
    NoPeriodEnd,
    /// Spent so far, extended linearly to the period's end.
    Projected {
        /// The projected spend at the period's end.
        end_of_period: Money,
        /// Whether that passes the limit.
        exceeds_limit: bool,
    },
}

/// A budget now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The definition.
    #[serde(flatten)]
    pub spec: BudgetSpec,
    /// Spent this period.
    pub spent: Money,
    /// Reserved by requests in flight.
    pub reserved: Money,
    /// `limit - spent - reserved`, never below zero.
    pub remaining: Money,
    /// Spent as a percentage of the limit.
    pub percent: f64,
    /// The period's start (Unix ms).
    pub period_start_ms: u64,
    /// The period's end (Unix ms), unless it never ends.
    pub period_end_ms: Option<u64>,
    /// Spent this period per provider.
    pub by_provider: BTreeMap<String, Money>,
    /// Spent this period per model.
    pub by_model: BTreeMap<String, Money>,
    /// The projection.
    pub forecast: Forecast,
}

/// The ledger's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The UTC offset, in minutes, whose calendar the periods follow.
    pub utc_offset_minutes: i16,
    /// Alerts kept in history.
    pub alert_history: usize,
    /// Finished periods kept per budget.
    pub period_history: usize,
}

impl Default for LedgerConfig {
    /// UTC; 1,000 alerts; 400 periods (over a year of daily ones).
    fn default() -> Self {
        LedgerConfig { utc_offset_minutes: 0, alert_history: 1_000, period_history: 400 }
    }
}

struct State {
    spec: BudgetSpec,
    start_ms: u64,
    end_ms: Option<u64>,
    spent: Money,
    reserved: Money,
    // Bit i: threshold i fired this period.
    fired: u64,
    by_provider: BTreeMap<String, Money>,
    by_model: BTreeMap<String, Money>,
    history: VecDeque<PeriodRecord>,
}

struct Ledger {
    budgets: Vec<State>,
    alerts: VecDeque<Alert>,
}

type Subscriber = Box<dyn Fn(&Alert) + Send + Sync>;

struct Shared {
    config: LedgerConfig,
    offset: UtcOffset,
    clock: Box<dyn Clock>,
    ledger: Mutex<Ledger>,
    subscribers: Mutex<Vec<Subscriber>>,
}

/// Spend limits per scope and period, shared by all requests (cheap to clone).
///
/// Before a call, [`Budgets::reserve`] its estimated cost: every applicable
/// hard budget is checked and charged atomically under one short lock, so
/// concurrent requests cannot together pass a limit. After the call,
/// [`Reservation::reconcile`] with the actual cost, or drop the reservation
/// (a failure) to release it.
///
/// **Boundary:** spending may reach a limit exactly; a request is refused
/// when `spent + reserved + estimate` would be *above* the limit.
///
/// ```
/// use modelfleet_budget::{BudgetSpec, Budgets, Charge, LedgerConfig, Period, Scope};
/// use modelfleet_registry::Money;
///
/// let budgets = Budgets::new(LedgerConfig::default());
/// budgets.add(BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(10)))?;
/// let charge = Charge { provider: "openai", model: "gpt-4o", key: None };
/// let reservation = budgets.reserve(&charge, "0.25".parse()?)?;
/// reservation.reconcile("0.20".parse()?);
/// assert_eq!(budgets.status(&Scope::Global).map(|s| s.spent.to_string()), Some("0.2".into()));
/// assert!(budgets.reserve(&charge, Money::from_dollars(11)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Budgets {
    shared: Arc<Shared>,
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

/// Money held for a call in flight. Reconcile it with the actual cost;
/// dropping it releases the hold (the call failed or was abandoned).
#[derive(Debug)]
#[must_use = "dropping a reservation releases it; reconcile it with the actual cost"]
pub struct Reservation {
    budgets: Budgets,
    amount: Money,
    provider: String,
    model: String,
    // The budgets holding the amount (indices are stable: budgets are only appended).
    held: Held,
    settled: bool,
}

/// The indices of the budgets a reservation holds: up to eight inline (no
/// allocation on the hot path), more on the heap.
#[derive(Debug, Clone)]
enum Held {
    Inline { len: usize, indices: [u32; 8] },
    Heap(Vec<u32>),
}

impl Held {
    fn push(&mut self, index: u32) {
        match self {
            Held::Inline { len, indices } if *len < indices.len() => {
                indices[*len] = index;
                *len += 1;
            }
            Held::Inline { len, indices } => {
                let mut all = indices[..*len].to_vec();
                all.push(index);
                *self = Held::Heap(all);
            }
            Held::Heap(all) => all.push(index),
        }
    }

    fn indices(&self) -> &[u32] {
        match self {
            Held::Inline { len, indices } => &indices[..*len],
            Held::Heap(all) => all,
        }
    }
}

impl Reservation {
    /// The amount held.
    #[must_use]
    pub fn amount(&self) -> Money {
        self.amount
    }

    /// Settles with the actual cost: the hold is released and `actual` spent.
    pub fn reconcile(mut self, actual: Money) {
        self.settled = true;
        self.budgets.settle(Target::Held(self.held.indices()), &self.provider, &self.model, self.amount, actual, None);
    }

    /// Like [`Reservation::reconcile`], and returns each budget charged with
    /// the start of its current period, so a caller persisting spend per
    /// period needs no second look at the ledger.
    #[must_use]
    pub fn reconcile_charged(mut self, actual: Money) -> Vec<(Scope, Period, u64)> {
        self.settled = true;
        let mut charged = Vec::new();
        self.budgets.settle(
            Target::Held(self.held.indices()),
            &self.provider,
            &self.model,
            self.amount,
            actual,
            Some(&mut charged),
        );
        charged
    }

    /// Releases the hold without spending (the call failed).
    pub fn release(mut self) {
        self.settled = true;
        self.budgets.settle(
            Target::Held(self.held.indices()),
            &self.provider,
            &self.model,
            self.amount,
            Money::ZERO,
            None,
        );
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.budgets.settle(
                Target::Held(self.held.indices()),
                &self.provider,
                &self.model,
                self.amount,
                Money::ZERO,
                None,
            );
        }
    }
}

/// Which budgets a settlement touches.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// Those a reservation holds.
    Held(&'a [u32]),
    /// Those covering a charge.
    Charge(&'a Charge<'a>),
}

impl Budgets {
    /// No budgets yet, on the system clock.
    #[must_use]
    pub fn new(config: LedgerConfig) -> Budgets {
        Budgets::with_clock(config, SystemClock)
    }

    /// No budgets yet, with periods and alerts on `clock`.
    #[must_use]
    pub fn with_clock(config: LedgerConfig, clock: impl Clock + 'static) -> Budgets {
        let offset = UtcOffset::from_whole_seconds(i32::from(config.utc_offset_minutes) * 60).unwrap_or(UtcOffset::UTC);
        Budgets {
            shared: Arc::new(Shared {
                config,
                offset,
                clock: Box::new(clock),
                ledger: Mutex::new(Ledger { budgets: Vec::new(), alerts: VecDeque::new() }),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Plain numbers, valid after any panic mid-update.
        self.shared.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ledger, locked, with every budget's period brought up to now; and now.
    fn current(&self) -> (MutexGuard<'_, Ledger>, u64) {
        let now = self.shared.clock.now_ms();
        let mut ledger = self.lock();
        for state in &mut ledger.budgets {
            roll(state, now, self.shared.offset, self.shared.config.period_history);
        }
        (ledger, now)
    }

    /// Adds a budget; one per scope and period.
    pub fn add(&self, spec: BudgetSpec) -> Result<(), Error> {
        if spec.limit < Money::ZERO {
            return Err(Error::InvalidLimit { scope: spec.scope, limit: spec.limit });
        }
        if let Some(&bad) = spec.thresholds.iter().find(|t| **t == 0 || **t > 200) {
            return Err(Error::InvalidThreshold { scope: spec.scope, threshold: bad });
        }
        if spec.thresholds.len() > 64 {
            return Err(Error::InvalidThreshold { scope: spec.scope, threshold: 0 });
        }
        let now = self.shared.clock.now_ms();
        let mut ledger = self.lock();
        if ledger.budgets.iter().any(|b| b.spec.scope == spec.scope && b.spec.period == spec.period) {
            return Err(Error::Duplicate { scope: spec.scope, period: spec.period });
        }
        let (start_ms, end_ms) = bounds(spec.period, now, self.shared.offset);
        ledger.budgets.push(State {
            spec,
            start_ms,
            end_ms,
            spent: Money::ZERO,
            reserved: Money::ZERO,
            fired: 0,
            by_provider: BTreeMap::new(),
            by_model: BTreeMap::new(),
            history: VecDeque::new(),
        });
        Ok(())
    }

    /// Holds `estimate` on every budget that applies to `charge`; refused by
    /// the first hard budget it would take past its limit.
    pub fn reserve(&self, charge: &Charge<'_>, estimate: Money) -> Result<Reservation, Exceeded> {
        let estimate = estimate.max(Money::ZERO);
        {
            let (mut ledger, _) = self.current();
            for state in ledger.budgets.iter().filter(|b| b.spec.scope.covers(charge)) {
                let held = state.spent.saturating_add(state.reserved).saturating_add(estimate);
                if state.spec.enforcement == Enforcement::Hard && held > state.spec.limit {
                    return Err(Exceeded {
                        scope: state.spec.scope.clone(),
                        limit: state.spec.limit,
                        spent: state.spent,
                        reserved: state.reserved,
                        requested: estimate,
                        resets_at_ms: state.end_ms,
                    });
                }
            }
            let mut held = Held::Inline { len: 0, indices: [0; 8] };
            for (i, state) in ledger.budgets.iter_mut().enumerate().filter(|(_, b)| b.spec.scope.covers(charge)) {
                state.reserved = state.reserved.saturating_add(estimate);
                held.push(u32::try_from(i).unwrap_or(u32::MAX));
            }
            drop(ledger);
            Ok(Reservation {
                budgets: self.clone(),
                amount: estimate,
                provider: charge.provider.to_owned(),
                model: charge.model.to_owned(),
                held,
                settled: false,
            })
        }
    }

    /// Records spend that had no reservation (never refused: the money is spent).
    pub fn spend(&self, charge: &Charge<'_>, actual: Money) {
        self.settle(Target::Charge(charge), charge.provider, charge.model, Money::ZERO, actual, None);
    }

    /// Releases `held` and spends `actual` on the budgets of `target`; when
    /// asked, lists the budgets spent on with their current period's start.
    fn settle(
        &self,
        target: Target<'_>,
        provider: &str,
        model: &str,
        held: Money,
        actual: Money,
        mut charged: Option<&mut Vec<(Scope, Period, u64)>>,
    ) {
        let actual = actual.max(Money::ZERO);
        let mut fired = Vec::new();
        {
            let (mut ledger, now) = self.current();
            let alert_history = self.shared.config.alert_history;
            for (i, state) in ledger.budgets.iter_mut().enumerate() {
                let applies = match &target {
                    Target::Held(indices) => u32::try_from(i).is_ok_and(|i| indices.contains(&i)),
                    Target::Charge(charge) => state.spec.scope.covers(charge),
                };
                if !applies {
                    continue;
                }
                state.reserved = state.reserved.saturating_sub(held).max(Money::ZERO);
                if actual.is_zero() {
                    continue;
                }
                state.spent = state.spent.saturating_add(actual);
                if let Some(charged) = charged.as_deref_mut() {
                    charged.push((state.spec.scope.clone(), state.spec.period, state.start_ms));
                }
                add_to(&mut state.by_provider, provider, actual);
                add_to(&mut state.by_model, model, actual);
                for (i, &threshold) in state.spec.thresholds.iter().enumerate() {
                    let bit = 1u64 << i;
                    if state.fired & bit == 0 && crossed(state.spent, state.spec.limit, threshold) {
                        state.fired |= bit;
                        fired.push(Alert {
                            scope: state.spec.scope.clone(),
                            threshold,
                            spent: state.spent,
                            limit: state.spec.limit,
                            period_start_ms: state.start_ms,
                            at_ms: now,
                        });
                    }
                }
            }
            for alert in &fired {
                if ledger.alerts.len() >= alert_history {
                    ledger.alerts.pop_front();
                }
                ledger.alerts.push_back(alert.clone());
            }
        }
        if !fired.is_empty() {
            // Delivered outside the ledger lock: a subscriber may read the budgets.
            let subscribers = self.shared.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
            for alert in &fired {
                for subscriber in subscribers.iter() {
                    subscriber(alert);
                }
            }
        }
    }

    /// Calls `subscriber` for every alert from now on.
    pub fn subscribe(&self, subscriber: impl Fn(&Alert) + Send + Sync + 'static) {
        self.shared.subscribers.lock().unwrap_or_else(PoisonError::into_inner).push(Box::new(subscriber));
    }

    /// The alerts fired so far, oldest first (bounded by the configuration).
    #[must_use]
    pub fn alerts(&self) -> Vec<Alert> {
        self.lock().alerts.iter().cloned().collect()
    }

    /// The status of the budget for `scope` (the first, when several periods).
    #[must_use]
    pub fn status(&self, scope: &Scope) -> Option<Status> {
        self.statuses().into_iter().find(|s| s.spec.scope == *scope)
    }

    /// Every budget's status now.
    #[must_use]
    pub fn statuses(&self) -> Vec<Status> {
        let (ledger, now) = self.current();
        ledger.budgets.iter().map(|state| status(state, now)).collect()
    }

    /// The finished periods of the budget for `scope`, oldest first.
    #[must_use]
    pub fn history(&self, scope: &Scope) -> Vec<PeriodRecord> {
        let (ledger, _) = self.current();
        ledger
            .budgets
            .iter()
            .find(|b| b.spec.scope == *scope)
            .map(|s| s.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Restores a budget's spend for its current period (after a restart).
    pub fn restore_spent(&self, scope: &Scope, period: Period, spent: Money) -> Result<(), Error> {
        let mut ledger = self.lock();
        let state = ledger
            .budgets
            .iter_mut()
            .find(|b| b.spec.scope == *scope && b.spec.period == period)
            .ok_or_else(|| Error::NoSuchBudget(scope.clone()))?;
        state.spent = spent.max(Money::ZERO);
        // Thresholds already passed count as fired: no repeat alerts after a restart.
        for (i, &threshold) in state.spec.thresholds.iter().enumerate() {
            if crossed(state.spent, state.spec.limit, threshold) {
                state.fired |= 1 << i;
            }
        }
        Ok(())
    }
}

fn add_to(map: &mut BTreeMap<String, Money>, key: &str, amount: Money) {
    match map.get_mut(key) {
        Some(total) => *total = total.saturating_add(amount),
        None => {
            map.insert(key.to_owned(), amount);
        }
    }
}

/// Whether `spent` is at or past `threshold` percent of `limit` (exact integers).
fn crossed(spent: Money, limit: Money, threshold: u8) -> bool {
    i128::from(spent.nanos()) * 100 >= i128::from(limit.nanos()) * i128::from(threshold)
}

/// Starts the period containing `now` when the current one has ended.
fn roll(state: &mut State, now: u64, offset: UtcOffset, keep: usize) {
    let Some(end) = state.end_ms else { return };
    if now < end {
        return;
    }
    if state.history.len() >= keep.max(1) {
        state.history.pop_front();
    }
    state.history.push_back(PeriodRecord {
        start_ms: state.start_ms,
        end_ms: end,
        spent: state.spent,
        limit: state.spec.limit,
    });
    let (start_ms, end_ms) = bounds(state.spec.period, now, offset);
    state.start_ms = start_ms;
    state.end_ms = end_ms;
    state.spent = Money::ZERO;
    state.fired = 0;
    state.by_provider.clear();
    state.by_model.clear();
}

fn status(state: &State, now: u64) -> Status {
    let limit = state.spec.limit;
    let percent = if limit.is_zero() {
        if state.spent.is_zero() { 0.0 } else { 100.0 }
    } else {
        state.spent.nanos() as f64 * 100.0 / limit.nanos() as f64
    };
    Status {
        spec: state.spec.clone(),
        spent: state.spent,
        reserved: state.reserved,
        remaining: limit.saturating_sub(state.spent).saturating_sub(state.reserved).max(Money::ZERO),
        percent,
        period_start_ms: state.start_ms,
        period_end_ms: state.end_ms,
        by_provider: state.by_provider.clone(),
        by_model: state.by_model.clone(),
        forecast: forecast(state, now),
    }
}

fn forecast(state: &State, now: u64) -> Forecast {
    let Some(end) = state.end_ms else { return Forecast::NoPeriodEnd };
    let length = end.saturating_sub(state.start_ms);
    let elapsed = now.saturating_sub(state.start_ms);
    let enough = elapsed >= 3_600_000 || elapsed.saturating_mul(20) >= length;
    if !enough || state.spent.is_zero() || elapsed == 0 {
        return Forecast::NotEnoughData;
    }
    let projected = i128::from(state.spent.nanos()) * i128::from(length) / i128::from(elapsed);
    let end_of_period = Money::from_nanos(i64::try_from(projected).unwrap_or(i64::MAX));
    Forecast::Projected { end_of_period, exceeds_limit: end_of_period > state.spec.limit }
}
