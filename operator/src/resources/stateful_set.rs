//! The catalog's and the order replicas' StatefulSets.

use super::*;
use stocknet_common::paths;

pub(super) fn stateful_set(
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

pub(super) fn catalog_url(sn: &StockNet) -> Result<String, SpecError> {
    Ok(format!(
        "http://{}.{}.svc:{CATALOG_PORT}",
        name(sn, Component::Catalog),
        namespace(sn)?
    ))
}

pub(super) fn catalog_stateful_set(sn: &StockNet) -> Result<StatefulSet, SpecError> {
    let frontend_pods = format!(
        "{}-pods.{}.svc:{FRONTEND_INTERNAL_PORT}",
        name(sn, Component::Frontend),
        namespace(sn)?
    );
    let container = container(
        sn,
        Component::Catalog,
        (env::CATALOG_PORT, CATALOG_PORT),
        env(&[
            (env::DATA_DIR, DATA_DIR.into()),
            (env::INITIAL_CATALOG, "/config/catalog.csv".into()),
            (env::FRONTEND_URLS, String::new()),
            (env::FRONTEND_DNS, frontend_pods),
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
        paths::HEALTH.pattern(),
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

pub(super) fn order_stateful_set(
    sn: &StockNet,
    layout: OrderLayout,
) -> Result<StatefulSet, SpecError> {
    // No STOCKNET_NODE_ID: each pod takes its StatefulSet ordinal + 1 from its host name.
    let container = container(
        sn,
        Component::Order,
        (env::ORDER_PORT, ORDER_PORT),
        env(&[
            // The founders only: a replica not among them joins as the operator adds it.
            (ORDER_PEERS_VAR, order_peers(sn, layout.founders)?),
            (env::CATALOG_URL, catalog_url(sn)?),
            (env::DATA_DIR, DATA_DIR.into()),
        ]),
        vec![data_mount()],
        // Ready only once boot resync is done.
        paths::READY.pattern(),
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
        layout.pods,
        template,
        &sn.spec.order.storage,
    )
}
