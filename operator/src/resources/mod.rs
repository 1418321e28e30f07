//! The objects a `StockNet` stands for, as pure functions of it: nothing here talks to the
//! API server, so every port, volume, env var, label and owner reference is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as KubeNetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::StockNet;

// One file per kind of object; what the kinds share is here.
mod config_map;
mod cron_job;
mod deployment;
mod disruption_budget;
mod network_policy;
mod pod;
mod secret;
mod service;
mod stateful_set;
#[cfg(test)]
mod tests;

use config_map::*;
pub use cron_job::reports_name;
use cron_job::*;
use deployment::*;
use disruption_budget::*;
pub use network_policy::*;
use pod::*;
pub use secret::*;
use service::*;
use stateful_set::*;
use stocknet_common::env;
use stocknet_common::ports;

pub const CATALOG_PORT: i32 = ports::CATALOG as i32;
pub const ORDER_PORT: i32 = ports::ORDER as i32;
pub const FRONTEND_PORT: i32 = ports::FRONTEND as i32;
/// Every component serves `GET /metrics` on this port too; NetworkPolicies leave it open to
/// Prometheus while they close the component's own port.
pub const METRICS_PORT: i32 = ports::METRICS as i32;
/// The frontends' internal routes (the catalog's invalidation push), apart from the public API
/// so that a network policy can admit only the catalog to them.
pub const FRONTEND_INTERNAL_PORT: i32 = ports::FRONTEND_INTERNAL as i32;
/// Where each pod's volume claim is mounted.
const DATA_DIR: &str = "/data";
/// Where each pod finds the deployment's shared secret, as the file `token`.
const SECRET_DIR: &str = "/secret";
/// The key of the shared secret in its Secret (and its file name in the pods).
pub const SECRET_KEY: &str = "token";
/// The user every container runs as (the image's non-root user).
const USER: i64 = 65532;
/// The catalog shipped with StockNet, for a spec without `catalog.initialCatalog`.
const DEFAULT_CATALOG: &str = include_str!("../../../data/catalog.csv");

/// One kind of object the operator applies for a StockNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedKind {
    pub kind: &'static str,
    /// Its API group (`""` for the core group) and resource name, as RBAC rules name them.
    pub group: &'static str,
    pub resource: &'static str,
    /// Whether the operator also deletes ones a spec no longer asks for.
    pub pruned: bool,
}

/// Every kind of object [`desired`] makes, which the operator applies and watches: the list the
/// Helm chart's RBAC rules and the controller's watches are checked against (a new kind fails
/// the tests until both have it).
pub const OWNED_KINDS: [OwnedKind; 8] = [
    owned("ConfigMap", "", "configmaps", false),
    owned("Service", "", "services", false),
    owned("StatefulSet", "apps", "statefulsets", false),
    owned("Deployment", "apps", "deployments", false),
    owned(
        "PodDisruptionBudget",
        "policy",
        "poddisruptionbudgets",
        false,
    ),
    owned(
        "NetworkPolicy",
        "networking.k8s.io",
        "networkpolicies",
        true,
    ),
    owned("PersistentVolumeClaim", "", "persistentvolumeclaims", false),
    owned("CronJob", "batch", "cronjobs", true),
];

const fn owned(
    kind: &'static str,
    group: &'static str,
    resource: &'static str,
    pruned: bool,
) -> OwnedKind {
    OwnedKind {
        kind,
        group,
        resource,
        pruned,
    }
}

/// The three workloads of a StockNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Catalog,
    Order,
    Frontend,
    /// The scheduled report's CronJob and archive.
    Reports,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Order => "order",
            Self::Frontend => "frontend",
            Self::Reports => "reports",
        }
    }
}

/// Every object the operator applies for `sn`, in the order it applies them.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    pub deployment: Deployment,
    pub disruption_budget: PodDisruptionBudget,
    /// Empty when `spec.networkPolicy.enabled` is false (the operator then deletes those it
    /// made, named by [`network_policy_names`]).
    pub network_policies: Vec<NetworkPolicy>,
    /// The report's archive claim and CronJob; `None` when `spec.reports.enabled` is false
    /// (the operator then deletes the CronJob, and keeps the claim with its archive).
    pub reports: Option<(PersistentVolumeClaim, CronJob)>,
}

/// Errors in a spec that the schema cannot catch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("StockNet has no namespace")]
    NoNamespace,
    #[error("StockNet has no uid yet")]
    NoUid,
    #[error("catalog.initialCatalog: {0}")]
    InitialCatalog(String),
}

/// How the order group sits on pods: the replicas that founded it (named to each replica as
/// its initial voters, which must never change for a group that exists) and how many pods run
/// (more than the spec asks for while replicas leave the group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLayout {
    pub founders: i32,
    pub pods: i32,
}

impl OrderLayout {
    /// A new StockNet's: every replica the spec asks for founds the group.
    pub fn new_group(sn: &StockNet) -> Self {
        Self {
            founders: sn.spec.order.replicas,
            pods: sn.spec.order.replicas,
        }
    }
}

/// How many replicas founded the group that the order StatefulSet `existing` runs: the peers
/// its pods are given.
pub fn founders(existing: &StatefulSet) -> Option<i32> {
    let containers = &existing.spec.as_ref()?.template.spec.as_ref()?.containers;
    let peers = containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|var| var.name == ORDER_PEERS_VAR)?
        .value
        .as_deref()?;
    i32::try_from(peers.split(',').filter(|p| !p.trim().is_empty()).count()).ok()
}

/// The env var naming the founding replicas to each order replica.
const ORDER_PEERS_VAR: &str = env::ORDER_PEERS;

/// The objects of a new StockNet (see [`desired_for`]).
pub fn desired(sn: &StockNet) -> Result<Desired, SpecError> {
    desired_for(sn, OrderLayout::new_group(sn))
}

/// The objects of `sn`, its order group laid out as `order`.
pub fn desired_for(sn: &StockNet, order: OrderLayout) -> Result<Desired, SpecError> {
    if let Some(csv) = &sn.spec.catalog.initial_catalog {
        check_catalog_csv(csv)?;
    }
    Ok(Desired {
        config_map: initial_catalog(sn)?,
        services: vec![
            catalog_service(sn)?,
            order_service(sn)?,
            frontend_service(sn)?,
            frontend_pods_service(sn)?,
        ],
        stateful_sets: vec![catalog_stateful_set(sn)?, order_stateful_set(sn, order)?],
        deployment: frontend_deployment(sn, order.pods)?,
        disruption_budget: order_disruption_budget(sn)?,
        network_policies: if sn.spec.network_policy.enabled {
            network_policies(sn)?
        } else {
            Vec::new()
        },
        reports: if sn.spec.reports.enabled {
            Some((reports_claim(sn)?, reports_cron_job(sn)?))
        } else {
            None
        },
    })
}

/// The desired objects of the StockNet in `yaml` as a multi-document YAML stream. The owner
/// reference needs a uid; outside a cluster a placeholder stands in for it.
pub fn render(yaml: &str, namespace: &str) -> Result<String, RenderError> {
    let mut sn: StockNet = serde_yaml::from_str(yaml)?;
    sn.metadata
        .namespace
        .get_or_insert_with(|| namespace.to_owned());
    sn.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".to_owned());
    let desired = desired(&sn)?;
    let mut documents = vec![serde_yaml::to_string(&desired.config_map)?];
    for service in &desired.services {
        documents.push(serde_yaml::to_string(service)?);
    }
    for stateful_set in &desired.stateful_sets {
        documents.push(serde_yaml::to_string(stateful_set)?);
    }
    documents.push(serde_yaml::to_string(&desired.deployment)?);
    documents.push(serde_yaml::to_string(&desired.disruption_budget)?);
    for policy in &desired.network_policies {
        documents.push(serde_yaml::to_string(policy)?);
    }
    if let Some((claim, cron_job)) = &desired.reports {
        documents.push(serde_yaml::to_string(claim)?);
        documents.push(serde_yaml::to_string(cron_job)?);
    }
    Ok(documents.join("---\n"))
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("not a StockNet: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("{0}")]
    Spec(#[from] SpecError),
}

/// `app.kubernetes.io/*` labels of one component; the first three also select its pods.
pub fn labels(sn: &StockNet, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector(sn, component);
    labels.insert("app.kubernetes.io/part-of".into(), "stocknet".into());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "stocknet-operator".into(),
    );
    labels
}

pub fn selector(sn: &StockNet, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "stocknet".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), sn.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// `<stocknet>-<component>`: the name of a component's workload and Service.
pub fn name(sn: &StockNet, component: Component) -> String {
    format!("{}-{}", sn.name_any(), component.as_str())
}

/// `<stocknet>-internal`: the Secret holding the shared secret of the StockNet's internal
/// calls.
pub fn secret_name(sn: &StockNet) -> String {
    format!("{}-internal", sn.name_any())
}

/// Label selector string for a component's pods, for list calls.
pub fn selector_string(sn: &StockNet, component: Component) -> String {
    selector(sn, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Order replicas 1 to `count` as `ID=URL`, in the form the services take them.
pub fn order_peers(sn: &StockNet, count: i32) -> Result<String, SpecError> {
    (1..=count)
        .map(|id| Ok(format!("{id}={}", order_replica_url(sn, id)?)))
        .collect::<Result<Vec<_>, SpecError>>()
        .map(|peers| peers.join(","))
}

/// Order replica `id`'s URL: the stable DNS name of its StatefulSet pod under the headless
/// Service.
pub fn order_replica_url(sn: &StockNet, id: i32) -> Result<String, SpecError> {
    let namespace = namespace(sn)?;
    let order = name(sn, Component::Order);
    let ordinal = id - 1;
    Ok(format!(
        "http://{order}-{ordinal}.{order}.{namespace}.svc:{ORDER_PORT}"
    ))
}

fn namespace(sn: &StockNet) -> Result<String, SpecError> {
    sn.namespace().ok_or(SpecError::NoNamespace)
}

fn metadata(sn: &StockNet, name: String, component: Component) -> Result<ObjectMeta, SpecError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(sn)?),
        labels: Some(labels(sn, component)),
        owner_references: Some(owners(sn)?),
        ..ObjectMeta::default()
    })
}

/// The owner references of every object `sn` owns: `sn`, as their controller.
pub fn owners(sn: &StockNet) -> Result<Vec<OwnerReference>, SpecError> {
    Ok(vec![sn
        .controller_owner_ref(&())
        .ok_or(SpecError::NoUid)?])
}
