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

/// What the reconcile does with the Secret found under the shared secret's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundSecret {
    /// This StockNet's own, or one made for it by hand or by another controller: its value is
    /// used.
    Use,
    /// Left by a StockNet of the same name that was deleted before this one was made, and not
    /// collected yet: this one takes it over (its owner reference, and the value the pods
    /// read). Used as it was, the garbage collector would delete it soon after, and the next
    /// reconcile would make another value than the one the running pods read.
    Adopt,
    /// Being deleted (it has finalizers): the reconcile waits until it is gone and makes a new
    /// one.
    Deleting,
}

/// What to do with `secret`, found under the shared secret's name of `sn`. Only a Secret whose
/// every owner is a StockNet of this name, another one, is taken over: one another controller
/// manages (sealed-secrets, External Secrets) is used as it is.
pub fn found_secret(secret: &Secret, sn: &StockNet) -> FoundSecret {
    let owners = secret
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    let left_by_namesake = |owner: &OwnerReference| {
        owner.api_version == StockNet::api_version(&()).as_ref()
            && owner.kind == StockNet::kind(&()).as_ref()
            && owner.name == sn.name_any()
            && Some(owner.uid.as_str()) != sn.uid().as_deref()
    };
    if secret.metadata.deletion_timestamp.is_some() {
        FoundSecret::Deleting
    } else if !owners.is_empty() && owners.iter().all(left_by_namesake) {
        FoundSecret::Adopt
    } else {
        FoundSecret::Use
    }
}
