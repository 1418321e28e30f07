//! What every workload's pods share: containers, probes, environment, resources, the data volume.

use super::*;
use stocknet_common::paths;

pub(super) fn env(pairs: &[(&str, String)]) -> Vec<EnvVar> {
    pairs
        .iter()
        .map(|(name, value)| EnvVar {
            name: (*name).to_owned(),
            value: Some(value.clone()),
            ..EnvVar::default()
        })
        .collect()
}

pub(super) fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
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

/// `component`'s container, serving on `port` (which `port_var` tells the service): non-root,
/// read-only root filesystem, no capabilities. Besides `env` it sets what every service's
/// container does: listening on every address of the pod, the shared secret's file and the
/// metrics port.
pub(super) fn container(
    sn: &StockNet,
    component: Component,
    (port_var, port): (&str, i32),
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
            self::env(&[(env::HOST, "0.0.0.0".into()), (port_var, port.to_string())])
                .into_iter()
                .chain(env)
                .chain(self::env(&[
                    (env::SECRET_FILE, format!("{SECRET_DIR}/{SECRET_KEY}")),
                    (env::METRICS_PORT, METRICS_PORT.to_string()),
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
        // A service opens its files before it listens, which a long log or journal makes take
        // a while: up to 10 minutes before the liveness probe starts counting.
        startup_probe: Some(http_probe(paths::HEALTH.pattern(), 10, 60)),
        liveness_probe: Some(http_probe(paths::HEALTH.pattern(), 10, 6)),
        resources: Some(resources(sn, component)),
        security_context: Some(restricted()),
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

/// A container's: non-root, read-only root filesystem, no capabilities, no escalation.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// A pod's: the image's non-root user and group, the runtime's seccomp profile.
/// The spec's `imagePullSecrets`, for every pod that runs its image.
pub(super) fn pull_secrets(sn: &StockNet) -> Option<Vec<LocalObjectReference>> {
    let secrets = &sn.spec.image_pull_secrets;
    (!secrets.is_empty()).then(|| secrets.clone())
}

pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(USER),
        run_as_group: Some(USER),
        fs_group: Some(USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The spec's resources for `component`, or defaults: a small request and a memory limit (an
/// order replica holds its book in memory, so it gets more). No CPU limit: throttling would
/// stretch commit rounds for every client.
pub(super) fn resources(sn: &StockNet, component: Component) -> ResourceRequirements {
    let (configured, memory_limit) = match component {
        Component::Catalog => (&sn.spec.catalog.resources, "256Mi"),
        Component::Order => (&sn.spec.order.resources, "512Mi"),
        Component::Frontend => (&sn.spec.frontend.resources, "256Mi"),
        Component::Reports => (&None, "128Mi"),
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

pub(super) fn pod_template(
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
            image_pull_secrets: pull_secrets(sn),
            automount_service_account_token: Some(false),
            security_context: Some(pod_security()),
            ..PodSpec::default()
        }),
    }
}

pub(super) fn data_mount() -> VolumeMount {
    VolumeMount {
        name: "data".into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    }
}

pub(super) fn data_claim(
    sn: &StockNet,
    component: Component,
    storage: &str,
) -> PersistentVolumeClaim {
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
