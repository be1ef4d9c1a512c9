//! Ejections shared by replicas (`[cluster] redis_url`): the tracker's
//! local ejections are published through `modelfleet-cluster`'s
//! [`SharedEjections`], and the other replicas' are taken by the tracker as
//! remote ejections, so a failing model is not retried by every replica in
//! turn. The glue only: the cluster crate knows nothing of the tracker,
//! and the tracker nothing of Redis.
//!
//! - The tracker's observer hands each local ejection to a bounded channel
//!   with `try_send` (never blocking a request; a full channel drops it,
//!   since the model will be ejected again if it keeps failing), and one
//!   task publishes them with what is left of each.
//! - The watch applies another replica's ejection only to a model in this
//!   replica's catalog (a name from Redis never grows the tracker), on the
//!   fleet's clock: `until = now + remaining`.
//! - Redis down: the cluster crate logs it once, and each replica ejects
//!   on its own evidence until it returns. Serving never waits for Redis.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use modelfleet_cluster::{ClusterError, EjectionNotice, EjectionWatch, EjectionsConfig, SharedEjections};
use modelfleet_config_validate::ClusterSettings;
use modelfleet_errors::{Timer, TokioTimer};
use modelfleet_fallback::{
    Availability, EjectionObserver, EjectionReason, LocalEjection, ModelHealth, Tracker, TrackerConfig,
};
use modelfleet_registry::Catalog;
use tokio::sync::mpsc;

/// Local ejections waiting to be published, at most.
const PENDING: usize = 256;

/// A local ejection to publish: the model, why, and its end on the fleet's clock.
type Ejected = (String, EjectionReason, Duration);

/// The sharing at work: the publisher and the watch, stopped when dropped
/// (with the fleet).
pub(crate) struct EjectionSharing {
    publisher: tokio::task::JoinHandle<()>,
    _watch: EjectionWatch,
    shared: SharedEjections,
}

impl EjectionSharing {
    /// Whether the last call to Redis got through.
    pub(crate) fn reachable(&self) -> bool {
        self.shared.reachable()
    }
}

impl Drop for EjectionSharing {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

/// The fleet's tracker: with `[cluster] redis_url`, one whose local
/// ejections are published and which takes the other replicas' (the
/// sharing runs until it is dropped); else a plain one. Fails only on a
/// setting that cannot work: an unreachable Redis is logged and retried.
pub(crate) async fn start(
    config: TrackerConfig,
    cluster: Option<&ClusterSettings>,
    catalog: &Arc<Catalog>,
    timer: TokioTimer,
) -> Result<(Tracker, Option<EjectionSharing>), ClusterError> {
    let Some((settings, url)) = cluster.and_then(|s| s.redis_url.as_deref().map(|url| (s, url))) else {
        return Ok((Tracker::new(config), None));
    };
    // A token per fleet, so two fleets of one name (one process, a copied
    // configuration) still hear each other: a replica ignores only itself.
    let replica = format!("{}/{:08x}", crate::shared::replica_name(settings), fastrand::u32(..));
    let shared = SharedEjections::connect(&EjectionsConfig {
        url,
        prefix: &settings.redis_prefix,
        replica: &replica,
        timeout: Duration::from_millis(settings.timeout_ms),
    })
    .await?;
    let (sender, pending) = mpsc::channel::<Ejected>(PENDING);
    let dropped = AtomicU64::new(0);
    let observer: EjectionObserver = Arc::new(move |ejection: LocalEjection<'_>| {
        let ejected = (ejection.model.to_owned(), ejection.reason, ejection.until);
        if sender.try_send(ejected).is_err() && dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
            tracing::warn!("too many ejections to publish at once: some are not shared");
        }
    });
    let tracker = Tracker::with_observer(config, observer);
    let publisher = tokio::spawn(publish(shared.clone(), pending, timer));
    let sharing = shared.clone();
    let (taking, catalog) = (tracker.clone(), Arc::clone(catalog));
    let watch = shared.watch(move |notice| take(&taking, &catalog, timer, &notice));
    tracing::info!(prefix = %settings.redis_prefix, %replica, "ejections are shared with the other replicas through Redis");
    Ok((tracker, Some(EjectionSharing { publisher, _watch: watch, shared: sharing })))
}

/// Publishes each local ejection with what is left of it now.
async fn publish(shared: SharedEjections, mut pending: mpsc::Receiver<Ejected>, timer: TokioTimer) {
    while let Some((model, reason, until)) = pending.recv().await {
        let remaining = until.saturating_sub(timer.now());
        // Redis going away is logged by the cluster crate.
        if let Err(err @ ClusterError::Invalid(_)) = shared.publish(&model, remaining, reason.as_str()).await {
            tracing::debug!(%model, %err, "an ejection that cannot be shared");
        }
    }
}

/// Takes another replica's ejection of a model this replica serves.
fn take(tracker: &Tracker, catalog: &Catalog, timer: TokioTimer, notice: &EjectionNotice) {
    if catalog.get(&notice.model).is_none() {
        return;
    }
    let Some(reason) = EjectionReason::from_name(&notice.reason) else {
        tracing::debug!(model = %notice.model, reason = %notice.reason, "an ejection of an unknown reason ignored");
        return;
    };
    let now = timer.now();
    if tracker.eject_remote(&notice.model, reason, now.saturating_add(notice.remaining), now) {
        tracing::info!(
            model = %notice.model,
            replica = %notice.replica,
            reason = reason.as_str(),
            remaining_ms = u64::try_from(notice.remaining.as_millis()).unwrap_or(u64::MAX),
            "out of rotation: ejected by another replica"
        );
    }
}

/// Why a model is out of rotation now, saying when it is another
/// replica's ejection that keeps it out.
pub(crate) fn describe(availability: Availability, health: &ModelHealth, now: Duration) -> String {
    let why = modelfleet_fallback::describe(availability, now);
    let until = match availability {
        Availability::CoolingDown { until, .. } | Availability::CircuitOpen { until } => Some(until),
        _ => None,
    };
    match health.remote {
        Some(remote) if until == Some(remote.until) => format!("{why}, ejected by another replica"),
        _ => why,
    }
}

#[cfg(test)]
mod tests {
    use modelfleet_registry::default_catalog;

    use super::*;

    fn notice(model: &str, reason: &str) -> EjectionNotice {
        EjectionNotice {
            model: model.to_owned(),
            remaining: Duration::from_secs(30),
            replica: "gw-2/0000beef".to_owned(),
            reason: reason.to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_models_of_the_catalog_and_known_reasons_are_taken() -> Result<(), Box<dyn std::error::Error>> {
        let models = default_catalog()?;
        let served = models[0].id.clone();
        let catalog = Catalog::from_models(models)?;
        let tracker = Tracker::new(TrackerConfig::default());
        let timer = TokioTimer::new();
        // A name from Redis never grows the tracker; a reason it does not know is no reason.
        take(&tracker, &catalog, timer, &notice("not-served-here", "server_error"));
        take(&tracker, &catalog, timer, &notice(&served, "no_such_reason"));
        assert!(tracker.all(timer.now()).is_empty());
        take(&tracker, &catalog, timer, &notice(&served, "circuit_open"));
        let now = timer.now();
        let availability = tracker.availability(&served, now);
        assert_eq!(availability, Availability::CircuitOpen { until: now + Duration::from_secs(30) });
        let why = describe(availability, &tracker.health(&served, now), now);
        assert_eq!(why, "circuit open for 30000 ms more, ejected by another replica");
        Ok(())
    }
}
