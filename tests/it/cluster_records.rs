//! Spend and performance records of every replica (`[cluster]`): two
//! fleets, each with its own SQLite file, on one PostgreSQL schema; a report
//! from either counts both replicas' requests and cost exactly, and a
//! replica cut from PostgreSQL keeps serving and delivers its records once
//! it is back. The server is the machine's (`MODELFLEET_TEST_POSTGRES`),
//! reached through a loopback proxy the test owns when it is cut; without
//! it the tests skip, saying so, except under `CI=true`, where they fail.

use std::{sync::Arc, time::Duration};

use modelfleet::{
    Fleet, FleetError, FleetOptions, ModelResponse, ReportQuery, Request, Usage, errors::Failure, registry::Money,
    store::Dim,
};

use crate::{
    cluster::{env, eventually, postgres_url},
    support::validated,
};

/// Two models on two providers, no budget; `[cluster]` on `schema`.
fn config_text(schema: &str) -> String {
    format!(
        "[[providers]]\nname = \"p\"\nkind = \"simulated\"\n\n\
         [[providers]]\nname = \"q\"\nkind = \"simulated\"\n\n\
         [[models]]\nid = \"m\"\nprovider = \"p\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
         input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"general\"]\n\n\
         [[models]]\nid = \"n\"\nprovider = \"q\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
         input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"general\"]\n\n\
         [cluster]\npostgres_url_env = \"MODELFLEET_TEST_POSTGRES_URL\"\nschema = \"{schema}\"\ntimeout_ms = 1000\n"
    )
}

/// A replica on `text`, its `[cluster]` URL replaced by `url` when given.
async fn replica(text: &str, url: Option<String>) -> (Fleet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = validated(text, dir.path(), env);
    config.store.path = Some(dir.path().join("fleet.db"));
    if let Some(url) = url {
        config.cluster.as_mut().unwrap().postgres_url = url;
    }
    let fleet = Fleet::open(FleetOptions::from_config(&config).unwrap()).await.expect("a replica starts");
    (fleet, dir)
}

/// `model`'s answer: 100 prompt and 1,000 completion tokens, $0.0021.
async fn answer(
    _: Arc<modelfleet::registry::ModelSpec>,
    _: modelfleet::errors::AttemptCtx,
) -> Result<ModelResponse<()>, Failure> {
    Ok(ModelResponse { value: (), usage: Some(Usage::new(100, 1_000)) })
}

fn on(model: &str) -> Request {
    Request { model: Some(model.into()), ..Request::default() }
}

fn last_hour() -> ReportQuery {
    let now = modelfleet::registry::Clock::now_ms(&modelfleet::registry::SystemClock);
    ReportQuery::last(Duration::from_hours(1), now)
}

/// (requests, successes, output tokens, cost) of a report's totals, and per
/// model (name, requests).
type Figures = ((u64, u64, u64, Money), Vec<(String, u64)>);

async fn figures(fleet: &Fleet) -> Result<Figures, FleetError> {
    let report = fleet.report(&last_hour()).await?;
    let t = &report.totals;
    let mut models: Vec<(String, u64)> = report.groups.iter().map(|g| (g.name.clone(), g.requests)).collect();
    models.sort();
    Ok(((t.requests, t.successes, t.output_tokens, t.cost), models))
}

fn dollars(text: &str) -> Money {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_either_replica_counts_both_replicas_requests_and_cost() {
    let Some(url) = postgres_url() else { return };
    let guard = modelfleet_test_support::Schema::new(&url, "records");
    let schema = guard.name.clone();
    let text = config_text(&schema);
    let ((a, a_dir), (b, _b_dir)) = (replica(&text, None).await, replica(&text, None).await);
    for _ in 0..3 {
        a.call(&on("m"), answer).await.expect("served");
    }
    for _ in 0..2 {
        b.call(&on("n"), answer).await.expect("served");
    }
    b.call(&on("m"), answer).await.expect("served");
    let each = dollars("0.0021");
    let fleet = ((6, 6, 6_000, Money::from_nanos(each.nanos() * 6)), vec![("m".into(), 4), ("n".into(), 2)]);
    // A's report ships A's records; B's records reach the store within a
    // second or so (B's own report would ship them at once: polled here).
    assert!(
        eventually(|| async { figures(&a).await.ok().as_ref() == Some(&fleet) }).await,
        "A's report counts both replicas: {:?}",
        figures(&a).await
    );
    assert_eq!(figures(&b).await.unwrap(), fleet, "B's report is the same");
    assert_eq!(figures(&a).await.unwrap(), fleet, "reporting again ships nothing twice");
    // Each replica's own file holds its own requests only.
    let local = a.store().history(0, u64::MAX >> 1, &[Dim::Model]).unwrap();
    assert_eq!(local.by(Dim::Model).iter().map(|g| g.requests).sum::<u64>(), 3);
    let status = b.cluster_status().unwrap();
    assert_eq!((status.records_shipped, status.records_dropped, status.records_pending), (3, 0, 0));
    // More traffic on B reaches A's next report.
    b.call(&on("n"), answer).await.expect("served");
    let more = ((7, 7, 7_000, Money::from_nanos(each.nanos() * 7)), vec![("m".into(), 4), ("n".into(), 3)]);
    assert!(eventually(|| async { figures(&a).await.ok().as_ref() == Some(&more) }).await);
    // A report read without joining the cluster (`modelfleet report --config`) is the same.
    let settings = FleetOptions::from_config(&validated(&text, a_dir.path(), env)).unwrap().cluster.unwrap();
    let outside = a.cluster_report(&last_hour(), &settings).await.unwrap();
    assert_eq!((outside.totals.requests, outside.totals.cost), (7, more.0.3));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_postgres_serves_and_delivers_its_records_when_it_returns() {
    let Some(url) = postgres_url() else { return };
    let (proxy, proxied) = modelfleet_test_support::Proxy::to_postgres(&url).await;
    let guard = modelfleet_test_support::Schema::new(&url, "records_cut");
    let schema = guard.name.clone();
    let text = config_text(&schema);
    let ((a, _a_dir), (b, _b_dir)) = (replica(&text, Some(proxied)).await, replica(&text, None).await);
    a.call(&on("m"), answer).await.expect("served");
    assert_eq!(figures(&a).await.unwrap().0.0, 1, "shipped while the store answers");
    proxy.cut();
    // Serving goes on; the records wait.
    for _ in 0..4 {
        a.call(&on("m"), answer).await.expect("served while the store is cut");
    }
    let cut = a.report(&last_hour()).await.unwrap_err();
    assert!(matches!(cut, FleetError::Cluster(_)), "{cut}");
    assert!(cut.to_string().contains("shared store"), "{cut}");
    assert!(!cut.to_string().contains(&proxy.port().to_string()), "the URL is never shown: {cut}");
    assert_eq!(a.cluster_status().unwrap().records_pending, 4);
    assert_eq!(figures(&b).await.unwrap().0.0, 1, "B sees what reached the store");
    proxy.restore().await;
    // Back: A's task delivers them, each once, without a report from A.
    assert!(
        eventually(|| async { figures(&b).await.is_ok_and(|f| f.0.0 == 5) }).await,
        "A's records arrive: {:?}",
        figures(&b).await
    );
    // (A counts them once its task hears back from the store.)
    assert!(eventually(|| async { a.cluster_status().unwrap().records_pending == 0 }).await);
    let status = a.cluster_status().unwrap();
    assert_eq!((status.records_shipped, status.records_dropped, status.records_pending), (5, 0, 0));
    assert_eq!(figures(&a).await.unwrap().0, (5, 5, 5_000, Money::from_nanos(dollars("0.0021").nanos() * 5)));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(proxy);
}
