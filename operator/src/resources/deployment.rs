//! The frontend's Deployment.

use super::*;
use stocknet_common::paths;

/// The frontends, which look for the order leader among `order_pods` replicas.
pub(super) fn frontend_deployment(sn: &StockNet, order_pods: i32) -> Result<Deployment, SpecError> {
    let frontend = &sn.spec.frontend;
    let mut vars = vec![
        (
            env::FRONTEND_INTERNAL_PORT,
            FRONTEND_INTERNAL_PORT.to_string(),
        ),
        (env::CATALOG_URL, catalog_url(sn)?),
        (env::ORDER_REPLICAS, order_peers(sn, order_pods)?),
        (env::CACHE_SIZE, frontend.cache_size.to_string()),
        (env::RATE_LIMIT, frontend.rate_limit.per_second.to_string()),
        (env::RATE_BURST, frontend.rate_limit.burst.to_string()),
        (
            env::MAX_IN_FLIGHT,
            frontend.rate_limit.max_in_flight.to_string(),
        ),
    ];
    if !frontend.cache_enabled {
        vars.push((env::NO_CACHE, "true".to_owned()));
    }
    let mut container = container(
        sn,
        Component::Frontend,
        (env::FRONTEND_PORT, FRONTEND_PORT),
        env(&vars),
        Vec::new(),
        paths::HEALTH.pattern(),
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
