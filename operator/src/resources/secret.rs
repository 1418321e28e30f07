//! The Secret holding the shared secret of a StockNet's internal calls.

use super::*;

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
