//! Budget tests: limits at the boundary, scopes, alerts, periods, forecasts,
//! concurrency and exact money.

use std::sync::{Arc, Mutex};

use modelfleet_errors::{Classify, ErrorClass};
use modelfleet_registry::{Clock, ManualClock, Money};
use proptest::prelude::*;

use super::*;

/// 2026-11-21 15:30 UTC.
const NOW: u64 = 1_795_275_000_000;
const HOUR: u64 = 3_600_000;

fn budgets() -> (Budgets, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NOW));
    let shared = Arc::clone(&clock);
    (Budgets::with_clock(LedgerConfig::default(), move || shared.now_ms()), clock)
}

fn usd(text: &str) -> Money {
    text.parse().unwrap()
}

const OPENAI: Charge<'static> = Charge { provider: "openai", model: "gpt-4o", key: Some("team-a") };
const LOCAL: Charge<'static> = Charge { provider: "ollama", model: "llama2", key: None };

#[test]
fn reaching_the_limit_exactly_is_allowed_passing_it_is_not() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("1"))).unwrap();
    b.reserve(&OPENAI, usd("0.6")).unwrap().reconcile(usd("0.6"));
    let exact = b.reserve(&OPENAI, usd("0.4")).unwrap();
    assert!(b.reserve(&OPENAI, Money::from_nanos(1)).is_err(), "reserved money counts");
    exact.reconcile(usd("0.4"));
    let status = b.status(&Scope::Global).unwrap();
    assert_eq!((status.spent, status.remaining, status.reserved), (usd("1"), Money::ZERO, Money::ZERO));
    let err = b.reserve(&OPENAI, Money::from_nanos(1)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::BudgetExceeded);
    assert_eq!(
        err.to_string(),
        "budget exceeded for global: limit $1, spent $1, reserved $0, this request needs $0.000000001; resets at 2026-11-22T00:00:00Z"
    );
    assert!(b.reserve(&OPENAI, Money::ZERO).is_ok(), "a free call is never refused");
}

#[test]
fn every_applicable_scope_is_checked_and_a_refusal_holds_nothing() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("100"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Provider("openai".into()), Period::Daily, usd("5"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Key("team-a".into()), Period::Daily, usd("2"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Model("llama2".into()), Period::None, usd("0"))).unwrap();
    let err = b.reserve(&OPENAI, usd("3")).unwrap_err();
    assert_eq!(err.scope, Scope::Key("team-a".into()));
    for status in b.statuses() {
        assert_eq!(status.reserved, Money::ZERO, "{}: nothing held after a refusal", status.spec.scope);
    }
    let held = b.reserve(&OPENAI, usd("1.5")).unwrap();
    assert_eq!(b.status(&Scope::Global).unwrap().reserved, usd("1.5"));
    assert_eq!(b.status(&Scope::Provider("openai".into())).unwrap().reserved, usd("1.5"));
    drop(held);
    assert_eq!(b.status(&Scope::Global).unwrap().reserved, Money::ZERO, "dropping releases");
    // A zero-limit lifetime budget refuses any paid call, but not a free one.
    assert!(b.reserve(&LOCAL, Money::from_nanos(1)).is_err());
    assert!(b.reserve(&LOCAL, Money::ZERO).is_ok());
    let err = b.reserve(&LOCAL, Money::from_nanos(1)).unwrap_err();
    assert!(err.to_string().ends_with("; the budget never resets"), "{err}");
}

#[test]
fn a_reservation_held_by_many_budgets_settles_them_all() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::None, usd("100"))).unwrap();
    for period in [Period::Daily, Period::Weekly, Period::Monthly] {
        b.add(BudgetSpec::hard(Scope::Provider("openai".into()), period, usd("100"))).unwrap();
        b.add(BudgetSpec::hard(Scope::Model("gpt-4o".into()), period, usd("100"))).unwrap();
        b.add(BudgetSpec::hard(Scope::Key("team-a".into()), period, usd("100"))).unwrap();
    }
    let r = b.reserve(&OPENAI, usd("2")).unwrap(); // 10 budgets: beyond the inline eight
    assert!(b.statuses().iter().all(|s| s.reserved == usd("2")));
    r.reconcile(usd("1"));
    assert!(b.statuses().iter().all(|s| s.reserved == Money::ZERO && s.spent == usd("1")));
}

#[test]
fn soft_budgets_alert_but_never_refuse() {
    let (b, _) = budgets();
    b.add(BudgetSpec { enforcement: Enforcement::Soft, ..BudgetSpec::hard(Scope::Global, Period::Daily, usd("1")) })
        .unwrap();
    b.reserve(&OPENAI, usd("3")).unwrap().reconcile(usd("3"));
    let status = b.status(&Scope::Global).unwrap();
    assert!((status.percent - 300.0).abs() < 1e-9);
    assert_eq!(b.alerts().len(), 4);
}

#[test]
fn thresholds_fire_once_per_period_to_subscribers_and_history() {
    let (b, clock) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    b.subscribe(move |alert| sink.lock().unwrap().push(alert.threshold));
    for _ in 0..4 {
        b.spend(&OPENAI, usd("2")); // 20, 40, 60, 80 %
    }
    b.spend(&OPENAI, usd("0.5")); // 85 %
    b.spend(&OPENAI, usd("0.5")); // 90 %: exactly at the threshold fires
    assert_eq!(*seen.lock().unwrap(), [50, 75, 90]);
    b.spend(&OPENAI, usd("5")); // 140 %: 100 fires once
    b.spend(&OPENAI, usd("5"));
    assert_eq!(*seen.lock().unwrap(), [50, 75, 90, 100]);
    clock.advance_ms(24 * HOUR);
    b.spend(&OPENAI, usd("6"));
    assert_eq!(*seen.lock().unwrap(), [50, 75, 90, 100, 50], "a new period fires again");
    let history = b.alerts();
    assert_eq!(history.len(), 5);
    assert_eq!(history[4].period_start_ms, history[0].period_start_ms + 24 * HOUR);
}

#[test]
fn periods_roll_over_on_calendar_boundaries_into_history() {
    let (b, clock) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    b.spend(&OPENAI, usd("4"));
    b.spend(&LOCAL, usd("1"));
    let status = b.status(&Scope::Global).unwrap();
    assert_eq!(status.by_provider.get("openai"), Some(&usd("4")));
    assert_eq!(status.by_model.get("llama2"), Some(&usd("1")));
    clock.advance_ms(9 * HOUR); // 00:30 the next day
    let status = b.status(&Scope::Global).unwrap();
    assert_eq!(status.spent, Money::ZERO);
    assert!(status.by_model.is_empty());
    let history = b.history(&Scope::Global);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].spent, usd("5"));
    assert_eq!(history[0].end_ms, status.period_start_ms);
}

#[test]
fn forecasts_wait_for_data_then_project_linearly() {
    let (b, clock) = budgets();
    clock.set_ms(NOW - 15 * HOUR - 30 * 60_000); // 2026-11-21 00:00 UTC
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Key("k".into()), Period::None, usd("10"))).unwrap();
    clock.advance_ms(30 * 60_000);
    b.spend(&Charge { key: Some("k"), ..OPENAI }, usd("1"));
    assert_eq!(b.status(&Scope::Global).unwrap().forecast, Forecast::NotEnoughData, "30 min into the day");
    assert_eq!(b.status(&Scope::Key("k".into())).unwrap().forecast, Forecast::NoPeriodEnd);
    clock.advance_ms(5 * HOUR + 30 * 60_000); // 06:00: a quarter of the day
    assert_eq!(
        b.status(&Scope::Global).unwrap().forecast,
        Forecast::Projected { end_of_period: usd("4"), exceeds_limit: false }
    );
    b.spend(&OPENAI, usd("2"));
    assert_eq!(
        b.status(&Scope::Global).unwrap().forecast,
        Forecast::Projected { end_of_period: usd("12"), exceeds_limit: true }
    );
}

#[test]
fn concurrent_reservations_never_pass_a_hard_limit() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("100"))).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                (0..100)
                    .filter(|_| match b.reserve(&OPENAI, usd("1")) {
                        Ok(r) => {
                            r.reconcile(usd("1"));
                            true
                        }
                        Err(_) => false,
                    })
                    .count()
            })
        })
        .collect();
    let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(accepted, 100);
    let status = b.status(&Scope::Global).unwrap();
    assert_eq!((status.spent, status.reserved), (usd("100"), Money::ZERO));
}

#[test]
fn restoring_spend_does_not_repeat_alerts() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.restore_spent(&Scope::Global, Period::Monthly, usd("8")).unwrap();
    b.spend(&OPENAI, usd("1"));
    assert_eq!(b.alerts().iter().map(|a| a.threshold).collect::<Vec<_>>(), [90]);
    assert_eq!(
        b.restore_spent(&Scope::Model("x".into()), Period::Daily, Money::ZERO).unwrap_err(),
        Error::NoSuchBudget(Scope::Model("x".into()))
    );
}

#[test]
fn invalid_budgets_are_refused_with_their_scope() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("1"))).unwrap();
    assert_eq!(
        b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("2"))).unwrap_err().to_string(),
        "a Daily budget for global already exists"
    );
    assert!(b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("2"))).is_ok(), "another period is fine");
    assert_eq!(
        b.add(BudgetSpec::hard(Scope::Provider("p".into()), Period::Daily, usd("-1"))).unwrap_err().to_string(),
        "budget for provider:p: limit $-1 is negative"
    );
    let bad =
        BudgetSpec { thresholds: vec![50, 0], ..BudgetSpec::hard(Scope::Model("m".into()), Period::Daily, usd("1")) };
    assert!(matches!(b.add(bad), Err(Error::InvalidThreshold { threshold: 0, .. })));
}

proptest! {
    // Each case spends a million costs; a few cases keep the suite quick.
    #![proptest_config(ProptestConfig::with_cases(3))]

    #[test]
    fn a_million_random_costs_sum_exactly(seed in any::<u64>()) {
        let (b, _) = budgets();
        let soft = BudgetSpec::hard(Scope::Global, Period::None, usd("1000000"));
        b.add(BudgetSpec { enforcement: Enforcement::Soft, ..soft }).unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut expected: i64 = 0;
        for _ in 0..1_000_000 {
            let nanos = rng.i64(0..5_000_000); // up to half a cent
            expected += nanos;
            b.spend(&OPENAI, Money::from_nanos(nanos));
        }
        prop_assert_eq!(b.status(&Scope::Global).unwrap().spent.nanos(), expected);
    }
}

proptest! {
    #[test]
    fn reservations_and_reconciles_keep_the_books_exact(
        ops in proptest::collection::vec((0i64..10_000_000, 0i64..10_000_000, any::<bool>()), 0..200),
    ) {
        let (b, _) = budgets();
        b.add(BudgetSpec::hard(Scope::Global, Period::None, Money::from_dollars(1_000))).unwrap();
        let mut expected = 0i64;
        for (estimate, actual, succeed) in ops {
            let r = b.reserve(&OPENAI, Money::from_nanos(estimate)).unwrap();
            if succeed {
                r.reconcile(Money::from_nanos(actual));
                expected += actual;
            } else {
                r.release();
            }
        }
        let status = b.status(&Scope::Global).unwrap();
        prop_assert_eq!(status.spent.nanos(), expected);
        prop_assert_eq!(status.reserved, Money::ZERO);
        prop_assert_eq!(status.by_model.get("gpt-4o").copied().unwrap_or(Money::ZERO).nanos(), expected);
    }
}

#[test]
fn reconcile_reports_the_budgets_it_charged() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Provider("ollama".into()), Period::Daily, usd("10"))).unwrap();
    let charged = b.reserve(&OPENAI, usd("1")).unwrap().reconcile_charged(usd("1"));
    let start = b.status(&Scope::Global).unwrap().period_start_ms;
    assert_eq!(charged, [(Scope::Global, Period::Monthly, start)], "the ollama budget does not cover an openai charge");
    assert!(
        b.reserve(&OPENAI, usd("1")).unwrap().reconcile_charged(Money::ZERO).is_empty(),
        "nothing spent, nothing charged"
    );
}
