//! The objects a `StockNet` stands for, as pure functions of it: nothing here talks to the
//! API server, so every port, volume, env var, label and owner reference is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as KubeNetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::StockNet;

pub const CATALOG_PORT: i32 = 8081;
pub const ORDER_PORT: i32 = 8091;
pub const FRONTEND_PORT: i32 = 8080;
/// Every component serves `GET /metrics` on this port too; NetworkPolicies leave it open to
/// Prometheus while they close the component's own port.
pub const METRICS_PORT: i32 = 9090;
/// The frontends' internal routes (the catalog's invalidation push), apart from the public API
/// so that a network policy can admit only the catalog to them.
pub const FRONTEND_INTERNAL_PORT: i32 = 8082;
/// Where each pod's volume claim is mounted.
const DATA_DIR: &str = "/data";
/// Where each pod finds the deployment's shared secret, as the file `token`.
const SECRET_DIR: &str = "/secret";
/// The key of the shared secret in its Secret (and its file name in the pods).
pub const SECRET_KEY: &str = "token";
/// The user every container runs as (the image's non-root user).
const USER: i64 = 65532;
/// The catalog shipped with StockNet, for a spec without `catalog.initialCatalog`.
const DEFAULT_CATALOG: &str = include_str!("../../data/catalog.csv");

/// The three workloads of a StockNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Catalog,
    Order,
    Frontend,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Order => "order",
            Self::Frontend => "frontend",
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

pub fn desired(sn: &StockNet) -> Result<Desired, SpecError> {
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
        stateful_sets: vec![catalog_stateful_set(sn)?, order_stateful_set(sn)?],
        deployment: frontend_deployment(sn)?,
        disruption_budget: order_disruption_budget(sn)?,
        network_policies: if sn.spec.network_policy.enabled {
            network_policies(sn)?
        } else {
            Vec::new()
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

/// The Secret that holds `value`, the shared secret every pod of `sn` reads at start. The
/// operator creates it once with a fresh random value and never changes it.
pub fn shared_secret(sn: &StockNet, value: &str) -> Result<Secret, SpecError> {
    let mut metadata = metadata(sn, secret_name(sn), Component::Order)?;
    // Shared by every component, so it names none.
    if let Some(labels) = metadata.labels.as_mut() {
        labels.remove("app.kubernetes.io/component");
    }
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(SECRET_KEY.to_owned(), value.to_owned())])),
        ..Secret::default()
    })
}

/// Label selector string for a component's pods, for list calls.
pub fn selector_string(sn: &StockNet, component: Component) -> String {
    selector(sn, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The order replicas as `ID=URL`, in the form the services take them: stable DNS names
/// of the StatefulSet's pods under its headless Service.
pub fn order_peers(sn: &StockNet) -> Result<String, SpecError> {
    let namespace = namespace(sn)?;
    let order = name(sn, Component::Order);
    Ok((0..sn.spec.order.replicas)
        .map(|ordinal| {
            format!(
                "{}=http://{order}-{ordinal}.{order}.{namespace}.svc:{ORDER_PORT}",
                ordinal + 1
            )
        })
        .collect::<Vec<_>>()
        .join(","))
}

fn namespace(sn: &StockNet) -> Result<String, SpecError> {
    sn.namespace().ok_or(SpecError::NoNamespace)
}

fn metadata(sn: &StockNet, name: String, component: Component) -> Result<ObjectMeta, SpecError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(sn)?),
        labels: Some(labels(sn, component)),
        owner_references: Some(vec![sn
            .controller_owner_ref(&())
            .ok_or(SpecError::NoUid)?]),
        ..ObjectMeta::default()
    })
}

/// The same check the catalog makes when it starts (one parser, in stocknet-common).
fn check_catalog_csv(csv: &str) -> Result<(), SpecError> {
    stocknet_common::catalog_file::parse(csv)
        .map(drop)
        .map_err(|e| SpecError::InitialCatalog(e.to_string()))
}

fn initial_catalog(sn: &StockNet) -> Result<ConfigMap, SpecError> {
    let csv = sn
        .spec
        .catalog
        .initial_catalog
        .clone()
        .unwrap_or_else(|| DEFAULT_CATALOG.to_owned());
    Ok(ConfigMap {
        metadata: metadata(
            sn,
            format!("{}-initial", name(sn, Component::Catalog)),
            Component::Catalog,
        )?,
        data: Some(BTreeMap::from([("catalog.csv".to_owned(), csv)])),
        ..ConfigMap::default()
    })
}

/// A Service of `component` on `port`, and on the metrics port if `scraped` (each component's
/// pods are scraped through one Service only).
fn service(
    sn: &StockNet,
    name: String,
    component: Component,
    port: i32,
    headless: bool,
    scraped: bool,
) -> Result<Service, SpecError> {
    let metrics = ServicePort {
        name: Some("metrics".into()),
        port: METRICS_PORT,
        target_port: Some(IntOrString::String("metrics".into())),
        ..ServicePort::default()
    };
    Ok(Service {
        metadata: metadata(sn, name, component)?,
        spec: Some(ServiceSpec {
            selector: Some(selector(sn, component)),
            ports: Some(
                [ServicePort {
                    name: Some("http".into()),
                    port,
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                }]
                .into_iter()
                .chain(scraped.then_some(metrics))
                .collect(),
            ),
            cluster_ip: headless.then(|| "None".to_owned()),
            // Peers must find a replica while it resyncs (not ready yet), and the catalog
            // must invalidate a frontend as soon as it can cache.
            publish_not_ready_addresses: headless.then_some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn catalog_service(sn: &StockNet) -> Result<Service, SpecError> {
    service(
        sn,
        name(sn, Component::Catalog),
        Component::Catalog,
        CATALOG_PORT,
        false,
        true,
    )
}

/// Headless: gives each order pod a stable DNS name (`<sn>-order-<ordinal>.<sn>-order`).
fn order_service(sn: &StockNet) -> Result<Service, SpecError> {
    service(
        sn,
        name(sn, Component::Order),
        Component::Order,
        ORDER_PORT,
        true,
        true,
    )
}

fn frontend_service(sn: &StockNet) -> Result<Service, SpecError> {
    service(
        sn,
        name(sn, Component::Frontend),
        Component::Frontend,
        FRONTEND_PORT,
        false,
        true,
    )
}

/// Headless: resolves to every frontend pod, for the catalog's cache invalidations.
fn frontend_pods_service(sn: &StockNet) -> Result<Service, SpecError> {
    service(
        sn,
        format!("{}-pods", name(sn, Component::Frontend)),
        Component::Frontend,
        FRONTEND_PORT,
        true,
        false,
    )
}

fn env(pairs: &[(&str, String)]) -> Vec<EnvVar> {
    pairs
        .iter()
        .map(|(name, value)| EnvVar {
            name: (*name).to_owned(),
            value: Some(value.clone()),
            ..EnvVar::default()
        })
        .collect()
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// One StockNet container: non-root, read-only root filesystem, no capabilities.
fn container(
    sn: &StockNet,
    component: Component,
    port: i32,
    env: Vec<EnvVar>,
    volume_mounts: Vec<VolumeMount>,
    readiness_path: &str,
) -> Container {
    Container {
        name: component.as_str().to_owned(),
        image: Some(sn.spec.image.clone()),
        image_pull_policy: Some(sn.spec.image_pull_policy.clone()),
        args: Some(vec![component.as_str().to_owned()]),
        env: Some(
            env.into_iter()
                .chain(self::env(&[
                    ("STOCKNET_SECRET_FILE", format!("{SECRET_DIR}/{SECRET_KEY}")),
                    ("STOCKNET_METRICS_PORT", METRICS_PORT.to_string()),
                ]))
                .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: port,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe(readiness_path, 2, 3)),
        liveness_probe: Some(http_probe("/health", 10, 6)),
        resources: Some(resources(sn, component)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            volume_mounts
                .into_iter()
                .chain([VolumeMount {
                    name: "secret".into(),
                    mount_path: SECRET_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                }])
                .collect(),
        ),
        ..Container::default()
    }
}

/// The spec's resources for `component`, or defaults: a small request and a memory limit (an
/// order replica holds its book in memory, so it gets more). No CPU limit: throttling would
/// stretch commit rounds for every client.
fn resources(sn: &StockNet, component: Component) -> ResourceRequirements {
    let (configured, memory_limit) = match component {
        Component::Catalog => (&sn.spec.catalog.resources, "256Mi"),
        Component::Order => (&sn.spec.order.resources, "512Mi"),
        Component::Frontend => (&sn.spec.frontend.resources, "256Mi"),
    };
    configured.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".into())),
            ("memory".to_owned(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(memory_limit.into()),
        )])),
        ..ResourceRequirements::default()
    })
}

fn pod_template(
    sn: &StockNet,
    component: Component,
    container: Container,
    mut volumes: Vec<Volume>,
) -> PodTemplateSpec {
    volumes.push(Volume {
        name: "secret".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name(sn)),
            // Readable by the pod's user only.
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(sn, component)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(USER),
                run_as_group: Some(USER),
                fs_group: Some(USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

fn data_mount() -> VolumeMount {
    VolumeMount {
        name: "data".into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    }
}

fn data_claim(sn: &StockNet, component: Component, storage: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(labels(sn, component)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: sn.spec.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(storage.to_owned()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn stateful_set(
    sn: &StockNet,
    component: Component,
    replicas: i32,
    template: PodTemplateSpec,
    storage: &str,
) -> Result<StatefulSet, SpecError> {
    Ok(StatefulSet {
        metadata: metadata(sn, name(sn, component), component)?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(name(sn, component)),
            selector: LabelSelector {
                match_labels: Some(selector(sn, component)),
                ..LabelSelector::default()
            },
            // Replicas find each other and resync themselves: no need to start them in order.
            pod_management_policy: Some("Parallel".into()),
            // The operator replaces order replicas itself, one at a time and the leader last
            // (crate::upgrade); the catalog has one pod and rolls as usual.
            update_strategy: (component == Component::Order).then(|| StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            template,
            volume_claim_templates: Some(vec![data_claim(sn, component, storage)]),
            // The claims hold the data: they outlive scale-downs and the StockNet itself.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

fn catalog_url(sn: &StockNet) -> Result<String, SpecError> {
    Ok(format!(
        "http://{}.{}.svc:{CATALOG_PORT}",
        name(sn, Component::Catalog),
        namespace(sn)?
    ))
}

fn catalog_stateful_set(sn: &StockNet) -> Result<StatefulSet, SpecError> {
    let frontend_pods = format!(
        "{}-pods.{}.svc:{FRONTEND_INTERNAL_PORT}",
        name(sn, Component::Frontend),
        namespace(sn)?
    );
    let container = container(
        sn,
        Component::Catalog,
        CATALOG_PORT,
        env(&[
            ("STOCKNET_HOST", "0.0.0.0".into()),
            ("STOCKNET_CATALOG_PORT", CATALOG_PORT.to_string()),
            ("STOCKNET_DATA_DIR", DATA_DIR.into()),
            ("STOCKNET_INITIAL_CATALOG", "/config/catalog.csv".into()),
            ("STOCKNET_FRONTEND_URLS", String::new()),
            ("STOCKNET_FRONTEND_DNS", frontend_pods),
        ]),
        vec![
            data_mount(),
            VolumeMount {
                name: "initial-catalog".into(),
                mount_path: "/config".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ],
        "/health",
    );
    let volumes = vec![Volume {
        name: "initial-catalog".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: format!("{}-initial", name(sn, Component::Catalog)),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    stateful_set(
        sn,
        Component::Catalog,
        1,
        pod_template(sn, Component::Catalog, container, volumes),
        &sn.spec.catalog.storage,
    )
}

/// At most one order replica down at a time for voluntary disruptions (drains, upgrades):
/// a majority must stay up to accept orders.
fn order_disruption_budget(sn: &StockNet) -> Result<PodDisruptionBudget, SpecError> {
    Ok(PodDisruptionBudget {
        metadata: metadata(sn, name(sn, Component::Order), Component::Order)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(sn, Component::Order)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The NetworkPolicies of `sn`, by name: what [`network_policies`] builds.
pub fn network_policy_names(sn: &StockNet) -> [String; 3] {
    [
        name(sn, Component::Catalog),
        name(sn, Component::Order),
        name(sn, Component::Frontend),
    ]
}

/// Ingress to the catalog from this StockNet's frontends and order replicas only; to the order
/// replicas from its frontends, its replicas and the operator's health probes only; to the
/// frontends' internal port from the catalog only. The frontends' public port stays open to
/// everybody: it serves the public API; so does every component's metrics port (read only),
/// for Prometheus wherever it runs.
fn network_policies(sn: &StockNet) -> Result<Vec<NetworkPolicy>, SpecError> {
    let pods = |component| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(selector(sn, component)),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        // In whatever namespace the chart installed it.
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/part-of".to_owned(),
                    "stocknet".to_owned(),
                ),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "operator".to_owned(),
                ),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    // `from: None` admits everybody.
    let rule = |port: i32, from: Option<Vec<NetworkPolicyPeer>>| NetworkPolicyIngressRule {
        from,
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        }]),
    };
    let policy = |component, rules: Vec<NetworkPolicyIngressRule>| {
        Ok::<_, SpecError>(NetworkPolicy {
            metadata: metadata(sn, name(sn, component), component)?,
            spec: Some(KubeNetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector(sn, component)),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(rules),
                ..KubeNetworkPolicySpec::default()
            }),
        })
    };
    Ok(vec![
        policy(
            Component::Catalog,
            vec![
                rule(
                    CATALOG_PORT,
                    Some(vec![pods(Component::Frontend), pods(Component::Order)]),
                ),
                rule(METRICS_PORT, None),
            ],
        )?,
        policy(
            Component::Order,
            vec![
                rule(
                    ORDER_PORT,
                    Some(vec![
                        pods(Component::Frontend),
                        pods(Component::Order),
                        operator,
                    ]),
                ),
                rule(METRICS_PORT, None),
            ],
        )?,
        policy(
            Component::Frontend,
            vec![
                rule(FRONTEND_PORT, None),
                rule(FRONTEND_INTERNAL_PORT, Some(vec![pods(Component::Catalog)])),
                rule(METRICS_PORT, None),
            ],
        )?,
    ])
}

fn order_stateful_set(sn: &StockNet) -> Result<StatefulSet, SpecError> {
    // No STOCKNET_NODE_ID: each pod takes its StatefulSet ordinal + 1 from its host name.
    let container = container(
        sn,
        Component::Order,
        ORDER_PORT,
        env(&[
            ("STOCKNET_HOST", "0.0.0.0".into()),
            ("STOCKNET_ORDER_PORT", ORDER_PORT.to_string()),
            ("STOCKNET_ORDER_PEERS", order_peers(sn)?),
            ("STOCKNET_CATALOG_URL", catalog_url(sn)?),
            ("STOCKNET_DATA_DIR", DATA_DIR.into()),
        ]),
        vec![data_mount()],
        // Ready only once boot resync is done.
        "/ready",
    );
    let mut template = pod_template(sn, Component::Order, container, Vec::new());
    if let Some(pod) = template.spec.as_mut() {
        // Replicas on different nodes where there are several, so that one node's loss takes
        // at most one; a single-node cluster still schedules them all.
        pod.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector(sn, Component::Order)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]);
    }
    stateful_set(
        sn,
        Component::Order,
        sn.spec.order.replicas,
        template,
        &sn.spec.order.storage,
    )
}

fn frontend_deployment(sn: &StockNet) -> Result<Deployment, SpecError> {
    let frontend = &sn.spec.frontend;
    let mut vars = vec![
        ("STOCKNET_HOST", "0.0.0.0".to_owned()),
        ("STOCKNET_FRONTEND_PORT", FRONTEND_PORT.to_string()),
        (
            "STOCKNET_FRONTEND_INTERNAL_PORT",
            FRONTEND_INTERNAL_PORT.to_string(),
        ),
        ("STOCKNET_CATALOG_URL", catalog_url(sn)?),
        ("STOCKNET_ORDER_REPLICAS", order_peers(sn)?),
        ("STOCKNET_CACHE_SIZE", frontend.cache_size.to_string()),
        (
            "STOCKNET_RATE_LIMIT",
            frontend.rate_limit.per_second.to_string(),
        ),
        ("STOCKNET_RATE_BURST", frontend.rate_limit.burst.to_string()),
        (
            "STOCKNET_MAX_IN_FLIGHT",
            frontend.rate_limit.max_in_flight.to_string(),
        ),
    ];
    if !frontend.cache_enabled {
        vars.push(("STOCKNET_NO_CACHE", "true".to_owned()));
    }
    let mut container = container(
        sn,
        Component::Frontend,
        FRONTEND_PORT,
        env(&vars),
        Vec::new(),
        "/health",
    );
    container
        .ports
        .get_or_insert_with(Vec::new)
        .push(ContainerPort {
            name: Some("internal".into()),
            container_port: FRONTEND_INTERNAL_PORT,
            ..ContainerPort::default()
        });
    Ok(Deployment {
        metadata: metadata(sn, name(sn, Component::Frontend), Component::Frontend)?,
        spec: Some(DeploymentSpec {
            replicas: Some(frontend.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(sn, Component::Frontend)),
                ..LabelSelector::default()
            },
            template: pod_template(sn, Component::Frontend, container, Vec::new()),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StockNetSpec;

    pub(crate) fn stocknet(spec: StockNetSpec) -> StockNet {
        let mut sn = StockNet::new("demo", spec);
        sn.metadata.namespace = Some("shop".into());
        sn.metadata.uid = Some("1234".into());
        sn
    }

    fn env_of(container: &Container) -> BTreeMap<String, String> {
        container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
        template.spec.as_ref().unwrap()
    }

    #[test]
    fn every_object_is_owned_labelled_and_namespaced() {
        let desired = desired(&stocknet(StockNetSpec::default())).unwrap();
        let mut metas: Vec<&ObjectMeta> =
            vec![&desired.config_map.metadata, &desired.deployment.metadata];
        metas.extend(desired.services.iter().map(|s| &s.metadata));
        metas.extend(desired.stateful_sets.iter().map(|s| &s.metadata));
        assert_eq!(metas.len(), 8);
        for meta in metas {
            assert_eq!(meta.namespace.as_deref(), Some("shop"));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (
                    owner.kind.as_str(),
                    owner.name.as_str(),
                    owner.uid.as_str(),
                    owner.controller
                ),
                ("StockNet", "demo", "1234", Some(true))
            );
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "stocknet");
            assert_eq!(labels["app.kubernetes.io/instance"], "demo");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "stocknet-operator");
        }
    }

    #[test]
    fn order_replicas_get_stable_addresses_volumes_and_a_resync_readiness_probe() {
        let mut spec = StockNetSpec::default();
        spec.order.replicas = 5;
        spec.order.storage = "2Gi".into();
        spec.storage_class_name = Some("fast".into());
        let sn = stocknet(spec);
        let desired = desired(&sn).unwrap();
        let order = &desired.stateful_sets[1];
        let spec = order.spec.as_ref().unwrap();
        assert_eq!(order.metadata.name.as_deref(), Some("demo-order"));
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.service_name.as_deref(), Some("demo-order"));
        // The operator rolls order replicas itself (crate::upgrade); the catalog rolls as usual.
        let strategy = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref());
        assert_eq!(strategy, Some("OnDelete"));
        let catalog = desired.stateful_sets[0].spec.as_ref().unwrap();
        assert_eq!(catalog.update_strategy, None);
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("2Gi".into())
        );
        let container = &pod_spec(&spec.template).containers[0];
        assert_eq!(container.args.as_deref(), Some(&["order".to_owned()][..]));
        assert_eq!(
            container.ports.as_ref().unwrap()[0].container_port,
            ORDER_PORT
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/ready")
        );
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            ("data", DATA_DIR)
        );
        let env = env_of(container);
        assert!(
            !env.contains_key("STOCKNET_NODE_ID"),
            "the id comes from the ordinal"
        );
        assert_eq!(env["STOCKNET_DATA_DIR"], DATA_DIR);
        assert_eq!(
            env["STOCKNET_CATALOG_URL"],
            "http://demo-catalog.shop.svc:8081"
        );
        let peers: Vec<&str> = env["STOCKNET_ORDER_PEERS"].split(',').collect();
        assert_eq!(peers.len(), 5);
        assert_eq!(peers[0], "1=http://demo-order-0.demo-order.shop.svc:8091");
        assert_eq!(peers[4], "5=http://demo-order-4.demo-order.shop.svc:8091");

        let headless = desired
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("demo-order"))
            .unwrap();
        let headless = headless.spec.as_ref().unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
        assert_eq!(
            headless.selector.as_ref(),
            Some(&selector(&sn, Component::Order))
        );
    }

    #[test]
    fn catalog_keeps_its_csv_on_a_claim_and_invalidates_every_frontend_pod() {
        let mut spec = StockNetSpec::default();
        spec.catalog.initial_catalog = Some("name,price,quantity\nAcme,1.5,10\n".into());
        let desired = desired(&stocknet(spec)).unwrap();
        assert_eq!(
            desired.config_map.data.as_ref().unwrap()["catalog.csv"],
            "name,price,quantity\nAcme,1.5,10\n"
        );
        let catalog = desired.stateful_sets[0].spec.as_ref().unwrap();
        assert_eq!(catalog.replicas, Some(1));
        let pod = pod_spec(&catalog.template);
        let env = env_of(&pod.containers[0]);
        // The frontends' internal port, where their invalidation route listens.
        assert_eq!(
            env["STOCKNET_FRONTEND_DNS"],
            "demo-frontend-pods.shop.svc:8082"
        );
        assert_eq!(env["STOCKNET_INITIAL_CATALOG"], "/config/catalog.csv");
        assert_eq!(
            pod.volumes.as_ref().unwrap()[0]
                .config_map
                .as_ref()
                .unwrap()
                .name,
            "demo-catalog-initial"
        );
        let frontend_pods = desired
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("demo-frontend-pods"))
            .unwrap();
        assert_eq!(
            frontend_pods.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
    }

    #[test]
    fn frontend_takes_cache_settings_and_every_replica() {
        let mut spec = StockNetSpec::default();
        spec.frontend.replicas = 2;
        spec.frontend.cache_size = 64;
        spec.frontend.cache_enabled = false;
        let desired = desired(&stocknet(spec)).unwrap();
        let deployment = desired.deployment.spec.as_ref().unwrap();
        assert_eq!(deployment.replicas, Some(2));
        let env = env_of(&pod_spec(&deployment.template).containers[0]);
        assert_eq!(env["STOCKNET_CACHE_SIZE"], "64");
        assert_eq!(env["STOCKNET_NO_CACHE"], "true");
        assert_eq!(env["STOCKNET_ORDER_REPLICAS"].split(',').count(), 3);
        assert_eq!(env["STOCKNET_FRONTEND_INTERNAL_PORT"], "8082");
        // Generous per-client limits by default.
        assert_eq!(
            (
                env["STOCKNET_RATE_LIMIT"].as_str(),
                env["STOCKNET_RATE_BURST"].as_str(),
                env["STOCKNET_MAX_IN_FLIGHT"].as_str()
            ),
            ("2000", "4000", "512")
        );
        let container = &pod_spec(&deployment.template).containers[0];
        let ports: Vec<(Option<&str>, i32)> = container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("http"), 8080),
                (Some("metrics"), METRICS_PORT),
                (Some("internal"), 8082)
            ]
        );
    }

    #[test]
    fn every_pod_runs_as_non_root_with_a_read_only_root() {
        let desired = desired(&stocknet(StockNetSpec::default())).unwrap();
        let mut templates: Vec<&PodTemplateSpec> =
            vec![&desired.deployment.spec.as_ref().unwrap().template];
        templates.extend(
            desired
                .stateful_sets
                .iter()
                .map(|s| &s.spec.as_ref().unwrap().template),
        );
        for template in templates {
            let pod = pod_spec(template);
            assert_eq!(
                pod.security_context.as_ref().unwrap().run_as_non_root,
                Some(true)
            );
            let security = pod.containers[0].security_context.as_ref().unwrap();
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(
                security.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..])
            );
        }
    }

    #[test]
    fn every_pod_reads_the_shared_secret_from_the_stocknets_secret() {
        let sn = stocknet(StockNetSpec::default());
        let desired = desired(&sn).unwrap();
        let mut templates: Vec<&PodTemplateSpec> =
            vec![&desired.deployment.spec.as_ref().unwrap().template];
        templates.extend(
            desired
                .stateful_sets
                .iter()
                .map(|s| &s.spec.as_ref().unwrap().template),
        );
        for template in templates {
            let pod = pod_spec(template);
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "secret")
                .expect("a secret volume");
            let source = volume.secret.as_ref().unwrap();
            assert_eq!(source.secret_name.as_deref(), Some("demo-internal"));
            assert_eq!(source.default_mode, Some(0o400));
            let container = &pod.containers[0];
            assert_eq!(env_of(container)["STOCKNET_SECRET_FILE"], "/secret/token");
            let mount = container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == "secret")
                .unwrap();
            assert_eq!(
                (mount.mount_path.as_str(), mount.read_only),
                ("/secret", Some(true))
            );
        }
        let secret = shared_secret(&sn, "a-value-of-the-right-size").unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-internal"));
        assert_eq!(
            secret.metadata.owner_references.unwrap()[0].uid,
            "1234".to_owned()
        );
        assert_eq!(
            secret.string_data.unwrap()[SECRET_KEY],
            "a-value-of-the-right-size"
        );
    }

    #[test]
    fn every_component_is_scraped_through_exactly_one_service() {
        let desired = desired(&stocknet(StockNetSpec::default())).unwrap();
        let scraped: Vec<String> = desired
            .services
            .iter()
            .filter(|service| {
                let ports = service.spec.as_ref().unwrap().ports.as_ref().unwrap();
                ports.iter().any(|p| p.port == METRICS_PORT)
            })
            .map(|service| service.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(scraped, ["demo-catalog", "demo-order", "demo-frontend"]);
    }

    #[test]
    fn only_the_stocknets_own_pods_reach_its_catalog_and_replicas() {
        let sn = stocknet(StockNetSpec::default());
        let desired = desired(&sn).unwrap();
        let policies: Vec<(String, i32, Vec<Option<String>>, bool)> = desired
            .network_policies
            .iter()
            .map(|policy| {
                let spec = policy.spec.as_ref().unwrap();
                let port_of =
                    |rule: &NetworkPolicyIngressRule| match rule.ports.as_ref().unwrap()[0].port {
                        Some(IntOrString::Int(port)) => port,
                        ref other => panic!("{other:?}"),
                    };
                // Every component's metrics port is open to any scraper; it is the last rule.
                let rules = spec.ingress.as_ref().unwrap();
                let metrics = rules.last().unwrap();
                assert_eq!((port_of(metrics), &metrics.from), (METRICS_PORT, &None));
                let rule = &rules[rules.len() - 2];
                let port = port_of(rule);
                let from = rule.from.as_ref().unwrap();
                let components = from
                    .iter()
                    .map(|peer| {
                        let labels = peer.pod_selector.as_ref()?.match_labels.as_ref()?;
                        labels.get("app.kubernetes.io/component").cloned()
                    })
                    .collect();
                let any_namespace = from.iter().any(|peer| peer.namespace_selector.is_some());
                (
                    policy.metadata.name.clone().unwrap(),
                    port,
                    components,
                    any_namespace,
                )
            })
            .collect();
        let some = |c: &str| Some(c.to_owned());
        assert_eq!(
            policies,
            [
                (
                    "demo-catalog".to_owned(),
                    CATALOG_PORT,
                    vec![some("frontend"), some("order")],
                    false
                ),
                (
                    "demo-order".to_owned(),
                    ORDER_PORT,
                    vec![some("frontend"), some("order"), some("operator")],
                    true
                ),
                // The frontends' last rule: their internal port, for the catalog only.
                (
                    "demo-frontend".to_owned(),
                    FRONTEND_INTERNAL_PORT,
                    vec![some("catalog")],
                    false
                ),
            ]
        );
        // Their public port admits everybody.
        let frontend = desired.network_policies[2].spec.as_ref().unwrap();
        let public = &frontend.ingress.as_ref().unwrap()[0];
        assert_eq!(public.from, None);
        assert_eq!(
            public.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(FRONTEND_PORT))
        );
        // Every peer but the operator is this StockNet's.
        for policy in &desired.network_policies {
            let spec = policy.spec.as_ref().unwrap();
            let selected = spec
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap();
            assert_eq!(selected["app.kubernetes.io/instance"], "demo");
        }
        let mut off = StockNetSpec::default();
        off.network_policy.enabled = false;
        assert!(desired_of(off).network_policies.is_empty());
        assert_eq!(
            network_policy_names(&sn),
            ["demo-catalog", "demo-order", "demo-frontend"]
        );
    }

    fn desired_of(spec: StockNetSpec) -> Desired {
        desired(&stocknet(spec)).unwrap()
    }

    #[test]
    fn each_component_takes_its_resources_from_the_spec_or_defaults() {
        let limit = |template: &PodTemplateSpec| {
            pod_spec(template).containers[0]
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .map(|l| l["memory"].0.clone())
        };
        let defaults = desired_of(StockNetSpec::default());
        let order = &defaults.stateful_sets[1].spec.as_ref().unwrap().template;
        assert_eq!(limit(order).as_deref(), Some("512Mi"));
        let mut spec = StockNetSpec::default();
        spec.order.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("2Gi".into()),
            )])),
            ..ResourceRequirements::default()
        });
        let custom = desired_of(spec);
        let order = &custom.stateful_sets[1].spec.as_ref().unwrap().template;
        assert_eq!(limit(order).as_deref(), Some("2Gi"));
        let catalog = &custom.stateful_sets[0].spec.as_ref().unwrap().template;
        assert_eq!(limit(catalog).as_deref(), Some("256Mi"));
    }

    #[test]
    fn at_most_one_order_replica_is_disrupted_and_replicas_spread_over_nodes() {
        let desired = desired_of(StockNetSpec::default());
        let budget = desired.disruption_budget.spec.as_ref().unwrap();
        assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            budget
                .selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/component"],
            "order"
        );
        let order = &desired.stateful_sets[1];
        let spread = pod_spec(&order.spec.as_ref().unwrap().template)
            .topology_spread_constraints
            .as_ref()
            .unwrap();
        assert_eq!(
            (
                spread[0].topology_key.as_str(),
                spread[0].when_unsatisfiable.as_str()
            ),
            ("kubernetes.io/hostname", "ScheduleAnyway")
        );
    }

    #[test]
    fn render_prints_every_object_of_a_stocknet_file() {
        let yaml =
            "apiVersion: stocknet.io/v1alpha1\nkind: StockNet\nmetadata:\n  name: demo\nspec: {}\n";
        let rendered = render(yaml, "shop").unwrap();
        let kinds: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap",
                "Service",
                "Service",
                "Service",
                "Service",
                "StatefulSet",
                "StatefulSet",
                "Deployment",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "NetworkPolicy",
                "NetworkPolicy"
            ]
        );
        assert!(rendered.contains("namespace: shop"));
        assert!(render("kind: [", "shop").is_err());
    }

    #[test]
    fn a_bad_spec_is_an_error_not_a_panic() {
        let mut spec = StockNetSpec::default();
        spec.catalog.initial_catalog = Some("name,price,quantity\nAcme,cheap,10\n".into());
        assert_eq!(
            desired(&stocknet(spec)).unwrap_err(),
            SpecError::InitialCatalog(
                "line 2: price must be a number >= 0 with at most 2 decimals".into()
            )
        );
        let mut spec = StockNetSpec::default();
        spec.catalog.initial_catalog = Some("stock,quantity\n".into());
        assert!(matches!(
            desired(&stocknet(spec)),
            Err(SpecError::InitialCatalog(_))
        ));
        // A header and no stocks: the catalog would refuse to start, so the spec is invalid.
        let mut spec = StockNetSpec::default();
        spec.catalog.initial_catalog = Some("name,price,quantity\n".into());
        assert_eq!(
            desired(&stocknet(spec)).unwrap_err(),
            SpecError::InitialCatalog("no stocks".into())
        );
        let mut no_namespace = stocknet(StockNetSpec::default());
        no_namespace.metadata.namespace = None;
        assert_eq!(desired(&no_namespace).unwrap_err(), SpecError::NoNamespace);
    }
}
