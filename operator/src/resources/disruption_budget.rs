//! The order replicas' PodDisruptionBudget.

use super::*;

/// At most one order replica down at a time for voluntary disruptions (drains, upgrades):
/// a majority must stay up to accept orders.
pub(super) fn order_disruption_budget(sn: &StockNet) -> Result<PodDisruptionBudget, SpecError> {
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
