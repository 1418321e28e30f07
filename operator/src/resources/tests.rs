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

/// The pod template of the report CronJob's Jobs.
fn report_template(cron_job: &k8s_openapi::api::batch::v1::CronJob) -> &PodTemplateSpec {
    let jobs = &cron_job.spec.as_ref().unwrap().job_template;
    &jobs.spec.as_ref().unwrap().template
}

#[test]
fn every_object_is_owned_labelled_and_namespaced() {
    let desired = desired(&stocknet(StockNetSpec::default())).unwrap();
    let mut metas: Vec<&ObjectMeta> =
        vec![&desired.config_map.metadata, &desired.deployment.metadata];
    metas.extend(desired.services.iter().map(|s| &s.metadata));
    metas.extend(desired.stateful_sets.iter().map(|s| &s.metadata));
    let (claim, cron_job) = desired.reports.as_ref().unwrap();
    metas.extend([&claim.metadata, &cron_job.metadata]);
    assert_eq!(metas.len(), 10);
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

/// The pod template of every workload: the frontend's Deployment and the StatefulSets.
fn pod_templates(desired: &Desired) -> Vec<&PodTemplateSpec> {
    let mut templates = vec![&desired.deployment.spec.as_ref().unwrap().template];
    templates.extend(
        desired
            .stateful_sets
            .iter()
            .map(|s| &s.spec.as_ref().unwrap().template),
    );
    templates
}

#[test]
fn every_pod_runs_as_non_root_with_a_read_only_root() {
    let desired = desired(&stocknet(StockNetSpec::default())).unwrap();
    for template in pod_templates(&desired) {
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

/// A private registry's pull secrets reach every pod that runs the image, the report's too;
/// without any, no pod names one.
#[test]
fn every_pod_pulls_its_image_with_the_spec_s_pull_secrets() {
    use k8s_openapi::api::core::v1::LocalObjectReference;

    let regcred = LocalObjectReference {
        name: "regcred".into(),
    };
    let spec = StockNetSpec {
        image_pull_secrets: vec![regcred.clone()],
        ..StockNetSpec::default()
    };
    for (spec, expected) in [(spec, Some(vec![regcred])), (StockNetSpec::default(), None)] {
        let desired = desired(&stocknet(spec)).unwrap();
        let (_, cron_job) = desired.reports.as_ref().unwrap();
        let mut templates = pod_templates(&desired);
        templates.push(report_template(cron_job));
        for template in templates {
            assert_eq!(pod_spec(template).image_pull_secrets, expected);
        }
    }
}

/// The Secret found under the shared secret's name: this StockNet's own, or one made by hand
/// (no owner) or by another controller, is used; one a deleted StockNet of the same name left
/// is taken over; one being deleted is waited for.
#[test]
fn a_shared_secret_found_is_used_taken_over_or_waited_for() {
    let sn = stocknet(StockNetSpec::default());
    let own = shared_secret(&sn, "a-value-of-the-right-size").unwrap();
    assert_eq!(found_secret(&own, &sn), FoundSecret::Use);

    let mut by_hand = own.clone();
    by_hand.metadata.owner_references = None;
    assert_eq!(found_secret(&by_hand, &sn), FoundSecret::Use);

    let mut before = stocknet(StockNetSpec::default());
    before.metadata.uid = Some("the-deleted-one".into());
    let left = shared_secret(&before, "a-value-of-the-right-size").unwrap();
    assert_eq!(found_secret(&left, &sn), FoundSecret::Adopt);

    let mut managed = left.clone();
    if let Some(owners) = managed.metadata.owner_references.as_mut() {
        owners[0].api_version = "bitnami.com/v1alpha1".into();
        owners[0].kind = "SealedSecret".into();
    }
    assert_eq!(
        found_secret(&managed, &sn),
        FoundSecret::Use,
        "another controller's"
    );

    let mut going = left.clone();
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    assert_eq!(found_secret(&going, &sn), FoundSecret::Deleting);
}

#[test]
fn every_pod_reads_the_shared_secret_from_the_stocknets_secret() {
    let sn = stocknet(StockNetSpec::default());
    let desired = desired(&sn).unwrap();
    for template in pod_templates(&desired) {
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

/// What `render` prints for a StockNet file of the default spec, in namespace `shop`.
fn rendered_default() -> String {
    let yaml =
        "apiVersion: stocknet.io/v1alpha1\nkind: StockNet\nmetadata:\n  name: demo\nspec: {}\n";
    render(yaml, "shop").unwrap()
}

/// The kind of every object in `rendered`, in order.
fn kinds(rendered: &str) -> Vec<&str> {
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect()
}

#[test]
fn render_prints_every_object_of_a_stocknet_file() {
    let rendered = rendered_default();
    assert_eq!(
        kinds(&rendered),
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
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "CronJob"
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

#[test]
fn the_report_runs_on_schedule_against_the_frontend_with_its_own_archive_and_secrets() {
    use crate::crd::{ReportMailSpec, ReportWebhookSpec, SecretKey};
    let sn = stocknet(StockNetSpec::default());
    let (claim, cron_job) = desired(&sn).unwrap().reports.unwrap();
    let spec = cron_job.spec.as_ref().unwrap();
    assert_eq!(
        (spec.schedule.as_str(), spec.time_zone.as_deref()),
        ("5 0 * * *", Some("UTC"))
    );
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(spec.starting_deadline_seconds, Some(600));
    assert_eq!(
        (
            spec.successful_jobs_history_limit,
            spec.failed_jobs_history_limit
        ),
        (Some(3), Some(3))
    );
    let job = spec.job_template.spec.as_ref().unwrap();
    let pod = pod_spec(&job.template);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let container = &pod.containers[0];
    assert_eq!(container.args.as_deref(), Some(&["report".to_owned()][..]));
    let env = env_of(container);
    assert_eq!(
        env["STOCKNET_REPORT_FRONTEND"],
        "http://demo-frontend.shop.svc:8080"
    );
    assert_eq!(env["STOCKNET_REPORT_DATE"], "yesterday");
    assert!(
        !env.keys()
            .any(|k| k.contains("SMTP") || k.contains("WEBHOOK")),
        "{env:?}"
    );
    // A client of the public API: no shared secret, no service account token.
    let volumes = pod.volumes.as_ref().unwrap();
    assert!(volumes.iter().all(|v| v.secret.is_none()), "{volumes:?}");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        claim.metadata.name.clone().unwrap()
    );
    assert_eq!(claim.metadata.name.as_deref(), Some("demo-reports"));
    let requests = claim
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(requests["storage"].0, "1Gi");

    // Webhook and mail: the URLs as variables, the keys as files from the user's Secrets.
    let mut spec = StockNetSpec::default();
    spec.reports.schedule = "5 0 * * *".into();
    spec.reports.day = "yesterday".into();
    spec.reports.webhook = Some(ReportWebhookSpec {
        url: "https://hooks.example.com/r".into(),
        secret: SecretKey {
            name: "hook".into(),
            key: "hmac".into(),
        },
    });
    spec.reports.mail = Some(ReportMailSpec {
        smtp_url: "smtp://mail.example.com".into(),
        from: "reports@example.com".into(),
        to: vec!["desk@example.com".into(), "risk@example.com".into()],
        credentials: Some(SecretKey {
            name: "smtp".into(),
            key: "login".into(),
        }),
    });
    let (_, cron_job) = desired(&stocknet(spec)).unwrap().reports.unwrap();
    let pod = pod_spec(report_template(&cron_job)).clone();
    let env = env_of(&pod.containers[0]);
    assert_eq!(env["STOCKNET_REPORT_DATE"], "yesterday");
    assert_eq!(
        env["STOCKNET_REPORT_WEBHOOK"],
        "https://hooks.example.com/r"
    );
    assert_eq!(
        env["STOCKNET_REPORT_MAIL_TO"],
        "desk@example.com,risk@example.com"
    );
    let files: Vec<(String, String, String)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let secret = v.secret.as_ref()?;
            let item = &secret.items.as_ref()?[0];
            Some((
                secret.secret_name.clone()?,
                item.key.clone(),
                item.path.clone(),
            ))
        })
        .collect();
    assert_eq!(
        files,
        [
            ("hook".into(), "hmac".into(), "key".into()),
            ("smtp".into(), "login".into(), "login".into())
        ]
    );
    let mounts: Vec<String> = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    assert!(
        env["STOCKNET_REPORT_WEBHOOK_SECRET_FILE"].starts_with(&mounts[1]),
        "{mounts:?}"
    );
    assert!(
        env["STOCKNET_REPORT_SMTP_CREDENTIALS_FILE"].starts_with(&mounts[2]),
        "{mounts:?}"
    );

    let mut spec = StockNetSpec::default();
    spec.reports.enabled = false;
    assert!(desired(&stocknet(spec)).unwrap().reports.is_none());
}

#[test]
fn the_owned_kinds_are_what_render_makes_what_rbac_grants_and_what_the_controller_watches() {
    use std::collections::BTreeSet;
    let text = rendered_default();
    let rendered: BTreeSet<&str> = kinds(&text).into_iter().collect();
    let owned: BTreeSet<&str> = OWNED_KINDS.iter().map(|o| o.kind).collect();
    assert_eq!(rendered, owned);

    // The ClusterRole's rules (its templating is in its metadata only).
    let rbac = include_str!("../../../charts/stocknet/templates/rbac.yaml");
    let role = rbac.split("\n---").next().unwrap();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&role[role.find("rules:").unwrap()..]).unwrap();
    let rules = rules["rules"].as_sequence().unwrap();
    let names = |rule: &serde_yaml::Value, field: &str| -> Vec<String> {
        rule[field]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    // Without the spaces rustfmt puts in, every watch reads `.owns(Api::<Kind>`.
    let controller: String = include_str!("../controller.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let verbs_on = |group: &str, resource: &str| -> BTreeSet<String> {
        rules
            .iter()
            .filter(|rule| {
                names(rule, "apiGroups").contains(&group.to_owned())
                    && names(rule, "resources").contains(&resource.to_owned())
            })
            .flat_map(|rule| names(rule, "verbs"))
            .collect()
    };
    // The shared secret: read, made once, taken over from a deleted namesake.
    let secrets: BTreeSet<String> = ["get", "create", "patch"].map(String::from).into();
    assert_eq!(verbs_on("", "secrets"), secrets);
    for kind in OWNED_KINDS {
        let verbs = verbs_on(kind.group, kind.resource);
        let mut needed = vec!["get", "list", "watch", "create", "patch"];
        if kind.pruned {
            needed.push("delete");
        }
        for verb in needed {
            assert!(
                verbs.contains(verb),
                "RBAC lacks {verb} on {}",
                kind.resource
            );
        }
        assert!(
            controller.contains(&format!(".owns(Api::<{}>", kind.kind)),
            "the controller does not watch {}",
            kind.kind
        );
    }
}
