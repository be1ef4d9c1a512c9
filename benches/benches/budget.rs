//! Budget: reserve a call's estimate and reconcile its actual cost, with
//! soft budgets and on the production path (hard budgets, `reconcile_charged`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_budget::{BudgetSpec, Budgets, Charge, Enforcement, LedgerConfig, Period, Scope};
use modelfleet_registry::Money;

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget");
    let budgets = Budgets::new(LedgerConfig::default());
    // Four budgets apply to every call, as in a multi-tenant deployment.
    for (scope, period) in [
        (Scope::Global, Period::Monthly),
        (Scope::Provider("openai".into()), Period::Daily),
        (Scope::Model("gpt-4o".into()), Period::Weekly),
        (Scope::Key("team-a".into()), Period::Daily),
    ] {
        let spec = BudgetSpec {
            enforcement: Enforcement::Soft,
            ..BudgetSpec::hard(scope, period, Money::from_dollars(1_000_000))
        };
        budgets.add(spec).expect("distinct scopes");
    }
    let charge = Charge { provider: "openai", model: "gpt-4o", key: Some("team-a") };
    group.bench_function("reserve_reconcile", |b| {
        b.iter(|| {
            let reservation =
                budgets.reserve(black_box(&charge), Money::from_nanos(2_500)).expect("soft budgets never refuse");
            reservation.reconcile(black_box(Money::from_nanos(2_100)));
        });
    });
    // The production path: two hard budgets cover the charge, the settlement
    // reports what it charged (the store persists it per period).
    let hard = Budgets::new(LedgerConfig::default());
    for (scope, period) in [(Scope::Global, Period::Monthly), (Scope::Key("team-a".into()), Period::Daily)] {
        // Large enough never to refuse: ~4 ns of spend per iteration.
        hard.add(BudgetSpec::hard(scope, period, Money::from_dollars(1_000_000_000))).expect("distinct scopes");
    }
    group.bench_function("reserve_reconcile_charged", |b| {
        b.iter(|| {
            let settled = hard
                .reserve(black_box(&charge), Money::from_nanos(2_500))
                .expect("the limit is never reached")
                .reconcile_charged(black_box(Money::from_nanos(2_100)));
            black_box(settled)
        });
    });
    group.finish();
}

criterion_group!(budget, benches);
criterion_main!(budget);
