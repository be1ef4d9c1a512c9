//! `modelfleet demo`: the default catalog on simulated providers, through the
//! full stack, in simulated time.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

use futures_util::{StreamExt, stream};
use modelfleet::{
    Fleet, FleetError, FleetOptions, ReportQuery, Request, Simulator,
    budget::{BudgetSpec, Period, Scope},
    registry::{Category, Money},
    selector::{Locality, Requirements},
    store::Dim,
};
use serde::Serialize;

use crate::output;

pub(crate) struct DemoArgs {
    pub(crate) requests: u32,
    pub(crate) seed: u64,
    pub(crate) concurrency: usize,
    pub(crate) db: Option<PathBuf>,
    pub(crate) json: bool,
}

/// What the demo did.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) requests: u32,
    pub(crate) served: u32,
    pub(crate) failed: u32,
    pub(crate) fell_back: u32,
    /// Why the failed requests failed: the last error's class, or why no model could take them.
    pub(crate) failures: std::collections::BTreeMap<String, u32>,
    pub(crate) cost: Money,
    /// Simulated time the run covered, seconds.
    pub(crate) simulated_seconds: f64,
    /// Real time it took, seconds.
    pub(crate) wall_seconds: f64,
    pub(crate) database: String,
}

const CATEGORIES: [Category; 7] = [
    Category::General,
    Category::Conversation,
    Category::Code,
    Category::Translation,
    Category::Summarization,
    Category::Reasoning,
    Category::Grammar,
];
const LANGUAGES: [&str; 6] = ["en", "en", "en", "fr", "de", "zh"];

/// The `n`th request of the demo: a mix of kinds, languages and sizes.
fn request(rng: &mut fastrand::Rng) -> (Request, u32, u32) {
    let prompt_tokens = match rng.u32(0..10) {
        0..=5 => rng.u32(50..1_500),
        6..=8 => rng.u32(1_500..12_000),
        _ => rng.u32(12_000..90_000),
    };
    let max_output_tokens = rng.u32(64..1_024);
    let requirements = Requirements {
        category: Some(CATEGORIES[rng.usize(..CATEGORIES.len())]),
        language: Some(LANGUAGES[rng.usize(..LANGUAGES.len())].to_owned()),
        prompt_tokens,
        max_output_tokens,
        min_quality: (rng.u32(0..4) == 0).then_some(0.7),
        prefer_free: rng.u32(0..8) == 0,
        locality: (rng.u32(0..12) == 0).then_some(Locality::LocalOnly),
        ..Requirements::default()
    };
    (Request { requirements, ..Request::default() }, prompt_tokens, max_output_tokens)
}

pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<()> {
    // Simulated time: sleeps complete as soon as the runtime is idle, so the
    // report shows realistic latencies and the run takes seconds.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    runtime.block_on(async {
        let options = FleetOptions {
            db_path: args.db.clone(),
            budgets: vec![BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(100))],
            // The simulation runs on tokio's paused clock.
            virtual_time: true,
            ..FleetOptions::default()
        };
        let fleet = Fleet::open(options).await?;
        let simulator = Simulator::mirroring(fleet.catalog().snapshot().models(), args.seed);
        let mut rng = fastrand::Rng::with_seed(args.seed);
        let requests: Vec<(Request, u32, u32)> = (0..args.requests).map(|_| request(&mut rng)).collect();
        let done = AtomicU32::new(0);
        let progress = std::io::stderr().is_terminal() && !args.json;
        let started_sim = tokio::time::Instant::now();
        let started_wall = Instant::now();
        // The run's rows are stamped with the wall clock: its report covers
        // them from here (the same range `modelfleet report --from` takes).
        let run_from_ms = modelfleet::registry::Clock::now_ms(&modelfleet::registry::SystemClock);
        let outcomes: Vec<Result<(bool, Money), FleetError>> = stream::iter(requests.iter())
            .map(|(request, prompt, max_output)| {
                let (fleet, simulator, done) = (&fleet, &simulator, &done);
                async move {
                    let served = fleet
                        .call(request, |model, ctx| async move {
                            simulator.complete(&model, *prompt, *max_output, ctx).await
                        })
                        .await
                        .map(|s| (s.fell_back, s.cost));
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress && (n % 50 == 0 || n == args.requests) {
                        let width = 30;
                        let filled =
                            usize::try_from(u64::from(n) * width / u64::from(args.requests.max(1))).unwrap_or(0);
                        let mut err = std::io::stderr();
                        let _ = write!(
                            err,
                            "\r[{}{}] {n}/{}",
                            "#".repeat(filled),
                            ".".repeat(30 - filled.min(30)),
                            args.requests
                        );
                        let _ = err.flush();
                    }
                    served
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        if progress {
            eprintln!();
        }
        let served = outcomes.iter().filter(|o| o.is_ok()).count();
        let mut failures = std::collections::BTreeMap::new();
        for err in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            let reason = match err {
                FleetError::NotServed { class: Some(class), .. } => class.as_str().to_owned(),
                FleetError::NotServed { class: None, message, .. } => {
                    if message.contains("rejected by") {
                        "no model meets the requirements".to_owned()
                    } else {
                        "no model available".to_owned()
                    }
                }
                other => other.to_string(),
            };
            *failures.entry(reason).or_insert(0u32) += 1;
        }
        let summary = Summary {
            requests: args.requests,
            served: u32::try_from(served).unwrap_or(u32::MAX),
            failed: u32::try_from(outcomes.len() - served).unwrap_or(u32::MAX),
            fell_back: u32::try_from(outcomes.iter().filter(|o| matches!(o, Ok((true, _)))).count())
                .unwrap_or(u32::MAX),
            failures,
            cost: outcomes.iter().filter_map(|o| o.as_ref().ok().map(|(_, c)| *c)).sum(),
            simulated_seconds: started_sim.elapsed().as_secs_f64(),
            wall_seconds: started_wall.elapsed().as_secs_f64(),
            database: fleet.store().path().display().to_string(),
        };
        let now = modelfleet::registry::Clock::now_ms(&modelfleet::registry::SystemClock);
        let query = ReportQuery { from_ms: run_from_ms, to_ms: now + 1, by: Dim::Model };
        let report = fleet.report(&query).await?;
        fleet.shutdown().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"summary": summary, "report": report}))?);
        } else {
            output::report(&report, Some(&summary));
        }
        Ok(())
    })
}
