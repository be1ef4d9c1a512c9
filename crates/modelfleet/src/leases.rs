//! Leases of hard budgets (`[cluster] leases = true`): a replica holds a
//! slice of the budgets that pay for a request in the shared ledger, and
//! draws its requests from it in memory, so a hot budget costs the shared
//! store a grant now and then and a paced checkpoint (at most one per
//! [`PACE`] per slot while nothing waits), not two transactions per
//! request.
//!
//! One [`Slot`] per set of budgets a request pays (its keys name the
//! periods, so a new period gets a new slot). A request draws its hold from
//! the slot's lease when the lease has room, was renewed recently enough,
//! and the store knows that much may be in flight; otherwise it waits for
//! the slot to extend the lease (one extension at a time per slot, sized by
//! how fast the last one ran out), or for the next checkpoint. When the
//! request ends, its cost joins the slot's pending spend, charged to the
//! shared ledger by the next checkpoint. The answer does not wait for it
//! when the cost is within the draw: the draw is inside the ceiling the
//! store committed (below), which covers it if the replica dies first. A
//! cost past its draw waits for the checkpoint that charges it. Each
//! slot's task checkpoints when something changed, paced (one statement
//! carries every request that ended meanwhile, as a running total, so a
//! checkpoint repeated after a lost reply charges once), renews the lease
//! every third of its time to live, and closes it once it has been idle
//! for [`IDLE`].
//!
//! **What the store knows is in flight.** Every checkpoint (and grant)
//! records a ceiling: the money running now plus some headroom (four
//! times what was drawn since the last one, at least sixteen of the largest
//! requests, at most the lease's free room). Draws stay under the last
//! ceiling the store committed; past it they wait for the next
//! checkpoint. An expired lease is charged its ceiling, so the calls of a
//! replica that died (or was cut off past the lease's life) are all
//! covered, whether or not their answers went out: over-charged by at most
//! the headroom, never under.
//!
//! Draws stop when the lease was last renewed too long ago to be sure it
//! still holds, or when a checkpoint failed: the next request then needs
//! the store, and refuses when it cannot have it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use modelfleet_cluster::{BudgetKey, Checkpoint, ClusterError, Hold, HoldRefused, Report, SharedLedger, Slice};
use modelfleet_registry::Money;
use tokio::sync::{Notify, watch};

/// How long a lease with nothing in flight stays open after its last use.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// A new slot's lease is this many times the first request's hold.
const FIRST_FACTOR: i64 = 8;
/// The most requests' worth a lease is extended by at once.
const MAX_FACTOR: i64 = 1_024;
/// The least headroom a report gives, in the largest holds drawn: what
/// a burst may draw before it waits for the next checkpoint, and what an
/// expired lease may be over-charged by.
const HEADROOM: i64 = 16;
/// The least time between a slot's checkpoints, unless something waits for
/// one (a draw past the ceiling, an answer past its draw, shutdown):
/// answers within their draw do not wait for checkpoints, so pacing them
/// costs only headroom (a report allows four times the draws since the
/// last), and spares the store a transaction per round trip.
pub(crate) const PACE: Duration = Duration::from_millis(20);
/// Rounds a request waits for an extension or a checkpoint before it gives
/// up (each bounded by the store's timeout).
const ROUNDS: usize = 8;

/// Every slot this replica has open.
pub(crate) struct Leases {
    ledger: SharedLedger,
    ttl: Duration,
    slots: Mutex<HashMap<Vec<BudgetKey>, Arc<Slot>>>,
    /// Shutting down: leases close as soon as nothing runs on them.
    closing: std::sync::atomic::AtomicBool,
    /// Slots whose task still runs (closing included).
    tending: std::sync::atomic::AtomicUsize,
}

/// A request's draw on a lease: its hold, until [`Drawn::finish`]ed.
pub(crate) struct Drawn {
    slot: Arc<Slot>,
    reserved: Money,
}

impl Drawn {
    /// What it holds.
    pub(crate) fn reserved(&self) -> Money {
        self.reserved
    }

    /// Ends the request with `cost`: it is charged at the slot's next
    /// checkpoint ([`Finished::charged`] says when). A cost past the draw
    /// makes that checkpoint urgent (not paced).
    pub(crate) fn finish(self, cost: Money) -> Finished {
        let cost = cost.nanos().max(0);
        let urgent = cost > self.reserved.nanos();
        let flushed = self.slot.flushed.subscribe();
        let seq = self.slot.change(|state| {
            state.in_flight -= self.reserved.nanos();
            state.pending = state.pending.saturating_add(cost);
            state.total = state.total.saturating_add(cost);
            if urgent {
                // This change's number (`change` counts it after).
                state.urgent_seq = state.seq + 1;
            }
        });
        if urgent {
            self.slot.urgent.notify_one();
        }
        Finished { seq, flushed, slot: self.slot }
    }
}

/// A request ended on a lease, until a checkpoint charges it.
pub(crate) struct Finished {
    seq: u64,
    flushed: watch::Receiver<u64>,
    slot: Arc<Slot>,
}

impl Finished {
    /// Waits for the checkpoint that charges it: true once one has, false
    /// when none will (the lease ended: refused by the store, or the
    /// slot's task gone).
    pub(crate) async fn charged(mut self) -> bool {
        let (seq, slot) = (self.seq, &self.slot);
        let done = self.flushed.wait_for(|done| *done >= seq || slot.state().ended).await.is_ok();
        done && *self.flushed.borrow() >= seq
    }
}

/// A slot's task counted while it runs (`close_all` waits for none), also
/// when it panics.
struct Tending(Arc<Leases>);

impl Tending {
    fn new(leases: &Arc<Leases>) -> Tending {
        leases.tending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Tending(Arc::clone(leases))
    }
}

impl Drop for Tending {
    fn drop(&mut self) {
        self.0.tending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Part of a request's hold reserved while the lease is extended for the
/// rest: given back unless the extension completes the draw (a refusal, an
/// error, or the request's future dropped).
struct Partial<'s> {
    slot: &'s Slot,
    nanos: i64,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if self.nanos != 0 {
            let nanos = self.nanos;
            self.slot.change(|state| state.in_flight -= nanos);
        }
    }
}

/// One set of budgets' lease, as this replica sees it.
struct Slot {
    keys: Vec<BudgetKey>,
    state: Mutex<State>,
    /// The lease's row; the store is written for a slot one call at a time.
    lease: tokio::sync::Mutex<Option<Hold>>,
    /// Something changed that a checkpoint should carry.
    wake: Notify,
    /// Something waits for the next checkpoint: it is not paced.
    urgent: Notify,
    /// The last change a successful checkpoint carried.
    flushed: watch::Sender<u64>,
}

/// A slot's money (nanos): what the lease holds unused in the store, what
/// running requests drew from it, and what ended requests spent that no
/// checkpoint has charged yet.
struct State {
    held: i64,
    in_flight: i64,
    pending: i64,
    /// Everything ended requests spent on this lease (the running total
    /// checkpoints send).
    total: i64,
    /// The most the store knows may be in flight and pending (the last
    /// ceiling it committed): draws stay under it.
    ceiling: i64,
    /// Drawn since the last checkpoint's snapshot, and the largest hold.
    drawn_since: i64,
    largest: i64,
    /// The largest hold waiting for a report (the next one makes room for it).
    waiting: i64,
    /// The change of the latest answer past its draw (0: none waits): the
    /// checkpoint that carries it is urgent.
    urgent_seq: u64,
    /// Changes so far.
    seq: u64,
    /// Draws stop after this unless the lease is renewed: its expiry in
    /// the store is later (renewals are timed from before they are sent).
    valid_until: Instant,
    last_used: Instant,
    /// How many requests' worth the next extension asks for.
    factor: i64,
    last_grant: Option<Instant>,
    /// The lease ended (closed idle, or swept): draws go to a new slot.
    ended: bool,
}

impl State {
    fn free(&self) -> i64 {
        self.held - self.in_flight - self.pending
    }

    /// The ceiling to report with `extra` more in flight: what runs (and,
    /// with `uncharged`, what ended and is not charged by this report),
    /// plus headroom (four times what was drawn since the last report, at
    /// least [`HEADROOM`] of the largest holds, at least the largest
    /// waiting), within the room the lease has (with `granting` more, when
    /// a grant carries the report).
    fn report(&self, extra: i64, granting: i64, uncharged: bool) -> i64 {
        let largest = self.largest.max(extra);
        let headroom =
            (self.drawn_since + extra).saturating_mul(4).max(largest.saturating_mul(HEADROOM)).max(self.waiting);
        let room = (self.free() - extra).saturating_add(granting).max(0);
        let pending = if uncharged { self.pending } else { 0 };
        (self.in_flight + pending + extra).saturating_add(headroom.min(room))
    }

    /// Whether `need` can be drawn now: room, a lease surely held, and a
    /// ceiling the store committed.
    fn drawable(&self, need: i64, now: Instant) -> Result<(), Lacking> {
        if self.ended {
            Err(Lacking::Ended)
        } else if now >= self.valid_until || self.free() < need {
            Err(Lacking::Room)
        } else if self.in_flight + self.pending + need > self.ceiling {
            Err(Lacking::Report)
        } else {
            Ok(())
        }
    }

    /// Draws `need` (checked by [`State::drawable`]).
    fn draw(&mut self, need: i64, now: Instant) {
        self.in_flight += need;
        self.drawn_since += need;
        self.largest = self.largest.max(need);
        self.last_used = now;
        self.seq += 1;
    }
}

/// Why a draw could not be made from the lease as it is.
enum Lacking {
    /// The lease ended: a new slot takes over.
    Ended,
    /// It lacks room (or is due for renewal).
    Room,
    /// It has room, but the store has not been told that much may be in
    /// flight: the next checkpoint will.
    Report,
}

impl Slot {
    fn new(keys: Vec<BudgetKey>) -> Slot {
        let now = Instant::now();
        Slot {
            keys,
            state: Mutex::new(State {
                held: 0,
                in_flight: 0,
                pending: 0,
                total: 0,
                ceiling: 0,
                drawn_since: 0,
                largest: 0,
                waiting: 0,
                urgent_seq: 0,
                seq: 0,
                valid_until: now,
                last_used: now,
                factor: FIRST_FACTOR,
                last_grant: None,
                ended: false,
            }),
            lease: tokio::sync::Mutex::new(None),
            wake: Notify::new(),
            urgent: Notify::new(),
            flushed: watch::channel(0).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f`, counts it as a change for the next checkpoint, and
    /// wakes the slot's task: the change's number.
    fn change(&self, f: impl FnOnce(&mut State)) -> u64 {
        let seq = {
            let mut state = self.state();
            f(&mut state);
            state.seq += 1;
            state.seq
        };
        self.wake.notify_one();
        seq
    }

    /// Draws `need` when the lease has room, is surely still held, and the
    /// store knows that much may be in flight.
    fn try_draw(&self, need: i64) -> Result<(), Lacking> {
        let now = Instant::now();
        {
            let mut state = self.state();
            if let Err(lacking) = state.drawable(need, now) {
                if matches!(lacking, Lacking::Report) {
                    // The next report makes room for it: a change to carry.
                    state.waiting = state.waiting.max(need);
                    state.seq += 1;
                    drop(state);
                    self.wake.notify_one();
                    self.urgent.notify_one();
                }
                return Err(lacking);
            }
            state.draw(need, now);
        }
        self.wake.notify_one();
        Ok(())
    }
}

impl Leases {
    pub(crate) fn new(ledger: SharedLedger, ttl: Duration) -> Leases {
        Leases {
            ledger,
            ttl,
            slots: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            tending: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many leases this replica has open.
    pub(crate) fn open(&self) -> usize {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Closes every lease once the requests drawing on it end (at
    /// shutdown), returning what they did not use to the shared budgets;
    /// waits at most `timeout` (a lease left open returns when it expires).
    pub(crate) async fn close_all(&self, timeout: Duration) {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        loop {
            let open: Vec<Arc<Slot>> =
                self.slots.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
            let tending = self.tending.load(std::sync::atomic::Ordering::SeqCst);
            if tending == 0 || Instant::now() >= deadline {
                return;
            }
            for slot in &open {
                slot.wake.notify_one();
                slot.urgent.notify_one();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Renewed leases are trusted for 90 % of their time to live from
    /// before the renewal was sent.
    fn trusted(&self, sent: Instant) -> Instant {
        sent + self.ttl.mul_f64(0.9)
    }

    /// `keys`' slot, opened (with its task) when there is none.
    /// An ended slot still in the map (its task closing it) gives way to a
    /// new one; only a slot's own task forgets it.
    fn slot(self: &Arc<Self>, keys: &[BudgetKey]) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(keys)
            && !slot.state().ended
        {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot::new(keys.to_vec()));
        slots.insert(keys.to_vec(), Arc::clone(&slot));
        // Counted before the map is released, so `close_all` cannot miss it.
        let tending = Tending::new(self);
        drop(slots);
        let tended = Arc::clone(&slot);
        tokio::spawn(async move {
            Arc::clone(&tending.0).tend(Arc::clone(&tended)).await;
            // Ended, whatever ended it: a request waiting on this slot's
            // checkpoints moves on to a new slot.
            tended.state().ended = true;
            tended.flushed.send_modify(|_| {});
            tending.0.forget(&tended);
        });
        slot
    }

    /// Forgets `slot` (ended), unless another replaced it already.
    fn forget(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.get(&slot.keys).is_some_and(|open| Arc::ptr_eq(open, slot)) {
            slots.remove(&slot.keys);
        }
    }

    /// Draws `need` on the budgets `keys` (sorted, no duplicates) from this
    /// replica's lease, extending (or taking) it when it lacks room, or
    /// waiting for the checkpoint that tells the store it may be in
    /// flight. Refused as a hold is: a budget without that much left, or
    /// the store unreachable.
    pub(crate) async fn draw(self: &Arc<Self>, keys: &[BudgetKey], need: Money) -> Result<Drawn, HoldRefused> {
        let need = need.max(Money::ZERO);
        for _ in 0..ROUNDS {
            let slot = self.slot(keys);
            match slot.try_draw(need.nanos()) {
                Ok(()) => return Ok(Drawn { slot, reserved: need }),
                // The next round takes a new slot.
                Err(Lacking::Ended) => {}
                Err(Lacking::Report) => {
                    if self.reported(&slot, need.nanos()).await? {
                        return Ok(Drawn { slot, reserved: need });
                    }
                }
                Err(Lacking::Room) => {
                    if self.extend(&slot, keys, need).await? {
                        return Ok(Drawn { slot, reserved: need });
                    }
                }
            }
        }
        Err(HoldRefused::Store(ClusterError::Unavailable(
            "the lease could not serve this request in time (ending, or its checkpoints slow)".to_owned(),
        )))
    }

    /// Waits (at most the store's timeout) for the slot's next checkpoint,
    /// which makes room for `need`: true when drawn meanwhile (a checkpoint
    /// that landed before the wait began is not missed).
    async fn reported(&self, slot: &Slot, need: i64) -> Result<bool, HoldRefused> {
        let mut flushed = slot.flushed.subscribe();
        let seen = *flushed.borrow_and_update();
        if slot.try_draw(need).is_ok() {
            return Ok(true);
        }
        slot.wake.notify_one();
        slot.urgent.notify_one();
        let reported = flushed.wait_for(|done| *done > seen || slot.state().ended);
        match tokio::time::timeout(self.ledger_timeout(), reported).await {
            Ok(Ok(_)) => Ok(false),
            _ => Err(HoldRefused::Store(ClusterError::Unavailable(
                "no checkpoint of the lease within the store's timeout".to_owned(),
            ))),
        }
    }

    fn ledger_timeout(&self) -> Duration {
        // A lease's time to live is at least four times the store's timeout.
        self.ttl / 4
    }

    /// Extends `slot`'s lease (taking one when it has none) so that `need`
    /// can be drawn, and draws it: true when drawn; false when the slot
    /// ended or others took the room meanwhile (the caller tries again).
    /// Whatever free room the lease has is reserved for this request first,
    /// so no other draw can take it while the extension is on its way.
    async fn extend(&self, slot: &Arc<Slot>, keys: &[BudgetKey], need: Money) -> Result<bool, HoldRefused> {
        let mut lease = slot.lease.lock().await;
        let mut partial = Partial { slot, nanos: 0 };
        let (lacking, want, report) = {
            let mut state = slot.state();
            // Another extension (or a checkpoint) may have made the room
            // while this one waited for the lock: a grant only when needed.
            let now = Instant::now();
            match state.drawable(need.nanos(), now) {
                Ok(()) => {
                    state.draw(need.nanos(), now);
                    drop(state);
                    slot.wake.notify_one();
                    return Ok(true);
                }
                Err(Lacking::Ended | Lacking::Report) => return Ok(false),
                Err(Lacking::Room) => {}
            }
            let part = state.free().clamp(0, need.nanos());
            state.in_flight += part;
            partial.nanos = part;
            let lacking = need.nanos() - part;
            let want = need.nanos().saturating_mul(state.factor).max(lacking);
            // Never below what the ceiling in force allows others to draw meanwhile.
            (lacking, want, state.report(lacking, want, true).max(state.ceiling.saturating_add(lacking)))
        };
        // In steps of this request's hold: equal requests leave no fragment.
        let slice = Slice {
            need: Money::from_nanos(lacking),
            want: Money::from_nanos(want),
            step: need,
            in_flight: Money::from_nanos(report),
        };
        let sent = Instant::now();
        let granted = match lease.as_mut() {
            Some(lease) => self.ledger.extend(lease, slice, self.ttl).await,
            None => self.ledger.lease(keys, slice, self.ttl).await.map(|new| {
                let amount = new.amount();
                *lease = Some(new);
                amount
            }),
        };
        match granted {
            Ok(granted) => {
                let mut state = slot.state();
                state.held += granted.nanos();
                // The rest of the hold, drawn in the same breath: no other
                // request can take what was granted for this one.
                state.in_flight += lacking;
                partial.nanos = 0;
                state.drawn_since += need.nanos();
                state.largest = state.largest.max(need.nanos());
                state.ceiling = state.ceiling.max(report);
                state.last_used = Instant::now();
                state.seq += 1;
                state.valid_until = self.trusted(sent);
                // Ran out within a second: ask for twice as much next
                // time; lasted long: half.
                state.factor = match state.last_grant.map(|at| sent.duration_since(at)) {
                    Some(lasted) if lasted < Duration::from_secs(1) => (state.factor * 2).min(MAX_FACTOR),
                    Some(lasted) if lasted > Duration::from_secs(5) => (state.factor / 2).max(1),
                    _ => state.factor,
                };
                state.last_grant = Some(sent);
                drop(state);
                slot.wake.notify_one();
                Ok(true)
            }
            Err(HoldRefused::Ended) => {
                slot.state().ended = true;
                drop(partial);
                drop(lease);
                self.forget(slot);
                Ok(false)
            }
            Err(refused) => Err(refused),
        }
    }

    /// Waits until [`PACE`] has passed since the last checkpoint (`since`
    /// ago), unless something waits for the next one (a draw past the
    /// ceiling, an answer past its draw, shutdown).
    async fn pace(&self, slot: &Slot, since: Duration) {
        let urgent = {
            let state = slot.state();
            state.waiting > 0 || state.urgent_seq != 0 || self.closing.load(std::sync::atomic::Ordering::Relaxed)
        };
        if since < PACE && !urgent {
            let _ = tokio::time::timeout(PACE.saturating_sub(since), slot.urgent.notified()).await;
        }
    }

    /// A slot's task: checkpoints what changed (every request that ended
    /// since the last one, in one transaction), renews the lease every
    /// third of its time to live, and closes it once idle. A checkpoint
    /// that fails is retried, backing off to a second.
    async fn tend(self: Arc<Self>, slot: Arc<Slot>) {
        let renew_every = self.ttl / 3;
        let mut last_renewal = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let wait = renew_every.saturating_sub(last_renewal.elapsed()).clamp(Duration::from_millis(1), IDLE);
            let _ = tokio::time::timeout(wait, slot.wake.notified()).await;
            self.pace(&slot, last_renewal.elapsed()).await;
            let mut lease = slot.lease.lock().await;
            // Idle, it ends in the same breath as it is found idle: no
            // request draws on a lease being closed.
            let (pending, total, running, report, seq, idle, waiting) = {
                let mut state = slot.state();
                let closing = self.closing.load(std::sync::atomic::Ordering::Relaxed);
                let idle = state.in_flight == 0
                    && state.pending == 0
                    && state.waiting == 0
                    && (closing || state.last_used.elapsed() >= IDLE);
                state.ended |= idle;
                // Never below what draws made meanwhile may reach: they
                // were allowed up to the ceiling in force, less what this
                // checkpoint charges.
                let report = state.report(0, 0, false).max(state.ceiling - state.pending);
                state.drawn_since = 0;
                (state.pending, state.total, state.in_flight.max(0), report, state.seq, idle, state.waiting)
            };
            let Some(row) = lease.as_mut() else {
                // Never granted (refused, or not yet): nothing to write.
                if idle {
                    self.forget(&slot);
                    return;
                }
                last_renewal = Instant::now();
                continue;
            };
            if idle {
                if let Err(err) = self.ledger.close(row, Money::from_nanos(total)).await {
                    tracing::warn!(%err, "could not close an idle lease: it returns to its budgets when it expires");
                }
                // Forgotten once closed: shutdown waits for it.
                self.forget(&slot);
                return;
            }
            let due = last_renewal.elapsed() >= renew_every;
            if seq == *slot.flushed.borrow() && !due {
                continue;
            }
            let began = Instant::now();
            let keep = Money::from_nanos(i64::MAX);
            let sent = Report {
                total: Money::from_nanos(total),
                running: Money::from_nanos(running),
                in_flight: Money::from_nanos(report),
            };
            match self.ledger.checkpoint(row, sent, keep, self.ttl).await {
                Ok(outcome) => {
                    backoff = Duration::from_millis(50);
                    last_renewal = began;
                    let mut state = slot.state();
                    state.pending -= pending;
                    state.ceiling = report;
                    // Carried (an answer past its draw after the snapshot
                    // stays urgent for the next).
                    if state.urgent_seq <= seq {
                        state.urgent_seq = 0;
                    }
                    // The wait this report made room for is over (a larger
                    // one since stays for the next).
                    if state.waiting <= waiting {
                        state.waiting = 0;
                    }
                    match outcome {
                        Checkpoint::Held(amount) => {
                            state.held = amount.nanos();
                            state.valid_until = self.trusted(began);
                        }
                        Checkpoint::Ended => {
                            // Swept while this replica was cut off: its
                            // requests still running are charged as they end.
                            state.held = 0;
                            state.ended = true;
                        }
                    }
                    let done = state.ended && state.in_flight == 0 && state.pending == 0;
                    drop(state);
                    slot.flushed.send_replace(seq);
                    if done {
                        self.forget(&slot);
                        return;
                    }
                }
                Err(ClusterError::Invalid(err)) => {
                    // The store refuses this lease's data (its row gone, a
                    // constraint): retrying cannot help.
                    tracing::error!(%err, "a lease's checkpoint was refused: its pending spend is not recorded");
                    slot.state().ended = true;
                    self.forget(&slot);
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "a lease checkpoint failed: retrying");
                    // The store is unreachable: no more draws on this lease
                    // until it answers (the next request asks it, and
                    // refuses when it cannot).
                    slot.state().valid_until = Instant::now();
                    drop(lease);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    slot.wake.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "leases_tests.rs"]
mod tests;
