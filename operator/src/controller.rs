//! The reconciler: probes a StockNet's order replicas and asks their leader for the group's
//! membership, applies the desired objects with server-side apply, deletes the pods the health
//! policy condemns, takes the next step of an upgrade or a membership change, and writes
//! status from what it observed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{Eviction, PodDisruptionBudget};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, ObjectMeta, Preconditions as DeletePreconditions, Time,
};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reqwest::header::AUTHORIZATION;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::wire::{Health, Members, NewLearner, Voters};

use crate::crd::{StockNet, StockNetStatus};
use crate::health::{self, Observation};
use crate::membership::{self, Change};
use crate::resources::{self, Component, Desired, FoundSecret, OrderLayout, SpecError};
use crate::{status, upgrade};
use stocknet_common::env;

/// The field manager of everything this operator applies.
pub const MANAGER: &str = "stocknet-operator";

/// How the operator probes and when it gives up on a replica.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Seconds between health rounds of each StockNet.
    #[arg(long, env = env::PROBE_PERIOD, default_value_t = 5)]
    pub probe_period_seconds: u64,
    /// Failed health checks in a row after which a running order pod is deleted.
    #[arg(long, env = env::FAILURE_THRESHOLD, default_value_t = 3)]
    pub failure_threshold: u32,
    /// Timeout of one health check, in milliseconds.
    #[arg(long, env = env::PROBE_TIMEOUT_MS, default_value_t = 1000)]
    pub probe_timeout_ms: u64,
    /// Port of the order replicas' health endpoint in their pods.
    #[arg(long, env = env::PROBE_PORT, default_value_t = resources::ORDER_PORT as u16)]
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
    #[error("the shared secret {0} is unusable: {1}")]
    SecretUnusable(String, String),
    #[error("the shared secret {0} is being deleted: waiting until it is gone to make a new one")]
    SecretDeleting(String),
    #[error("reconcile took longer than {0:?} (an API server or replica that does not answer)")]
    Deadline(Duration),
    /// The API server refused an object (an admission webhook, a quota): the health rounds go
    /// on at their period meanwhile.
    #[error("applying {kind} {name} failed: {source}")]
    NotApplied {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// How long one reconcile may take. kube's client has no read deadline by default (a watch
/// waits minutes by design), and the controller runs one reconcile per StockNet at a time: an
/// API server that accepts a call and never answers would stop that StockNet's repairs for
/// good. Its calls to replicas have deadlines of their own, the longest 15 s.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(60);

/// What `/metrics` serves (prometheus-client).
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Counter,
    pub failures: Counter,
    pub pods_deleted: Counter,
    pub reconcile_seconds: Histogram,
    /// Per StockNet (`object_namespace`, `stocknet`): when its last scheduled report succeeded, or
    /// when it was made while none has.
    pub report_success: Family<Vec<(String, String)>, Gauge>,
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
        let report_success = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "report_last_success_timestamp_seconds",
            "When the StockNet's last scheduled report succeeded (or, while none has, when the \
             StockNet was made), seconds since the epoch",
            report_success.clone(),
        );
        Self {
            registry,
            reconciliations,
            failures,
            pods_deleted,
            reconcile_seconds,
            report_success,
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
    /// When each StockNet's status was last written by this process.
    status_written: Mutex<HashMap<String, Instant>>,
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
            status_written: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status_written(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.status_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
    .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
    .owns(Api::<CronJob>::all(client.clone()), owned.clone())
    .owns(Api::<PersistentVolumeClaim>::all(client), owned)
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

/// Brings one StockNet's objects to what its spec asks and writes its status, within
/// [`RECONCILE_DEADLINE`].
pub async fn reconcile(sn: Arc<StockNet>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_within(RECONCILE_DEADLINE, sn, ctx).await
}

/// [`reconcile`] with a deadline of `deadline`: past it, the reconcile is dropped (what it
/// applied stays; the next one goes on from there) and counts as failed.
pub async fn reconcile_within(
    deadline: Duration,
    sn: Arc<StockNet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    tokio::time::timeout(deadline, reconcile_once(sn, ctx))
        .await
        .map_err(|_| Error::Deadline(deadline))?
}

async fn reconcile_once(sn: Arc<StockNet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let _timed = Timed(&ctx.metrics.reconcile_seconds, Instant::now());
    let namespace = sn.namespace().ok_or(SpecError::NoNamespace)?;
    let stocknets: Api<StockNet> = Api::namespaced(ctx.client.clone(), &namespace);
    // The spec is checked by the same function that renders it, before anything is touched.
    if let Err(e) = resources::desired(&sn) {
        {
            // A spec the schema let through but that cannot run: say so, do not retry soon.
            ctx.publish(&sn, EventType::Warning, "InvalidSpec", e.to_string())
                .await;
            let status = status::invalid(&sn, &e.to_string(), now());
            write_status(&stocknets, &sn, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    }
    let secret = shared_secret(&ctx.client, &namespace, &sn).await?;
    let order = resources::name(&sn, Component::Order);
    let existing = Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&order)
        .await?;
    // The founders of a group that exists stay what its pods were given.
    let founders = existing
        .as_ref()
        .and_then(resources::founders)
        .unwrap_or(sn.spec.order.replicas);
    let pods_now = existing
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.replicas)
        .unwrap_or(0);
    let target = u32::try_from(sn.spec.order.replicas).unwrap_or(0);

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let watched = target.max(u32::try_from(pods_now).unwrap_or(0));
    let observations = observe_order_replicas(&sn, &ctx, &pods, watched).await?;
    let previous = sn
        .status
        .as_ref()
        .map(|s| s.replicas.as_slice())
        .unwrap_or_default();
    let policy = health::Policy {
        failure_threshold: ctx.settings.failure_threshold,
        probe_period: Duration::from_secs(ctx.settings.probe_period_seconds),
    };
    let (_, leader) = health::leader_of(&observations);
    let members = match leader_ip(&observations, leader) {
        Some(ip) => group_members(&ctx, &ip, &secret).await,
        None => None,
    };
    let voters = members.as_ref().map(Members::voters);
    let mut assessment = health::assess(
        &observations,
        previous,
        policy,
        k8s_openapi::jiff::Timestamp::now(),
        voters.as_ref(),
    );
    if let Some(members) = &members {
        assessment.behind_the_leader(&members.behind);
    }
    let plan = membership::plan(target, members.as_ref(), &observations, pods_now);
    let layout = OrderLayout {
        founders,
        pods: plan.pods,
    };
    let desired = resources::desired_for(&sn, layout)?;
    let revision = match apply_all(&ctx.client, &namespace, &desired, &order).await {
        Ok(revision) => revision,
        Err(e) => {
            // A refused object (an admission webhook, a quota) must not stop the health
            // policy: a crashed replica is restarted from the template its StatefulSet has.
            delete_condemned(&ctx, &sn, &pods, &mut assessment).await?;
            let message = e.to_string();
            ctx.publish(&sn, EventType::Warning, "ApplyFailed", message.clone())
                .await;
            let status = status::not_applied(&sn, assessment, &message, now());
            write_status_if_worth(&ctx, &stocknets, &sn, &status).await?;
            return Err(e);
        }
    };
    if !sn.spec.network_policy.enabled {
        remove_network_policies(&ctx.client, &namespace, &sn).await?;
    }
    let reports = observe_reports(&ctx, &sn, &namespace, desired.reports.as_ref()).await?;
    delete_condemned(&ctx, &sn, &pods, &mut assessment).await?;
    // A rolling upgrade waits while the health policy replaces anything; it concerns the
    // pods that exist (a new one starts at the current revision).
    let existing_pods: Vec<Observation> = observations
        .iter()
        .filter(|seen| i64::from(seen.id) <= i64::from(pods_now.min(plan.pods)))
        .cloned()
        .collect();
    let mut step = if assessment.deletions.is_empty() {
        upgrade::next_step(
            &existing_pods,
            revision.as_deref(),
            assessment.leader,
            members.as_ref().map(|m| &m.behind),
            sn.status.as_ref().and_then(|s| s.upgrade.as_ref()),
        )
    } else {
        upgrade::Step {
            replace: None,
            progress: sn.status.as_ref().and_then(|s| s.upgrade.clone()),
        }
    };
    let mut eviction_refused = None;
    if let (Some(replacement), Some(progress)) = (&step.replace, &step.progress) {
        // Evicted, not deleted: the order replicas' disruption budget has its say, so that a
        // node drain that took another replica since this round's look leaves a majority up.
        // (An Eviction of policy/v1 of its own: kube's `evict` spells `deleteOptions` in a way
        // the API server does not read, which would drop the uid precondition.)
        let eviction = Eviction {
            metadata: ObjectMeta {
                name: Some(replacement.pod.name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            delete_options: Some(DeleteOptions {
                preconditions: replacement.pod.uid.clone().map(|uid| DeletePreconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteOptions::default()
            }),
        };
        let evicted = pods
            .create_subresource::<_, serde_json::Value>(
                "eviction",
                &replacement.pod.name,
                &PostParams::default(),
                &eviction,
            )
            .await;
        match evicted {
            Ok(_) => {
                let role = if replacement.leader {
                    "the leader, last"
                } else {
                    "a follower"
                };
                let message = format!(
                    "replacing order replica {} ({role}) to run revision {}; {} of {} done",
                    replacement.id, progress.revision, progress.updated, progress.total
                );
                tracing::info!(pod = replacement.pod.name, "{message}");
                ctx.publish(&sn, EventType::Normal, "UpgradingOrderReplica", message)
                    .await;
            }
            // Gone, or replaced since it was observed.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            // Refused: by the disruption budget (429: another replica is down), or by the API
            // server for another reason (two budgets select the pod, say). Said in the status,
            // tried again the next round.
            Err(kube::Error::Api(status)) => {
                let why = format!(
                    "order replica {}'s eviction, refused: {}",
                    replacement.id, status.message
                );
                tracing::info!(pod = replacement.pod.name, "{why}");
                if status.code != 429 {
                    ctx.publish(&sn, EventType::Warning, "EvictionRefused", why.clone())
                        .await;
                }
                eviction_refused = Some(why);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(why), Some(progress)) = (eviction_refused, step.progress.as_mut()) {
        progress.waiting_for = Some(why);
    }
    let was_upgrading = sn.status.as_ref().and_then(|s| s.upgrade.as_ref());
    if let (Some(done), None) = (was_upgrading, &step.progress) {
        let message = format!("every order replica runs revision {}", done.revision);
        ctx.publish(&sn, EventType::Normal, "OrderUpgradeComplete", message)
            .await;
    }
    // One change at a time: a membership step waits for replacements to be done.
    let quiet = assessment.deletions.is_empty() && step.replace.is_none();
    if let (true, Some(change), Some(ip)) = (
        quiet,
        &plan.change,
        leader_ip(&observations, assessment.leader),
    ) {
        change_members(&ctx, &sn, &ip, &secret, change).await;
    }
    let was_changing = sn
        .status
        .as_ref()
        .and_then(|s| s.membership.as_ref())
        .is_some_and(|m| m.waiting_for.is_some());
    if was_changing && plan.status.waiting_for.is_none() && members.is_some() {
        let message = format!("order replicas {} vote", list(&plan.status.voters));
        ctx.publish(&sn, EventType::Normal, "OrderMembershipComplete", message)
            .await;
    }
    let mut status = status::observed(&sn, assessment, now());
    status.upgrade = step.progress;
    status.membership = Some(plan.status);
    status.reports = reports;
    write_status_if_worth(&ctx, &stocknets, &sn, &status).await?;
    ctx.failures().remove(&key(&sn));
    Ok(Action::requeue(Duration::from_secs(
        ctx.settings.probe_period_seconds,
    )))
}

/// Deletes the order pods the health policy condemned, each only if it is still the pod
/// observed, with an Event each, and counts the restarts made.
async fn delete_condemned(
    ctx: &Context,
    sn: &StockNet,
    pods: &Api<Pod>,
    assessment: &mut health::Assessment,
) -> Result<(), Error> {
    for deletion in assessment.deletions.clone() {
        let params = DeleteParams {
            preconditions: deletion.pod.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&deletion.pod.name, &params).await {
            Ok(_) => {}
            // Gone, or replaced by the StatefulSet since it was observed: nothing to delete.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        assessment.restarted(&deletion, k8s_openapi::jiff::Timestamp::now());
        ctx.metrics.pods_deleted.inc();
        tracing::warn!(pod = deletion.pod.name, "{}", deletion.message);
        ctx.publish(
            sn,
            EventType::Warning,
            deletion.reason,
            deletion.message.clone(),
        )
        .await;
    }
    Ok(())
}

/// Requeues a failed StockNet after 5 s, doubling per consecutive failure up to 5 minutes.
pub fn error_policy(sn: Arc<StockNet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failures.inc();
    let mut failures = ctx.failures();
    let count = failures.entry(key(&sn)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = retry_after(
        error,
        *count,
        Duration::from_secs(ctx.settings.probe_period_seconds),
    );
    tracing::warn!(stocknet = key(&sn), ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}

/// When to reconcile again after `failures` failures in a row, the last being `error`.
fn retry_after(error: &Error, failures: u32, probe_period: Duration) -> Duration {
    match error {
        // Not backed off beyond a health round: the pass that restarts crashed replicas runs
        // in the same reconcile, and a refused object must not hold it back for minutes.
        // Nor is a wait for a Secret being deleted (Secrets are not watched).
        Error::NotApplied { .. } | Error::SecretDeleting(_) => backoff(failures).min(probe_period),
        _ => backoff(failures),
    }
}

pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

/// The StockNet's shared secret, created once with a fresh random value; an existing one is
/// kept as it is. Its value authenticates the operator's membership calls to the order leader
/// and is never logged or put in status. (A random value cannot be applied declaratively:
/// every apply would change it.)
async fn shared_secret(
    client: &Client,
    namespace: &str,
    sn: &StockNet,
) -> Result<stocknet_common::Secret, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = resources::secret_name(sn);
    loop {
        if let Some(existing) = api.get_opt(&name).await? {
            match resources::found_secret(&existing, sn) {
                FoundSecret::Use => {}
                FoundSecret::Deleting => return Err(Error::SecretDeleting(name)),
                FoundSecret::Adopt => {
                    // Conditional on the Secret seen: if it went meanwhile, it is made anew.
                    let adopt = serde_json::json!({"metadata": {
                        "ownerReferences": resources::owners(sn)?,
                        "resourceVersion": existing.resource_version(),
                    }});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(adopt))
                        .await
                    {
                        Ok(_) => tracing::info!(
                            secret = name,
                            "took over the shared secret a deleted StockNet of this name left"
                        ),
                        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                            continue
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let value = existing
                .data
                .as_ref()
                .and_then(|data| data.get(resources::SECRET_KEY))
                .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
                .unwrap_or_default();
            return stocknet_common::Secret::new(&value)
                .map_err(|e| Error::SecretUnusable(name.clone(), e.to_string()));
        }
        let value = stocknet_common::Secret::generate().map_err(Error::Random)?;
        let secret = resources::shared_secret(sn, value.expose())?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = name, "created the shared secret");
                return Ok(value);
            }
            // Created meanwhile (another reconcile): use that one.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The pod IP of replica `leader`, if its pod has one.
fn leader_ip(observations: &[Observation], leader: Option<u32>) -> Option<String> {
    let seen = observations.iter().find(|seen| Some(seen.id) == leader)?;
    let pod = seen.pod.as_ref()?;
    pod.status.as_ref()?.pod_ip.clone()
}

/// `http://<ip>:<port>/<path>` of an order replica's pod.
fn replica_url(ctx: &Context, ip: &str, route: paths::Route) -> String {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    format!(
        "http://{host}:{}{}",
        ctx.settings.probe_port,
        route.pattern()
    )
}

/// The group's membership as the leader at `ip` reports it.
async fn group_members(
    ctx: &Context,
    ip: &str,
    secret: &stocknet_common::Secret,
) -> Option<Members> {
    let request = ctx
        .http
        .get(replica_url(ctx, ip, paths::MEMBERS))
        .header(AUTHORIZATION, secret.bearer());
    match call::<Members>(request).await {
        Ok(members) => Some(members),
        Err(e) => {
            tracing::info!(ip, "the order leader's membership is unknown: {e}");
            None
        }
    }
}

/// Asks the leader at `ip` to take `change`, and records an Event of it. A failure is logged
/// and recorded: the next round plans again from what the group then reports.
async fn change_members(
    ctx: &Context,
    sn: &StockNet,
    ip: &str,
    secret: &stocknet_common::Secret,
    change: &Change,
) {
    let (request, reason, message) = match change {
        Change::AddLearner { id } => {
            let url = match resources::order_replica_url(sn, *id as i32) {
                Ok(url) => url,
                Err(e) => {
                    tracing::warn!("no URL for order replica {id}: {e}");
                    return;
                }
            };
            let body = NewLearner { id: *id, url };
            (
                ctx.http
                    .post(replica_url(ctx, ip, paths::LEARNERS))
                    .json(&body),
                "AddingOrderReplica",
                format!("order replica {id} joins the group as a learner"),
            )
        }
        Change::SetVoters(voters) => {
            let body = Voters {
                voters: voters.clone(),
            };
            (
                ctx.http
                    .put(replica_url(ctx, ip, paths::VOTERS))
                    .json(&body),
                "ChangingOrderVoters",
                format!("order replicas {} are to vote", list(voters.iter())),
            )
        }
    };
    let request = request
        .header(AUTHORIZATION, secret.bearer())
        .timeout(MEMBERSHIP_CALL_TIMEOUT);
    match call::<Members>(request).await {
        Ok(_) => {
            tracing::info!("{message}");
            ctx.publish(sn, EventType::Normal, reason, message).await;
        }
        Err(e) => {
            let message = format!("{message}: not yet ({e})");
            tracing::warn!("{message}");
            ctx.publish(sn, EventType::Warning, reason, message).await;
        }
    }
}

/// How long a membership call may take: the leader answers within its own deadline for a
/// step to commit (10 s), or says it is pending.
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(15);

fn list<'a>(ids: impl IntoIterator<Item = &'a u32>) -> String {
    ids.into_iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies every object; returns the order StatefulSet's update revision as the API server
/// reports it (the revision its current template makes; `None` until its controller has
/// computed one). An object the API server refuses does not keep the others from being
/// applied (a change it cannot take, such as a StatefulSet's volume claim templates, would
/// otherwise hold back every later change of every other object): the first refusal is the
/// error, once the rest are applied. Without an answer from the API server, it stops.
async fn apply_all(
    client: &Client,
    namespace: &str,
    desired: &Desired,
    order: &str,
) -> Result<Option<String>, Error> {
    let mut refused = None;
    unless_refused(
        &mut refused,
        apply(client, namespace, &desired.config_map).await,
    )?;
    for service in &desired.services {
        unless_refused(&mut refused, apply(client, namespace, service).await)?;
    }
    let mut order_revision = None;
    for stateful_set in &desired.stateful_sets {
        let applied = unless_refused(&mut refused, apply(client, namespace, stateful_set).await)?;
        if let Some(applied) = applied.filter(|applied| applied.name_any() == order) {
            order_revision = applied.status.and_then(|s| s.update_revision);
        }
    }
    unless_refused(
        &mut refused,
        apply(client, namespace, &desired.deployment).await,
    )?;
    let budget = apply(client, namespace, &desired.disruption_budget).await;
    unless_refused(&mut refused, budget)?;
    for policy in &desired.network_policies {
        unless_refused(&mut refused, apply(client, namespace, policy).await)?;
    }
    if let Some((claim, cron_job)) = &desired.reports {
        unless_refused(&mut refused, apply(client, namespace, claim).await)?;
        unless_refused(&mut refused, apply(client, namespace, cron_job).await)?;
    }
    match refused {
        Some(refusal) => Err(refusal),
        None => Ok(order_revision),
    }
}

/// The object `applied` holds; an object the API server refused is `None`, its refusal kept in
/// `refused` if it is the first. Any other failure (no answer) is the error.
fn unless_refused<K>(
    refused: &mut Option<Error>,
    applied: Result<K, Error>,
) -> Result<Option<K>, Error> {
    match applied {
        Ok(object) => Ok(Some(object)),
        Err(
            refusal @ Error::NotApplied {
                source: kube::Error::Api(_),
                ..
            },
        ) => {
            refused.get_or_insert(refusal);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The scheduled report: with `spec.reports.enabled` false, removes the CronJob an earlier
/// spec made (the archive's claim stays); else reads its Jobs for the status, says in a Warning
/// Event when a run failed (once per run), and sets the last-success gauge the missing-report
/// alert watches.
async fn observe_reports(
    ctx: &Context,
    sn: &StockNet,
    namespace: &str,
    desired: Option<&(PersistentVolumeClaim, CronJob)>,
) -> Result<Option<crate::crd::ReportsStatus>, Error> {
    let name = resources::reports_name(sn);
    // (Not `namespace`: Prometheus gives that label the operator's own namespace.)
    let labels = vec![
        ("object_namespace".to_owned(), namespace.to_owned()),
        ("stocknet".to_owned(), sn.name_any()),
    ];
    if desired.is_none() {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), namespace);
        if delete_owned(&api, &name, sn).await? {
            tracing::info!(cron_job = name, "report CronJob removed");
        }
        ctx.metrics.report_success.remove(&labels);
        return Ok(None);
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = resources::selector_string(sn, Component::Reports);
    let jobs = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let previous = sn.status.as_ref().and_then(|s| s.reports.as_ref());
    let observed = status::reports(sn, &jobs, previous);
    if let Some(now) = &observed {
        let newly_failed = now.last_outcome.as_deref() == Some("Failed")
            && previous
                .is_none_or(|p| p.last_job != now.last_job || p.last_outcome != now.last_outcome);
        if newly_failed {
            let why = jobs
                .iter()
                .find(|job| Some(job.name_any()) == now.last_job)
                .and_then(status::failure)
                .unwrap_or_default();
            let message = format!(
                "the report of {} (Job {}) failed: {why}; its files, if any, are on the claim {name}",
                now.last_date.as_deref().unwrap_or("?"),
                now.last_job.as_deref().unwrap_or("?"),
            );
            ctx.publish(sn, EventType::Warning, "ReportFailed", message)
                .await;
        }
    }
    // While no run has succeeded, the alert counts from when the StockNet was made.
    let since = observed
        .as_ref()
        .and_then(|s| s.last_success.as_deref())
        .and_then(|text| text.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .or_else(|| sn.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if let Some(since) = since {
        ctx.metrics
            .report_success
            .get_or_create(&labels)
            .set(since.as_second());
    }
    Ok(observed)
}

/// With `spec.networkPolicy.enabled` false, removes the policies an earlier spec made.
async fn remove_network_policies(
    client: &Client,
    namespace: &str,
    sn: &StockNet,
) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    for name in resources::network_policy_names(sn) {
        if delete_owned(&api, &name, sn).await? {
            tracing::info!(policy = name, "network policy removed");
        }
    }
    Ok(())
}

/// Deletes `name` if `sn` owns it, and says whether it did: an object of the same name that
/// somebody else made (a user's own network policy, say) is left alone. The deletion is
/// conditional on the object seen, so one made anew meanwhile is not taken for it.
async fn delete_owned<K>(api: &Api<K>, name: &str, sn: &StockNet) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + Debug,
{
    let Some(object) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let owned = sn
        .uid()
        .is_some_and(|uid| object.owner_references().iter().any(|o| o.uid == uid));
    if !owned {
        tracing::info!(name, "not made by this StockNet: left alone");
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: object.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Server-side applies `object`; returns the object as the API server now holds it.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::NotApplied {
        kind: K::kind(&K::DynamicType::default()).into_owned(),
        name: object.name_any(),
        source,
    })
}

/// Order replicas 1 to `replicas`: each one's pod (by its StatefulSet name) and `/health`
/// answer at the pod's IP.
async fn observe_order_replicas(
    sn: &StockNet,
    ctx: &Context,
    pods: &Api<Pod>,
    replicas: u32,
) -> Result<Vec<Observation>, Error> {
    let listed = pods
        .list(&ListParams::default().labels(&resources::selector_string(sn, Component::Order)))
        .await?;
    let order = resources::name(sn, Component::Order);
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
    match call::<Health>(ctx.http.get(replica_url(ctx, ip, paths::HEALTH))).await {
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
    stocknets
        .patch_status(
            &sn.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status_patch(status)),
        )
        .await?;
    Ok(())
}

/// Writes `status` unless it only moves the replicas' last transactions on and this process
/// wrote the StockNet's status less than a probe period ago ([`status::worth_writing`]).
async fn write_status_if_worth(
    ctx: &Context,
    stocknets: &Api<StockNet>,
    sn: &StockNet,
    status: &StockNetStatus,
) -> Result<(), Error> {
    let written = ctx.status_written().get(&key(sn)).map(Instant::elapsed);
    let period = Duration::from_secs(ctx.settings.probe_period_seconds);
    if status::worth_writing(sn.status.as_ref(), status, written, period) {
        write_status(stocknets, sn, status).await?;
        ctx.status_written().insert(key(sn), Instant::now());
    }
    Ok(())
}

/// The merge patch (RFC 7386) that makes a StockNet's status `status`: its absent values are
/// `null`, which removes what an earlier status had there ([`StockNetStatus`]).
fn status_patch(status: &StockNetStatus) -> serde_json::Value {
    serde_json::json!({ "status": status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MembershipStatus, ReportsStatus, UpgradeStatus};

    /// A status written over an earlier one keeps nothing of it: a leader, an upgrade or a
    /// step waited for that is over is gone (left out of a merge patch, it stayed, and the
    /// finished upgrade's event was sent again on every reconcile).
    #[test]
    fn a_status_written_over_another_keeps_nothing_of_it() {
        let waiting = |what: &str| Some(what.to_owned());
        let earlier = StockNetStatus {
            observed_generation: Some(1),
            leader: Some(2),
            upgrade: Some(UpgradeStatus {
                revision: "r1".into(),
                updated: 1,
                total: 3,
                waiting_for: waiting("replica 2 to be ready"),
            }),
            membership: Some(MembershipStatus {
                target: 5,
                voters: vec![1, 2, 3],
                learners: vec![4, 5],
                waiting_for: waiting("replica 4 to catch up"),
            }),
            reports: Some(ReportsStatus {
                last_job: waiting("report-1"),
                last_outcome: waiting("Running"),
                ..ReportsStatus::default()
            }),
            ..StockNetStatus::default()
        };
        let now = StockNetStatus {
            observed_generation: Some(2),
            membership: Some(MembershipStatus {
                target: 5,
                voters: vec![1, 2, 3, 4, 5],
                learners: Vec::new(),
                waiting_for: None,
            }),
            reports: Some(ReportsStatus::default()),
            ..StockNetStatus::default()
        };
        let mut stored = status_patch(&earlier);
        json_patch::merge(&mut stored, &status_patch(&now));
        let read: StockNetStatus = serde_json::from_value(stored["status"].clone()).unwrap();
        assert_eq!(read, now, "{stored}");
    }

    #[test]
    fn failed_reconciles_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn a_refused_apply_is_retried_within_a_health_round() {
        let period = Duration::from_secs(7);
        let refused = Error::NotApplied {
            kind: "Deployment".into(),
            name: "sn-frontend".into(),
            source: kube::Error::LinesCodecMaxLineLengthExceeded,
        };
        let delays: Vec<u64> = [1, 2, 5]
            .map(|n| retry_after(&refused, n, period).as_secs())
            .into();
        assert_eq!(delays, [5, 7, 7]);
        let other = Error::Deadline(Duration::from_secs(60));
        assert_eq!(retry_after(&other, 5, period).as_secs(), 80);
    }
}
