//! The shared ledger against a real PostgreSQL (`MODELFLEET_TEST_POSTGRES`,
//! default `postgres://postgres@127.0.0.1:5432/test`), each test in a schema
//! of its own. Without a server the tests skip, saying so, except under
//! `CI=true`, where they fail.

use std::{net::SocketAddr, time::Duration};

use modelfleet_registry::Money;
use modelfleet_test_support::Proxy;
use tokio::task::JoinSet;

use crate::{BudgetKey, Checkpoint, ClusterError, HoldRefused, Report, SharedLedger, Slice, schema::identifier};

pub(crate) use modelfleet_test_support::{Schema, postgres_url};

fn key(scope: &str) -> BudgetKey {
    BudgetKey { scope: scope.to_owned(), period: "monthly".to_owned(), period_start_ms: 1_764_547_200_000 }
}

/// `total` spent so far, `running` in flight (and no more).
fn report(total: Money, running: Money) -> Report {
    Report { total, running, in_flight: running }
}

/// At least `need`, at most `want`, to the nano.
fn slice(need: Money, want: Money) -> Slice {
    Slice { need, want, step: Money::from_nanos(1), in_flight: Money::ZERO }
}

fn dollars(n: i64) -> Money {
    Money::from_nanos(n * 1_000_000_000)
}

/// A replica's ledger: a small pool (tests run side by side on one server),
/// and a timeout for correctness, not latency (a loaded CI machine).
pub(crate) async fn ledger(url: &str, schema: &Schema, replica: &str) -> SharedLedger {
    SharedLedger::connect_with(url, &schema.name, replica, Duration::from_secs(30), 4)
        .await
        .expect("connects and migrates")
}

#[test]
fn a_schema_name_is_an_identifier() {
    assert!(identifier("modelfleet").is_ok());
    assert!(identifier("t_1").is_ok());
    for bad in ["", "1abc", "Upper", "a-b", "a;drop table x", &"a".repeat(64)] {
        assert!(matches!(identifier(bad), Err(ClusterError::Invalid(_))), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_holding_at_once_never_pass_the_limit() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "limit");
    // Three replicas, each its own pool, connecting (and migrating) at once.
    let (a, b, c) = tokio::join!(ledger(&url, &schema, "a"), ledger(&url, &schema, "b"), ledger(&url, &schema, "c"));
    let replicas = [a, b, c];
    let budget = key("global");
    replicas[0].define(&budget, dollars(50)).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..300 {
        let ledger = replicas[i % 3].clone();
        let keys = vec![budget.clone()];
        tasks.spawn(async move { ledger.hold(&keys, dollars(1), Duration::from_mins(1)).await });
    }
    let mut granted = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Ok(hold) => granted.push(hold),
            Err(HoldRefused::Exceeded { row, .. }) => {
                assert!(row.spent.nanos() + row.held.nanos() <= dollars(50).nanos());
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(granted.len(), 50, "exactly what the budget allows, across replicas");
    let row = replicas[1].status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (Money::ZERO, dollars(50)));
    // Settled at their actual cost: the ledger is the sum of the charges, exactly.
    let actual = Money::from_nanos(987_654_321);
    for (i, hold) in granted.iter().enumerate() {
        replicas[i % 3].settle(hold, actual).await.unwrap();
    }
    let row = replicas[2].status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent.nanos(), row.held), (actual.nanos() * 50, Money::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_on_several_budgets_is_all_or_nothing() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "atomic");
    let ledger = ledger(&url, &schema, "a").await;
    let (global, provider) = (key("global"), key("provider:openai"));
    ledger.define(&global, dollars(10)).await.unwrap();
    ledger.define(&provider, dollars(3)).await.unwrap();
    let both = [provider.clone(), global.clone()];
    let mut granted = 0;
    for _ in 0..6 {
        match ledger.hold(&both, dollars(1), Duration::from_mins(1)).await {
            Ok(_) => granted += 1,
            Err(HoldRefused::Exceeded { key, .. }) => assert_eq!(key, provider, "the tighter budget refuses"),
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(granted, 3);
    let row = ledger.status(&global).await.unwrap().unwrap();
    assert_eq!(row.held, dollars(3), "nothing stays held on the budget that had room");
    // Adding a period another replica added keeps its limit; defining sets it.
    ledger.add(&global, dollars(99)).await.unwrap();
    assert_eq!(ledger.status(&global).await.unwrap().unwrap().limit, dollars(10));
    ledger.add(&key("model:new"), dollars(2)).await.unwrap();
    assert_eq!(ledger.status(&key("model:new")).await.unwrap().unwrap().limit, dollars(2));
    // An administrator's reset zeroes the spend, not the holds.
    let spent = ledger.hold(std::slice::from_ref(&global), dollars(1), Duration::from_mins(1)).await.unwrap();
    ledger.settle(&spent, dollars(1)).await.unwrap();
    assert!(ledger.reset(&global).await.unwrap());
    let row = ledger.status(&global).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (Money::ZERO, dollars(3)));
    assert!(!ledger.reset(&key("model:none")).await.unwrap());
    // An amount past any sum is refused as too much, not as a broken store.
    let huge = ledger.hold(&both, Money::from_nanos(i64::MAX), Duration::from_mins(1)).await.unwrap_err();
    assert!(matches!(huge, HoldRefused::Exceeded { .. }), "{huge}");
    // A zero hold passes even an exhausted budget; an unknown budget is named.
    assert_eq!(ledger.hold(&both, Money::ZERO, Duration::from_mins(1)).await.unwrap().amount(), Money::ZERO);
    let unknown = ledger.hold(&[key("model:x")], dollars(1), Duration::from_mins(1)).await.unwrap_err();
    assert!(matches!(unknown, HoldRefused::Undefined(ref k) if k.scope == "model:x"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_holds_expire_and_nothing_is_counted_twice() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "expiry");
    let ledger = ledger(&url, &schema, "a").await;
    let budget = key("global");
    ledger.define(&budget, dollars(5)).await.unwrap();
    let lost = ledger.hold(std::slice::from_ref(&budget), dollars(4), Duration::from_millis(1)).await.unwrap();
    let kept = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_mins(1)).await.unwrap();
    let full = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_mins(1)).await;
    assert!(matches!(full, Err(HoldRefused::Exceeded { .. })), "{full:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ledger.sweep().await.unwrap(), 1, "only the expired hold");
    // Charged in full: its replica may have died after the provider billed it.
    let row = ledger.status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(4), dollars(1)));
    // The swept hold's answer arrives after all: corrected to its actual
    // cost, once; nothing released twice.
    ledger.settle(&lost, dollars(2)).await.unwrap();
    ledger.settle(&lost, dollars(2)).await.unwrap();
    ledger.settle(&kept, dollars(1)).await.unwrap();
    ledger.settle(&kept, dollars(1)).await.unwrap();
    let row = ledger.status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(3), Money::ZERO));
    assert_eq!(ledger.sweep().await.unwrap(), 0);
    // A long call renews its hold: renewed past its first expiry, it is not
    // swept; let lapse, it is; and a swept or settled hold cannot be
    // renewed (its room went back). Sleeps only ever outlast expiries.
    let long = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_millis(200)).await.unwrap();
    assert!(ledger.renew(&long, Duration::from_mins(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ledger.sweep().await.unwrap(), 0, "renewed");
    assert!(ledger.renew(&long, Duration::from_millis(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ledger.sweep().await.unwrap(), 1);
    assert!(!ledger.renew(&long, Duration::from_mins(1)).await.unwrap(), "swept: its room is gone");
    assert!(!ledger.renew(&kept, Duration::from_mins(1)).await.unwrap(), "settled");
    // A zero hold (a free model under the budget) is settled once too.
    let free = ledger.hold(std::slice::from_ref(&budget), Money::ZERO, Duration::from_mins(1)).await.unwrap();
    let spent = ledger.status(&budget).await.unwrap().unwrap().spent;
    ledger.settle(&free, dollars(1)).await.unwrap();
    ledger.settle(&free, dollars(1)).await.unwrap();
    assert_eq!(ledger.status(&budget).await.unwrap().unwrap().spent, spent + dollars(1));
    assert!(matches!(ledger.settle(&free, Money::from_nanos(-1)).await, Err(ClusterError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_and_recovers() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "closed");
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    config.host("127.0.0.1").port(proxy.port());
    let through = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        config.get_user().unwrap_or("postgres"),
        proxy.port(),
        config.get_dbname().unwrap_or("test")
    );
    let timeout = Duration::from_millis(1_500);
    let ledger = SharedLedger::connect_with(&through, &schema.name, "a", timeout, 2).await.unwrap();
    let budget = key("global");
    ledger.define(&budget, dollars(5)).await.unwrap();
    let hold = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_mins(1)).await.unwrap();

    // A silent network: the call ends at its timeout, refused.
    proxy.stall(true);
    let started = std::time::Instant::now();
    let silent = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_mins(1)).await.unwrap_err();
    assert!(matches!(silent, HoldRefused::Store(ClusterError::Unavailable(_))), "{silent}");
    let waited = started.elapsed();
    assert!(waited >= timeout && waited < timeout * 4, "refused at its timeout, not before nor long after: {waited:?}");
    proxy.stall(false);

    // A dropped connection.
    proxy.cut();
    let started = std::time::Instant::now();
    let refused = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_mins(1)).await.unwrap_err();
    assert!(matches!(refused, HoldRefused::Store(ClusterError::Unavailable(_))), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(10), "within the timeout, not a hang");
    assert!(matches!(ledger.settle(&hold, dollars(1)).await, Err(ClusterError::Unavailable(_))));

    proxy.restore().await;
    let mut recovered = None;
    for _ in 0..50 {
        if let Ok(hold) = ledger.hold(std::slice::from_ref(&budget), dollars(1), Duration::from_mins(1)).await {
            recovered = Some(hold);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = recovered.expect("holds again once the store is back");
    ledger.settle(&hold, dollars(1)).await.unwrap();
    ledger.settle(&again, dollars(1)).await.unwrap();
    let row = ledger.status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(2), Money::ZERO));
    proxy.cut();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_sized_by_the_room_left_and_never_pass_the_limit() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "lease_size");
    let ledger = ledger(&url, &schema, "a").await;
    let budget = key("global");
    ledger.define(&budget, dollars(100)).await.unwrap();
    let keys = std::slice::from_ref(&budget);
    let ttl = Duration::from_mins(1);
    // Far from the limit, a lease is what the replica wants.
    let mut first = ledger.lease(keys, slice(dollars(1), dollars(10)), ttl).await.unwrap();
    assert_eq!(first.amount(), dollars(10));
    // Nearer, at most half the room left, so the other replicas keep some.
    let big = ledger.lease(keys, slice(dollars(1), dollars(1_000)), ttl).await.unwrap();
    assert_eq!(big.amount(), dollars(45), "half of the 90 left");
    assert_eq!(
        ledger.extend(&mut first, slice(dollars(1), dollars(1_000)), ttl).await.unwrap(),
        Money::from_nanos(22_500_000_000)
    );
    assert_eq!(first.amount(), Money::from_nanos(32_500_000_000));
    // Past what is needed, whole steps: half of $7 is $3.50, granted as $3.
    let small = key("model:m");
    ledger.define(&small, dollars(7)).await.unwrap();
    let step = Slice { need: dollars(1), want: dollars(1_000), step: dollars(1), in_flight: Money::ZERO };
    assert_eq!(ledger.lease(std::slice::from_ref(&small), step, ttl).await.unwrap().amount(), dollars(3));
    // At the end, exactly what is needed, then nothing.
    let mut granted = Money::ZERO;
    loop {
        match ledger.lease(keys, slice(dollars(1), dollars(1_000)), ttl).await {
            Ok(lease) => granted = granted.saturating_add(lease.amount()),
            Err(HoldRefused::Exceeded { row, amount, .. }) => {
                assert_eq!(amount, dollars(1));
                assert!(row.limit.nanos() - row.spent.nanos() - row.held.nanos() < dollars(1).nanos());
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    let row = ledger.status(&budget).await.unwrap().unwrap();
    assert_eq!(row.held, first.amount().saturating_add(big.amount()).saturating_add(granted));
    assert!(row.held <= row.limit, "the sum of the leases never passes the limit");
    assert!(row.limit.nanos() - row.held.nanos() < dollars(1).nanos(), "the room went to leases, to the last dollar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_charge_what_was_spent_and_return_what_is_not_kept() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "lease_checkpoint");
    let ledger = ledger(&url, &schema, "a").await;
    let (global, provider) = (key("global"), key("provider:openai"));
    ledger.define(&global, dollars(100)).await.unwrap();
    ledger.define(&provider, dollars(20)).await.unwrap();
    let ttl = Duration::from_mins(1);
    let mut lease =
        ledger.lease(&[global.clone(), provider.clone()], slice(dollars(1), dollars(10)), ttl).await.unwrap();
    assert_eq!(lease.amount(), dollars(10));
    // Spent 3 of it (checkpoints carry running totals), keeping all that is left.
    let kept = ledger.checkpoint(&mut lease, report(dollars(3), dollars(2)), dollars(100), ttl).await.unwrap();
    assert_eq!(kept, Checkpoint::Held(dollars(7)));
    for budget in [&global, &provider] {
        let row = ledger.status(budget).await.unwrap().unwrap();
        assert_eq!((row.spent, row.held), (dollars(3), dollars(7)), "{}", budget.scope);
    }
    // Written to the lease's own row only: the budget's row, which every
    // replica's grants lock, still holds the whole lease.
    let raw = ledger
        .within(async {
            let client = ledger.client().await?;
            ledger.read(&client, &global).await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((raw.spent, raw.held), (Money::ZERO, dollars(10)), "a checkpoint leaves the budget's row alone");
    // The same checkpoint again (its reply was lost) charges nothing more.
    assert_eq!(
        ledger.checkpoint(&mut lease, report(dollars(3), dollars(2)), dollars(100), ttl).await.unwrap(),
        Checkpoint::Held(dollars(7))
    );
    let row = ledger.status(&provider).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(3), dollars(7)), "a repeated checkpoint charges once");
    // Through the one-statement path (keeping all) too.
    let all = Money::from_nanos(i64::MAX);
    for _ in 0..2 {
        let kept = ledger.checkpoint(&mut lease, report(dollars(3), dollars(2)), all, ttl).await.unwrap();
        assert_eq!(kept, Checkpoint::Held(dollars(7)));
    }
    let row = ledger.status(&provider).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(3), dollars(7)), "charged once on the fast path");
    // Spent 1 more, keeping at most 2: 4 return to the budgets.
    assert_eq!(
        ledger.checkpoint(&mut lease, report(dollars(4), Money::ZERO), dollars(2), ttl).await.unwrap(),
        Checkpoint::Held(dollars(2))
    );
    let row = ledger.status(&provider).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(4), dollars(2)));
    // Actual above the lease is charged in full; the lease keeps holding
    // what its running requests need ($1), as their own holds would.
    assert_eq!(
        ledger.checkpoint(&mut lease, report(dollars(9), dollars(1)), dollars(100), ttl).await.unwrap(),
        Checkpoint::Held(dollars(1))
    );
    let row = ledger.status(&provider).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(9), dollars(1)));
    // They end: the lease holds nothing.
    assert_eq!(
        ledger.checkpoint(&mut lease, report(dollars(9), Money::ZERO), dollars(0), ttl).await.unwrap(),
        Checkpoint::Held(Money::ZERO)
    );
    // It can grow again, then closes: all it held returns, and it is over.
    assert_eq!(ledger.extend(&mut lease, slice(dollars(1), dollars(4)), ttl).await.unwrap(), dollars(4));
    assert_eq!(ledger.close(&mut lease, dollars(10)).await.unwrap(), Checkpoint::Held(Money::ZERO));
    let row = ledger.status(&provider).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(10), Money::ZERO));
    assert!(matches!(ledger.extend(&mut lease, slice(dollars(1), dollars(4)), ttl).await, Err(HoldRefused::Ended)));
    // Spend reported after the end is still charged, once.
    for _ in 0..2 {
        assert_eq!(
            ledger.checkpoint(&mut lease, report(dollars(11), Money::ZERO), dollars(9), ttl).await.unwrap(),
            Checkpoint::Ended
        );
    }
    let row = ledger.status(&global).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(11), Money::ZERO));
    // Negative money is refused, naming it.
    let negative = ledger.checkpoint(&mut lease, report(Money::from_nanos(-1), Money::ZERO), Money::ZERO, ttl).await;
    assert!(matches!(negative, Err(ClusterError::Invalid(_))), "{negative:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_charged_what_was_in_flight_and_the_rest_returns() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "lease_expiry");
    let (dead, alive) = tokio::join!(ledger(&url, &schema, "dead"), ledger(&url, &schema, "alive"));
    let budget = key("global");
    dead.define(&budget, dollars(100)).await.unwrap();
    let keys = std::slice::from_ref(&budget);
    let mut lease = dead.lease(keys, slice(dollars(1), dollars(20)), Duration::from_mins(1)).await.unwrap();
    // Its replica reports 3 spent and 4 in flight, then dies.
    dead.checkpoint(&mut lease, report(dollars(3), dollars(4)), dollars(100), Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(alive.sweep().await.unwrap(), 1);
    let row = alive.status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(7), Money::ZERO), "in flight charged, the unused 13 back");
    assert_eq!(alive.sweep().await.unwrap(), 0, "swept once");
    // A lease its replica lost track of is charged nothing past its report.
    let lost = alive.lease(keys, slice(dollars(1), dollars(5)), Duration::from_millis(1)).await.unwrap();
    assert_eq!(lost.amount(), dollars(5));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(alive.sweep().await.unwrap(), 1);
    let row = alive.status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(7), Money::ZERO));
    // A lease is never charged more than it held unspent, whatever
    // ceiling its replica reported: $1 granted, $8 said in flight.
    let small = key("model:small");
    alive.define(&small, dollars(2)).await.unwrap();
    let ceiling = Slice { need: dollars(1), want: dollars(1), step: dollars(1), in_flight: dollars(8) };
    let _ = alive.lease(std::slice::from_ref(&small), ceiling, Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(alive.sweep().await.unwrap(), 1);
    let row = alive.status(&small).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(1), Money::ZERO), "capped at what the lease held");
    // The dead replica comes back: its lease is over, and what it spent
    // since is charged all the same.
    assert!(matches!(
        dead.extend(&mut lease, slice(dollars(1), dollars(5)), Duration::from_mins(1)).await,
        Err(HoldRefused::Ended)
    ));
    assert_eq!(
        dead.checkpoint(&mut lease, report(dollars(5), Money::ZERO), dollars(9), Duration::from_mins(1)).await.unwrap(),
        Checkpoint::Ended
    );
    assert_eq!(alive.status(&budget).await.unwrap().unwrap().spent, dollars(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_drawing_from_leases_at_once_never_pass_the_limit() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "lease_race");
    let (a, b, c) = tokio::join!(ledger(&url, &schema, "a"), ledger(&url, &schema, "b"), ledger(&url, &schema, "c"));
    let budget = key("global");
    a.define(&budget, dollars(50)).await.unwrap();
    // Each replica: 40 requests of $1, drawn from leases of up to $8 it
    // extends as they run out, each request's spend checkpointed.
    let mut tasks = JoinSet::new();
    for ledger in [a.clone(), b, c] {
        let keys = vec![budget.clone()];
        tasks.spawn(async move {
            let ttl = Duration::from_mins(1);
            let mut lease = ledger
                .lease(
                    &keys,
                    Slice { need: dollars(1), want: dollars(8), step: dollars(1), in_flight: Money::ZERO },
                    ttl,
                )
                .await
                .unwrap();
            let mut served = 0;
            for _ in 0..40 {
                if lease.amount() < dollars(1) {
                    // What it lacks: a fraction it still holds counts.
                    let need = dollars(1).saturating_sub(lease.amount());
                    match ledger
                        .extend(
                            &mut lease,
                            Slice { need, want: dollars(8), step: dollars(1), in_flight: Money::ZERO },
                            ttl,
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(HoldRefused::Exceeded { .. }) => continue,
                        Err(other) => panic!("{other}"),
                    }
                }
                ledger
                    .checkpoint(&mut lease, report(dollars(served + 1), Money::ZERO), dollars(1_000), ttl)
                    .await
                    .unwrap();
                served += 1;
            }
            ledger.close(&mut lease, dollars(served)).await.unwrap();
            served
        });
    }
    let mut served = 0;
    while let Some(n) = tasks.join_next().await {
        served += n.unwrap();
    }
    assert_eq!(served, 50, "every dollar used, none twice");
    let row = a.status(&budget).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), (dollars(50), Money::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_holds_and_periods_describe_the_cluster() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "status");
    // Inspecting creates nothing: a schema no replica made is refused.
    let missing = SharedLedger::inspect(&url, &schema.name, Duration::from_secs(30)).await;
    assert!(matches!(&missing, Err(ClusterError::Invalid(why)) if why.contains("does not exist")), "{missing:?}");
    let (a, b) = tokio::join!(ledger(&url, &schema, "a"), ledger(&url, &schema, "b"));
    let inspector = SharedLedger::inspect(&url, &schema.name, Duration::from_secs(30)).await.unwrap();
    let budget = key("global");
    a.define(&budget, dollars(10)).await.unwrap();
    let mut lease =
        a.lease(std::slice::from_ref(&budget), slice(dollars(1), dollars(2)), Duration::from_mins(1)).await.unwrap();
    a.checkpoint(&mut lease, report(dollars(1), dollars(1)), dollars(100), Duration::from_mins(1)).await.unwrap();
    let _hold = b.hold(std::slice::from_ref(&budget), dollars(3), Duration::from_mins(1)).await.unwrap();
    a.heartbeat(1, true).await.unwrap();
    b.heartbeat(0, true).await.unwrap();
    let replicas = b.replicas(Duration::from_secs(30)).await.unwrap();
    let names: Vec<(&str, u32)> = replicas.iter().map(|r| (r.name.as_str(), r.leases_open)).collect();
    assert_eq!(names, [("a", 1), ("b", 0)]);
    assert!(replicas[0].stats.calls >= 3, "a's calls so far: {:?}", replicas[0].stats);
    let holds = a.holds(10).await.unwrap();
    let seen: Vec<(&str, bool, Money, Money, Money)> =
        holds.iter().map(|h| (h.replica.as_str(), h.lease, h.amount, h.spent, h.in_flight)).collect();
    assert_eq!(
        seen,
        [("a", true, dollars(2), dollars(1), dollars(1)), ("b", false, dollars(3), Money::ZERO, Money::ZERO)]
    );
    assert_eq!(holds[0].budgets, ["global monthly"]);
    assert!(holds.iter().all(|h| h.expires_in_ms > 0));
    assert_eq!(inspector.replicas(Duration::from_secs(30)).await.unwrap().len(), 2, "read through inspect");
    let periods = a.periods(10).await.unwrap();
    assert_eq!(periods.len(), 1);
    let row = periods[0].1;
    assert_eq!(
        (row.limit, row.spent, row.held),
        (dollars(10), dollars(1), dollars(4)),
        "the lease's spend counts as spent"
    );
}
