//! The ConfigMap holding the initial catalog.

use super::*;

/// The same check the catalog makes when it starts (one parser, in stocknet-common).
pub(super) fn check_catalog_csv(csv: &str) -> Result<(), SpecError> {
    stocknet_common::catalog_file::parse(csv)
        .map(drop)
        .map_err(|e| SpecError::InitialCatalog(e.to_string()))
}

pub(super) fn initial_catalog(sn: &StockNet) -> Result<ConfigMap, SpecError> {
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
