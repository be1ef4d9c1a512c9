//! Budget tests: limits at the boundary, overshoot, identity, administration,
//! headroom, periods, forecasts, restore, concurrency and exact money.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use modelfleet_errors::{Classify, ErrorClass};
use modelfleet_registry::{Clock, ManualClock, Money};
use proptest::prelude::*;

use super::*;

/// 2026-11-21 15:30 UTC, a Saturday.
const NOW: u64 = 1_795_275_000_000;
const HOUR: u64 = 3_600_000;
/// 2026-11-21 00:00 UTC.
const DAY_START: u64 = NOW - 15 * HOUR - 30 * 60_000;
/// 2026-11-01 00:00 UTC.
const MONTH_START: u64 = DAY_START - 20 * 24 * HOUR;

fn budgets() -> (Budgets, Arc<ManualClock>) {
    budgets_with(LedgerConfig::default())
}

fn budgets_with(config: LedgerConfig) -> (Budgets, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NOW));
    let shared = Arc::clone(&clock);
    (Budgets::with_clock(config, move || shared.now_ms()), clock)
}

fn usd(text: &str) -> Money {
    text.parse().unwrap()
}

fn nanos(n: i64) -> Money {
    Money::from_nanos(n)
}

fn key(k: &str) -> Scope {
    Scope::Key(k.into())
}

fn provider(p: &str) -> Scope {
    Scope::Provider(p.into())
}

fn soft(scope: Scope, period: Period, limit: Money) -> BudgetSpec {
    BudgetSpec { enforcement: Enforcement::Soft, ..BudgetSpec::hard(scope, period, limit) }
}

/// The status of a budget that must exist.
#[track_caller]
fn status(b: &Budgets, scope: &Scope, period: Period) -> Status {
    b.status(scope, period).unwrap_or_else(|| panic!("no {period} budget for {scope}"))
}

fn set_spent(b: &Budgets, scope: &Scope, period: Period, spent: Money) {
    b.restore(scope, period, spent, BTreeMap::new(), BTreeMap::new()).unwrap();
}

/// Whether a budget for `scope` applies to `charge` (written out here, not the ledger's own).
fn covers(scope: &Scope, charge: &Charge<'_>) -> bool {
    match scope {
        Scope::Global => true,
        Scope::Provider(p) => p == charge.provider,
        Scope::Model(m) => m == charge.model,
        Scope::Key(k) => charge.key == Some(k),
    }
}

const OPENAI: Charge<'static> = Charge { provider: "openai", model: "gpt-4o", key: Some("team-a") };
const LOCAL: Charge<'static> = Charge { provider: "ollama", model: "llama2", key: None };

#[test]
fn reaching_the_limit_exactly_is_allowed_passing_it_is_not() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("1"))).unwrap();
    b.reserve(&OPENAI, usd("0.6")).unwrap().reconcile(usd("0.6"));
    let exact = b.reserve(&OPENAI, usd("0.4")).unwrap();
    assert!(b.reserve(&OPENAI, nanos(1)).is_err(), "reserved money counts");
    exact.reconcile(usd("0.4"));
    let s = status(&b, &Scope::Global, Period::Daily);
    assert_eq!((s.spent, s.remaining, s.reserved), (usd("1"), Money::ZERO, Money::ZERO));
    let err = b.reserve(&OPENAI, nanos(1)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::BudgetExceeded);
    assert_eq!(
        err.to_string(),
        "budget exceeded for global daily: limit $1, spent $1, reserved $0, this request needs $0.000000001; \
         resets at 2026-11-22T00:00:00Z"
    );
    assert!(b.reserve(&OPENAI, Money::ZERO).is_ok(), "a free call is never refused");
}

/// One reservation against a hard global limit after `spent` was spent and
/// `reserved` is held by another request in flight.
#[track_caller]
fn check_reserve(limit: &str, spent: &str, reserved: &str, amount: Money, passes: bool) {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd(limit))).unwrap();
    set_spent(&b, &Scope::Global, Period::Monthly, usd(spent));
    let _other = b.reserve(&Charge { key: Some("other"), ..OPENAI }, usd(reserved)).unwrap();
    let result = b.reserve(&OPENAI, amount);
    assert_eq!(result.is_ok(), passes, "limit {limit}, spent {spent}, reserved {reserved}, amount {amount}");
    let held = status(&b, &Scope::Global, Period::Monthly).reserved;
    let expected = if passes { usd(reserved).saturating_add(amount.max(Money::ZERO)) } else { usd(reserved) };
    assert_eq!(held, expected, "a refusal holds nothing");
    if let Err(err) = result {
        assert_eq!((err.spent, err.reserved, err.requested), (usd(spent), usd(reserved), amount));
    }
}

#[test]
fn the_boundary_in_a_table() {
    // At the limit: free passes, one nano-dollar does not.
    check_reserve("1", "1", "0", Money::ZERO, true);
    check_reserve("1", "1", "0", nanos(1), false);
    // Reserved money counts, and reaching exactly is fine.
    check_reserve("1", "0.5", "0.25", usd("0.25"), true);
    check_reserve("1", "0.5", "0.25", usd("0.25").saturating_add(nanos(1)), false);
    check_reserve("1", "0", "1", nanos(1), false);
    // After an overshoot (spent past the limit): free passes, paid does not.
    check_reserve("1", "1.5", "0", Money::ZERO, true);
    check_reserve("1", "1.5", "0", nanos(1), false);
    // A zero limit serves only free calls.
    check_reserve("0", "0", "0", Money::ZERO, true);
    check_reserve("0", "0", "0", nanos(1), false);
    // A negative amount is a zero one.
    check_reserve("1", "1.5", "0", nanos(-5), true);
}

#[test]
fn every_applicable_scope_is_checked_and_a_refusal_holds_nothing() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("100"))).unwrap();
    b.add(BudgetSpec::hard(provider("openai"), Period::Daily, usd("5"))).unwrap();
    b.add(BudgetSpec::hard(key("team-a"), Period::Daily, usd("2"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Model("llama2".into()), Period::None, usd("0"))).unwrap();
    // Neither a soft budget nor a hard one for another key refuses.
    b.add(soft(Scope::Model("gpt-4o".into()), Period::Daily, usd("0"))).unwrap();
    b.add(BudgetSpec::hard(key("team-b"), Period::Daily, usd("0"))).unwrap();
    let err = b.reserve(&OPENAI, usd("3")).unwrap_err();
    assert_eq!((err.scope, err.period), (key("team-a"), Period::Daily));
    for s in b.statuses() {
        assert_eq!(s.reserved, Money::ZERO, "{}: nothing held after a refusal", s.spec.scope);
    }
    let held = b.reserve(&OPENAI, usd("1.5")).unwrap();
    assert_eq!(held.amount(), usd("1.5"));
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).reserved, usd("1.5"));
    assert_eq!(status(&b, &provider("openai"), Period::Daily).reserved, usd("1.5"));
    assert_eq!(status(&b, &key("team-b"), Period::Daily).reserved, Money::ZERO, "another key's budget");
    // Another request settling leaves this one's hold alone.
    b.reserve(&OPENAI, usd("0.25")).unwrap().reconcile(usd("0.25"));
    b.reserve(&OPENAI, usd("0.25")).unwrap().release();
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).reserved, usd("1.5"));
    drop(held);
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).reserved, Money::ZERO, "dropping releases");
    // A zero-limit lifetime budget refuses any paid call, but not a free one.
    let err = b.reserve(&LOCAL, nanos(1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "budget exceeded for model:llama2 lifetime: limit $0, spent $0, reserved $0, this request needs \
         $0.000000001; the budget never resets"
    );
    assert!(b.reserve(&LOCAL, Money::ZERO).is_ok());
}

#[test]
fn a_reservation_held_by_many_budgets_settles_them_all() {
    for extra in [0, 7, 8, 9, 12] {
        // `extra` budgets per charge beside the global one: inline up to eight, then the heap.
        let (b, _) = budgets();
        b.add(BudgetSpec::hard(Scope::Global, Period::None, usd("100"))).unwrap();
        for i in 0..extra {
            let period = [Period::Daily, Period::Weekly, Period::Monthly][i % 3];
            let scope = [provider("openai"), Scope::Model("gpt-4o".into()), key("team-a"), key("x")][i / 3].clone();
            b.add(BudgetSpec::hard(scope, period, usd("100"))).unwrap();
        }
        b.add(BudgetSpec::hard(provider("ollama"), Period::Daily, usd("100"))).unwrap();
        let r = b.reserve(&OPENAI, usd("2")).unwrap();
        let covering = |s: &Status| covers(&s.spec.scope, &OPENAI);
        let held = b.statuses().iter().filter(|s| covering(s)).count();
        assert_eq!(r.held_inline(), held <= 8, "{held} budgets held: inline up to eight, no allocation");
        assert!(b.statuses().iter().all(|s| s.reserved == if covering(s) { usd("2") } else { Money::ZERO }));
        let settled = r.reconcile_charged(usd("1"));
        assert_eq!(settled.charged.len(), b.statuses().iter().filter(|s| covering(s)).count(), "{extra}");
        for s in b.statuses() {
            let spent = if covering(&s) { usd("1") } else { Money::ZERO };
            assert_eq!((s.reserved, s.spent), (Money::ZERO, spent), "{extra}: {}", s.spec.scope);
        }
    }
}

#[test]
fn soft_budgets_alert_but_never_refuse() {
    let (b, _) = budgets();
    b.add(soft(Scope::Global, Period::Daily, usd("1"))).unwrap();
    let settled = b.reserve(&OPENAI, usd("3")).unwrap().reconcile_charged(usd("4"));
    assert_eq!(settled.overshoot, Money::ZERO, "only a hard budget overshoots");
    let s = status(&b, &Scope::Global, Period::Daily);
    assert!((s.percent - 400.0).abs() < 1e-9);
    assert_eq!(b.alerts().len(), 4);
}

#[test]
fn percent_of_a_zero_limit() {
    let (b, _) = budgets();
    b.add(soft(Scope::Global, Period::Daily, Money::ZERO)).unwrap();
    assert!(status(&b, &Scope::Global, Period::Daily).percent.abs() < 1e-9);
    let _ = b.spend(&OPENAI, nanos(1));
    assert!((status(&b, &Scope::Global, Period::Daily).percent - 100.0).abs() < 1e-9);
}

/// A settlement against a hard global limit: `spent` before, `other` held by
/// another request in flight, `held` by this one, which costs `actual`.
#[track_caller]
fn check_overshoot(limit: &str, spent: &str, other: &str, held: &str, actual: &str, overshoot: &str) {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd(limit))).unwrap();
    b.add(soft(key("team-a"), Period::Monthly, usd("0"))).unwrap();
    set_spent(&b, &Scope::Global, Period::Monthly, usd(spent));
    let _other = b.reserve(&LOCAL, usd(other)).unwrap();
    let settled = b.reserve(&OPENAI, usd(held)).unwrap().reconcile_charged(usd(actual));
    let case = format!("limit {limit}, spent {spent}, other {other}, held {held}, actual {actual}");
    assert_eq!(settled.overshoot, usd(overshoot), "{case}");
    let s = status(&b, &Scope::Global, Period::Monthly);
    assert_eq!(s.spent, usd(spent).saturating_add(usd(actual)), "{case}: charged in full");
    assert_eq!(s.reserved, usd(other), "{case}");
    if settled.overshoot > Money::ZERO {
        assert!(b.reserve(&OPENAI, nanos(1)).is_err(), "{case}: paid requests are refused after an overshoot");
        assert!(b.reserve(&OPENAI, Money::ZERO).is_ok(), "{case}: free ones pass");
    }
}

#[test]
fn overshoot_in_a_table() {
    // Within the hold: never an overshoot.
    check_overshoot("10", "0", "0", "4", "3", "0");
    check_overshoot("10", "6", "0", "4", "4", "0");
    // Past the hold but within the limit.
    check_overshoot("10", "0", "0", "4", "6", "0");
    check_overshoot("10", "4", "0", "4", "6", "0");
    // Past the limit: by how far, at most by what passed the hold.
    check_overshoot("10", "7", "0", "2", "5", "2");
    check_overshoot("10", "8", "0", "2", "5", "3");
    check_overshoot("10", "9.8", "0", "0", "0.5", "0.3");
    check_overshoot("10", "10", "0", "0", "0.5", "0.5");
    // Money another request holds counts: eating its room is the overshoot.
    check_overshoot("10", "0", "5", "5", "7", "2");
    check_overshoot("10", "0", "5", "5", "5", "0");
}

#[test]
fn an_overshoot_is_the_largest_over_the_hard_budgets_charged() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(key("team-a"), Period::Daily, usd("1"))).unwrap();
    b.add(BudgetSpec::hard(provider("openai"), Period::Daily, usd("2"))).unwrap();
    let settled = b.reserve(&OPENAI, usd("1")).unwrap().reconcile_charged(usd("2.5"));
    assert_eq!(settled.overshoot, usd("1.5"), "key: min(1.5, 1.5); provider: min(1.5, 0.5)");
    // A later request within its hold adds no overshoot.
    set_spent(&b, &key("team-a"), Period::Daily, Money::ZERO);
    set_spent(&b, &provider("openai"), Period::Daily, Money::ZERO);
    assert_eq!(b.reserve(&OPENAI, usd("1")).unwrap().reconcile_charged(usd("1")).overshoot, Money::ZERO);
}

#[test]
fn reconcile_reports_the_budgets_it_charged() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(provider("ollama"), Period::Daily, usd("10"))).unwrap();
    b.add(soft(key("team-a"), Period::None, usd("10"))).unwrap();
    let settled = b.reserve(&OPENAI, usd("1")).unwrap().reconcile_charged(usd("1"));
    let month = status(&b, &Scope::Global, Period::Monthly);
    assert_eq!(
        settled,
        Settled {
            charged: vec![
                Charged {
                    scope: Scope::Global,
                    period: Period::Monthly,
                    period_start_ms: MONTH_START,
                    period_end_ms: month.period_end_ms,
                },
                Charged { scope: key("team-a"), period: Period::None, period_start_ms: 0, period_end_ms: None },
            ],
            overshoot: Money::ZERO,
        },
        "the ollama budget does not cover an openai charge"
    );
    assert_eq!(month.period_end_ms, Some(DAY_START + 10 * 24 * HOUR), "2026-12-01");
    let free = b.reserve(&OPENAI, usd("1")).unwrap().reconcile_charged(Money::ZERO);
    assert_eq!(free, Settled::default(), "nothing spent, nothing charged");
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).reserved, Money::ZERO);
}

#[test]
fn thresholds_fire_once_per_period_to_subscribers_and_history() {
    let (b, clock) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    b.subscribe(move |alert| sink.lock().unwrap().push(alert.threshold));
    for _ in 0..4 {
        let _ = b.spend(&OPENAI, usd("2")); // 20, 40, 60, 80 %
    }
    let _ = b.spend(&OPENAI, usd("0.5")); // 85 %
    let _ = b.spend(&OPENAI, usd("0.5")); // 90 %: exactly at the threshold fires
    assert_eq!(*seen.lock().unwrap(), [50, 75, 90]);
    let _ = b.spend(&OPENAI, usd("5")); // 140 %: 100 fires once
    let _ = b.spend(&OPENAI, usd("5"));
    assert_eq!(*seen.lock().unwrap(), [50, 75, 90, 100]);
    clock.advance_ms(24 * HOUR);
    let _ = b.spend(&OPENAI, usd("6"));
    assert_eq!(*seen.lock().unwrap(), [50, 75, 90, 100, 50], "a new period fires again");
    let history = b.alerts();
    assert_eq!(history.len(), 5);
    assert_eq!(history[4].period_start_ms, history[0].period_start_ms + 24 * HOUR);
    assert_eq!(
        history[2],
        Alert {
            scope: Scope::Global,
            period: Period::Daily,
            threshold: 90,
            spent: usd("9"),
            limit: usd("10"),
            period_start_ms: DAY_START,
            at_ms: NOW,
        }
    );
}

#[test]
fn the_alert_history_is_bounded() {
    let (b, _) = budgets_with(LedgerConfig { alert_history: 3, ..LedgerConfig::default() });
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    let _ = b.spend(&OPENAI, usd("10"));
    assert_eq!(b.alerts().iter().map(|a| a.threshold).collect::<Vec<_>>(), [75, 90, 100]);
}

#[test]
fn periods_roll_over_on_calendar_boundaries_into_history() {
    let (b, clock) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    let _ = b.spend(&OPENAI, usd("4"));
    let _ = b.spend(&LOCAL, usd("1"));
    let s = status(&b, &Scope::Global, Period::Daily);
    assert_eq!(s.by_provider.get("openai"), Some(&usd("4")));
    assert_eq!(s.by_model.get("llama2"), Some(&usd("1")));
    let end = s.period_end_ms.unwrap();
    clock.set_ms(end - 1);
    let s = status(&b, &Scope::Global, Period::Daily);
    assert_eq!((s.spent, s.period_start_ms), (usd("5"), DAY_START), "one ms before the end: the same period");
    assert!(b.history(&Scope::Global, Period::Daily).is_empty());
    clock.set_ms(end);
    let s = status(&b, &Scope::Global, Period::Daily);
    assert_eq!((s.spent, s.period_start_ms), (Money::ZERO, end), "at the end: a new period");
    assert!(s.by_model.is_empty() && s.by_provider.is_empty());
    assert_eq!(
        b.history(&Scope::Global, Period::Daily),
        [PeriodRecord { start_ms: DAY_START, end_ms: end, spent: usd("5"), limit: usd("10") }]
    );
    assert!(b.history(&Scope::Global, Period::Monthly).is_empty(), "the monthly budget is another budget");
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).spent, usd("5"));
    assert!(b.history(&key("x"), Period::Daily).is_empty());
}

#[test]
fn period_history_is_bounded() {
    let (b, clock) = budgets_with(LedgerConfig { period_history: 2, ..LedgerConfig::default() });
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    for day in 1..=3 {
        let _ = b.spend(&OPENAI, Money::from_dollars(day));
        clock.advance_ms(24 * HOUR);
        assert_eq!(status(&b, &Scope::Global, Period::Daily).spent, Money::ZERO);
    }
    let spent: Vec<_> = b.history(&Scope::Global, Period::Daily).iter().map(|r| r.spent).collect();
    assert_eq!(spent, [usd("2"), usd("3")]);
}

#[test]
fn periods_follow_the_configured_utc_offset() {
    // UTC+9: it is already Sunday 00:30; the day started at 15:00 UTC.
    let (b, _) = budgets_with(LedgerConfig { utc_offset_minutes: 9 * 60, ..LedgerConfig::default() });
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    assert_eq!(status(&b, &Scope::Global, Period::Daily).period_start_ms, NOW - 30 * 60_000);
}

/// The forecast and `data_ms` of a budget that spent `spent` at its
/// period's start, with `reserved` in flight, `elapsed` into the period.
#[track_caller]
fn check_forecast(period: Period, spent: &str, reserved: &str, elapsed: u64, expected: Option<(&str, bool)>) {
    let start = if period == Period::Daily { DAY_START } else { MONTH_START };
    let (b, clock) = budgets();
    clock.set_ms(start);
    b.add(BudgetSpec::hard(Scope::Global, period, usd("10"))).unwrap();
    let _ = b.spend(&OPENAI, usd(spent));
    let _held = b.reserve(&OPENAI, usd(reserved)).unwrap();
    clock.set_ms(start + elapsed);
    let s = status(&b, &Scope::Global, period);
    let expected = expected.map_or(Forecast::NotEnoughData, |(end, exceeds)| Forecast::Projected {
        end_of_period: usd(end),
        exceeds_limit: exceeds,
    });
    assert_eq!(s.forecast, expected, "{period} {spent} + {reserved} after {elapsed} ms");
    assert_eq!(s.data_ms, elapsed);
}

#[test]
fn forecasts_need_ten_percent_or_a_day_of_the_period() {
    let tenth_of_a_day = 24 * HOUR / 10;
    check_forecast(Period::Daily, "1", "0", tenth_of_a_day - 1, None);
    check_forecast(Period::Daily, "1", "0", tenth_of_a_day, Some(("10", false)));
    check_forecast(Period::Daily, "1", "0.5", tenth_of_a_day, Some(("10.5", true)));
    check_forecast(Period::Daily, "1", "0", 6 * HOUR, Some(("4", false)));
    check_forecast(Period::Daily, "3", "0", 6 * HOUR, Some(("12", true)));
    // November has 30 days: a day is under 10% of it, and enough.
    check_forecast(Period::Monthly, "0.1", "0", 24 * HOUR - 1, None);
    check_forecast(Period::Monthly, "0.1", "0", 24 * HOUR, Some(("3", false)));
    check_forecast(Period::Monthly, "0.1", "1", 24 * HOUR, Some(("4", false)));
    // Nothing spent: the reservations are the forecast; nothing at all is no data.
    check_forecast(Period::Daily, "0", "2", 6 * HOUR, Some(("2", false)));
    check_forecast(Period::Daily, "0", "0", 6 * HOUR, None);
}

#[test]
fn a_lifetime_budget_has_no_forecast() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(key("k"), Period::None, usd("10"))).unwrap();
    let _ = b.spend(&Charge { key: Some("k"), ..OPENAI }, usd("1"));
    let s = status(&b, &key("k"), Period::None);
    assert_eq!((s.forecast, s.period_start_ms, s.period_end_ms, s.data_ms), (Forecast::NoPeriodEnd, 0, None, NOW));
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
    let s = status(&b, &Scope::Global, Period::Monthly);
    assert_eq!((s.spent, s.reserved), (usd("100"), Money::ZERO));
}

#[test]
fn set_limit_applies_at_once_and_keeps_holds() {
    let (b, clock) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    let held = b.reserve(&OPENAI, usd("6")).unwrap();
    b.set_limit(&Scope::Global, Period::Monthly, usd("4")).unwrap();
    let s = status(&b, &Scope::Global, Period::Monthly);
    assert_eq!((s.spec.limit, s.reserved, s.remaining), (usd("4"), usd("6"), Money::ZERO));
    assert_eq!(status(&b, &Scope::Global, Period::Daily).spec.limit, usd("10"), "only that period");
    let err = b.reserve(&OPENAI, nanos(1)).unwrap_err();
    assert_eq!((err.period, err.limit), (Period::Monthly, usd("4")));
    // Settling within its hold is no overshoot, even past the lowered limit.
    assert_eq!(held.reconcile_charged(usd("5")).overshoot, Money::ZERO);
    b.set_limit(&Scope::Global, Period::Monthly, usd("20")).unwrap();
    assert!(b.reserve(&OPENAI, usd("5")).is_ok(), "5 + 5 = 10 is the daily limit exactly");
    b.set_limit(&Scope::Global, Period::Monthly, Money::ZERO).unwrap();
    assert_eq!(
        b.set_limit(&Scope::Global, Period::Monthly, nanos(-1)),
        Err(Error::InvalidLimit { scope: Scope::Global, limit: nanos(-1) })
    );
    // A period that ended before the change keeps the limit it had.
    clock.set_ms(DAY_START + 24 * HOUR);
    b.set_limit(&Scope::Global, Period::Daily, usd("20")).unwrap();
    let history = b.history(&Scope::Global, Period::Daily);
    assert_eq!((history[0].limit, history[0].spent), (usd("10"), usd("5")));
    assert_eq!(status(&b, &Scope::Global, Period::Daily).spec.limit, usd("20"));
    let missing = b.set_limit(&Scope::Global, Period::Weekly, usd("1")).unwrap_err();
    assert_eq!(missing, Error::NoSuchBudget { scope: Scope::Global, period: Period::Weekly });
    assert_eq!(missing.to_string(), "no weekly budget for global");
}

#[test]
fn reset_zeroes_the_period_and_keeps_holds() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    let _ = b.spend(&OPENAI, usd("6"));
    let held = b.reserve(&OPENAI, usd("2")).unwrap();
    assert_eq!(b.reset(&Scope::Global, Period::Monthly), Ok(usd("6")));
    let s = status(&b, &Scope::Global, Period::Monthly);
    assert_eq!((s.spent, s.reserved), (Money::ZERO, usd("2")));
    assert!(s.by_provider.is_empty() && s.by_model.is_empty());
    assert_eq!(status(&b, &Scope::Global, Period::Daily).spent, usd("6"), "only that period");
    held.reconcile(usd("2"));
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).reserved, Money::ZERO);
    // Thresholds fire again after a reset.
    b.reset(&Scope::Global, Period::Daily).unwrap();
    let _ = b.spend(&OPENAI, usd("5")); // daily 5 of 10, monthly 7 of 10
    let fired: Vec<_> = b.alerts().iter().map(|a| (a.period, a.threshold)).collect();
    let again = [(Period::Monthly, 50), (Period::Daily, 50)];
    assert_eq!(fired, [[(Period::Monthly, 50), (Period::Daily, 50), (Period::Daily, 75)].as_slice(), &again].concat());
    assert_eq!(b.reset(&key("x"), Period::Daily), Err(Error::NoSuchBudget { scope: key("x"), period: Period::Daily }));
}

#[test]
fn a_removed_budget_is_skipped_and_its_neighbours_are_untouched() {
    let (b, _) = budgets();
    let global = BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"));
    b.add(global.clone()).unwrap();
    b.add(BudgetSpec::hard(provider("openai"), Period::Daily, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(key("team-a"), Period::Daily, usd("10"))).unwrap();
    let first = b.reserve(&OPENAI, usd("4")).unwrap();
    let second = b.reserve(&OPENAI, usd("4")).unwrap();
    assert_eq!(b.remove(&Scope::Global, Period::Daily), Ok(global.clone()));
    // Added after the removal: it takes a new place, the others move up.
    b.add(BudgetSpec::hard(provider("ollama"), Period::Daily, usd("10"))).unwrap();
    b.add(global).unwrap();
    let local = b.reserve(&LOCAL, usd("1")).unwrap();
    let settled = first.reconcile_charged(usd("3"));
    let charged: Vec<_> = settled.charged.iter().map(|c| c.scope.clone()).collect();
    assert_eq!(charged, [provider("openai"), key("team-a")], "the removed budget is skipped");
    drop(second);
    let view: Vec<_> = b.statuses().into_iter().map(|s| (s.spec.scope, s.spent, s.reserved)).collect();
    assert_eq!(
        view,
        [
            (provider("openai"), usd("3"), Money::ZERO),
            (key("team-a"), usd("3"), Money::ZERO),
            (provider("ollama"), Money::ZERO, usd("1")),
            (Scope::Global, Money::ZERO, usd("1")),
        ]
    );
    drop(local);
    assert_eq!(
        b.remove(&key("team-a"), Period::Weekly),
        Err(Error::NoSuchBudget { scope: key("team-a"), period: Period::Weekly })
    );
}

#[test]
fn budgets_are_validated_when_added() {
    let (b, _) = budgets();
    let with = |thresholds: Vec<u8>| BudgetSpec { thresholds, ..BudgetSpec::hard(key("t"), Period::Daily, usd("1")) };
    let check = |spec: BudgetSpec, expected: Result<(), Error>| {
        let scope = spec.scope.clone();
        let period = spec.period;
        assert_eq!(b.add(spec), expected);
        if expected.is_ok() {
            b.remove(&scope, period).unwrap();
        }
    };
    check(BudgetSpec::hard(Scope::Global, Period::Daily, Money::ZERO), Ok(()));
    check(
        BudgetSpec::hard(Scope::Global, Period::Daily, nanos(-1)),
        Err(Error::InvalidLimit { scope: Scope::Global, limit: nanos(-1) }),
    );
    check(with(vec![1, 200]), Ok(()));
    check(with(vec![50, 0]), Err(Error::InvalidThreshold { scope: key("t"), threshold: 0 }));
    check(with(vec![201]), Err(Error::InvalidThreshold { scope: key("t"), threshold: 201 }));
    check(with((1..=64).collect()), Ok(()));
    check(with((1..=65).collect()), Err(Error::InvalidThreshold { scope: key("t"), threshold: 0 }));
    check(with(Vec::new()), Ok(()));

    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("1"))).unwrap();
    let duplicate = b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("2"))).unwrap_err();
    assert_eq!(duplicate.to_string(), "a daily budget for global already exists");
    assert!(b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("2"))).is_ok(), "another period is fine");
    assert_eq!(
        b.add(BudgetSpec::hard(provider("p"), Period::Daily, usd("-1"))).unwrap_err().to_string(),
        "budget for provider:p: limit $-1 is negative"
    );
    assert!(format!("{b:?}").starts_with("Budgets { config: LedgerConfig"));
}

#[test]
fn sixty_four_thresholds_each_fire_once() {
    let (b, _) = budgets();
    let spec =
        BudgetSpec { thresholds: (1..=64).collect(), ..BudgetSpec::hard(Scope::Global, Period::Daily, usd("100")) };
    b.add(spec).unwrap();
    let _ = b.spend(&OPENAI, usd("64"));
    let _ = b.spend(&OPENAI, usd("1"));
    assert_eq!(b.alerts().iter().map(|a| a.threshold).collect::<Vec<_>>(), (1..=64).collect::<Vec<_>>());
}

#[test]
fn headroom_finds_the_tightest_hard_budget() {
    let (b, _) = budgets();
    assert!(b.headroom(Some("team-a")).is_empty());
    b.add(soft(Scope::Global, Period::Daily, Money::ZERO)).unwrap();
    let room = b.headroom(None);
    assert!(room.is_empty(), "soft budgets leave no mark");
    assert_eq!(room.tightest("openai", "gpt-4o"), None);

    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("100"))).unwrap();
    b.add(BudgetSpec::hard(key("team-a"), Period::Daily, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(key("team-b"), Period::Daily, usd("1"))).unwrap();
    b.add(BudgetSpec::hard(provider("openai"), Period::Weekly, usd("20"))).unwrap();
    b.add(BudgetSpec::hard(provider("ollama"), Period::Daily, usd("5"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Model("gpt-4o-mini".into()), Period::Daily, usd("3"))).unwrap();
    b.add(soft(Scope::Model("gpt-4o".into()), Period::Daily, Money::ZERO)).unwrap();
    let _ = b.spend(&OPENAI, usd("4"));
    let _held = b.reserve(&OPENAI, usd("1")).unwrap();

    let team_a = b.headroom(Some("team-a"));
    assert!(!team_a.is_empty());
    let day_end = Some(DAY_START + 24 * HOUR);
    assert_eq!(
        team_a.tightest("openai", "gpt-4o"),
        Some(Room {
            label: "key:team-a daily",
            scope: &key("team-a"),
            period: Period::Daily,
            remaining: usd("5"),
            resets_at_ms: day_end,
        })
    );
    let label = |room: &Headroom, p: &str, m: &str| room.tightest(p, m).map(|r| (r.label.to_owned(), r.remaining));
    // key:team-a daily and provider:ollama daily both have 5 left: the first added wins.
    assert_eq!(label(&team_a, "ollama", "llama2"), Some(("key:team-a daily".into(), usd("5"))));
    assert_eq!(label(&b.headroom(None), "ollama", "llama2"), Some(("provider:ollama daily".into(), usd("5"))));
    assert_eq!(label(&team_a, "openai", "gpt-4o-mini"), Some(("model:gpt-4o-mini daily".into(), usd("3"))));
    let anonymous = b.headroom(None);
    assert_eq!(label(&anonymous, "openai", "gpt-4o"), Some(("provider:openai weekly".into(), usd("15"))));
    assert_eq!(label(&anonymous, "mistral", "large"), Some(("global monthly".into(), usd("95"))));
    let team_b = b.headroom(Some("team-b"));
    assert_eq!(label(&team_b, "mistral", "large"), Some(("key:team-b daily".into(), usd("1"))));

    // Never below zero, after an overshoot.
    assert_eq!(b.spend(&Charge { key: Some("team-b"), ..LOCAL }, usd("2")), usd("1"), "team-b: 2 spent of 1");
    let team_b = b.headroom(Some("team-b"));
    assert_eq!(team_b.tightest("ollama", "llama2").map(|r| r.remaining), Some(Money::ZERO));
}

#[test]
fn restoring_spend_does_not_repeat_alerts() {
    let (b, _) = budgets();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    let by_provider = BTreeMap::from([("openai".to_owned(), usd("8"))]);
    let by_model = BTreeMap::from([("gpt-4o".to_owned(), usd("5")), ("o3".to_owned(), usd("3"))]);
    b.restore(&Scope::Global, Period::Monthly, usd("8"), by_provider.clone(), by_model.clone()).unwrap();
    let s = status(&b, &Scope::Global, Period::Monthly);
    assert_eq!((s.spent, &s.by_provider, &s.by_model), (usd("8"), &by_provider, &by_model));
    assert_eq!(status(&b, &Scope::Global, Period::Daily).spent, Money::ZERO, "only that period");
    let _ = b.spend(&OPENAI, usd("1"));
    let fired: Vec<_> = b.alerts().iter().map(|a| (a.period, a.threshold)).collect();
    assert_eq!(fired, [(Period::Monthly, 90)]);
    assert_eq!(status(&b, &Scope::Global, Period::Monthly).by_model.get("gpt-4o"), Some(&usd("6")));
    assert_eq!(
        b.restore(&Scope::Model("x".into()), Period::Daily, Money::ZERO, BTreeMap::new(), BTreeMap::new()),
        Err(Error::NoSuchBudget { scope: Scope::Model("x".into()), period: Period::Daily })
    );
    set_spent(&b, &Scope::Global, Period::Daily, nanos(-3));
    assert_eq!(status(&b, &Scope::Global, Period::Daily).spent, Money::ZERO, "never negative");
}

#[test]
fn restored_alerts_join_the_history_and_count_as_fired() {
    let (b, _) = budgets_with(LedgerConfig { alert_history: 4, ..LedgerConfig::default() });
    b.add(BudgetSpec::hard(Scope::Global, Period::Daily, usd("10"))).unwrap();
    b.add(BudgetSpec::hard(Scope::Global, Period::Monthly, usd("10"))).unwrap();
    let alert = |period: Period, threshold: u8, period_start_ms: u64| Alert {
        scope: Scope::Global,
        period,
        threshold,
        spent: usd("1"),
        limit: usd("10"),
        period_start_ms,
        at_ms: period_start_ms + 1,
    };
    let restored = vec![
        alert(Period::Daily, 50, DAY_START - 24 * HOUR), // yesterday: fires again today
        alert(Period::Daily, 75, DAY_START),             // today: counts as fired
        alert(Period::Monthly, 50, MONTH_START),         // this month
        alert(Period::Weekly, 90, DAY_START),            // no such budget
    ];
    b.restore_alerts(restored.clone());
    assert_eq!(b.alerts(), restored);
    let _ = b.spend(&OPENAI, usd("9"));
    let fired: Vec<_> = b.alerts().iter().map(|a| (a.period, a.threshold)).collect();
    // Yesterday's 50 fires again, today's 75 does not; the history keeps the last four.
    assert_eq!(fired, [(Period::Daily, 50), (Period::Daily, 90), (Period::Monthly, 75), (Period::Monthly, 90)]);
}

#[test]
fn periods_print_lower_case() {
    let names: Vec<_> =
        [Period::Daily, Period::Weekly, Period::Monthly, Period::None].iter().map(ToString::to_string).collect();
    assert_eq!(names, ["daily", "weekly", "monthly", "lifetime"]);
    assert_eq!(Period::None.as_str(), "lifetime");
}

proptest! {
    // Each case spends a million costs; a few cases keep the suite quick.
    #![proptest_config(ProptestConfig::with_cases(3))]

    #[test]
    fn a_million_random_costs_sum_exactly(seed in any::<u64>()) {
        let (b, _) = budgets();
        b.add(soft(Scope::Global, Period::None, usd("1000000"))).unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut expected: i64 = 0;
        for _ in 0..1_000_000 {
            let nanos = rng.i64(0..5_000_000); // up to half a cent
            expected += nanos;
            let _ = b.spend(&OPENAI, Money::from_nanos(nanos));
        }
        prop_assert_eq!(status(&b, &Scope::Global, Period::None).spent.nanos(), expected);
    }
}

/// How a request in the concurrent property ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// `reconcile_charged(actual)`.
    Charged,
    /// `reconcile(actual)`: no overshoot is reported, so `actual` stays within the hold.
    Reconcile,
    /// `release()`.
    Release,
    /// Dropped unsettled.
    Drop,
}

/// One request: which charge, the amount held, the actual cost, how it
/// ends, and after how many of the thread's later requests (so several are
/// in flight at once, also within one thread).
#[derive(Debug, Clone, Copy)]
struct Op {
    charge: usize,
    hold: i64,
    actual: i64,
    end: End,
    later: usize,
}

const CHARGES: [Charge<'static>; 4] = [
    OPENAI,
    Charge { provider: "openai", model: "gpt-4o-mini", key: None },
    Charge { provider: "ollama", model: "llama2", key: Some("team-b") },
    Charge { provider: "anthropic", model: "claude", key: Some("team-a") },
];

fn op() -> impl Strategy<Value = Op> {
    let hold = prop_oneof![1 => Just(0i64), 6 => 1i64..=6_000_000];
    let end = prop_oneof![
        4 => Just(End::Charged),
        2 => Just(End::Reconcile),
        1 => Just(End::Release),
        1 => Just(End::Drop),
    ];
    (0..CHARGES.len(), hold, 0u8..3, 0i64..=3_000_000, end, 0usize..4).prop_map(
        |(charge, hold, mode, delta, end, later)| {
            // The actual cost: exactly the hold, below it, or above it.
            let actual = match (mode, end) {
                (0, _) => hold,
                (1, _) | (_, End::Reconcile) => (hold - delta).max(0),
                _ => hold + delta,
            };
            Op { charge, hold, actual, end, later }
        },
    )
}

/// What one thread saw: spend and overshoot per budget and per (budget, provider or model).
#[derive(Default)]
struct Seen {
    spent: BTreeMap<(Scope, Period), i64>,
    overshoot: BTreeMap<(Scope, Period), i64>,
    by_provider: BTreeMap<(Scope, Period, String), i64>,
    by_model: BTreeMap<(Scope, Period, String), i64>,
    refused: usize,
}

fn run_ops(b: &Budgets, specs: &[BudgetSpec], starts: &BTreeMap<(Scope, Period), u64>, ops: &[Op]) -> Seen {
    let mut seen = Seen::default();
    let mut in_flight: Vec<(usize, Op, Reservation)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match b.reserve(&CHARGES[op.charge], nanos(op.hold)) {
            Ok(r) => in_flight.push((i + op.later, *op, r)),
            Err(err) => {
                let refusing = specs.iter().find(|s| s.scope == err.scope && s.period == err.period).unwrap();
                let charge = &CHARGES[op.charge];
                assert!(refusing.enforcement == Enforcement::Hard && covers(&refusing.scope, charge), "{err}");
                assert!(op.hold > 0 && err.requested == nanos(op.hold), "only a paid request is refused");
                seen.refused += 1;
            }
        }
        let (due, later) = in_flight.into_iter().partition(|(at, ..)| *at <= i || i + 1 == ops.len());
        in_flight = later;
        for (_, op, reservation) in due {
            settle(&mut seen, specs, starts, op, reservation);
        }
    }
    seen
}

fn settle(seen: &mut Seen, specs: &[BudgetSpec], starts: &BTreeMap<(Scope, Period), u64>, op: Op, r: Reservation) {
    let charge = &CHARGES[op.charge];
    let covering: Vec<_> =
        specs.iter().filter(|s| covers(&s.scope, charge)).map(|s| (s.scope.clone(), s.period)).collect();
    let (charged, overshoot) = match op.end {
        End::Charged => {
            let settled = r.reconcile_charged(nanos(op.actual));
            let expected: Vec<_> = if op.actual == 0 { Vec::new() } else { covering };
            let charged: Vec<_> = settled.charged.iter().map(|c| (c.scope.clone(), c.period)).collect();
            assert_eq!(charged, expected, "{op:?}");
            for c in &settled.charged {
                assert_eq!(Some(&c.period_start_ms), starts.get(&(c.scope.clone(), c.period)));
            }
            assert!(settled.overshoot.nanos() <= (op.actual - op.hold).max(0), "{op:?}: {settled:?}");
            (charged, settled.overshoot.nanos())
        }
        End::Reconcile => {
            r.reconcile(nanos(op.actual));
            (if op.actual == 0 { Vec::new() } else { covering }, 0)
        }
        End::Release => {
            r.release();
            (Vec::new(), 0)
        }
        End::Drop => {
            drop(r);
            (Vec::new(), 0)
        }
    };
    for (scope, period) in charged {
        *seen.spent.entry((scope.clone(), period)).or_default() += op.actual;
        *seen.overshoot.entry((scope.clone(), period)).or_default() += overshoot;
        *seen.by_provider.entry((scope.clone(), period, charge.provider.into())).or_default() += op.actual;
        *seen.by_model.entry((scope, period, charge.model.into())).or_default() += op.actual;
    }
}

fn merge<K: Ord + Clone>(into: &mut BTreeMap<K, i64>, from: &BTreeMap<K, i64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Four threads reserve and settle at random against limits they reach:
    /// a hard budget never passes its limit but by the overshoots reported,
    /// refusals hold nothing, and every nano-dollar settled is spent exactly
    /// once on exactly the covering budgets.
    #[test]
    fn concurrent_settlements_keep_the_books_and_the_limits(
        limits in (1i64..=40_000_000, 0i64..=15_000_000, 0i64..=20_000_000, 0i64..=5_000_000),
        threads in proptest::collection::vec(proptest::collection::vec(op(), 1..40), 4),
    ) {
        let (b, _) = budgets();
        let specs = vec![
            BudgetSpec::hard(Scope::Global, Period::Daily, nanos(limits.0)),
            BudgetSpec::hard(key("team-a"), Period::Daily, nanos(limits.1)),
            BudgetSpec::hard(provider("openai"), Period::Weekly, nanos(limits.2)),
            BudgetSpec::hard(Scope::Model("llama2".into()), Period::None, nanos(limits.3)),
            soft(Scope::Model("gpt-4o".into()), Period::Monthly, nanos(limits.3)),
            BudgetSpec::hard(key("team-a"), Period::Monthly, nanos(limits.0)),
        ];
        for spec in &specs {
            b.add(spec.clone()).unwrap();
        }
        let starts: BTreeMap<_, _> =
            b.statuses().into_iter().map(|s| ((s.spec.scope, s.spec.period), s.period_start_ms)).collect();
        let seen: Vec<Seen> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                threads.iter().map(|ops| scope.spawn(|| run_ops(&b, &specs, &starts, ops))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut total = Seen::default();
        for s in &seen {
            merge(&mut total.spent, &s.spent);
            merge(&mut total.overshoot, &s.overshoot);
            merge(&mut total.by_provider, &s.by_provider);
            merge(&mut total.by_model, &s.by_model);
        }
        for s in b.statuses() {
            let id = (s.spec.scope.clone(), s.spec.period);
            let spent = total.spent.get(&id).copied().unwrap_or(0);
            prop_assert_eq!(s.spent.nanos(), spent, "{} {}: spent is the sum of the actual costs", id.0, id.1);
            prop_assert_eq!(s.reserved, Money::ZERO, "{} {}: every hold is back", id.0, id.1);
            if s.spec.enforcement == Enforcement::Hard {
                let overshoot = total.overshoot.get(&id).copied().unwrap_or(0);
                prop_assert!(
                    s.spent.nanos() <= s.spec.limit.nanos() + overshoot,
                    "{} {}: spent {} past limit {} + overshoot {}", id.0, id.1, s.spent, s.spec.limit, overshoot
                );
            }
            for (name, amount) in &s.by_provider {
                let seen = total.by_provider.get(&(id.0.clone(), id.1, name.clone())).copied().unwrap_or(0);
                prop_assert_eq!(amount.nanos(), seen, "{} by provider {}", id.0, name);
            }
            for (name, amount) in &s.by_model {
                let seen = total.by_model.get(&(id.0.clone(), id.1, name.clone())).copied().unwrap_or(0);
                prop_assert_eq!(amount.nanos(), seen, "{} by model {}", id.0, name);
            }
            prop_assert_eq!(s.by_provider.values().copied().sum::<Money>(), s.spent);
            prop_assert_eq!(s.by_model.values().copied().sum::<Money>(), s.spent);
        }
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
            let r = b.reserve(&OPENAI, nanos(estimate)).unwrap();
            if succeed {
                r.reconcile(nanos(actual));
                expected += actual;
            } else {
                r.release();
            }
        }
        let s = status(&b, &Scope::Global, Period::None);
        prop_assert_eq!(s.spent.nanos(), expected);
        prop_assert_eq!(s.reserved, Money::ZERO);
        prop_assert_eq!(s.by_model.get("gpt-4o").copied().unwrap_or(Money::ZERO).nanos(), expected);
    }
}
