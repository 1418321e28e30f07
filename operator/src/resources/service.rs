//! The Services: one per component, and the frontend pods' own (headless) one.

use super::*;

/// A Service of `component` on `port`, and on the metrics port if `scraped` (each component's
/// pods are scraped through one Service only).
pub(super) fn service(
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

pub(super) fn catalog_service(sn: &StockNet) -> Result<Service, SpecError> {
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
pub(super) fn order_service(sn: &StockNet) -> Result<Service, SpecError> {
    service(
        sn,
        name(sn, Component::Order),
        Component::Order,
        ORDER_PORT,
        true,
        true,
    )
}

pub(super) fn frontend_service(sn: &StockNet) -> Result<Service, SpecError> {
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
pub(super) fn frontend_pods_service(sn: &StockNet) -> Result<Service, SpecError> {
    service(
        sn,
        format!("{}-pods", name(sn, Component::Frontend)),
        Component::Frontend,
        FRONTEND_PORT,
        true,
        false,
    )
}
