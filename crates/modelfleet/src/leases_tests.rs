//! The production lease slots (`Leases::draw`, `Drawn::finish`, the slot's
//! task) against a real PostgreSQL (`MODELFLEET_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each test in a schema of
//! its own, dropped at the end. Without a server the tests skip, saying so,
//! except under `CI=true`, where they fail.

use std::{sync::Arc, time::Duration};

use modelfleet_cluster::{BudgetKey, HoldRefused, SharedLedger};
use modelfleet_registry::Money;

use modelfleet_test_support::{Schema, postgres_url};

use super::Leases;

fn cents(n: i64) -> Money {
    Money::from_nanos(n * 10_000_000)
}

async fn ledger(url: &str, schema: &Schema, replica: &str) -> SharedLedger {
    SharedLedger::connect_with(url, &schema.name, replica, Duration::from_secs(30), 4).await.expect("connects")
}

fn global() -> Vec<BudgetKey> {
    vec![BudgetKey { scope: "global".into(), period: "monthly".into(), period_start_ms: 1_764_547_200_000 }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_mixed_sizes_on_two_replicas_never_pass_the_limit_and_are_charged_exactly() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "mixed");
    let (a, b) = tokio::join!(ledger(&url, &schema, "a"), ledger(&url, &schema, "b"));
    let keys = global();
    a.define(&keys[0], cents(1_000)).await.unwrap();
    let replicas =
        [Arc::new(Leases::new(a.clone(), Duration::from_mins(2))), Arc::new(Leases::new(b, Duration::from_mins(2)))];
    // 400 requests of 1 to 37 cents, at once, on a $10 budget: the last
    // dollars are where a slot's free room and an extension race.
    let mut rng = fastrand::Rng::with_seed(17);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..400 {
        let (leases, keys) = (Arc::clone(&replicas[i % 2]), keys.clone());
        let (hold, cost) = {
            let hold = rng.i64(1..=37);
            (cents(hold), if i % 5 == 0 { Money::from_nanos(cents(hold).nanos() / 2) } else { cents(hold) })
        };
        calls.spawn(async move {
            match leases.draw(&keys, hold).await {
                Ok(drawn) => {
                    tokio::time::sleep(Duration::from_millis(u64::try_from(i % 7).unwrap())).await;
                    assert!(drawn.finish(cost).charged().await, "charged by a checkpoint");
                    Some(cost)
                }
                Err(HoldRefused::Exceeded { .. }) => None,
                Err(other) => panic!("{other}"),
            }
        });
    }
    let mut charged = Money::ZERO;
    let mut served = 0;
    while let Some(outcome) = calls.join_next().await {
        if let Some(cost) = outcome.unwrap() {
            charged = charged.saturating_add(cost);
            served += 1;
        }
    }
    assert!(served > 30, "the budget served {served} requests");
    // Every answer was charged before it was acknowledged.
    let row = a.status(&keys[0]).await.unwrap().unwrap();
    assert_eq!(row.spent, charged, "charged before the answers");
    assert!(row.spent.nanos() + row.held.nanos() <= cents(1_000).nanos(), "{row:?}");
    for leases in &replicas {
        leases.close_all(Duration::from_secs(30)).await;
        assert_eq!(leases.open(), 0);
    }
    let row = a.status(&keys[0]).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (charged, Money::ZERO), "exact, and every lease closed");
}

/// The budget once `dead` (a replica's runtime) is gone at once and its
/// lease (2 s) was swept by another replica.
fn swept_after_death(
    dead: tokio::runtime::Runtime,
    url: &str,
    schema: &Schema,
    keys: &[BudgetKey],
) -> modelfleet_cluster::PeriodRow {
    dead.shutdown_background();
    let alive = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    alive.block_on(async {
        let b = ledger(url, schema, "b").await;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        b.sweep().await.unwrap();
        let row = b.status(&keys[0]).await.unwrap().unwrap();
        assert_eq!(row.held, Money::ZERO, "the lease returned");
        row
    })
}

#[test]
fn a_dead_replicas_draws_are_all_charged_when_its_lease_expires() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "dead");
    let keys = global();
    // Replica A draws 12 requests of 10 cents and dies with all of them in
    // flight: its runtime, tasks and connections gone at once.
    let dead = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let drawn = dead.block_on(async {
        let a = ledger(&url, &schema, "a").await;
        a.define(&keys[0], cents(1_000)).await.unwrap();
        let leases = Arc::new(Leases::new(a, Duration::from_secs(2)));
        let mut drawn = Vec::new();
        for _ in 0..12 {
            drawn.push(leases.draw(&keys, cents(10)).await.unwrap());
        }
        drawn
    });
    std::mem::forget(drawn);
    let row = swept_after_death(dead, &url, &schema, &keys);
    assert!(row.spent >= cents(120), "every draw the store was told of is charged: {row:?}");
    // At most what was drawn plus the headroom reported (16 holds).
    assert!(row.spent <= cents(120 + 160), "over-charged past the headroom: {row:?}");
}

/// Settles `hold` with `cost` within its draw: done at the first poll.
fn acknowledge(hold: crate::shared::SharedHold, cost: Money) {
    let mut settle = std::pin::pin!(hold.settle(cost));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let settled = std::future::Future::poll(settle.as_mut(), &mut cx);
    assert!(settled.is_ready(), "a settlement within its draw waited for the store");
}

/// Answers within their draw go out without waiting for a checkpoint:
/// the production settlement (`SharedHold::settle`) completes at its first
/// poll. What those answers cost is still charged when the replica dies
/// before a checkpoint says so: by the ceiling the store was told, which
/// is less than what the lease holds (so it is the ceiling that covers
/// them, not the lease's whole amount). The replica's runtime has one
/// thread: its slot's task runs only when a draw yields (waiting for a
/// grant or a report).
#[test]
fn answers_that_went_out_before_a_checkpoint_are_charged_when_their_replica_dies() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "acknowledged");
    let keys = global();
    let dead = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (acknowledged, running) = dead.block_on(async {
        let a = ledger(&url, &schema, "a").await;
        a.define(&keys[0], cents(100_000)).await.unwrap();
        let leases = Arc::new(Leases::new(a.clone(), Duration::from_secs(2)));
        let shared = crate::shared::SharedBudgets::for_test(a.clone(), Arc::clone(&leases));
        let mut acknowledged = Money::ZERO;
        // A quick run of answers: the slot's lease grows (its extensions
        // double) faster than what it reports in flight.
        while a.holds(10).await.unwrap().iter().all(|h| h.amount < cents(2_000)) {
            for _ in 0..50 {
                acknowledge(shared.draw_for_test(&keys, cents(10)).await, cents(10));
                acknowledged = acknowledged + cents(10);
            }
        }
        // Then slowly (the slot's task checkpoints between the sips, so
        // each report's headroom is small) until the lease is extended:
        // an extension grants more than the ceiling it records.
        let lease = loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            for _ in 0..5 {
                acknowledge(shared.draw_for_test(&keys, cents(10)).await, cents(10));
                acknowledged = acknowledged + cents(10);
            }
            let lease = a.holds(10).await.unwrap().into_iter().find(|h| h.lease).expect("a lease");
            if lease.spent + lease.in_flight + cents(500) < lease.amount {
                break lease;
            }
            assert!(acknowledged < cents(50_000), "the ceiling stays the whole lease: {lease:?}");
        };
        // Answers past that ceiling (a draw past it waits for a report,
        // which the slot's task sends once it runs), then three running.
        let past = acknowledged + lease.in_flight + cents(200);
        while acknowledged < past {
            acknowledge(shared.draw_for_test(&keys, cents(10)).await, cents(10));
            acknowledged = acknowledged + cents(10);
        }
        let mut running = Vec::new();
        for _ in 0..3 {
            running.push(shared.draw_for_test(&keys, cents(10)).await);
        }
        (acknowledged, running)
    });
    // Dies now: whatever was not checkpointed is in its last ceiling.
    std::mem::forget(running);
    let row = swept_after_death(dead, &url, &schema, &keys);
    assert!(row.spent >= acknowledged + cents(30), "acknowledged answers are not all charged: {row:?}, {acknowledged}");
}

/// An answer that cost more than its draw is not covered by the ceiling:
/// its settlement waits for the checkpoint that charges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_its_draw_waits_for_the_checkpoint_that_charges_it() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "overshoot");
    let keys = global();
    let a = ledger(&url, &schema, "a").await;
    a.define(&keys[0], cents(1_000)).await.unwrap();
    let leases = Arc::new(Leases::new(a.clone(), Duration::from_mins(2)));
    let shared = crate::shared::SharedBudgets::for_test(a.clone(), Arc::clone(&leases));
    let hold = shared.draw_for_test(&keys, cents(10)).await;
    let mut settle = std::pin::pin!(hold.settle(cents(15)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::future::Future::poll(settle.as_mut(), &mut cx).is_pending(), "went out before it was charged");
    // The settlement gives up after two minutes: well before, it is charged.
    tokio::time::timeout(Duration::from_secs(20), settle).await.expect("the checkpoint charges it");
    let row = a.status(&keys[0]).await.unwrap().unwrap();
    assert_eq!(row.spent, cents(15), "went out before the store had its 15 cents");
    leases.close_all(Duration::from_secs(30)).await;
    let row = a.status(&keys[0]).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (cents(15), Money::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_a_request_waits_on_is_not_drawn_by_another_while_the_lease_is_extended() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "partial");
    let ledger = ledger(&url, &schema, "a").await;
    let keys = global();
    ledger.define(&keys[0], cents(100)).await.unwrap();
    let leases = Arc::new(Leases::new(ledger.clone(), Duration::from_mins(2)));
    // 20 cents drawn from a first lease of 40 (half the room, in steps of
    // 20): 20 cents free.
    let first = leases.draw(&keys, cents(20)).await.unwrap();
    assert_eq!(ledger.status(&keys[0]).await.unwrap().unwrap().held, cents(40));
    // The budget's row locked elsewhere: an extension waits on it.
    let (blocker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    blocker.batch_execute(&format!("BEGIN; SELECT * FROM {}.budget_periods FOR UPDATE", schema.name)).await.unwrap();
    // A request of 30 cents lacks 10: the lease is extended for it, and
    // the 20 free cents are its meanwhile.
    let waiting = tokio::spawn({
        let (leases, keys) = (Arc::clone(&leases), keys.clone());
        async move { leases.draw(&keys, cents(30)).await.map(|drawn| drawn.finish(cents(30))) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the extension waits on the locked row");
    // So a request of 10 cents finds no free room: it waits too.
    let small = tokio::time::timeout(Duration::from_millis(300), leases.draw(&keys, cents(10))).await;
    assert!(small.is_err(), "the 10 cents came out of room another request was promised");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert!(waiting.await.unwrap().unwrap().charged().await);
    assert!(first.finish(cents(20)).charged().await);
    leases.close_all(Duration::from_secs(30)).await;
    let row = ledger.status(&keys[0]).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (cents(50), Money::ZERO));
}

#[test]
fn a_draw_past_the_reported_ceiling_waits_for_a_report_that_makes_room_for_it() {
    let slot = super::Slot::new(global());
    {
        let mut state = slot.state();
        state.held = cents(100).nanos();
        state.ceiling = cents(10).nanos();
        state.largest = cents(1).nanos();
        state.valid_until = std::time::Instant::now() + Duration::from_mins(1);
    }
    let before = slot.state().seq;
    assert!(matches!(slot.try_draw(cents(1).nanos()), Ok(())), "within the ceiling");
    // 30 cents: the lease has the room, the store was not told.
    assert!(matches!(slot.try_draw(cents(30).nanos()), Err(super::Lacking::Report)));
    let state = slot.state();
    assert!(state.seq > before + 1, "a change for the slot's task to report");
    assert_eq!(state.waiting, cents(30).nanos());
    // The next report's ceiling lets it through: what runs plus room for it
    // (the usual headroom, 16 of the largest hold of 1 cent, would not).
    assert!(state.report(0, 0, false) >= cents(1 + 30).nanos(), "{}", state.report(0, 0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_new_slot_takes_one_lease_not_one_per_request() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "burst");
    let ledger = ledger(&url, &schema, "a").await;
    let keys = global();
    ledger.define(&keys[0], cents(1_000)).await.unwrap();
    let leases = Arc::new(Leases::new(ledger.clone(), Duration::from_mins(2)));
    let mut draws = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (leases, keys) = (Arc::clone(&leases), keys.clone());
        draws.spawn(async move { leases.draw(&keys, cents(1)).await.map(|drawn| drawn.finish(cents(1))) });
    }
    let mut waits = Vec::new();
    while let Some(drawn) = draws.join_next().await {
        waits.push(drawn.unwrap().unwrap());
    }
    // 8 cents at first, then extensions only when a request lacks room:
    // at most 8 + 16 + 32 cents, not a grant (and a doubling) per request.
    let held = ledger.status(&keys[0]).await.unwrap().unwrap();
    assert!(held.spent.nanos() + held.held.nanos() <= cents(56).nanos(), "{held:?}");
    for finished in waits {
        assert!(finished.charged().await);
    }
    leases.close_all(Duration::from_secs(30)).await;
    let row = ledger.status(&keys[0]).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (cents(20), Money::ZERO));
}

/// A steady trickle of answers within their draws is checkpointed at most
/// once per [`super::PACE`], not once per answer: 300 answers a
/// millisecond or more apart (at least 300 ms) would be up to 300
/// checkpoints unpaced; paced, about one per 20 ms, plus the grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_answers_within_their_draws_are_paced() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "paced");
    let keys = global();
    let a = ledger(&url, &schema, "a").await;
    a.define(&keys[0], cents(100_000)).await.unwrap();
    let leases = Arc::new(Leases::new(a.clone(), Duration::from_mins(2)));
    let started = std::time::Instant::now();
    let calls = a.stats().calls;
    let mut last = None;
    for _ in 0..300 {
        last = Some(leases.draw(&keys, cents(1)).await.unwrap().finish(cents(1)));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let made = a.stats().calls - calls;
    let paces = u64::try_from(started.elapsed().as_millis() / super::PACE.as_millis()).unwrap();
    // Each pace at most one checkpoint, plus the grants (doubling: a few).
    assert!(made <= paces + 10, "{made} calls to the store in {paces} paces");
    assert!(last.expect("300 answers").charged().await);
    leases.close_all(Duration::from_secs(30)).await;
    assert_eq!(a.status(&keys[0]).await.unwrap().unwrap().spent, cents(300));
}
