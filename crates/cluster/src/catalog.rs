//! The catalog every replica serves, in PostgreSQL: one row per model
//! (its spec as JSON, its revision, where it comes from) and a history of
//! every change (who, when, from which replica, before and after).
//!
//! **Revisions.** Every write appends a row to `catalog_changes`; its
//! sequence number is the revision of the model it wrote. Writes take one
//! advisory lock, so revisions are committed in order: a replica that has
//! applied revision N has seen every change up to N, and the latest
//! revision alone says whether its copy is current (see
//! [`SharedCatalog::latest`]). A model's revision never repeats, not even
//! for a model removed and added again, so an `If-Match` with an old one
//! can never match by accident.
//!
//! **Sources.** Models from a replica's configuration are written at its
//! start ([`SharedCatalog::publish_config`]) with `source = 'config'` and
//! win for their ids; [`SharedCatalog::edit`] refuses to change them.
//! Models added through the admin API (`source = 'api'`) live here only.
//!
//! **Notifications.** Each write ends with `pg_notify` on
//! [`CATALOG_CHANNEL`], delivered at commit; [`SharedCatalog::listen`]
//! hears them on a connection of its own, so replicas re-read at once.
//! They re-read every second anyway: a notification missed while the
//! listener reconnects costs at most that.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use modelfleet_registry::ModelSpec;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{ClusterError, SharedLedger, ledger::unavailable};

/// The channel every write notifies, its payload `schema:revision`
/// (one channel for every schema: a channel's name is limited to 63
/// bytes, a schema's name too).
pub const CATALOG_CHANNEL: &str = "modelfleet_catalog";

/// The advisory lock every catalog write takes, so that revisions commit
/// in order: one per schema (`hashtext` of this, with the schema's name),
/// so clusters sharing a database do not wait on each other.
const CATALOG_LOCK: &str = "modelfleet_catalog:";

/// Where a model of the shared catalog comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// A replica's configuration: re-applied at each start, read-only
    /// through the admin API.
    Config,
    /// The admin API: lives in the shared catalog only.
    Api,
}

impl ModelSource {
    /// As stored and shown: `config` or `api`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Config => "config",
            ModelSource::Api => "api",
        }
    }

    fn parse(text: &str) -> ModelSource {
        if text == "config" { ModelSource::Config } else { ModelSource::Api }
    }
}

/// A model as the shared catalog has it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedModel {
    /// Its spec.
    pub spec: ModelSpec,
    /// The revision of its last change.
    pub revision: u64,
    /// Where it comes from.
    pub source: ModelSource,
}

/// The whole shared catalog at one revision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CatalogState {
    /// The latest revision (0: nothing was ever written).
    pub revision: u64,
    /// Every model whose row reads as a spec, by id.
    pub models: Vec<SharedModel>,
    /// Rows that do not (a hand edit, a newer version's field): their ids
    /// and why, left out of `models`.
    pub unreadable: Vec<(String, String)>,
}

/// One change of the shared catalog's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CatalogChange {
    /// Its revision.
    pub revision: u64,
    /// The model it changed.
    pub model: String,
    /// `add`, `update`, `remove`, `config` (a start wrote a config model),
    /// `release` (a start without configured models handed one to the
    /// admin API) or `seed` (the first replica's catalog).
    pub action: String,
    /// Who: an admin key's name, `local`, or `config`.
    pub who: String,
    /// The replica that wrote it.
    pub replica: String,
    /// When, Unix ms (the database's clock).
    pub at_ms: u64,
    /// The spec before (`null` for an addition).
    pub before: Option<serde_json::Value>,
    /// The spec after (`null` for a removal).
    pub after: Option<serde_json::Value>,
}

/// Why an edit of the shared catalog was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditRefused {
    /// No such model.
    #[error("no model {0:?} in the catalog")]
    NotFound(String),
    /// The model exists already.
    #[error("model {0:?} exists: update it instead")]
    Exists(String),
    /// The model comes from the configuration, which wins at every start.
    #[error("model {0:?} comes from the configuration (source: config): change it there and restart the replicas")]
    FromConfig(String),
    /// The model is at another revision than the edit expected.
    #[error(
        "model {id:?} is at revision {current}, not {expected}: read it again, re-apply the change and send If-Match: \"{current}\""
    )]
    Conflict {
        /// The model.
        id: String,
        /// The revision the edit expected.
        expected: u64,
        /// The revision it is at.
        current: u64,
    },
    /// The edit itself is invalid (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] ClusterError),
}

/// What an edit finds: the model's spec, or why its row does not read.
pub type Current = Option<Result<ModelSpec, String>>;

/// An edit made: its revision, and the model as written (`None`: removed).
#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    /// The revision the edit gave.
    pub revision: u64,
    /// The model as the shared catalog now has it.
    pub model: Option<SharedModel>,
}

/// The shared catalog, on the shared ledger's connections.
#[derive(Debug, Clone)]
pub struct SharedCatalog {
    ledger: SharedLedger,
}

impl SharedLedger {
    /// The shared catalog in this ledger's schema.
    #[must_use]
    pub fn catalog(&self) -> SharedCatalog {
        SharedCatalog { ledger: self.clone() }
    }
}

fn revision(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn spec_json(spec: &ModelSpec) -> Result<String, ClusterError> {
    serde_json::to_string(spec).map_err(|e| ClusterError::Invalid(format!("model {:?}: {e}", spec.id)))
}

fn read_spec(id: &str, json: &str) -> Result<ModelSpec, String> {
    let spec: ModelSpec = serde_json::from_str(json).map_err(|e| format!("its spec does not parse: {e}"))?;
    if spec.id == id { Ok(spec) } else { Err(format!("its spec names another id, {:?}", spec.id)) }
}

/// One write inside a catalog transaction: the change row (its sequence
/// number is the new revision), then the model's row.
struct Write<'a> {
    id: &'a str,
    action: &'a str,
    who: &'a str,
    before: Option<&'a str>,
    after: Option<(&'a str, ModelSource)>,
}

impl SharedCatalog {
    /// Writes this replica's configured models (`Some`, possibly empty):
    /// each is added, or replaces the row of its id (an API model's too),
    /// unless the row holds it already; rows from an earlier configuration
    /// that this one no longer has are removed. `None` (a configuration
    /// without models) hands the configured models to the admin API
    /// (`source: api`, action `release`), and a shared catalog never
    /// written gets `seed` (this replica's catalog) as API models (one that
    /// its admins emptied stays empty). One transaction,
    /// under the writers' lock. Gives the number of changes written.
    pub async fn publish_config(&self, config: Option<&[ModelSpec]>, seed: &[ModelSpec]) -> Result<u64, ClusterError> {
        let s = &self.ledger.schema;
        self.ledger
            .within(async {
                let mut client = self.ledger.client().await?;
                let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
                self.lock(&tx).await?;
                let rows = tx
                    .query(&format!("SELECT id, spec, source FROM {s}.catalog_models"), &[])
                    .await
                    .map_err(|e| unavailable(&e))?;
                let stored: Vec<(String, String, ModelSource)> = rows
                    .iter()
                    .map(|row| (row.get(0), row.get(1), ModelSource::parse(row.get::<_, &str>(2))))
                    .collect();
                // Seeded once: a catalog emptied by its admins stays empty.
                let changed = tx
                    .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {s}.catalog_changes)"), &[])
                    .await
                    .map_err(|e| unavailable(&e))?
                    .get::<_, bool>(0);
                let now = now_ms();
                let mut written = 0;
                let (wanted, action, who, source) = match config {
                    Some(models) => (models, "config", "config", ModelSource::Config),
                    None if !changed => (seed, "seed", "seed", ModelSource::Api),
                    None => (&[][..], "", "", ModelSource::Api),
                };
                for spec in wanted {
                    let old = stored.iter().find(|(id, _, _)| *id == spec.id);
                    let old_spec = old.and_then(|(id, json, _)| read_spec(id, json).ok());
                    let unchanged = old
                        .zip(old_spec.as_ref())
                        .is_some_and(|((_, _, was), old_spec)| *was == source && old_spec.same_but_timestamps(spec));
                    if unchanged {
                        continue;
                    }
                    let mut spec = spec.clone();
                    spec.created_at_ms = old_spec.as_ref().map_or(now, |s| s.created_at_ms);
                    spec.updated_at_ms = now;
                    let after = spec_json(&spec)?;
                    let before = old.map(|(_, json, _)| json.as_str());
                    let write = Write { id: &spec.id, action, who, before, after: Some((&after, source)) };
                    self.write(&tx, &write).await?;
                    written += 1;
                }
                for (id, json, was) in &stored {
                    if *was != ModelSource::Config {
                        continue;
                    }
                    let write = match config {
                        // Dropped from the configuration: removed.
                        Some(models) if !models.iter().any(|m| m.id == *id) => {
                            Write { id, action: "remove", who: "config", before: Some(json), after: None }
                        }
                        Some(_) => continue,
                        // No configuration of models any more: the admin
                        // API's to change from now on.
                        None => Write {
                            id,
                            action: "release",
                            who: "config",
                            before: Some(json),
                            after: Some((json, ModelSource::Api)),
                        },
                    };
                    self.write(&tx, &write).await?;
                    written += 1;
                }
                tx.commit().await.map_err(|e| unavailable(&e))?;
                Ok(written)
            })
            .await
    }

    /// Takes this schema's writers' lock, until the transaction ends.
    async fn lock(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), ClusterError> {
        let key = format!("{CATALOG_LOCK}{}", self.ledger.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key]).await.map_err(|e| unavailable(&e))?;
        Ok(())
    }

    /// Appends `write`'s change, applies it to the model's row, and
    /// notifies (at commit); gives the new revision.
    async fn write(&self, tx: &deadpool_postgres::Transaction<'_>, write: &Write<'_>) -> Result<u64, ClusterError> {
        let s = &self.ledger.schema;
        let after = write.after.map(|(json, _)| json);
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO {s}.catalog_changes (model, action, who, replica, before, after)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq"
                ),
                &[&write.id, &write.action, &write.who, &self.ledger.replica, &write.before, &after],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let seq: i64 = row.get(0);
        match write.after {
            Some((json, source)) => {
                tx.execute(
                    &format!(
                        "INSERT INTO {s}.catalog_models (id, spec, revision, source) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (id) DO UPDATE SET spec = $2, revision = $3, source = $4"
                    ),
                    &[&write.id, &json, &seq, &source.as_str()],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            }
            None => {
                tx.execute(&format!("DELETE FROM {s}.catalog_models WHERE id = $1"), &[&write.id])
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
        }
        let payload = format!("{s}:{seq}");
        tx.execute("SELECT pg_notify($1, $2)", &[&CATALOG_CHANNEL, &payload]).await.map_err(|e| unavailable(&e))?;
        Ok(revision(seq))
    }

    /// Edits model `id` through the admin API: `change` gets what the row
    /// holds now (`None`: no such model) and gives the new spec (`None`:
    /// remove it). Refused, changing nothing, when the model comes from the
    /// configuration, when `expected` is given and the model is at another
    /// revision (or does not exist), or when `change` refuses. One
    /// transaction under the writers' lock; gives the new revision and the
    /// model as written.
    pub async fn edit(
        &self,
        id: &str,
        expected: Option<u64>,
        who: &str,
        change: impl FnOnce(Current) -> Result<Option<ModelSpec>, EditRefused>,
    ) -> Result<Edited, EditRefused> {
        let s = &self.ledger.schema;
        let outcome = self
            .ledger
            .within(async {
                let mut client = self.ledger.client().await?;
                let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
                self.lock(&tx).await?;
                let row = tx
                    .query_opt(&format!("SELECT spec, revision, source FROM {s}.catalog_models WHERE id = $1"), &[&id])
                    .await
                    .map_err(|e| unavailable(&e))?;
                let found: Option<(String, u64, ModelSource)> =
                    row.map(|row| (row.get(0), revision(row.get(1)), ModelSource::parse(row.get::<_, &str>(2))));
                let refused = match (&found, expected) {
                    (Some((_, _, ModelSource::Config)), _) => Some(EditRefused::FromConfig(id.to_owned())),
                    (Some((_, current, _)), Some(expected)) if *current != expected => {
                        Some(EditRefused::Conflict { id: id.to_owned(), expected, current: *current })
                    }
                    (None, Some(expected)) => Some(EditRefused::Conflict { id: id.to_owned(), expected, current: 0 }),
                    _ => None,
                };
                if let Some(refused) = refused {
                    return Ok(Err(refused));
                }
                let current = found.as_ref().map(|(json, _, _)| read_spec(id, json));
                let new = match change(current) {
                    Ok(new) => new,
                    Err(refused) => return Ok(Err(refused)),
                };
                let after = new.as_ref().map(spec_json).transpose()?;
                let action = match (&found, &new) {
                    (None, None) => return Ok(Err(EditRefused::NotFound(id.to_owned()))),
                    (None, Some(_)) => "add",
                    (Some(_), Some(_)) => "update",
                    (Some(_), None) => "remove",
                };
                let write = Write {
                    id,
                    action,
                    who,
                    before: found.as_ref().map(|(json, _, _)| json.as_str()),
                    after: after.as_deref().map(|json| (json, ModelSource::Api)),
                };
                let revision = self.write(&tx, &write).await?;
                tx.commit().await.map_err(|e| unavailable(&e))?;
                let model = new.map(|spec| SharedModel { spec, revision, source: ModelSource::Api });
                Ok(Ok(Edited { revision, model }))
            })
            .await;
        outcome?
    }

    /// The latest revision (0: no change yet): one index lookup, what a
    /// replica asks every second to know whether its copy is current.
    pub async fn latest(&self) -> Result<u64, ClusterError> {
        let s = &self.ledger.schema;
        let row = self.ledger.row(&format!("SELECT coalesce(max(seq), 0) FROM {s}.catalog_changes"), &[]).await?;
        Ok(row.map_or(0, |row| revision(row.get(0))))
    }

    /// Every model and the latest revision, read at one instant (one
    /// repeatable-read transaction).
    pub async fn load(&self) -> Result<CatalogState, ClusterError> {
        let s = &self.ledger.schema;
        self.ledger
            .within(async {
                let mut client = self.ledger.client().await?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(|e| unavailable(&e))?;
                let latest = tx
                    .query_one(&format!("SELECT coalesce(max(seq), 0) FROM {s}.catalog_changes"), &[])
                    .await
                    .map_err(|e| unavailable(&e))?;
                let rows = tx
                    .query(&format!("SELECT id, spec, revision, source FROM {s}.catalog_models ORDER BY id"), &[])
                    .await
                    .map_err(|e| unavailable(&e))?;
                tx.commit().await.map_err(|e| unavailable(&e))?;
                let mut state = CatalogState { revision: revision(latest.get(0)), ..CatalogState::default() };
                for row in rows {
                    let id: String = row.get(0);
                    match read_spec(&id, row.get(1)) {
                        Ok(spec) => state.models.push(SharedModel {
                            spec,
                            revision: revision(row.get(2)),
                            source: ModelSource::parse(row.get::<_, &str>(3)),
                        }),
                        Err(why) => state.unreadable.push((id, why)),
                    }
                }
                Ok(state)
            })
            .await
    }

    /// The latest `limit` changes, newest first: of model `model`, or of
    /// every model.
    pub async fn history(&self, model: Option<&str>, limit: u32) -> Result<Vec<CatalogChange>, ClusterError> {
        let s = &self.ledger.schema;
        let limit = i64::from(limit);
        let rows = self
            .ledger
            .rows(
                &format!(
                    "SELECT seq, model, action, who, replica,
                            (extract(epoch FROM at) * 1000)::bigint, before, after
                     FROM {s}.catalog_changes WHERE $1::text IS NULL OR model = $1
                     ORDER BY seq DESC LIMIT $2"
                ),
                &[&model, &limit],
            )
            .await?;
        let json = |text: Option<&str>| {
            text.map(|text| serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned())))
        };
        Ok(rows
            .iter()
            .map(|row| CatalogChange {
                revision: revision(row.get(0)),
                model: row.get(1),
                action: row.get(2),
                who: row.get(3),
                replica: row.get(4),
                at_ms: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
                before: json(row.get(6)),
                after: json(row.get(7)),
            })
            .collect())
    }

    /// Listens for this schema's catalog notifications on a connection of
    /// its own, and wakes `woken` at each (and at each reconnection, since
    /// notifications may have been missed meanwhile). A lost connection is
    /// opened again a second later; the task runs until aborted.
    #[must_use]
    pub fn listen(&self, woken: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<()> {
        let config = Arc::clone(&self.ledger.config);
        let prefix = format!("{}:", self.ledger.schema);
        let timeout = self.ledger.timeout;
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match listen_once(&config, &prefix, timeout, &woken).await {
                    Ok(()) => failing = false,
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(%err, "the catalog's listener lost its connection; re-reading every second meanwhile");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

/// One listening connection, until it ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    prefix: &str,
    timeout: Duration,
    woken: &Arc<tokio::sync::Notify>,
) -> Result<(), ClusterError> {
    let connecting = tokio::time::timeout(timeout, config.connect(NoTls)).await;
    let (client, mut connection) = connecting
        .map_err(|_| ClusterError::Unavailable(format!("no connection within {} ms", timeout.as_millis())))?
        .map_err(|e| unavailable(&e))?;
    let prefix = prefix.to_owned();
    let heard = Arc::clone(woken);
    // The connection is driven here: its messages are the notifications.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) if note.payload().starts_with(&prefix) => heard.notify_one(),
                Ok(_) => {}
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Ok(())
    });
    let listening = tokio::time::timeout(timeout, client.batch_execute(&format!("LISTEN {CATALOG_CHANNEL}"))).await;
    if let Err(err) = listening
        .map_err(|_| ClusterError::Unavailable("LISTEN had no answer".into()))
        .and_then(|r| r.map_err(|e| unavailable(&e)))
    {
        driver.abort();
        return Err(err);
    }
    // Whatever changed before LISTEN took effect is read now.
    woken.notify_one();
    let ended = driver.await.unwrap_or(Ok(()));
    drop(client);
    ended
}

fn now_ms() -> u64 {
    use modelfleet_registry::Clock;
    modelfleet_registry::SystemClock.now_ms()
}
