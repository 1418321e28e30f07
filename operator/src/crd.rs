//! The `StockNet` custom resource (`stocknet.io/v1alpha1`): what a user asks for, and the
//! status the operator reports from what it observes.

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image used when the spec names none: the tag the docs build and load into kind/minikube.
pub const DEFAULT_IMAGE: &str = "stocknet:0.1.0";

/// A StockNet deployment: a catalog, replicated order service and frontends. `spec: {}` is
/// valid and gets the defaults (3 order replicas, 1 frontend, cache of 8).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stocknet.io",
    version = "v1alpha1",
    kind = "StockNet",
    plural = "stocknets",
    shortname = "sn",
    namespaced,
    status = "StockNetStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Leader","type":"integer","jsonPath":".status.leader"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StockNetSpec {
    /// Container image holding the `stocknet` binary.
    #[serde(default = "default_image")]
    pub image: String,
    /// Image pull policy of every StockNet container.
    #[serde(default = "default_pull_policy")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: String,
    /// Secrets in the StockNet's namespace to pull `image` with, from a private registry
    /// (every StockNet pod's `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default)]
    pub frontend: FrontendSpec,
    #[serde(default)]
    pub catalog: CatalogSpec,
    #[serde(default)]
    pub order: OrderSpec,
    /// Storage class of the catalog's and the order replicas' volume claims; the cluster's
    /// default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    #[serde(default)]
    pub reports: ReportsSpec,
}

/// The end-of-day report, archived and delivered on a schedule: a CronJob running
/// `stocknet report` against the frontend Service (a client of the public API), keeping the
/// archive on a volume claim of its own.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportsSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When it runs, in cron syntax, in `timeZone`.
    #[serde(default = "default_report_schedule")]
    #[schemars(regex(pattern = r"^\S+( \S+){4}$"))]
    pub schedule: String,
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Which UTC day a run reports: `yesterday` (for a schedule after midnight, as the default
    /// 00:05) or `today` (the day that is ending, for a schedule late in the day).
    #[serde(default = "default_report_day")]
    #[schemars(regex(pattern = r"^(today|yesterday)$"))]
    pub day: String,
    /// Size of the archive's volume claim.
    #[serde(default = "default_report_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub storage: String,
    /// POST each report, signed, to a webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<ReportWebhookSpec>,
    /// Mail each report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<ReportMailSpec>,
}

impl Default for ReportsSpec {
    fn default() -> Self {
        Self {
            enabled: yes(),
            schedule: default_report_schedule(),
            time_zone: default_time_zone(),
            day: default_report_day(),
            storage: default_report_storage(),
            webhook: None,
            mail: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportWebhookSpec {
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// The key of the HMAC-SHA256 signature: a key of a Secret in the StockNet's namespace.
    pub secret: SecretKey,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportMailSpec {
    /// `smtp://host[:port]` (STARTTLS when offered, required with credentials) or
    /// `smtps://host[:port]`.
    #[schemars(regex(pattern = r"^smtps?://[^/]+$"))]
    pub smtp_url: String,
    pub from: String,
    #[schemars(length(min = 1))]
    pub to: Vec<String>,
    /// `user:password` for the server's login: a key of a Secret in the StockNet's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretKey>,
}

/// A key of a Secret in the StockNet's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

/// NetworkPolicies that let only the StockNet's own components (and the operator's health
/// probes) reach its catalog and order replicas.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: yes() }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontendSpec {
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Stocks each frontend keeps in its LRU cache.
    #[serde(default = "default_cache_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub cache_size: u32,
    #[serde(default = "yes")]
    pub cache_enabled: bool,
    /// CPU and memory of each frontend pod; the operator's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
}

/// Per-client limits of each frontend's public API (a client is a user, by their API key, or
/// else an address: behind a proxy or a port-forward, every anonymous caller is one client,
/// hence the generous defaults). A `perSecond` or `maxInFlight` of 0 turns that limit off; a
/// `burst` of 0 is the rate.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests per second a client may make on average.
    #[serde(default = "default_rate")]
    pub per_second: u32,
    /// Requests a client may make at once above its rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests a client may have in flight.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            per_second: default_rate(),
            burst: default_burst(),
            max_in_flight: default_in_flight(),
        }
    }
}

fn default_rate() -> u32 {
    2_000
}

fn default_burst() -> u32 {
    4_000
}

fn default_in_flight() -> u32 {
    512
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSpec {
    /// Size of the catalog's volume claim.
    #[serde(default = "default_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub storage: String,
    /// The initial catalog as CSV (`name,price,quantity`); the built-in 12 stocks when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_catalog: Option<String>,
    /// CPU and memory of the catalog pod; the operator's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderSpec {
    /// Order replicas; a majority must be up to accept orders. A change on a live StockNet is
    /// a membership change, one step at a time (`status.membership` shows where it is): new
    /// replicas join as learners and vote once caught up; leaving ones stop voting before
    /// their pods go. Odd numbers tolerate as many failures as the next even one.
    #[serde(default = "default_order_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Size of each replica's volume claim.
    #[serde(default = "default_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub storage: String,
    /// CPU and memory of each order replica's pod (its open orders and newest trades are in
    /// memory, older ones on its volume); the operator's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

// Written as a merge patch, in which a key left out keeps its old value: so an absent value
// here (and in the objects below it) is written as `null`, which removes it, never left out.
// (A replica's is in a list, which a merge patch replaces whole.)
/// What the operator last observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockNetStatus {
    /// The generation of the spec this status reflects.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Node id of the replica that says it leads the highest term any replica reports; absent
    /// while it does not answer.
    #[serde(default)]
    pub leader: Option<u32>,
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// `Ready` (every order replica healthy and resynced) and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// A rolling upgrade of the order replicas in progress.
    #[serde(default)]
    pub upgrade: Option<UpgradeStatus>,
    /// The order group's membership, as its leader last reported it.
    #[serde(default)]
    pub membership: Option<MembershipStatus>,
    /// The last scheduled report, from the report CronJob's Jobs.
    #[serde(default)]
    pub reports: Option<ReportsStatus>,
}

/// The last run of the report CronJob, and the last that succeeded.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportsStatus {
    /// The Job of the last run.
    #[serde(default)]
    pub last_job: Option<String>,
    /// The UTC day it reported, YYYY-MM-DD.
    #[serde(default)]
    pub last_date: Option<String>,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub last_run: Option<String>,
    /// `Running`, `Succeeded` or `Failed`.
    #[serde(default)]
    pub last_outcome: Option<String>,
    /// When the last run that succeeded finished (RFC 3339).
    #[serde(default)]
    pub last_success: Option<String>,
}

/// The order group's voters and learners, and what a change of `order.replicas` waits for.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipStatus {
    /// The voters `order.replicas` asks for (replicas 1 to it).
    pub target: u32,
    /// Replicas that vote (in either set while a change commits).
    #[serde(default)]
    pub voters: Vec<u32>,
    /// Replicas that receive the log and do not vote yet.
    #[serde(default)]
    pub learners: Vec<u32>,
    /// What the next step waits for; absent when the voters are the target.
    #[serde(default)]
    pub waiting_for: Option<String>,
}

/// How far a rolling upgrade of the order replicas has got.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// The order StatefulSet's revision being rolled out.
    pub revision: String,
    /// Order replicas running it.
    pub updated: u32,
    pub total: u32,
    /// What the next replacement waits for, if anything.
    #[serde(default)]
    pub waiting_for: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Node id (StatefulSet ordinal + 1).
    pub id: u32,
    pub pod: String,
    /// Answered its health check and finished its resync.
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transaction: Option<u64>,
    /// Health checks failed in a row, counted at most once a probe period.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When the last of them was counted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Times the operator deleted this replica's pod.
    #[serde(default)]
    pub restarts: u32,
    /// When it last did (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<String>,
    /// Restarts for a crash in a row, each within 10 minutes of the one before: the next
    /// waits 10 s after the last, doubling with each up to 5 minutes (the kubelet's back-off,
    /// which deleting the pod would reset).
    #[serde(default)]
    pub consecutive_crashes: u32,
    /// The pod and container start this status counts for (the pod's uid and its container's
    /// start time): health checks fail only once a start has answered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Whether the replica has answered its health check since that start.
    #[serde(default)]
    pub answered: bool,
}

impl Default for StockNetSpec {
    fn default() -> Self {
        Self {
            image: default_image(),
            image_pull_policy: default_pull_policy(),
            image_pull_secrets: Vec::new(),
            frontend: FrontendSpec::default(),
            catalog: CatalogSpec::default(),
            order: OrderSpec::default(),
            storage_class_name: None,
            network_policy: NetworkPolicySpec::default(),
            reports: ReportsSpec::default(),
        }
    }
}

impl Default for FrontendSpec {
    fn default() -> Self {
        Self {
            replicas: one(),
            cache_size: default_cache_size(),
            cache_enabled: yes(),
            resources: None,
            rate_limit: RateLimitSpec::default(),
        }
    }
}

impl Default for CatalogSpec {
    fn default() -> Self {
        Self {
            storage: default_storage(),
            initial_catalog: None,
            resources: None,
        }
    }
}

impl Default for OrderSpec {
    fn default() -> Self {
        Self {
            replicas: default_order_replicas(),
            storage: default_storage(),
            resources: None,
        }
    }
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_owned()
}

/// Five past midnight, for the day before: the whole day, and a retry of a failed run (or a
/// run started late) still reports that day. A run at 23:59 for `today` misses the last
/// minute, and its retry after midnight would report the new day.
fn default_report_schedule() -> String {
    "5 0 * * *".into()
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_report_day() -> String {
    "yesterday".into()
}

fn default_report_storage() -> String {
    "1Gi".into()
}

fn one() -> i32 {
    1
}

fn yes() -> bool {
    true
}

fn default_cache_size() -> u32 {
    8
}

fn default_order_replicas() -> i32 {
    3
}

fn default_storage() -> String {
    "1Gi".to_owned()
}

/// The CRD as YAML, exactly as `stocknet-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&StockNet::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_replicas_may_change_within_one_to_nine() {
        let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml().unwrap()).unwrap();
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["order"]["properties"]["replicas"];
        assert!(
            replicas.get("x-kubernetes-validations").is_none(),
            "{replicas}"
        );
        assert_eq!(
            (replicas["minimum"].as_f64(), replicas["maximum"].as_f64()),
            (Some(1.0), Some(9.0))
        );
    }

    #[test]
    fn an_empty_spec_gets_the_defaults() {
        let spec: StockNetSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, StockNetSpec::default());
        assert_eq!(spec.order.replicas, 3);
        assert_eq!(spec.frontend.cache_size, 8);
        let partial: StockNetSpec =
            serde_json::from_str(r#"{"order":{"replicas":5},"frontend":{"cacheEnabled":false}}"#)
                .unwrap();
        assert_eq!(
            (partial.order.replicas, partial.order.storage.as_str()),
            (5, "1Gi")
        );
        assert_eq!(
            (partial.frontend.cache_enabled, partial.frontend.replicas),
            (false, 1)
        );
    }

    /// `crds/` and the chart's `crds/` must be what the Rust types generate: regenerate with
    /// `cargo run -p stocknet-operator -- crd > crds/stocknet.yaml` (and the chart's copy).
    #[test]
    fn committed_crd_files_match_the_rust_types() {
        let generated = crd_yaml().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for path in ["crds/stocknet.yaml", "charts/stocknet/crds/stocknet.yaml"] {
            let committed =
                std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                committed == generated,
                "{path} differs from the generated CRD; regenerate it with \
                 `cargo run -p stocknet-operator -- crd > {path}`"
            );
        }
    }
}
