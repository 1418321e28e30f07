//! The reconciler against a mocked API server (kube-rs's `tower_test` pattern, as in
//! kube-rs/controller-rs) and stand-in order replicas on 127.0.0.1: what it applies, which
//! pods it deletes, which events it records and what status it writes.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use stocknet_operator::controller::{reconcile, reconcile_within, Context, Error, Settings};
use stocknet_operator::crd::{ReplicaStatus, StockNet, StockNetSpec, StockNetStatus};

/// One request the operator made: method, path and query, JSON body.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    uri: String,
    body: Value,
}

/// Answers like an API server: echoes applied and created objects (the order StatefulSet with
/// `order_revision` as its update revision, if given), lists `pods` and `jobs`, serves the order
/// StatefulSet that exists (`existing`, if any) and the StockNet's network policies and report
/// CronJob (`demo-frontend`'s policy is a user's own, not the StockNet's), refuses an apply
/// of the object whose path ends in `refused` (as an admission webhook would), answers 409 to
/// the deletion of a pod observed with a uid `replaced-…` (the StatefulSet made another since)
/// and 429 to the eviction of one with a uid `budget-…` (its disruption budget allows none now),
/// and records every call.
async fn fake_api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    (pods, jobs): (Value, Value),
    order_revision: Option<String>,
    existing: Option<Value>,
    refused: Option<&'static str>,
    calls: Arc<Mutex<Vec<Call>>>,
) {
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if method == "PATCH" && refused.is_some_and(|r| path.ends_with(r)) {
            calls.lock().unwrap().push(Call { method, uri, body });
            let denied = "admission webhook \"policy.example\" denied the request";
            send.send_response(failure(403, "Forbidden", denied));
            continue;
        }
        let uid = body["preconditions"]["uid"].as_str().unwrap_or_default();
        let evicted_uid = body["deleteOptions"]["preconditions"]["uid"].as_str();
        if method == "POST" && evicted_uid.is_some_and(|uid| uid.starts_with("budget-")) {
            calls.lock().unwrap().push(Call { method, uri, body });
            let budget = "Cannot evict pod as it would violate the pod's disruption budget.";
            send.send_response(failure(429, "TooManyRequests", budget));
            continue;
        }
        if method == "DELETE" && uid.starts_with("replaced-") {
            calls.lock().unwrap().push(Call { method, uri, body });
            let conflict = "Precondition failed: UID in precondition does not match UID in object";
            send.send_response(failure(409, "Conflict", conflict));
            continue;
        }
        if method == "GET" && path.ends_with("/statefulsets/demo-order") && existing.is_some() {
            calls.lock().unwrap().push(Call { method, uri, body });
            let reply = serde_json::to_vec(&existing).unwrap();
            send.send_response(Response::builder().body(Body::from(reply)).unwrap());
            continue;
        }
        // No shared secret and no StatefulSet exist yet: the operator creates them.
        if method == "GET" && (path.contains("/secrets/") || path.contains("/statefulsets/")) {
            calls.lock().unwrap().push(Call { method, uri, body });
            send.send_response(failure(404, "NotFound", "not found"));
            continue;
        }
        let reply = match method.as_str() {
            "GET" if path.contains("/networkpolicies/") || path.contains("/cronjobs/") => {
                let name = path.rsplit('/').next().unwrap_or_default();
                let owners = if name == "demo-frontend" {
                    json!([])
                } else {
                    json!([{"apiVersion": "stocknet.io/v1alpha1", "kind": "StockNet",
                            "name": "demo", "uid": "uid-1", "controller": true}])
                };
                json!({"metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                                    "ownerReferences": owners}})
            }
            "GET" if path.ends_with("/pods") => pods.clone(),
            "GET" if path.ends_with("/jobs") => jobs.clone(),
            "DELETE" if path.contains("/networkpolicies/") => json!({
                "apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}),
            "DELETE" => json!({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": path.rsplit('/').next()}}),
            "POST" if path.ends_with("/eviction") => json!({
                "apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}),
            "PATCH" if path.ends_with("/status") => json!({
                "apiVersion": "stocknet.io/v1alpha1", "kind": "StockNet",
                "metadata": {"name": "demo", "namespace": "shop"},
                "spec": {}, "status": body["status"].clone()}),
            "PATCH" if path.ends_with("/statefulsets/demo-order") && order_revision.is_some() => {
                let mut applied = body.clone();
                applied["status"] = json!({"replicas": 3, "updateRevision": order_revision});
                applied
            }
            _ => body.clone(),
        };
        calls.lock().unwrap().push(Call { method, uri, body });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
}

/// An API server's failure: a `Status` with `code`, `reason` and `message`.
fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                        "reason": reason, "code": code, "message": message});
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap()
}

/// A stand-in order replica's `/health` on 127.0.0.1 (every pod whose IP is 127.0.0.1 is it).
async fn healthy_replica() -> u16 {
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(|| async {
            axum::Json(
                json!({"data": {"node_id": 3, "term": 7, "leader": 3, "ready": true,
                                      "last_transaction": 12}}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn stocknet(status: Option<StockNetStatus>) -> StockNet {
    let mut sn = StockNet::new("demo", StockNetSpec::default());
    sn.metadata.namespace = Some("shop".into());
    sn.metadata.uid = Some("uid-1".into());
    sn.metadata.generation = Some(2);
    sn.status = status;
    sn
}

/// Order pod `ordinal` at `ip`, with its container in `state`.
fn pod(ordinal: u32, ip: &str, state: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("demo-order-{ordinal}"), "namespace": "shop",
                     "uid": format!("uid-demo-order-{ordinal}")},
        "status": {"phase": "Running", "podIP": ip,
                   "containerStatuses": [{"name": "order", "image": "stocknet:0.1.0",
                                          "imageID": "", "ready": true, "restartCount": 0,
                                          "state": state}]}
    })
}

/// Runs one reconcile of `sn` against the fake API server listing `pods`; returns what it
/// asked to be requeued after, and every call it made.
async fn run_reconcile(sn: StockNet, pods: Vec<Value>) -> (String, Vec<Call>) {
    run_reconcile_at(sn, pods, None).await
}

/// [`run_reconcile`] with the order StatefulSet's template at `revision` (it exists then, as
/// the operator made it for `sn`).
async fn run_reconcile_at(
    sn: StockNet,
    pods: Vec<Value>,
    revision: Option<&str>,
) -> (String, Vec<Call>) {
    let existing = revision.map(|_| {
        let desired = stocknet_operator::resources::desired(&sn).unwrap();
        serde_json::to_value(&desired.stateful_sets[1]).unwrap()
    });
    // The group as it stands: three voters, the followers caught up.
    let (port, _) = leader_of(json!({"configs": [[1, 2, 3]], "learners": [], "urls": {},
                                     "entry": 9, "committed": true, "leader": 3, "behind": {"1": 0, "2": 0}}))
    .await;
    run_reconcile_with(sn, pods, revision, existing, port).await
}

/// One reconcile of `sn` against the fake API server (see [`fake_api_server`]), with the
/// order replicas' stand-in on `replica_port`.
async fn run_reconcile_with(
    sn: StockNet,
    pods: Vec<Value>,
    revision: Option<&str>,
    existing: Option<Value>,
    replica_port: u16,
) -> (String, Vec<Call>) {
    run_reconcile_with_jobs(sn, pods, revision, existing, replica_port, Vec::new()).await
}

/// [`run_reconcile_with`], the report CronJob's Jobs being `jobs`.
async fn run_reconcile_with_jobs(
    sn: StockNet,
    pods: Vec<Value>,
    revision: Option<&str>,
    existing: Option<Value>,
    replica_port: u16,
    jobs: Vec<Value>,
) -> (String, Vec<Call>) {
    let (reconciled, calls) =
        reconcile_refusing(sn, pods, (revision, existing), replica_port, jobs, None).await;
    let action = reconciled.expect("reconcile");
    (format!("{action:?}"), calls)
}

/// One reconcile against the fake API server, which refuses to apply the object whose path
/// ends in `refused`; what it returned, and every call it made.
async fn reconcile_refusing(
    sn: StockNet,
    pods: Vec<Value>,
    (revision, existing): (Option<&str>, Option<Value>),
    replica_port: u16,
    jobs: Vec<Value>,
    refused: Option<&'static str>,
) -> (Result<kube::runtime::controller::Action, Error>, Vec<Call>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods});
    let jobs = json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": jobs});
    let revision = revision.map(str::to_owned);
    let server = tokio::spawn(fake_api_server(
        handle,
        (list, jobs),
        revision,
        existing,
        refused,
        calls.clone(),
    ));
    let settings = Settings {
        probe_period_seconds: 5,
        failure_threshold: 3,
        probe_timeout_ms: 500,
        probe_port: replica_port,
    };
    let context = Arc::new(Context::new(client, settings));
    let reconciled = reconcile(Arc::new(sn), context).await;
    server.abort();
    let calls = calls.lock().unwrap().clone();
    (reconciled, calls)
}

/// An API server that takes a call and never answers ends the reconcile at its deadline, as
/// a failure (retried with backoff), instead of holding the StockNet's reconciles for good.
#[tokio::test]
async fn an_api_server_that_never_answers_fails_the_reconcile_at_its_deadline() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    // Takes every request and answers none.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let _ = asked_tx.send(request.uri().to_string());
            held.push(send);
        }
    });
    let settings = Settings {
        probe_period_seconds: 5,
        failure_threshold: 3,
        probe_timeout_ms: 500,
        probe_port: 1,
    };
    let context = Arc::new(Context::new(Client::new(service, "default"), settings));
    let deadline = std::time::Duration::from_millis(300);
    let reconciled = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reconcile_within(deadline, Arc::new(stocknet(None)), context),
    )
    .await
    .expect("the reconcile ends at its deadline");
    assert!(
        matches!(reconciled, Err(Error::Deadline(d)) if d == deadline),
        "{reconciled:?}"
    );
    assert!(asked.recv().await.is_some(), "the API server was called");
    server.abort();
}

fn requeue_after(seconds: u64) -> String {
    format!(
        "{:?}",
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(seconds))
    )
}

fn status_written(calls: &[Call]) -> StockNetStatus {
    let call = calls
        .iter()
        .find(|c| c.method == "PATCH" && c.uri.contains("/stocknets/demo/status"))
        .expect("status written");
    serde_json::from_value(call.body["status"].clone()).unwrap()
}

/// The status, reason and message of the `Ready` condition in `status`.
fn ready(status: &StockNetStatus) -> (&str, &str, &str) {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (&ready.status, &ready.reason, &ready.message)
}

/// A container state: running.
fn running() -> Value {
    json!({"running": {}})
}

/// Order pods 0 to `count` - 1, running, each at 127.0.0.1 (where the test's replica stands in).
fn running_pods(count: u32) -> Vec<Value> {
    (0..count).map(|i| pod(i, "127.0.0.1", running())).collect()
}

#[tokio::test]
async fn a_new_stocknet_gets_every_object_applied_and_a_ready_status() {
    let pods = running_pods(3);
    let (action, calls) = run_reconcile(stocknet(None), pods).await;
    assert_eq!(action, requeue_after(5), "the next health round");

    let applied: Vec<(String, String)> = calls
        .iter()
        .filter(|c| c.method == "PATCH" && !c.uri.contains("/status"))
        .map(|c| {
            assert!(
                c.uri.contains("fieldManager=stocknet-operator") && c.uri.contains("force=true"),
                "server-side apply: {}",
                c.uri
            );
            let owner = &c.body["metadata"]["ownerReferences"][0];
            assert_eq!(
                (owner["kind"].as_str(), owner["uid"].as_str()),
                (Some("StockNet"), Some("uid-1"))
            );
            (
                c.body["kind"].as_str().unwrap().to_owned(),
                c.body["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("ConfigMap", "demo-catalog-initial"),
        ("Service", "demo-catalog"),
        ("Service", "demo-order"),
        ("Service", "demo-frontend"),
        ("Service", "demo-frontend-pods"),
        ("StatefulSet", "demo-catalog"),
        ("StatefulSet", "demo-order"),
        ("Deployment", "demo-frontend"),
        ("PodDisruptionBudget", "demo-order"),
        ("NetworkPolicy", "demo-catalog"),
        ("NetworkPolicy", "demo-order"),
        ("NetworkPolicy", "demo-frontend"),
        ("PersistentVolumeClaim", "demo-reports"),
        ("CronJob", "demo-reports"),
    ];
    assert_eq!(
        applied,
        expected.map(|(k, n)| (k.to_owned(), n.to_owned())).to_vec()
    );
    // The shared secret is created once, owned by the StockNet, with a fresh random value
    // that the status never mentions.
    let created: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.uri.contains("/secrets"))
        .collect();
    assert_eq!(created.len(), 1);
    let secret = &created[0].body;
    assert_eq!(secret["metadata"]["name"], "demo-internal");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let token = secret["stringData"]["token"].as_str().expect("token");
    assert_eq!(token.len(), 64);
    let status_call = calls
        .iter()
        .find(|c| c.uri.contains("/status"))
        .expect("status");
    assert!(!status_call.body.to_string().contains(token));
    assert!(
        calls.iter().all(|c| c.method != "DELETE"),
        "a healthy replica is left alone"
    );

    let status = status_written(&calls);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.leader, Some(3));
    assert_eq!(status.replicas.len(), 3);
    assert!(status
        .replicas
        .iter()
        .all(|r| r.healthy && r.last_transaction == Some(12)));
    let (ready, reason, _) = ready(&status);
    assert_eq!((ready, reason), ("True", "AllReplicasHealthy"));
}

/// A replica that says it is ready but that the leader counts far behind (a slow disk) is not
/// healthy, and the StockNet is not Ready: the group's word, not the replica's own.
#[tokio::test]
async fn a_replica_far_behind_the_leader_is_not_healthy() {
    let (port, _) = leader_of(json!({"configs": [[1, 2, 3]], "learners": [], "urls": {},
                                     "entry": 9, "committed": true, "leader": 3,
                                     "behind": {"1": 50000, "2": 0}}))
    .await;
    let (_, calls) = run_reconcile_with(stocknet(None), running_pods(3), None, None, port).await;
    assert!(deleted_pods(&calls).is_empty(), "behind is not down");
    let status = status_written(&calls);
    let healthy: Vec<(u32, bool)> = status.replicas.iter().map(|r| (r.id, r.healthy)).collect();
    assert_eq!(healthy, [(1, false), (2, true), (3, true)]);
    assert_eq!(ready(&status).0, "False");
}

#[tokio::test]
async fn crashed_and_unhealthy_replicas_are_deleted_with_an_event() {
    let crash_loop = json!({"waiting": {"reason": "CrashLoopBackOff"}});
    // Replica 3 listens nowhere (127.0.0.2 has no stand-in) and has failed twice already.
    let previous = StockNetStatus {
        replicas: vec![ReplicaStatus {
            id: 3,
            pod: "demo-order-2".into(),
            consecutive_failures: 2,
            started: Some("uid-demo-order-2".into()),
            answered: true,
            ..ReplicaStatus::default()
        }],
        ..StockNetStatus::default()
    };
    let pods = vec![
        pod(0, "127.0.0.1", running()),
        pod(1, "127.0.0.1", crash_loop),
        pod(2, "127.0.0.2", running()),
    ];
    let (action, calls) = run_reconcile(stocknet(Some(previous)), pods).await;
    assert_eq!(action, requeue_after(5));

    // The crashed pod goes at once, and counts as down though it answered: so the silent one
    // waits, since deleting it too would leave one replica of three up.
    assert_eq!(
        deleted(&calls),
        ["/api/v1/namespaces/shop/pods/demo-order-1"]
    );
    assert_eq!(event_reasons(&calls), ["OrderReplicaCrashed"]);
    // Only the pod observed: one the StatefulSet made since is left alone.
    let conditional = calls
        .iter()
        .find(|c| c.method == "DELETE")
        .map(|c| c.body["preconditions"]["uid"].clone());
    assert_eq!(conditional, Some(json!("uid-demo-order-1")));

    let status = status_written(&calls);
    let restarts: Vec<(u32, bool, u32, u32)> = status
        .replicas
        .iter()
        .map(|r| (r.id, r.healthy, r.restarts, r.consecutive_failures))
        .collect();
    assert_eq!(
        restarts,
        [(1, true, 0, 0), (2, false, 1, 0), (3, false, 0, 3)]
    );
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.message, "1 of 3 order replicas healthy");

    // The next round, the crashed pod back and answering, the silent one goes.
    let previous = status;
    let pods = vec![
        pod(0, "127.0.0.1", running()),
        pod(1, "127.0.0.1", running()),
        pod(2, "127.0.0.2", running()),
    ];
    let (_, calls) = run_reconcile(stocknet(Some(previous)), pods).await;
    assert_eq!(
        deleted(&calls),
        ["/api/v1/namespaces/shop/pods/demo-order-2"]
    );
    assert_eq!(event_reasons(&calls), ["OrderReplicaUnhealthy"]);
}

/// A crashed pod that the StatefulSet replaced between the operator's look and its delete is
/// not deleted (the delete's uid precondition fails): no Event, no restart counted, and the
/// next crash of the new pod is restarted at once rather than backed off.
#[tokio::test]
async fn a_crashed_pod_replaced_before_its_delete_counts_no_restart() {
    let crash_loop = json!({"waiting": {"reason": "CrashLoopBackOff"}});
    let mut replaced = pod(1, "127.0.0.1", crash_loop);
    replaced["metadata"]["uid"] = json!("replaced-demo-order-1");
    let pods = vec![
        pod(0, "127.0.0.1", running()),
        replaced,
        pod(2, "127.0.0.1", running()),
    ];
    let (_, calls) = run_reconcile(stocknet(None), pods).await;
    assert_eq!(
        deleted(&calls),
        ["/api/v1/namespaces/shop/pods/demo-order-1"]
    );
    assert!(
        event_reasons(&calls).is_empty(),
        "{:?}",
        event_reasons(&calls)
    );
    let status = status_written(&calls);
    let second = &status.replicas[1];
    assert!(!second.healthy);
    assert_eq!(
        (
            second.restarts,
            second.consecutive_crashes,
            second.last_restart.as_deref()
        ),
        (0, 0, None)
    );
}

/// An object the API server refuses (here the frontend's Deployment, by an admission
/// webhook) fails the reconcile, but not before the health pass: the crashed replica is
/// restarted, and the status and an Event say what was refused.
#[tokio::test]
async fn a_refused_apply_still_restarts_crashed_replicas_and_says_why() {
    let crash_loop = json!({"waiting": {"reason": "CrashLoopBackOff"}});
    let pods = vec![
        pod(0, "127.0.0.1", running()),
        pod(1, "127.0.0.1", crash_loop),
        pod(2, "127.0.0.1", running()),
    ];
    let (port, _) = leader_of(json!({"configs": [[1, 2, 3]], "learners": [], "urls": {},
                                     "entry": 9, "committed": true, "leader": 3, "behind": {"1": 0, "2": 0}}))
    .await;
    let refused = Some("/deployments/demo-frontend");
    let (reconciled, calls) = reconcile_refusing(
        stocknet(None),
        pods,
        (None, None),
        port,
        Vec::new(),
        refused,
    )
    .await;
    assert!(
        matches!(&reconciled, Err(Error::NotApplied { kind, name, .. })
                 if kind == "Deployment" && name == "demo-frontend"),
        "{reconciled:?}"
    );

    assert_eq!(
        deleted(&calls),
        ["/api/v1/namespaces/shop/pods/demo-order-1"]
    );
    assert_eq!(
        event_reasons(&calls),
        ["OrderReplicaCrashed", "ApplyFailed"]
    );
    let status = status_written(&calls);
    let (condition, reason, message) = ready(&status);
    assert_eq!((condition, reason), ("False", "ApplyFailed"));
    assert!(
        message
            .starts_with("2 of 3 order replicas healthy; applying Deployment demo-frontend failed")
            && message.contains("denied the request"),
        "{message}"
    );
}

/// An object the API server refuses (here the catalog's StatefulSet, whose volume claim
/// templates a new `storageClassName` would change) keeps none of the others from being
/// applied: the order StatefulSet, the frontends, the budget and the report CronJob after it
/// still are, and the refusal is what the reconcile answers.
#[tokio::test]
async fn a_refused_object_keeps_none_of_the_others_from_being_applied() {
    let (port, _) = leader_of(json!({"configs": [[1, 2, 3]], "learners": [], "urls": {},
                                     "entry": 9, "committed": true, "leader": 3, "behind": {"1": 0, "2": 0}}))
    .await;
    let (reconciled, calls) = reconcile_refusing(
        stocknet(None),
        running_pods(3),
        (None, None),
        port,
        Vec::new(),
        Some("/statefulsets/demo-catalog"),
    )
    .await;
    assert!(
        matches!(&reconciled, Err(Error::NotApplied { kind, name, .. })
                 if kind == "StatefulSet" && name == "demo-catalog"),
        "{reconciled:?}"
    );
    let applied: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "PATCH" && !c.uri.contains("/status"))
        .map(|c| c.uri.split('?').next().unwrap_or_default())
        .collect();
    for after in [
        "/statefulsets/demo-order",
        "/deployments/demo-frontend",
        "/poddisruptionbudgets/demo-order",
        "/cronjobs/demo-reports",
    ] {
        assert!(
            applied.iter().any(|path| path.ends_with(after)),
            "{after} not applied: {applied:?}"
        );
    }
}

#[tokio::test]
async fn an_invalid_spec_is_reported_in_status_not_applied() {
    let mut sn = stocknet(None);
    sn.spec.catalog.initial_catalog = Some("name,price,quantity\nAcme,free,1\n".into());
    let (action, calls) = run_reconcile(sn, Vec::new()).await;
    assert_eq!(action, requeue_after(300), "not retried soon");
    assert!(
        calls
            .iter()
            .all(|c| c.method != "PATCH" || c.uri.contains("/status")),
        "nothing applied: {calls:?}"
    );
    let status = status_written(&calls);
    let (ready, reason, message) = ready(&status);
    assert_eq!((ready, reason), ("False", "InvalidSpec"));
    assert!(message.contains("line 2: price"), "{message}");
}

#[tokio::test]
async fn network_policies_switched_off_are_removed_not_applied() {
    let pods = running_pods(3);
    let mut sn = stocknet(None);
    sn.spec.network_policy.enabled = false;
    let (_, calls) = run_reconcile(sn, pods).await;
    assert!(!calls
        .iter()
        .any(|c| c.method == "PATCH" && c.uri.contains("networkpolicies")));
    let deleted = deleted(&calls);
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert!(
        deleted[0].contains("/networkpolicies/demo-catalog"),
        "{deleted:?}"
    );
    assert!(
        deleted[1].contains("/networkpolicies/demo-order"),
        "{deleted:?}"
    );
    // A policy of the same name that the StockNet does not own is somebody else's.
    assert!(!deleted.iter().any(|d| d.contains("demo-frontend")));
    let conditional = calls
        .iter()
        .find(|c| c.method == "DELETE")
        .map(|c| c.body["preconditions"]["uid"].clone());
    assert_eq!(conditional, Some(json!("uid-demo-catalog")));
}

/// Order pod `ordinal` at `ip`, running, on template revision `revision`.
fn pod_at(ordinal: u32, ip: &str, revision: &str) -> Value {
    let mut pod = pod(ordinal, ip, running());
    pod["metadata"]["labels"] = json!({"controller-revision-hash": revision});
    pod
}

/// The paths (without their query) the operator deleted, in order.
fn deleted(calls: &[Call]) -> Vec<&str> {
    calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.uri.split('?').next().unwrap_or_default())
        .collect()
}

fn deleted_pods(calls: &[Call]) -> Vec<String> {
    deleted(calls)
        .into_iter()
        .filter(|path| path.contains("/pods/"))
        .map(|path| path.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
}

/// The pods the operator asked to evict, in order, each with the uid it must still have.
fn evicted_pods(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.uri.split('?').next().unwrap().ends_with("/eviction"))
        .map(|c| {
            let pod = c
                .uri
                .split("/pods/")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            let uid = c.body["deleteOptions"]["preconditions"]["uid"].as_str();
            (pod.to_owned(), uid.unwrap_or_default().to_owned())
        })
        .collect()
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.uri.contains("/events"))
        .map(|c| c.body["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// Issue 12, item 5, through the reconciler: a new order template replaces one follower pod
/// (never the leader, replica 3 here, first), by an eviction that its disruption budget
/// rules on, waits while the replacement resyncs, and says so in status and Events until
/// every replica runs it.
#[tokio::test]
async fn a_new_order_template_replaces_one_follower_at_a_time() {
    // Every replica on the old template, all healthy: one follower goes, the highest first.
    let old: Vec<Value> = (0..3).map(|i| pod_at(i, "127.0.0.1", "old")).collect();
    let (_, calls) = run_reconcile_at(stocknet(None), old.clone(), Some("new")).await;
    assert!(deleted_pods(&calls).is_empty(), "evicted, not deleted");
    assert_eq!(
        evicted_pods(&calls),
        [("demo-order-1".to_owned(), "uid-demo-order-1".to_owned())]
    );
    assert_eq!(event_reasons(&calls), ["UpgradingOrderReplica"]);
    // A budget that allows no disruption now (a node drain took another replica since the
    // operator looked): nothing goes this round, and no Event says it did.
    let mut held = old;
    held[1]["metadata"]["uid"] = json!("budget-demo-order-1");
    let (action, held_calls) = run_reconcile_at(stocknet(None), held, Some("new")).await;
    assert_eq!(action, requeue_after(5));
    assert_eq!(evicted_pods(&held_calls).len(), 1);
    assert!(event_reasons(&held_calls).is_empty());
    let held_for = status_written(&held_calls)
        .upgrade
        .and_then(|u| u.waiting_for);
    assert!(
        held_for
            .as_deref()
            .is_some_and(|why| why.contains("order replica 2's eviction")),
        "{held_for:?}"
    );
    let status = status_written(&calls);
    let upgrade = status.upgrade.clone().expect("upgrade in status");
    assert_eq!(
        (upgrade.revision.as_str(), upgrade.updated, upgrade.total),
        ("new", 0, 3)
    );

    // Its replacement runs the new template but does not answer yet (127.0.0.2 has no
    // stand-in): nothing else goes.
    let replacing = vec![
        pod_at(0, "127.0.0.1", "old"),
        pod_at(1, "127.0.0.2", "new"),
        pod_at(2, "127.0.0.1", "old"),
    ];
    let (_, calls) = run_reconcile_at(stocknet(Some(status)), replacing, Some("new")).await;
    assert!(
        evicted_pods(&calls).is_empty(),
        "{:?}",
        evicted_pods(&calls)
    );
    let status = status_written(&calls);
    let upgrade = status.upgrade.clone().expect("still upgrading");
    // (On the new template, it runs it only once it answers ready.)
    assert_eq!(upgrade.updated, 0);
    assert!(
        upgrade
            .waiting_for
            .as_deref()
            .unwrap_or_default()
            .contains("order replica 2"),
        "{upgrade:?}"
    );

    // Everybody on the new template, ready and caught up: done, said once.
    let new = (0..3).map(|i| pod_at(i, "127.0.0.1", "new")).collect();
    let (_, calls) = run_reconcile_at(stocknet(Some(status)), new, Some("new")).await;
    assert!(evicted_pods(&calls).is_empty());
    assert_eq!(event_reasons(&calls), ["OrderUpgradeComplete"]);
    assert_eq!(status_written(&calls).upgrade, None);
}

/// A stand-in order leader (replica 3) whose group is `members`: it serves `/health`, and
/// `/members` and its changes to callers with a bearer token, recording each change.
async fn leader_of(members: Value) -> (u16, Arc<Mutex<Vec<(String, Value)>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let changes: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let authorized = |headers: &HeaderMap| {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 20)
    };
    let record = |changes: Arc<Mutex<Vec<(String, Value)>>>, what: &'static str| {
        move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| async move {
            if !authorized(&headers) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            changes.lock().unwrap().push((what.to_owned(), body));
            Ok(axum::Json(
                json!({"data": {"configs": [[1, 2, 3]], "learners": [], "urls": {},
                                          "entry": 9, "committed": true, "leader": 3}}),
            ))
        }
    };
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(|| async {
                axum::Json(
                    json!({"data": {"node_id": 3, "term": 7, "leader": 3, "ready": true,
                                           "last_transaction": 12, "leading": true}}),
                )
            }),
        )
        .route(
            "/members",
            axum::routing::get(move |headers: HeaderMap| {
                let members = members.clone();
                async move {
                    if authorized(&headers) {
                        Ok(axum::Json(json!({ "data": members })))
                    } else {
                        Err(StatusCode::UNAUTHORIZED)
                    }
                }
            }),
        )
        .route(
            "/members/learners",
            axum::routing::post(record(changes.clone(), "learner")),
        )
        .route(
            "/members/voters",
            axum::routing::put(record(changes.clone(), "voters")),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, changes)
}

fn env_of(calls: &[Call], kind: &str, name: &str, var: &str) -> String {
    let applied = calls
        .iter()
        .find(|c| {
            c.method == "PATCH" && c.body["kind"] == kind && c.body["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("{kind} {name} applied"));
    let env = applied.body["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    env.iter()
        .find(|v| v["name"] == var)
        .and_then(|v| v["value"].as_str())
        .unwrap_or_else(|| panic!("{var} in {kind} {name}"))
        .to_owned()
}

/// The order StatefulSet as the reconcile applied it.
fn order_set_applied(calls: &[Call]) -> &Value {
    &calls
        .iter()
        .find(|c| {
            c.method == "PATCH"
                && c.body["kind"] == "StatefulSet"
                && c.body["metadata"]["name"] == "demo-order"
        })
        .expect("the order StatefulSet applied")
        .body
}

/// Issue 19, item 7, through the reconciler: `order.replicas` raised from 3 to 5 on a running
/// StockNet. The StatefulSet gets two more pods while its replicas keep their three founders;
/// the frontends learn of five; once replica 4 answers it is added to the group as a learner
/// through the leader, with the shared secret; status says what each round waits for.
#[tokio::test]
async fn raising_order_replicas_adds_pods_then_learners_through_the_leader() {
    let founded = stocknet(None);
    let existing = serde_json::to_value(
        &stocknet_operator::resources::desired(&founded)
            .unwrap()
            .stateful_sets[1],
    )
    .unwrap();
    let mut grown = stocknet(None);
    grown.spec.order.replicas = 5;
    let three = json!({"configs": [[1, 2, 3]], "learners": [], "urls": {}, "entry": null, "committed": true,
                       "leader": 3, "behind": {"1": 0, "2": 0}});
    let (port, changes) = leader_of(three).await;
    let founders = running_pods(3);

    let (_, calls) =
        run_reconcile_with(grown.clone(), founders, None, Some(existing.clone()), port).await;
    assert_eq!(order_set_applied(&calls)["spec"]["replicas"], 5);
    let peers = env_of(&calls, "StatefulSet", "demo-order", "STOCKNET_ORDER_PEERS");
    assert_eq!(peers.split(',').count(), 3, "the founders stay: {peers}");
    let replicas = env_of(
        &calls,
        "Deployment",
        "demo-frontend",
        "STOCKNET_ORDER_REPLICAS",
    );
    assert_eq!(replicas.split(',').count(), 5, "{replicas}");
    let membership = status_written(&calls)
        .membership
        .expect("membership in status");
    assert_eq!(
        (membership.target, membership.voters.clone()),
        (5, vec![1, 2, 3])
    );
    assert_eq!(
        membership.waiting_for.as_deref(),
        Some("order replica 4 to start")
    );
    assert!(changes.lock().unwrap().is_empty());

    // Replicas 4 and 5 answer: 4 joins as a learner, at its pod's stable name.
    let all = running_pods(5);
    let mut five_pods = existing;
    five_pods["spec"]["replicas"] = json!(5);
    let (_, calls) = run_reconcile_with(grown, all, None, Some(five_pods), port).await;
    assert_eq!(
        changes.lock().unwrap().clone(),
        [(
            "learner".to_owned(),
            json!({"id": 4, "url": "http://demo-order-3.demo-order.shop.svc:8091"})
        )]
    );
    assert!(event_reasons(&calls).contains(&"AddingOrderReplica".to_owned()));
    let membership = status_written(&calls)
        .membership
        .expect("membership in status");
    assert_eq!(
        membership.waiting_for.as_deref(),
        Some("order replica 4 to join as a learner")
    );
}

/// Issue 19, item 7, through the reconciler, the rest of 3 → 5 → 3: caught-up learners become
/// voters in one change through the leader; lowered back to three, the voters change first
/// while all five pods stay; once the group no longer counts on replicas 4 and 5, their pods
/// go and an Event says the membership is complete.
#[tokio::test]
async fn learners_are_promoted_and_voters_shrink_before_any_pod_goes() {
    let five = running_pods(5);
    let mut grown = stocknet(None);
    grown.spec.order.replicas = 5;
    let mut five_pods = serde_json::to_value(
        &stocknet_operator::resources::desired(&grown)
            .unwrap()
            .stateful_sets[1],
    )
    .unwrap();
    five_pods["spec"]["replicas"] = json!(5);
    let order_set_replicas = |calls: &[Call]| order_set_applied(calls)["spec"]["replicas"].clone();

    // Learners 4 and 5 caught up: all five become voters together.
    let learning = json!({"configs": [[1, 2, 3]], "learners": [4, 5], "urls": {}, "entry": 40, "committed": true,
                          "leader": 3, "behind": {"1": 0, "2": 0, "4": 0, "5": 3}});
    let (port, changes) = leader_of(learning).await;
    let (_, calls) =
        run_reconcile_with(grown, five.clone(), None, Some(five_pods.clone()), port).await;
    assert_eq!(
        changes.lock().unwrap().clone(),
        [("voters".to_owned(), json!({"voters": [1, 2, 3, 4, 5]}))]
    );
    assert!(event_reasons(&calls).contains(&"ChangingOrderVoters".to_owned()));
    assert_eq!(order_set_replicas(&calls), 5);

    // Back to three: the voters change first, and every pod stays while they do.
    let mut shrunk = stocknet(None);
    shrunk.spec.order.replicas = 3;
    let voting = json!({"configs": [[1, 2, 3, 4, 5]], "learners": [], "urls": {}, "entry": 50, "committed": true,
                        "leader": 3, "behind": {"1": 0, "2": 0, "4": 0, "5": 0}});
    let (port, changes) = leader_of(voting).await;
    let (_, calls) = run_reconcile_with(
        shrunk.clone(),
        five.clone(),
        None,
        Some(five_pods.clone()),
        port,
    )
    .await;
    assert_eq!(
        changes.lock().unwrap().clone(),
        [("voters".to_owned(), json!({"voters": [1, 2, 3]}))]
    );
    assert_eq!(
        order_set_replicas(&calls),
        5,
        "a pod went before the voters changed"
    );
    let membership = status_written(&calls).membership.expect("membership");
    assert_eq!(
        membership.waiting_for.as_deref(),
        Some("the voters to become 1, 2, 3")
    );

    // The group votes with three: the two pods go, and the change is complete.
    let mut changing = shrunk;
    changing.status = Some(StockNetStatus {
        membership: Some(membership),
        ..StockNetStatus::default()
    });
    let three = json!({"configs": [[1, 2, 3]], "learners": [], "urls": {}, "entry": 52, "committed": true,
                       "leader": 3, "behind": {"1": 0, "2": 0}});
    let (port, changes) = leader_of(three).await;
    let (_, calls) = run_reconcile_with(changing, five, None, Some(five_pods), port).await;
    assert!(changes.lock().unwrap().is_empty());
    assert_eq!(order_set_replicas(&calls), 3);
    assert!(event_reasons(&calls).contains(&"OrderMembershipComplete".to_owned()));
}

/// Issue 23, item 2: the report CronJob's Jobs make the status's `reports`; a run that failed
/// is a Warning Event, once: the next reconcile of the same run says nothing again.
#[tokio::test]
async fn a_failed_report_run_shows_in_status_and_one_warning_event() {
    let pods = running_pods(3);
    let job = |name: &str, start: &str, status: Value| {
        let mut status = status;
        status["startTime"] = json!(start);
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "namespace": "shop"}, "status": status})
    };
    // At the default 00:05, each for the day before.
    let jobs = vec![
        job(
            "demo-reports-1",
            "2026-12-04T00:05:00Z",
            json!({"succeeded": 1, "completionTime": "2026-12-04T00:05:30Z"}),
        ),
        job(
            "demo-reports-2",
            "2026-12-05T00:05:00Z",
            json!({"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                   "message": "Job has reached the specified backoff limit"}]}),
        ),
    ];
    let port = healthy_replica().await;
    let (_, calls) =
        run_reconcile_with_jobs(stocknet(None), pods.clone(), None, None, port, jobs.clone()).await;
    let status = status_written(&calls);
    let reports = status.reports.clone().expect("reports in the status");
    assert_eq!(
        (
            reports.last_job.as_deref(),
            reports.last_date.as_deref(),
            reports.last_outcome.as_deref()
        ),
        (Some("demo-reports-2"), Some("2026-12-04"), Some("Failed"))
    );
    assert_eq!(
        reports.last_success.as_deref(),
        Some("2026-12-04T00:05:30Z")
    );
    assert_eq!(event_reasons(&calls), ["ReportFailed"]);
    let note = calls
        .iter()
        .find(|c| c.uri.contains("/events"))
        .map(|c| c.body["note"].to_string())
        .unwrap_or_default();
    assert!(
        note.contains("2026-12-04") && note.contains("backoff limit"),
        "{note}"
    );
    // The same failed run seen again: no second Event.
    let (_, calls) =
        run_reconcile_with_jobs(stocknet(Some(status)), pods, None, None, port, jobs).await;
    assert!(
        event_reasons(&calls).is_empty(),
        "{:?}",
        event_reasons(&calls)
    );
}
