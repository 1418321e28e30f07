//! The reconciler: applies the desired objects of a StockNet with server-side apply, probes
//! its order replicas, deletes the pods the health policy condemns, and writes status from
//! what it observed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stocknet_common::client::call;
use stocknet_common::wire::Health;

use crate::crd::{StockNet, StockNetStatus};
use crate::health::{self, Observation};
use crate::resources::{self, Component, Desired, SpecError};
use crate::{status, upgrade};

/// The field manager of everything this operator applies.
pub const MANAGER: &str = "stocknet-operator";

/// How the operator probes and when it gives up on a replica.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Seconds between health rounds of each StockNet.
    #[arg(long, env = "STOCKNET_PROBE_PERIOD", default_value_t = 5)]
    pub probe_period_seconds: u64,
    /// Failed health checks in a row after which a running order pod is deleted.
    #[arg(long, env = "STOCKNET_FAILURE_THRESHOLD", default_value_t = 3)]
    pub failure_threshold: u32,
    /// Timeout of one health check, in milliseconds.
    #[arg(long, env = "STOCKNET_PROBE_TIMEOUT_MS", default_value_t = 1000)]
    pub probe_timeout_ms: u64,
    /// Port of the order replicas' health endpoint in their pods.
    #[arg(long, env = "STOCKNET_PROBE_PORT", default_value_t = resources::ORDER_PORT as u16)]
    pub probe_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("cannot generate the shared secret: {0}")]
    Random(#[source] std::io::Error),
}

/// What `/metrics` serves (prometheus-client).
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Counter,
    pub failures: Counter,
    pub pods_deleted: Counter,
    pub reconcile_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stocknet_operator");
        let (reconciliations, failures, pods_deleted) =
            (Counter::default(), Counter::default(), Counter::default());
        let reconcile_seconds = stocknet_common::metrics::latency_histogram();
        registry.register(
            "reconciliations",
            "Reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed and were requeued with backoff",
            failures.clone(),
        );
        registry.register(
            "order_pods_deleted",
            "Order replica pods deleted by the health policy",
            pods_deleted.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took, failed ones included",
            reconcile_seconds.clone(),
        );
        Self {
            registry,
            reconciliations,
            failures,
            pods_deleted,
            reconcile_seconds,
        }
    }
}

/// Observes the time from its creation to its drop: a reconciliation's, whichever way it ends.
struct Timed<'a>(&'a Histogram, Instant);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.0.observe(self.1.elapsed().as_secs_f64());
    }
}

pub struct Context {
    pub client: Client,
    pub http: reqwest::Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Consecutive reconcile failures per StockNet, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            http: stocknet_common::http_client(Duration::from_millis(settings.probe_timeout_ms)),
            client,
            settings,
            metrics: Metrics::default(),
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn publish(&self, sn: &StockNet, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &sn.object_ref(&())).await {
            tracing::warn!("cannot record event {reason}: {e}");
        }
    }
}

fn key(sn: &StockNet) -> String {
    format!("{}/{}", sn.namespace().unwrap_or_default(), sn.name_any())
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(client: Client, context: Arc<Context>) {
    // Only objects this operator manages are watched (and cached).
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=stocknet-operator");
    Controller::new(
        Api::<StockNet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
    .owns(Api::<Deployment>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
    .owns(
        Api::<PodDisruptionBudget>::all(client.clone()),
        owned.clone(),
    )
    .owns(Api::<NetworkPolicy>::all(client), owned)
    .shutdown_on_signal()
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(%object, "reconciled"),
            Err(e) => tracing::warn!("reconcile failed: {e}"),
        }
    })
    .await;
}

pub async fn reconcile(sn: Arc<StockNet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let _timed = Timed(&ctx.metrics.reconcile_seconds, Instant::now());
    let namespace = sn.namespace().ok_or(SpecError::NoNamespace)?;
    let stocknets: Api<StockNet> = Api::namespaced(ctx.client.clone(), &namespace);
    let desired = match resources::desired(&sn) {
        Ok(desired) => desired,
        Err(e) => {
            // A spec the schema let through but that cannot run: say so, do not retry soon.
            ctx.publish(&sn, EventType::Warning, "InvalidSpec", e.to_string())
                .await;
            let status = status::invalid(&sn, &e.to_string(), now());
            write_status(&stocknets, &sn, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    ensure_secret(&ctx.client, &namespace, &sn).await?;
    let order = resources::name(&sn, Component::Order);
    let revision = apply_all(&ctx.client, &namespace, &desired, &order).await?;
    if !sn.spec.network_policy.enabled {
        remove_network_policies(&ctx.client, &namespace, &sn).await?;
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let observations = observe_order_replicas(&sn, &ctx, &pods).await?;
    let previous = sn
        .status
        .as_ref()
        .map(|s| s.replicas.as_slice())
        .unwrap_or_default();
    let assessment = health::assess(&observations, previous, ctx.settings.failure_threshold);
    for deletion in &assessment.deletions {
        match pods.delete(&deletion.pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        ctx.metrics.pods_deleted.inc();
        tracing::warn!(pod = deletion.pod, "{}", deletion.message);
        ctx.publish(
            &sn,
            EventType::Warning,
            deletion.reason,
            deletion.message.clone(),
        )
        .await;
    }
    // A rolling upgrade waits while the health policy replaces anything.
    let step = if assessment.deletions.is_empty() {
        upgrade::next_step(&observations, revision.as_deref(), assessment.leader)
    } else {
        upgrade::Step {
            replace: None,
            progress: sn.status.as_ref().and_then(|s| s.upgrade.clone()),
        }
    };
    if let (Some(replacement), Some(progress)) = (&step.replace, &step.progress) {
        match pods
            .delete(&replacement.pod, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let role = if replacement.leader {
            "the leader, last"
        } else {
            "a follower"
        };
        let message = format!(
            "replacing order replica {} ({role}) to run revision {}; {} of {} done",
            replacement.id, progress.revision, progress.updated, progress.total
        );
        tracing::info!(pod = replacement.pod, "{message}");
        ctx.publish(&sn, EventType::Normal, "UpgradingOrderReplica", message)
            .await;
    }
    let was_upgrading = sn.status.as_ref().and_then(|s| s.upgrade.as_ref());
    if let (Some(done), None) = (was_upgrading, &step.progress) {
        let message = format!("every order replica runs revision {}", done.revision);
        ctx.publish(&sn, EventType::Normal, "OrderUpgradeComplete", message)
            .await;
    }
    let mut status = status::observed(&sn, assessment, now());
    status.upgrade = step.progress;
    write_status(&stocknets, &sn, &status).await?;
    ctx.failures().remove(&key(&sn));
    Ok(Action::requeue(Duration::from_secs(
        ctx.settings.probe_period_seconds,
    )))
}

/// Requeues a failed StockNet after 5 s, doubling per consecutive failure up to 5 minutes.
pub fn error_policy(sn: Arc<StockNet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failures.inc();
    let mut failures = ctx.failures();
    let count = failures.entry(key(&sn)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    tracing::warn!(stocknet = key(&sn), ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

/// Creates the StockNet's shared secret once, with a fresh random value. An existing one is
/// kept as it is: its value is never read here, logged or put in status. (A random value
/// cannot be applied declaratively: every apply would change it.)
async fn ensure_secret(client: &Client, namespace: &str, sn: &StockNet) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = resources::secret_name(sn);
    if api.get_metadata_opt(&name).await?.is_some() {
        return Ok(());
    }
    let value = stocknet_common::Secret::generate().map_err(Error::Random)?;
    let secret = resources::shared_secret(sn, value.expose())?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = name, "created the shared secret");
            Ok(())
        }
        // Created meanwhile (another reconcile): keep that one.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies every object; returns the order StatefulSet's update revision as the API server
/// reports it (the revision its current template makes; `None` until its controller has
/// computed one).
async fn apply_all(
    client: &Client,
    namespace: &str,
    desired: &Desired,
    order: &str,
) -> Result<Option<String>, Error> {
    apply(client, namespace, &desired.config_map).await?;
    for service in &desired.services {
        apply(client, namespace, service).await?;
    }
    let mut order_revision = None;
    for stateful_set in &desired.stateful_sets {
        let applied = apply(client, namespace, stateful_set).await?;
        if applied.name_any() == order {
            order_revision = applied.status.and_then(|s| s.update_revision);
        }
    }
    apply(client, namespace, &desired.deployment).await?;
    apply(client, namespace, &desired.disruption_budget).await?;
    for policy in &desired.network_policies {
        apply(client, namespace, policy).await?;
    }
    Ok(order_revision)
}

/// With `spec.networkPolicy.enabled` false, removes the policies an earlier spec made.
async fn remove_network_policies(
    client: &Client,
    namespace: &str,
    sn: &StockNet,
) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    for name in resources::network_policy_names(sn) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(policy = name, "network policy removed"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Server-side applies `object`; returns the object as the API server now holds it.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let applied = api
        .patch(
            &object.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
    Ok(applied)
}

/// Each order replica's pod (by its StatefulSet name) and `/health` answer at the pod's IP.
async fn observe_order_replicas(
    sn: &StockNet,
    ctx: &Context,
    pods: &Api<Pod>,
) -> Result<Vec<Observation>, Error> {
    let listed = pods
        .list(&ListParams::default().labels(&resources::selector_string(sn, Component::Order)))
        .await?;
    let order = resources::name(sn, Component::Order);
    let replicas = u32::try_from(sn.spec.order.replicas).unwrap_or(0);
    let observations = (1..=replicas).map(|id| {
        let pod_name = format!("{order}-{}", id - 1);
        let pod = listed
            .items
            .iter()
            .find(|p| p.name_any() == pod_name)
            .cloned();
        let ip = pod
            .as_ref()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .and_then(|p| p.status.as_ref()?.pod_ip.clone());
        async move {
            let health = match ip {
                Some(ip) => probe(ctx, &ip).await,
                None => None,
            };
            Observation {
                id,
                pod_name,
                pod,
                health,
            }
        }
    });
    Ok(futures::future::join_all(observations).await)
}

async fn probe(ctx: &Context, ip: &str) -> Option<Health> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let url = format!("http://{host}:{}/health", ctx.settings.probe_port);
    match call::<Health>(ctx.http.get(url)).await {
        Ok(health) => Some(health),
        Err(e) => {
            tracing::info!(ip, "order replica health check failed: {e}");
            None
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn write_status(
    stocknets: &Api<StockNet>,
    sn: &StockNet,
    status: &StockNetStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": status });
    stocknets
        .patch_status(
            &sn.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}
