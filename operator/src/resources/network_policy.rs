//! The NetworkPolicies that keep internal routes internal.

use super::*;

/// The NetworkPolicies of `sn`, by name: what [`network_policies`] builds.
pub fn network_policy_names(sn: &StockNet) -> [String; 3] {
    [
        name(sn, Component::Catalog),
        name(sn, Component::Order),
        name(sn, Component::Frontend),
    ]
}

/// Ingress to the catalog from this StockNet's frontends and order replicas only; to the order
/// replicas from its frontends, its replicas and the operator (health probes, membership
/// steps) only; to the frontends' internal port from the catalog only. The frontends' public port stays open to
/// everybody: it serves the public API; so does every component's metrics port (read only),
/// for Prometheus wherever it runs.
pub(super) fn network_policies(sn: &StockNet) -> Result<Vec<NetworkPolicy>, SpecError> {
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
