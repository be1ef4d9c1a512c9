//! The books: how an attempt's outcome is charged and recorded, on every
//! path (answered, failed, billed, cancelled, streamed).
//!
//! One settlement is one unit: the actual cost is spent on every budget the
//! hold covered ([`Reservation::reconcile_charged`]), the outcome goes to the
//! monitor and the metrics, and the spend rows with the performance row are
//! committed in one SQLite transaction by the store's writer. The request
//! awaits that commit ([`Books::settle`]); a path that cannot await (a future
//! dropped mid-call, a stream's settlement dropped unfinished) hands the same
//! rows to the writer without waiting ([`Books::settle_detached`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU32, Ordering},
    },
    time::Duration,
};

use modelfleet_budget::Reservation;
use modelfleet_errors::ErrorClass;
use modelfleet_metrics::{Metrics, RequestSample};
use modelfleet_monitor::{Monitor, Outcome};
use modelfleet_registry::{Category, Clock, ModelSpec, Money, SystemClock};
use modelfleet_store::{PerfRecord, RequestFacts, SpendEntry, Store};

use crate::{Usage, shared::SharedHold};

/// What every attempt of one request shares for the books: who sent it,
/// what kind it is, and how many attempts it made so far.
#[derive(Debug)]
pub(crate) struct RequestInfo {
    pub(crate) kind: Category,
    pub(crate) language: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) route: Option<String>,
    attempts: AtomicU32,
}

impl RequestInfo {
    pub(crate) fn new(
        kind: Category,
        language: Option<String>,
        request_id: Option<String>,
        key: Option<String>,
        route: Option<String>,
    ) -> RequestInfo {
        // One spelling per language in the records: "EN" and "en" are one group.
        let language = language.map(|l| l.to_ascii_lowercase());
        RequestInfo { kind, language, request_id, key, route, attempts: AtomicU32::new(0) }
    }

    /// The tag of the next attempt: its number from 1 in the request, and
    /// whether it stands in for the first choice (the executor's
    /// [`AttemptCtx::fallback`](modelfleet_errors::AttemptCtx::fallback)).
    pub(crate) fn next(self: &Arc<Self>, fallback: bool) -> Tag {
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        Tag { request: Arc::clone(self), attempt, fallback }
    }
}

/// One attempt's place in its request.
#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub(crate) request: Arc<RequestInfo>,
    pub(crate) attempt: u32,
    pub(crate) fallback: bool,
}

/// One attempt's outcome, ready to be booked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(crate) model: &'a ModelSpec,
    pub(crate) tag: &'a Tag,
    pub(crate) latency: Duration,
    pub(crate) usage: Usage,
    /// What is charged: the usage's exact price, or the hold's worst case
    /// when the usage is unknown.
    pub(crate) cost: Money,
    pub(crate) error: Option<ErrorClass>,
    /// A stream's time to its first event (`None` for a call).
    pub(crate) ttft: Option<Duration>,
}

/// Where outcomes are written: the monitor, the metrics and the store.
#[derive(Clone)]
pub(crate) struct Books {
    pub(crate) store: Arc<Store>,
    pub(crate) monitor: Arc<Monitor>,
    pub(crate) metrics: Arc<Metrics>,
    /// [`FleetOptions::virtual_time`](crate::FleetOptions::virtual_time).
    pub(crate) virtual_time: bool,
}

impl Books {
    /// Charges and records `entry`, and returns once its spend and
    /// performance row are committed (when it spent on a budget; otherwise
    /// once the row is queued). A failed commit is logged; the store
    /// keeps the spend and retries it, and meanwhile reports a backlog that
    /// fails hard budgets closed (see [`Store::spend_backlog`]).
    pub(crate) async fn settle(&self, reservation: Reservation, entry: Entry<'_>) {
        let (spend, perf) = self.book(reservation, entry);
        if spend.is_empty() {
            // No budget spent on: the row joins the writer's next batch.
            if let Err(err) = self.store.record(perf).await {
                tracing::error!(%err, "could not queue a performance record");
            }
            return;
        }
        let committed = if self.virtual_time {
            // On tokio's paused clock, awaiting the writer thread would let
            // the clock jump to the next timer; a blocking task holds it still.
            let store = Arc::clone(&self.store);
            tokio::task::spawn_blocking(move || {
                tokio::runtime::Handle::current().block_on(store.commit(spend, Some(perf)))
            })
            .await
            .unwrap_or_else(|e| Err(modelfleet_store::Error::Write(e.to_string())))
        } else {
            self.store.commit(spend, Some(perf)).await
        };
        if let Err(err) = committed {
            tracing::error!(%err, model = %entry.model.id, "could not commit spend; the store retries it and hard budgets refuse meanwhile");
        }
    }

    /// [`Books::settle`] for paths that cannot await: the rows are queued
    /// to the writer without waiting (never blocking, never dropped).
    pub(crate) fn settle_detached(&self, reservation: Reservation, entry: Entry<'_>) {
        let (spend, perf) = self.book(reservation, entry);
        self.store.commit_detached(spend, Some(perf));
    }

    /// Spends the cost on the reservation's budgets and records the outcome
    /// in memory; returns the rows to persist.
    fn book(&self, reservation: Reservation, entry: Entry<'_>) -> (Vec<SpendEntry>, PerfRecord) {
        let held = reservation.amount();
        let settled = reservation.reconcile_charged(entry.cost);
        if !settled.overshoot.is_zero() {
            self.metrics.record_budget_overshoot(settled.overshoot);
            tracing::warn!(
                model = %entry.model.id,
                held = %held,
                charged = %entry.cost,
                overshoot = %settled.overshoot,
                "an answer cost more than its hold: a hard budget went past its limit and now refuses paid requests"
            );
        }
        let spend = settled
            .charged
            .into_iter()
            .map(|c| SpendEntry {
                scope: c.scope,
                period: c.period,
                period_start_ms: c.period_start_ms,
                period_end_ms: c.period_end_ms,
                provider: entry.model.provider.clone(),
                model: entry.model.id.clone(),
                amount: entry.cost,
            })
            .collect();
        (spend, self.observe(entry))
    }

    /// Records the outcome in the monitor and the metrics; returns its row.
    fn observe(&self, entry: Entry<'_>) -> PerfRecord {
        let Entry { model, tag, latency, usage, cost, error, ttft } = entry;
        let request = &tag.request;
        let outcome = Outcome {
            model: &model.id,
            provider: &model.provider,
            kind: request.kind,
            language: request.language.as_deref(),
            latency,
            time_to_first_token: ttft,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            cost,
            error,
            quality: None,
        };
        self.monitor.record(&outcome);
        self.metrics.record_request(&RequestSample {
            model: &model.id,
            latency,
            error,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost,
        });
        let facts = RequestFacts {
            request_id: request.request_id.as_deref(),
            key_name: request.key.as_deref(),
            route: request.route.as_deref(),
            attempt: tag.attempt,
            fallback: tag.fallback,
        };
        PerfRecord::of_request(&outcome, &facts, SystemClock.now_ms())
    }
}

/// The exact price of `usage` on `model` (zero when it has no price: such
/// a model is never eligible under a hard budget).
pub(crate) fn price_of(model: &ModelSpec, usage: Usage) -> Money {
    model.price().map_or(Money::ZERO, |p| p.cost_of(&usage))
}

/// A budget hold for a call in flight. If the future awaiting the call is
/// dropped (the caller went away mid-call), the provider may still bill the
/// call and its usage will never be known: `if_dropped` is charged — the
/// hold's worst case for a call, the prompt for a stream not yet open (its
/// answer was never relayed).
pub(crate) struct Pending<'a> {
    pub(crate) books: &'a Books,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) model: &'a ModelSpec,
    pub(crate) tag: &'a Tag,
    pub(crate) if_dropped: Money,
    /// What the request's attempts charged so far, nano-dollars: a dropped
    /// attempt (a hedge's loser, a client gone) adds its charge too, so the
    /// request's reported cost is what its attempts were charged.
    pub(crate) spent: &'a AtomicI64,
    /// The same hold in the ledger replicas share, if one pays.
    pub(crate) shared: Option<SharedHold>,
}

impl Pending<'_> {
    /// The call returned: the caller settles the hold itself (and the
    /// shared one, taken with [`Pending::take_shared`]).
    pub(crate) fn disarm(&mut self) -> Option<Reservation> {
        self.reservation.take()
    }

    /// The shared hold, for the caller to settle.
    pub(crate) fn take_shared(&mut self) -> Option<SharedHold> {
        self.shared.take()
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let cost = self.if_dropped;
            self.spent.fetch_add(cost.nanos(), Ordering::Relaxed);
            let entry = Entry {
                model: self.model,
                tag: self.tag,
                latency: Duration::ZERO,
                usage: Usage::default(),
                cost,
                error: Some(ErrorClass::Cancelled),
                ttft: None,
            };
            self.books.settle_detached(reservation, entry);
            if let Some(mut shared) = self.shared.take() {
                // Dropped: settled in the background with this cost.
                shared.cost(cost);
            }
        }
    }
}
