//! Filter rules, one row per rule and boundary: the rejections `explain`
//! gives (as `constraint: text`, the text `explain` shows), or none.
//!
//! Every boundary is decided one way: a model exactly at a limit passes
//! (window = prompt + output, output limit = `max_tokens`, worst case =
//! `max_cost` or the budget left, quality = `min_quality`, latency =
//! `max_latency_ms`, memory need = memory free). Each is tested at the
//! limit and one unit either side.

use std::slice;

use modelfleet_registry::{Capability, Category, ModelSpec, ModelStatus, Money, Pricing};

use crate::{tests::model, *};

/// One model's live signals and, when set, the room left in a hard budget
/// that would pay for it.
struct Live {
    signals: Signals,
    room: Option<Money>,
}

impl LiveSignals for Live {
    fn signals(&self, _: &str) -> Signals {
        self.signals
    }

    fn budget_room(&self, _: &ModelSpec) -> Option<BudgetRoom<'_>> {
        self.room.map(|remaining| BudgetRoom { budget: "global monthly", remaining })
    }
}

/// Checks `m` against `req` with no live data and no budget.
#[track_caller]
fn check(m: &ModelSpec, req: &Requirements, expect: &str) {
    check_live(m, req, &Live { signals: Signals::default(), room: None }, expect);
}

/// Checks `m` against `req` under `live`: `explain` must give exactly the
/// rejections in `expect` (`constraint: text`, joined by `; `; empty when
/// the model is eligible), and `rank` and `select` must agree with it.
#[track_caller]
fn check_live(m: &ModelSpec, req: &Requirements, live: &Live, expect: &str) {
    let config = SelectorConfig::default();
    let why = explain(slice::from_ref(m), req, live, &config);
    let got: Vec<String> = why
        .rejected
        .iter()
        .flat_map(|r| r.reasons.iter().map(|reason| format!("{}: {reason}", reason.constraint())))
        .collect();
    assert_eq!(got.join("; "), expect, "explain");
    let eligible = expect.is_empty();
    assert_eq!(why.ranked.len(), usize::from(eligible), "explain's ranking");
    assert_eq!(rank(slice::from_ref(m), req, live, &config).len(), usize::from(eligible), "rank");
    match select(slice::from_ref(m), req, live, &config) {
        Ok(best) => assert!(eligible, "select chose {}", best.model.id),
        Err(Error::NoMatch { models: 1, rejected_by }) => {
            let mut named: Vec<(&str, usize)> = why.rejected[0].reasons.iter().map(|r| (r.constraint(), 1)).collect();
            named.sort_unstable();
            named.dedup();
            assert_eq!(rejected_by, named, "select's error counts each constraint once");
        }
        Err(other) => panic!("select: {other}"),
    }
}

fn with(change: impl FnOnce(&mut ModelSpec)) -> ModelSpec {
    let mut m = model("m");
    change(&mut m);
    m
}

fn req() -> Requirements {
    Requirements::default()
}

#[test]
fn status() {
    check(&model("m"), &req(), "");
    check(&with(|m| m.enabled = false), &req(), "status: disabled");
    check(&with(|m| m.status = ModelStatus::Inactive), &req(), "status: status is inactive");
    check(&with(|m| m.status = ModelStatus::Maintenance), &req(), "status: status is maintenance");
    check(&with(|m| m.status = ModelStatus::Deprecated), &req(), "");
    check(&with(|m| m.status = ModelStatus::Experimental), &req(), "");
    check(
        &with(|m| {
            m.enabled = false;
            m.status = ModelStatus::Maintenance;
        }),
        &req(),
        "status: disabled; status: status is maintenance",
    );
}

#[test]
fn providers() {
    let m = model("m"); // provider "prov"
    let only = |p: &[&str]| Requirements { providers: p.iter().map(|&s| s.to_owned()).collect(), ..req() };
    check(&m, &only(&["prov"]), "");
    check(&m, &only(&["other", "prov"]), "");
    check(&m, &only(&["other"]), r#"providers: provider "prov" not allowed"#);
    check(&m, &only(&["Prov"]), r#"providers: provider "prov" not allowed"#);
    let except = |p: &[&str]| Requirements { exclude_providers: p.iter().map(|&s| s.to_owned()).collect(), ..req() };
    check(&m, &except(&["other"]), "");
    check(&m, &except(&["prov"]), r#"providers: provider "prov" excluded"#);
    check(
        &m,
        &Requirements { exclude_providers: vec!["prov".into()], ..only(&["other"]) },
        r#"providers: provider "prov" not allowed; providers: provider "prov" excluded"#,
    );
}

#[test]
fn locality() {
    let cloud = model("m");
    let local = with(|m| m.local = true);
    let at = |locality| Requirements { locality, ..req() };
    check(&cloud, &at(None), "");
    check(&local, &at(None), "");
    check(&cloud, &at(Some(Locality::Any)), "");
    check(&local, &at(Some(Locality::Any)), "");
    check(&local, &at(Some(Locality::LocalOnly)), "");
    check(&cloud, &at(Some(Locality::LocalOnly)), "locality: not local");
    check(&cloud, &at(Some(Locality::CloudOnly)), "");
    check(&local, &at(Some(Locality::CloudOnly)), "locality: not a cloud model");
}

#[test]
fn category() {
    let general = model("m");
    let coder = with(|m| m.categories = vec![Category::Code]);
    let both = with(|m| m.categories = vec![Category::Code, Category::General]);
    let none = with(|m| m.categories = Vec::new());
    let asking = |category| Requirements { category, ..req() };
    check(&coder, &asking(None), "");
    check(&none, &asking(None), "");
    check(&coder, &asking(Some(Category::Code)), "");
    check(&general, &asking(Some(Category::Code)), "");
    check(&both, &asking(Some(Category::Translation)), "");
    check(&coder, &asking(Some(Category::Translation)), "category: not a translation or general model");
    check(&none, &asking(Some(Category::Code)), "category: not a code or general model");
    check(&general, &asking(Some(Category::General)), "");
    check(&coder, &asking(Some(Category::General)), "category: not a general model");
}

#[test]
fn language() {
    let m = with(|m| {
        m.primary_language = Some("en".into());
        m.languages = vec!["fr".into()];
    });
    let speaking = |l: &str| Requirements { language: Some(l.into()), ..req() };
    check(&m, &req(), "");
    check(&m, &speaking("en"), "");
    check(&m, &speaking("EN"), "");
    check(&m, &speaking("fr"), "");
    check(&m, &speaking("Fr"), "");
    check(&m, &speaking("de"), r#"language: does not speak "de""#);
    let mute = with(|m| {
        m.primary_language = None;
        m.languages = Vec::new();
    });
    check(&mute, &speaking("en"), r#"language: does not speak "en""#);
}

#[test]
fn context_window() {
    let m = model("m"); // window 8,000, output limit 2,000
    let sized = |prompt, output| Requirements { prompt_tokens: prompt, max_output_tokens: output, ..req() };
    check(&m, &sized(6_000, 2_000), "");
    check(&m, &sized(5_999, 2_000), "");
    check(&m, &sized(6_001, 2_000), "context_window: context window 8000 < 8001 tokens needed");
    // Without max_tokens, the window must leave a token to answer.
    check(&m, &sized(7_999, 0), "");
    check(&m, &sized(8_000, 0), "context_window: context window 8000 < 8001 tokens needed");
    let unlimited = with(|m| m.max_output_tokens = None);
    check(&unlimited, &sized(0, 8_000), "");
    check(&unlimited, &sized(0, 8_001), "context_window: context window 8000 < 8001 tokens needed");
    let unknown = with(|m| m.context_window = None);
    check(&unknown, &sized(0, 0), "");
    check(&unknown, &sized(1, 0), "context_window: context window unknown (2 tokens needed)");
    check(&unknown, &sized(0, 1), "context_window: context window unknown (1 tokens needed)");
}

#[test]
fn output_limit() {
    let m = with(|m| m.context_window = Some(1_000_000)); // output limit 2,000
    let asking = |output| Requirements { max_output_tokens: output, ..req() };
    check(&m, &asking(0), "");
    check(&m, &asking(1_999), "");
    check(&m, &asking(2_000), "");
    check(&m, &asking(2_001), "max_output_tokens: output limit 2000 < 2001 tokens asked");
    // No stated limit: the window alone bounds the output.
    let unstated = with(|m| m.max_output_tokens = None);
    check(&unstated, &asking(8_000), "");
    check(&unstated, &asking(8_001), "context_window: context window 8000 < 8001 tokens needed");
}

#[test]
fn capabilities() {
    let m = with(|m| {
        m.capabilities.streaming = true;
        m.capabilities.tools = true;
    });
    let needing = |c: &[Capability]| Requirements { capabilities: c.to_vec(), ..req() };
    check(&m, &needing(&[]), "");
    check(&m, &needing(&[Capability::Streaming, Capability::Tools]), "");
    check(&m, &needing(&[Capability::Vision]), "capabilities: no vision support");
    check(
        &m,
        &needing(&[Capability::JsonMode, Capability::Streaming, Capability::Vision]),
        "capabilities: no json_mode support; capabilities: no vision support",
    );
}

#[test]
fn max_cost() {
    let m = model("m"); // $1 in, $2 out per million; 1,000 prompt + 2,000 output = $0.005
    let at = |nanos| Requirements { prompt_tokens: 1_000, max_cost: Some(Money::from_nanos(nanos)), ..req() };
    check(&m, &at(5_000_001), "");
    check(&m, &at(5_000_000), "");
    check(&m, &at(4_999_999), "max_cost: worst-case cost $0.005 > max $0.004999999");
    check(&with(|m| m.pricing = None), &at(1_000_000_000), "max_cost: price unknown");
    let open = with(|m| {
        m.max_output_tokens = None;
        m.context_window = None;
    });
    check(
        &open,
        &Requirements { prompt_tokens: 0, ..at(1_000_000_000) },
        "max_cost: output unbounded (no max_tokens, no output limit, no context window)",
    );
    // Free and local-unpriced models cost nothing, whatever the limit.
    check(&with(|m| m.pricing = Some(Pricing::FREE)), &at(0), "");
    check(
        &with(|m| {
            m.pricing = None;
            m.local = true;
        }),
        &at(0),
        "",
    );
}

#[test]
fn budget() {
    let m = model("m"); // worst case for 1,000 prompt tokens: $0.005
    let req = Requirements { prompt_tokens: 1_000, ..req() };
    let room = |nanos| Live { signals: Signals::default(), room: Some(Money::from_nanos(nanos)) };
    check_live(&m, &req, &room(5_000_001), "");
    check_live(&m, &req, &room(5_000_000), "");
    check_live(
        &m,
        &req,
        &room(4_999_999),
        "budget: worst-case cost $0.005 > $0.004999999 left in hard budget global monthly",
    );
    check_live(&with(|m| m.pricing = Some(Pricing::FREE)), &req, &room(0), "");
    check_live(
        &with(|m| m.pricing = None),
        &req,
        &room(1_000_000_000),
        "budget: cost cannot be bounded (no price, no bound on the output, or a prompt the gateway cannot measure) under hard budget global monthly",
    );
}

#[test]
fn an_unmeasured_request_has_no_worst_case_unless_the_model_is_free() {
    let m = model("m");
    let req = Requirements { prompt_tokens: 1_000, unmeasured: true, ..req() };
    assert_eq!(worst_case_cost(&m, &req), None);
    check(&m, &req, "");
    let capped = Requirements { max_cost: Some(Money::from_nanos(1_000_000_000_000)), ..req.clone() };
    check(
        &m,
        &capped,
        "max_cost: the request's cost cannot be measured (a stored conversation, or a provider's built-in tools)",
    );
    let room = Live { signals: Signals::default(), room: Some(Money::from_nanos(1_000_000_000_000)) };
    check_live(
        &m,
        &req,
        &room,
        "budget: cost cannot be bounded (no price, no bound on the output, or a prompt the gateway cannot measure) under hard budget global monthly",
    );
    let free = with(|m| m.pricing = Some(Pricing::FREE));
    assert_eq!(worst_case_cost(&free, &req), Some(Money::ZERO));
    check(&free, &capped, "");
    check_live(&free, &req, &room, "");
}

#[test]
fn min_quality() {
    let m = model("m"); // quality 0.5
    let min = |q| Requirements { min_quality: Some(q), ..req() };
    check(&m, &min(0.49), "");
    check(&m, &min(0.5), "");
    check(&m, &min(0.51), "min_quality: quality 0.5 < min 0.51");
    check(&m, &min(0.0), "");
    check(&with(|m| m.quality = None), &min(0.0), "min_quality: quality unknown");
}

#[test]
fn max_latency() {
    let m = model("m"); // typical latency 1,000 ms
    let max = |ms| Requirements { max_latency_ms: Some(ms), ..req() };
    check(&m, &max(1_001), "");
    check(&m, &max(1_000), "");
    check(&m, &max(999), "max_latency_ms: latency 1000 ms > max 999 ms");
    check(&with(|m| m.typical_latency_ms = None), &max(u32::MAX), "max_latency_ms: latency unknown");
}

#[test]
fn live_latency_replaces_the_typical_one_only_when_measured() {
    let m = model("m"); // typical latency 1,000 ms
    let req = Requirements { max_latency_ms: Some(1_000), ..req() };
    let live = |samples, latency_ms| Live {
        signals: Signals { samples, success_rate: 1.0, latency_ms, ..Signals::default() },
        room: None,
    };
    check_live(&m, &req, &live(5, Some(1_000.0)), "");
    check_live(&m, &req, &live(5, Some(1_000.5)), "max_latency_ms: latency 1000.5 ms > max 1000 ms");
    check_live(&m, &req, &live(5, Some(1_000.04)), "max_latency_ms: latency 1000.04 ms > max 1000 ms");
    check_live(&m, &req, &live(5, Some(3_000.0)), "max_latency_ms: latency 3000 ms > max 1000 ms");
    // Whole milliseconds away from the maximum, every digit near it.
    check_live(&m, &req, &live(5, Some(3_000.7)), "max_latency_ms: latency 3001 ms > max 1000 ms");
    // Live beats typical in both directions: a fast measurement admits a
    // model whose typical latency is too high, even one measured at 0 ms.
    let slow = with(|m| m.typical_latency_ms = Some(5_000));
    check_live(&slow, &req, &live(5, Some(200.0)), "");
    check_live(&slow, &req, &live(5, Some(0.0)), "");
    check_live(&slow, &req, &live(1, Some(999.0)), "");
    // Not measured (no samples), or not a latency: the typical one counts.
    check_live(&m, &req, &live(0, Some(3_000.0)), "");
    check_live(&slow, &req, &live(0, Some(200.0)), "max_latency_ms: latency 5000 ms > max 1000 ms");
    check_live(&slow, &req, &live(5, Some(f64::NAN)), "max_latency_ms: latency 5000 ms > max 1000 ms");
    check_live(&slow, &req, &live(5, Some(-1.0)), "max_latency_ms: latency 5000 ms > max 1000 ms");
    check_live(&slow, &req, &live(5, Some(f64::INFINITY)), "max_latency_ms: latency 5000 ms > max 1000 ms");
    check_live(&slow, &req, &live(5, None), "max_latency_ms: latency 5000 ms > max 1000 ms");
    // Unknown typical latency, measured live: the measurement decides.
    let unknown = with(|m| m.typical_latency_ms = None);
    check_live(&unknown, &req, &live(5, Some(1_000.0)), "");
    check_live(&unknown, &req, &live(0, Some(1_000.0)), "max_latency_ms: latency unknown");
}

#[test]
fn memory() {
    let local = with(|m| {
        m.local = true;
        m.memory_mb = Some(4_096);
    });
    let free = |mb| Requirements { available_memory_mb: Some(mb), ..req() };
    check(&local, &req(), "");
    check(&local, &free(4_097), "");
    check(&local, &free(4_096), "");
    check(&local, &free(4_095), "available_memory_mb: needs 4096 MiB, 4095 MiB free");
    check(
        &with(|m| {
            m.local = true;
            m.memory_mb = None;
        }),
        &free(1 << 20),
        "available_memory_mb: memory need unknown",
    );
    // A cloud model needs no local memory.
    check(&with(|m| m.memory_mb = Some(1 << 30)), &free(0), "");
}

#[test]
fn every_failed_constraint_is_named_in_order() {
    let blank = ModelSpec::new("blank", "prov");
    let req = Requirements {
        category: Some(Category::Code),
        language: Some("en".into()),
        prompt_tokens: 10,
        max_output_tokens: 10,
        capabilities: vec![Capability::Tools],
        max_cost: Some(Money::from_dollars(100)),
        min_quality: Some(0.0),
        max_latency_ms: Some(100_000),
        providers: vec!["other".into()],
        locality: Some(Locality::LocalOnly),
        ..req()
    };
    check(
        &blank,
        &req,
        "providers: provider \"prov\" not allowed; locality: not local; \
         category: not a code or general model; language: does not speak \"en\"; \
         context_window: context window unknown (20 tokens needed); capabilities: no tools support; \
         max_cost: price unknown; min_quality: quality unknown; max_latency_ms: latency unknown",
    );
}
