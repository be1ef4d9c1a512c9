//! The shared catalog against a real PostgreSQL, each test in a schema of
//! its own (see `tests.rs` for the server and the schemas).

use std::{sync::Arc, time::Duration};

use modelfleet_registry::ModelSpec;
use tokio::task::JoinSet;

use crate::{
    CatalogState, EditRefused, ModelSource, SharedCatalog,
    tests::{Schema, ledger, postgres_url},
};

fn spec(id: &str, priority: u8) -> ModelSpec {
    let mut spec = ModelSpec::new(id, "openai");
    spec.priority = priority;
    spec
}

async fn catalog(url: &str, schema: &Schema, replica: &str) -> SharedCatalog {
    ledger(url, schema, replica).await.catalog()
}

/// `(id, priority, source)` of every model, by id.
fn models(state: &CatalogState) -> Vec<(String, u8, ModelSource)> {
    state.models.iter().map(|m| (m.spec.id.clone(), m.spec.priority, m.source)).collect()
}

fn revision_of(state: &CatalogState, id: &str) -> u64 {
    state.models.iter().find(|m| m.spec.id == id).map_or(0, |m| m.revision)
}

/// A replacement of the whole spec, as the admin API's PUT makes.
fn put(new: ModelSpec) -> impl FnOnce(crate::Current) -> Result<Option<ModelSpec>, EditRefused> {
    move |current| match current {
        Some(_) => Ok(Some(new)),
        None => Err(EditRefused::NotFound(new.id)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_models_win_at_each_start_and_api_models_stay() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "catalog_config");
    let shared = catalog(&url, &schema, "a").await;

    assert_eq!(shared.publish_config(Some(&[spec("a", 1), spec("b", 1)]), &[]).await.expect("publishes"), 2);
    let added = shared
        .edit("c", None, "ops", |current| {
            assert!(current.is_none());
            Ok(Some(spec("c", 1)))
        })
        .await
        .expect("an API model is added")
        .revision;
    let first = shared.load().await.expect("loads");
    assert_eq!(first.revision, added);
    assert_eq!(
        models(&first),
        [("a".into(), 1, ModelSource::Config), ("b".into(), 1, ModelSource::Config), ("c".into(), 1, ModelSource::Api)]
    );

    // Config models are read-only through edits, with or without If-Match.
    let refused = shared.edit("a", None, "ops", put(spec("a", 9))).await;
    assert!(matches!(refused, Err(EditRefused::FromConfig(ref id)) if id == "a"), "{refused:?}");
    let refused = shared.edit("a", Some(revision_of(&first, "a")), "ops", |_| Ok(None)).await;
    assert!(matches!(refused, Err(EditRefused::FromConfig(_))), "{refused:?}");

    // The same configuration again writes nothing; a changed one writes
    // what changed, removes what it dropped, and takes over an API model's id.
    assert_eq!(shared.publish_config(Some(&[spec("a", 1), spec("b", 1)]), &[]).await.expect("publishes"), 0);
    assert_eq!(shared.publish_config(Some(&[spec("a", 5), spec("c", 7)]), &[]).await.expect("publishes"), 3);
    let second = shared.load().await.expect("loads");
    assert_eq!(models(&second), [("a".into(), 5, ModelSource::Config), ("c".into(), 7, ModelSource::Config)]);
    assert!(revision_of(&second, "a") > revision_of(&first, "a"));
    assert!(second.revision > first.revision);

    // A start without models seeds nothing into a catalog that has some,
    // and hands the configured ones to the admin API.
    assert_eq!(shared.publish_config(None, &[spec("seeded", 1)]).await.expect("publishes"), 2);
    let released = shared.load().await.expect("loads");
    assert_eq!(models(&released), [("a".into(), 5, ModelSource::Api), ("c".into(), 7, ModelSource::Api)]);
    shared.edit("a", None, "ops", put(spec("a", 6))).await.expect("an API model now");
    assert_eq!(shared.publish_config(None, &[spec("seeded", 1)]).await.expect("publishes"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_catalog_is_seeded_once_as_api_models() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "catalog_seed");
    let a = catalog(&url, &schema, "a").await;
    let b = catalog(&url, &schema, "b").await;
    let (seed_a, seed_b) = ([spec("x", 1), spec("y", 1)], [spec("z", 1)]);
    let (first, second) = tokio::join!(a.publish_config(None, &seed_a), b.publish_config(None, &seed_b));
    let written = [first.expect("publishes"), second.expect("publishes")];
    // Whichever took the writers' lock first seeded; the other found models.
    assert!(written == [2, 0] || written == [0, 1], "{written:?}");
    let state = a.load().await.expect("loads");
    assert!(state.models.iter().all(|m| m.source == ModelSource::Api));
    assert_eq!(state.models.len(), usize::try_from(written[0] + written[1]).expect("small"));

    // Emptied by its admins, it stays empty: a restart seeds nothing back.
    for model in &state.models {
        a.edit(&model.spec.id, None, "ops", |_| Ok(None)).await.expect("removes");
    }
    assert_eq!(a.publish_config(None, &seed_a).await.expect("publishes"), 0);
    assert!(a.load().await.expect("loads").models.is_empty(), "removed models came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_edits_at_one_revision_exactly_one_wins() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "catalog_conflict");
    let shared = catalog(&url, &schema, "a").await;
    let start = shared.edit("m", None, "ops", |_| Ok(Some(spec("m", 0)))).await.expect("adds").revision;

    let mut edits = JoinSet::new();
    for priority in 1..=8 {
        let replica = catalog(&url, &schema, &format!("r{priority}")).await;
        edits.spawn(async move { replica.edit("m", Some(start), "ops", put(spec("m", priority))).await });
    }
    let (mut won, mut conflicts) = (Vec::new(), Vec::new());
    while let Some(outcome) = edits.join_next().await {
        match outcome.expect("the edit's task ends") {
            Ok(edited) => won.push(edited.revision),
            Err(EditRefused::Conflict { expected, current, .. }) => conflicts.push((expected, current)),
            Err(other) => panic!("an edit failed otherwise: {other}"),
        }
    }
    assert_eq!(won.len(), 1, "one edit wins");
    // Every loser is told the winner's revision.
    assert_eq!(conflicts, vec![(start, won[0]); 7]);
    let state = shared.load().await.expect("loads");
    assert_eq!(state.revision, won[0]);
    assert_eq!(revision_of(&state, "m"), won[0]);

    // A model removed and added again never takes an old revision back.
    shared.edit("m", Some(won[0]), "ops", |_| Ok(None)).await.expect("removes");
    let again = shared.edit("m", None, "ops", |_| Ok(Some(spec("m", 3)))).await.expect("adds again").revision;
    assert!(again > won[0]);
    let outdated = shared.edit("m", Some(start), "ops", put(spec("m", 4))).await;
    assert!(matches!(outdated, Err(EditRefused::Conflict { current, .. }) if current == again), "{outdated:?}");
    let gone = shared.edit("gone", Some(again), "ops", put(spec("gone", 1))).await;
    assert!(matches!(gone, Err(EditRefused::Conflict { current: 0, .. })), "{gone:?}");
    assert!(matches!(shared.edit("m", None, "ops", |_| Ok(Some(spec("m", 1)))).await.map(|_| ()), Ok(())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_says_who_changed_what_from_which_replica() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "catalog_history");
    let a = catalog(&url, &schema, "replica-a").await;
    let b = catalog(&url, &schema, "replica-b").await;
    a.publish_config(Some(&[spec("cfg", 1)]), &[]).await.expect("publishes");
    let added = a.edit("m", None, "alice", |_| Ok(Some(spec("m", 1)))).await.expect("adds").revision;
    let updated = b.edit("m", Some(added), "bob", put(spec("m", 2))).await.expect("updates");
    assert_eq!(updated.model.as_ref().map(|m| (m.spec.priority, m.revision)), Some((2, updated.revision)));
    let updated = updated.revision;
    let removed = a.edit("m", Some(updated), "alice", |_| Ok(None)).await.expect("removes");
    assert_eq!(removed.model, None);
    let removed = removed.revision;

    let changes = b.history(Some("m"), 10).await.expect("reads");
    let seen: Vec<(u64, &str, &str, &str)> =
        changes.iter().map(|c| (c.revision, c.action.as_str(), c.who.as_str(), c.replica.as_str())).collect();
    assert_eq!(
        seen,
        [
            (removed, "remove", "alice", "replica-a"),
            (updated, "update", "bob", "replica-b"),
            (added, "add", "alice", "replica-a")
        ]
    );
    let priority = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v["priority"].as_u64());
    assert_eq!((priority(&changes[1].before), priority(&changes[1].after)), (Some(1), Some(2)));
    assert_eq!((priority(&changes[0].before), changes[0].after.as_ref()), (Some(2), None));
    assert_eq!((changes[2].before.as_ref(), priority(&changes[2].after)), (None, Some(1)));
    assert!(changes.iter().all(|c| c.at_ms > 1_700_000_000_000));

    let all = a.history(None, 2).await.expect("reads");
    assert_eq!(all.iter().map(|c| c.revision).collect::<Vec<_>>(), [removed, updated]);
    assert_eq!(
        a.history(None, 10).await.expect("reads").last().map(|c| (c.action.as_str(), c.who.as_str())),
        Some(("config", "config"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_reported_and_can_be_replaced() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "catalog_unreadable");
    let shared = catalog(&url, &schema, "a").await;
    shared.edit("good", None, "ops", |_| Ok(Some(spec("good", 1)))).await.expect("adds");
    let bad = shared.edit("bad", None, "ops", |_| Ok(Some(spec("bad", 1)))).await.expect("adds").revision;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
        .execute(&format!("UPDATE {}.catalog_models SET spec = '{{\"id\": 7' WHERE id = 'bad'", schema.name), &[])
        .await
        .expect("corrupts a row");

    let state = shared.load().await.expect("a corrupt row does not stop the load");
    assert_eq!(models(&state), [("good".into(), 1, ModelSource::Api)]);
    assert_eq!(state.unreadable.len(), 1);
    assert_eq!(state.unreadable[0].0, "bad");
    assert!(state.unreadable[0].1.contains("does not parse"), "{}", state.unreadable[0].1);

    let fixed = shared
        .edit("bad", Some(bad), "ops", |current| {
            assert!(matches!(current, Some(Err(_))), "the edit sees the row does not read");
            Ok(Some(spec("bad", 2)))
        })
        .await
        .expect("a replacement heals the row")
        .revision;
    let state = shared.load().await.expect("loads");
    assert!(state.unreadable.is_empty());
    assert_eq!(revision_of(&state, "bad"), fixed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_another_replicas_edit() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url, "catalog_listen");
    let a = catalog(&url, &schema, "a").await;
    let b = catalog(&url, &schema, "b").await;
    let woken = Arc::new(tokio::sync::Notify::new());
    let listener = b.listen(Arc::clone(&woken));
    // The first wake says the listener is in place (it re-reads then).
    tokio::time::timeout(Duration::from_secs(30), woken.notified()).await.expect("the listener starts");
    a.edit("m", None, "ops", |_| Ok(Some(spec("m", 1)))).await.expect("adds");
    tokio::time::timeout(Duration::from_secs(30), woken.notified()).await.expect("b hears a's edit");
    listener.abort();
}
