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
    /// The budget's period.
    pub period: Period,
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
    "budget exceeded for {scope} {period}: limit ${limit}, spent ${spent}, reserved ${reserved}, this request needs ${requested}{}",
    resets_at_ms.map_or_else(|| "; the budget never resets".to_owned(), |ms| format!("; resets at {}", rfc3339(ms)))
)]
pub struct Exceeded {
    /// The budget's scope.
    pub scope: Scope,
    /// The budget's period.
    pub period: Period,
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

/// What a settled reservation did: the budgets it spent on and how far it
/// took a hard budget past its limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settled {
    /// Every budget the actual cost was spent on, with its current period
    /// (empty when the actual cost was zero).
    pub charged: Vec<Charged>,
    /// How far this settlement took a hard budget past its limit: the most,
    /// over the hard budgets charged, of
    /// `min(actual - held, spent + reserved - limit)` after it; zero when it
    /// stayed within. Money reserved by other requests counts: spend past a
    /// hold that eats room promised to them is this settlement's overshoot.
    pub overshoot: Money,
}

/// One budget a settlement spent on, with the period the spend belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// The budget's scope.
    pub scope: Scope,
    /// The budget's period.
    pub period: Period,
    /// The start of the period charged (Unix ms).
    pub period_start_ms: u64,
    /// Its end (Unix ms), unless it never ends.
    pub period_end_ms: Option<u64>,
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
    /// Too early to extend a rate: less than 10% of the period *and* less
    /// than 24 hours of it have elapsed. Or nothing is spent nor reserved.
    NotEnoughData,
    /// A lifetime budget has no period end to project to.
    NoPeriodEnd,
    /// Spent so far, extended linearly to the period's end, plus the money
    /// reserved by requests in flight.
    Projected {
        /// The projected spend at the period's end.
        end_of_period: Money,
        /// Whether that passes the limit.
        exceeds_limit: bool,
    },
}

/// A hard budget's current period, as [`Budgets::hard_periods`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardPeriod {
    /// What it covers.
    pub scope: Scope,
    /// Its period.
    pub period: Period,
    /// The current period's start, Unix ms (0 for a lifetime budget).
    pub period_start_ms: u64,
    /// Its limit.
    pub limit: Money,
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
    /// How much of the period the numbers rest on, in ms: the time elapsed
    /// since the period's start, at most the period's length.
    pub data_ms: u64,
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
    // Invariant: unique among every budget this ledger ever held (never reused).
    id: u32,
    spec: Arc<BudgetSpec>,
    // "{scope} {period}", made once at `add`.
    label: Arc<str>,
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

impl State {
    fn is(&self, scope: &Scope, period: Period) -> bool {
        self.spec.scope == *scope && self.spec.period == period
    }

    fn is_hard(&self) -> bool {
        self.spec.enforcement == Enforcement::Hard
    }

    /// Marks as fired every threshold `spent` has reached.
    fn mark_crossed(&mut self) {
        for (i, &threshold) in self.spec.thresholds.iter().enumerate() {
            if crossed(self.spent, self.spec.limit, threshold) {
                self.fired |= 1 << i;
            }
        }
    }
}

struct Ledger {
    // In the order added.
    budgets: Vec<State>,
    alerts: VecDeque<Alert>,
    // The id the next budget gets.
    next_id: u32,
}

impl Ledger {
    fn find(&mut self, scope: &Scope, period: Period) -> Result<&mut State, Error> {
        self.budgets
            .iter_mut()
            .find(|b| b.is(scope, period))
            .ok_or_else(|| Error::NoSuchBudget { scope: scope.clone(), period })
    }

    fn push_alert(&mut self, alert: Alert, keep: usize) {
        self.alerts.push_back(alert);
        while self.alerts.len() > keep {
            self.alerts.pop_front();
        }
    }
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
/// A budget is identified by its scope *and* its period: a daily and a monthly
/// budget for the same key are two budgets, and every method that names one
/// ([`Budgets::status`], [`Budgets::history`], [`Budgets::set_limit`],
/// [`Budgets::reset`], [`Budgets::remove`], [`Budgets::restore`]) takes both.
///
/// Before a call, [`Budgets::reserve`] its estimated cost: every covering
/// hard budget is checked and every covering budget charged atomically under
/// one short lock, so concurrent requests cannot together pass a limit. After
/// the call, [`Reservation::reconcile_charged`] (or
/// [`Reservation::reconcile`]) with the actual cost, or drop the reservation
/// (a failure) to release it.
///
/// The rules:
///
/// - **Boundary.** Spend may reach a hard limit exactly and never pass it
///   through reservations: a nonzero amount is held only when
///   `spent + reserved + amount <= limit` for every covering hard budget.
///   A refusal holds nothing.
/// - **Zero holds.** A zero amount always passes, even at or past the limit:
///   free models stay servable.
/// - **Overshoot.** The actual cost is always charged in full: the money is
///   spent. An upstream that ignores `max_tokens` can cost more than was
///   held and so take a budget past its limit; [`Settled::overshoot`] reports
///   how far, and from then on the budget refuses every paid request until
///   its period ends, it is [`reset`](Budgets::reset) or its limit is
///   [raised](Budgets::set_limit). Spend passes a hard limit in no other way
///   (short of lowering a limit under requests in flight).
/// - **Administration.** [`Budgets::set_limit`] applies at once, also to
///   requests in flight (their holds stay); [`Budgets::reset`] zeroes a
///   period's spend and fired thresholds but keeps the holds;
///   [`Budgets::remove`] drops a budget, and the reservations holding it
///   simply skip it when they settle.
/// - **Forecast.** A [`Forecast::Projected`] needs at least 10% of the period
///   or 24 hours of it elapsed; it extends the spend linearly and adds the
///   money reserved.
///
/// ```
/// use modelfleet_budget::{BudgetSpec, Budgets, Charge, LedgerConfig, Period, Scope};
/// use modelfleet_registry::Money;
///
/// let budgets = Budgets::new(LedgerConfig::default());
/// budgets.add(BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(10)))?;
/// let charge = Charge { provider: "openai", model: "gpt-4o", key: None };
/// let reservation = budgets.reserve(&charge, "0.25".parse()?)?;
/// let settled = reservation.reconcile_charged("0.20".parse()?);
/// assert_eq!((settled.charged.len(), settled.overshoot), (1, Money::ZERO));
/// let spent = budgets.status(&Scope::Global, Period::Monthly).map(|s| s.spent.to_string());
/// assert_eq!(spent, Some("0.2".into()));
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
    // The ids of the budgets holding the amount; a budget removed since is skipped.
    held: Held,
    settled: bool,
}

/// The ids of the budgets a reservation holds: up to eight inline (no
/// allocation on the hot path), more on the heap.
#[derive(Debug, Clone)]
enum Held {
    Inline { len: usize, ids: [u32; 8] },
    Heap(Vec<u32>),
}

impl Held {
    const EMPTY: Held = Held::Inline { len: 0, ids: [0; 8] };

    fn push(&mut self, id: u32) {
        match self {
            Held::Inline { len, ids } if *len < ids.len() => {
                ids[*len] = id;
                *len += 1;
            }
            Held::Inline { len, ids } => {
                let mut all = ids[..*len].to_vec();
                all.push(id);
                *self = Held::Heap(all);
            }
            Held::Heap(all) => all.push(id),
        }
    }

    fn ids(&self) -> &[u32] {
        match self {
            Held::Inline { len, ids } => &ids[..*len],
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

    /// Settles with the actual cost: the hold is released and `actual` spent
    /// in full, by the rules of [`Reservation::reconcile_charged`].
    pub fn reconcile(mut self, actual: Money) {
        self.finish(actual, None);
    }

    /// Settles with the actual cost: the hold is released and `actual` spent
    /// in full on every budget still holding it, even past a hard limit.
    /// Returns the budgets charged, each with its current period (so a caller
    /// persisting spend per period needs no second look at the ledger), and
    /// the overshoot, if this took a hard budget past its limit.
    #[must_use = "an overshoot should be reported"]
    pub fn reconcile_charged(mut self, actual: Money) -> Settled {
        let mut charged = Vec::new();
        let overshoot = self.finish(actual, Some(&mut charged));
        Settled { charged, overshoot }
    }

    /// Releases the hold without spending (the call failed).
    pub fn release(mut self) {
        self.finish(Money::ZERO, None);
    }

    /// Settles once: releases the hold and spends `actual`; returns the overshoot.
    fn finish(&mut self, actual: Money, charged: Option<&mut Vec<Charged>>) -> Money {
        self.settled = true;
        self.budgets.settle(Target::Held(self.held.ids()), &self.provider, &self.model, self.amount, actual, charged)
    }
}

#[cfg(test)]
impl Reservation {
    /// Whether the held ids fit inline (no allocation): the fast path.
    pub(crate) fn held_inline(&self) -> bool {
        matches!(self.held, Held::Inline { .. })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(Money::ZERO, None);
        }
    }
}

/// Which budgets a settlement touches.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// Those a reservation holds, by id.
    Held(&'a [u32]),
    /// Those covering a charge.
    Charge(&'a Charge<'a>),
}

/// The room left in the covering hard budgets, taken once per request (one
/// lock) and then asked per candidate model without locking.
///
/// Built by [`Budgets::headroom`]; empty (and unallocated) when no hard
/// budget could cover the request.
#[derive(Debug, Clone, Default)]
pub struct Headroom {
    // Hard budgets only, in the order added; Key scopes only for the key asked about.
    rooms: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    label: Arc<str>,
    spec: Arc<BudgetSpec>,
    remaining: Money,
    resets_at_ms: Option<u64>,
}

/// The room left in one hard budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room<'a> {
    /// The budget's scope and period, as in `global monthly` or `key:team-a daily`.
    pub label: &'a str,
    /// The budget's scope.
    pub scope: &'a Scope,
    /// The budget's period.
    pub period: Period,
    /// `limit - spent - reserved`, never below zero.
    pub remaining: Money,
    /// When the period ends (Unix ms), unless it never does.
    pub resets_at_ms: Option<u64>,
}

impl Headroom {
    /// Whether no hard budget could cover the request.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The covering hard budget with the least left for a request served by
    /// `provider`/`model` (under the key given to [`Budgets::headroom`]); the
    /// first added among equals. `None` when no hard budget covers it.
    #[must_use]
    pub fn tightest(&self, provider: &str, model: &str) -> Option<Room<'_>> {
        self.rooms
            .iter()
            .filter(|e| match &e.spec.scope {
                Scope::Global | Scope::Key(_) => true,
                Scope::Provider(p) => p == provider,
                Scope::Model(m) => m == model,
            })
            .min_by_key(|e| e.remaining)
            .map(|e| Room {
                label: &e.label,
                scope: &e.spec.scope,
                period: e.spec.period,
                remaining: e.remaining,
                resets_at_ms: e.resets_at_ms,
            })
    }
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
                ledger: Mutex::new(Ledger { budgets: Vec::new(), alerts: VecDeque::new(), next_id: 0 }),
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
        if ledger.budgets.iter().any(|b| b.is(&spec.scope, spec.period)) {
            return Err(Error::Duplicate { scope: spec.scope, period: spec.period });
        }
        let (start_ms, end_ms) = bounds(spec.period, now, self.shared.offset);
        let id = ledger.next_id;
        // Wrapping would need four billion adds while a reservation stays held.
        ledger.next_id = id.wrapping_add(1);
        let label = format!("{} {}", spec.scope, spec.period).into();
        ledger.budgets.push(State {
            id,
            spec: Arc::new(spec),
            label,
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

    /// Sets a budget's limit, at once: requests in flight keep their holds,
    /// and the next reservation is checked against the new limit.
    pub fn set_limit(&self, scope: &Scope, period: Period, limit: Money) -> Result<(), Error> {
        if limit < Money::ZERO {
            return Err(Error::InvalidLimit { scope: scope.clone(), limit });
        }
        // Brought up to now first: a period that has ended keeps its limit in history.
        let (mut ledger, _) = self.current();
        Arc::make_mut(&mut ledger.find(scope, period)?.spec).limit = limit;
        Ok(())
    }

    /// Starts a budget's current period over: spent, the spend per provider
    /// and model, and the fired thresholds go back to zero; reservations in
    /// flight stay held. Returns what was spent before.
    pub fn reset(&self, scope: &Scope, period: Period) -> Result<Money, Error> {
        let (mut ledger, _) = self.current();
        let state = ledger.find(scope, period)?;
        let spent = std::mem::replace(&mut state.spent, Money::ZERO);
        state.by_provider.clear();
        state.by_model.clear();
        state.fired = 0;
        Ok(spent)
    }

    /// Removes a budget and returns its definition. Reservations holding it
    /// skip it when they settle.
    pub fn remove(&self, scope: &Scope, period: Period) -> Result<BudgetSpec, Error> {
        let mut ledger = self.lock();
        let at = ledger
            .budgets
            .iter()
            .position(|b| b.is(scope, period))
            .ok_or_else(|| Error::NoSuchBudget { scope: scope.clone(), period })?;
        Ok(Arc::unwrap_or_clone(ledger.budgets.remove(at).spec))
    }

    /// Holds `amount` on every budget covering `charge`. A zero amount always
    /// passes; a nonzero one is refused by the first covering hard budget
    /// where `spent + reserved + amount` would pass the limit, and then
    /// nothing is held.
    pub fn reserve(&self, charge: &Charge<'_>, amount: Money) -> Result<Reservation, Exceeded> {
        let amount = amount.max(Money::ZERO);
        let (mut ledger, _) = self.current();
        if !amount.is_zero() {
            let refusing = ledger.budgets.iter().filter(|b| b.is_hard() && b.spec.scope.covers(charge)).find(|b| {
                i128::from(b.spent.nanos()) + i128::from(b.reserved.nanos()) + i128::from(amount.nanos())
                    > i128::from(b.spec.limit.nanos())
            });
            if let Some(state) = refusing {
                return Err(Exceeded {
                    scope: state.spec.scope.clone(),
                    period: state.spec.period,
                    limit: state.spec.limit,
                    spent: state.spent,
                    reserved: state.reserved,
                    requested: amount,
                    resets_at_ms: state.end_ms,
                });
            }
        }
        let mut held = Held::EMPTY;
        for state in ledger.budgets.iter_mut().filter(|b| b.spec.scope.covers(charge)) {
            state.reserved = state.reserved.saturating_add(amount);
            held.push(state.id);
        }
        drop(ledger);
        Ok(Reservation {
            budgets: self.clone(),
            amount,
            provider: charge.provider.to_owned(),
            model: charge.model.to_owned(),
            held,
            settled: false,
        })
    }

    /// Every hard budget's current period (for a ledger shared by several
    /// processes to take this one's limits).
    #[must_use]
    pub fn all_hard_periods(&self) -> Vec<HardPeriod> {
        self.hard_periods_where(|_| true)
    }

    /// The hard budgets that would pay for `charge` now, each with its
    /// current period's start and its limit: what a ledger shared by
    /// several processes must hold too.
    #[must_use]
    pub fn hard_periods(&self, charge: &Charge<'_>) -> Vec<HardPeriod> {
        self.hard_periods_where(|scope| scope.covers(charge))
    }

    fn hard_periods_where(&self, covers: impl Fn(&Scope) -> bool) -> Vec<HardPeriod> {
        let (ledger, _) = self.current();
        ledger
            .budgets
            .iter()
            .filter(|b| b.is_hard() && covers(&b.spec.scope))
            .map(|b| HardPeriod {
                scope: b.spec.scope.clone(),
                period: b.spec.period,
                period_start_ms: b.start_ms,
                limit: b.spec.limit,
            })
            .collect()
    }

    /// Records spend that had no reservation (never refused: the money is
    /// spent). Returns the overshoot, as for a reservation of zero.
    #[must_use = "an overshoot should be reported"]
    pub fn spend(&self, charge: &Charge<'_>, actual: Money) -> Money {
        self.settle(Target::Charge(charge), charge.provider, charge.model, Money::ZERO, actual, None)
    }

    /// Releases `held` and spends `actual` on the budgets of `target`; when
    /// asked, lists the budgets spent on. Returns the overshoot.
    fn settle(
        &self,
        target: Target<'_>,
        provider: &str,
        model: &str,
        held: Money,
        actual: Money,
        mut charged: Option<&mut Vec<Charged>>,
    ) -> Money {
        let actual = actual.max(Money::ZERO);
        let beyond_hold = i128::from(actual.nanos()) - i128::from(held.nanos());
        let mut overshoot = 0i128;
        let mut fired = Vec::new();
        {
            let (mut ledger, now) = self.current();
            for state in &mut ledger.budgets {
                let applies = match &target {
                    Target::Held(ids) => ids.contains(&state.id),
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
                if state.is_hard() {
                    // Reserved money counts: spend past a hold eats room other
                    // requests were promised, and this settlement is the one that took it.
                    let past_limit = i128::from(state.spent.nanos()) + i128::from(state.reserved.nanos())
                        - i128::from(state.spec.limit.nanos());
                    overshoot = overshoot.max(beyond_hold.min(past_limit));
                }
                if let Some(charged) = charged.as_deref_mut() {
                    charged.push(Charged {
                        scope: state.spec.scope.clone(),
                        period: state.spec.period,
                        period_start_ms: state.start_ms,
                        period_end_ms: state.end_ms,
                    });
                }
                add_to(&mut state.by_provider, provider, actual);
                add_to(&mut state.by_model, model, actual);
                for (i, &threshold) in state.spec.thresholds.iter().enumerate() {
                    let bit = 1u64 << i;
                    if state.fired & bit == 0 && crossed(state.spent, state.spec.limit, threshold) {
                        state.fired |= bit;
                        fired.push(Alert {
                            scope: state.spec.scope.clone(),
                            period: state.spec.period,
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
                ledger.push_alert(alert.clone(), self.shared.config.alert_history);
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
        Money::from_nanos(i64::try_from(overshoot).unwrap_or(i64::MAX))
    }

    /// The room left in every hard budget that could cover a request made
    /// under `key`, under one lock; ask it per model with [`Headroom::tightest`].
    #[must_use]
    pub fn headroom(&self, key: Option<&str>) -> Headroom {
        let (ledger, _) = self.current();
        let rooms = ledger
            .budgets
            .iter()
            .filter(|b| {
                b.is_hard()
                    && match &b.spec.scope {
                        Scope::Key(k) => key == Some(k.as_str()),
                        Scope::Global | Scope::Provider(_) | Scope::Model(_) => true,
                    }
            })
            .map(|b| Entry {
                label: Arc::clone(&b.label),
                spec: Arc::clone(&b.spec),
                remaining: remaining(b),
                resets_at_ms: b.end_ms,
            })
            .collect();
        Headroom { rooms }
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

    /// The status of the budget for `scope` and `period`.
    #[must_use]
    pub fn status(&self, scope: &Scope, period: Period) -> Option<Status> {
        let (ledger, now) = self.current();
        ledger.budgets.iter().find(|b| b.is(scope, period)).map(|state| status(state, now))
    }

    /// Every budget's status now, in the order added.
    #[must_use]
    pub fn statuses(&self) -> Vec<Status> {
        let (ledger, now) = self.current();
        ledger.budgets.iter().map(|state| status(state, now)).collect()
    }

    /// The finished periods of the budget for `scope` and `period`, oldest first.
    #[must_use]
    pub fn history(&self, scope: &Scope, period: Period) -> Vec<PeriodRecord> {
        let (ledger, _) = self.current();
        ledger
            .budgets
            .iter()
            .find(|b| b.is(scope, period))
            .map(|s| s.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Restores a budget's spend, in total and per provider and model, for
    /// its current period (after a restart). Thresholds already passed count
    /// as fired: no repeat alerts.
    pub fn restore(
        &self,
        scope: &Scope,
        period: Period,
        spent: Money,
        by_provider: BTreeMap<String, Money>,
        by_model: BTreeMap<String, Money>,
    ) -> Result<(), Error> {
        let (mut ledger, _) = self.current();
        let state = ledger.find(scope, period)?;
        state.spent = spent.max(Money::ZERO);
        state.by_provider = by_provider;
        state.by_model = by_model;
        state.mark_crossed();
        Ok(())
    }

    /// Restores alerts fired before a restart: appended to the (bounded)
    /// history, and those of a budget's current period mark their threshold
    /// as fired, so it does not fire again.
    pub fn restore_alerts(&self, alerts: Vec<Alert>) {
        let (mut ledger, _) = self.current();
        let keep = self.shared.config.alert_history;
        for alert in alerts {
            let state = ledger
                .budgets
                .iter_mut()
                .find(|b| b.is(&alert.scope, alert.period) && b.start_ms == alert.period_start_ms);
            if let Some(state) = state {
                for (i, &threshold) in state.spec.thresholds.iter().enumerate() {
                    if threshold == alert.threshold {
                        state.fired |= 1 << i;
                    }
                }
            }
            ledger.push_alert(alert, keep);
        }
    }
}

fn remaining(state: &State) -> Money {
    state.spec.limit.saturating_sub(state.spent).saturating_sub(state.reserved).max(Money::ZERO)
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

/// At least this much of a period elapsed allows a forecast, whatever its length.
const FORECAST_AFTER_MS: u64 = 24 * 3_600_000;

fn status(state: &State, now: u64) -> Status {
    let limit = state.spec.limit;
    let percent = if limit.is_zero() {
        if state.spent.is_zero() { 0.0 } else { 100.0 }
    } else {
        state.spent.nanos() as f64 * 100.0 / limit.nanos() as f64
    };
    Status {
        spec: BudgetSpec::clone(&state.spec),
        spent: state.spent,
        reserved: state.reserved,
        remaining: remaining(state),
        percent,
        period_start_ms: state.start_ms,
        period_end_ms: state.end_ms,
        data_ms: data_ms(state, now),
        by_provider: state.by_provider.clone(),
        by_model: state.by_model.clone(),
        forecast: forecast(state, now),
    }
}

/// The time elapsed since the period's start, at most its length.
fn data_ms(state: &State, now: u64) -> u64 {
    let elapsed = now.saturating_sub(state.start_ms);
    state.end_ms.map_or(elapsed, |end| elapsed.min(end.saturating_sub(state.start_ms)))
}

fn forecast(state: &State, now: u64) -> Forecast {
    let Some(end) = state.end_ms else { return Forecast::NoPeriodEnd };
    let length = end.saturating_sub(state.start_ms);
    let elapsed = data_ms(state, now);
    let enough = elapsed >= FORECAST_AFTER_MS || elapsed.saturating_mul(10) >= length;
    if !enough || (state.spent.is_zero() && state.reserved.is_zero()) {
        return Forecast::NotEnoughData;
    }
    let Some(rate) = (i128::from(state.spent.nanos()) * i128::from(length)).checked_div(i128::from(elapsed)) else {
        return Forecast::NotEnoughData;
    };
    let projected = rate + i128::from(state.reserved.nanos());
    let end_of_period = Money::from_nanos(i64::try_from(projected).unwrap_or(i64::MAX));
    Forecast::Projected { end_of_period, exceeds_limit: end_of_period > state.spec.limit }
}
