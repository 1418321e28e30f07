//! Order writes (placements, modifies, cancels) sent to the leader in batches. The writes this
//! frontend's clients make at about the same time go to the leader in one call
//! (`POST /orders/batch`), which executes, logs and answers each as its own route would, each
//! as soon as it is decided: one call and one request for the leader to parse per batch
//! instead of per write. Nothing waits to fill a batch: it holds what queued while the task
//! that sends it was being scheduled. A batch is only the transport of one attempt; each
//! write's retries, deadline and answer stay its own ([`super::order_group`]).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use futures::future::join_all;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use stocknet_common::client::{batch_answer, call, decode};
use stocknet_common::paths;
use stocknet_common::request_id::REQUEST_ID;
use stocknet_common::wire::{
    BatchAnswer, BatchedCall, BatchedCommand, IDEMPOTENCY_KEY, MAX_BATCH, USER,
};
use stocknet_common::{ApiError, BaseUrl, RemoteError};

use super::is_for_client;
use tokio::sync::oneshot;

/// A write's answer, as it came, for its caller to decode.
type Answer = Result<Box<RawValue>, RemoteError>;

/// The queue of writes for the next batch, and the client that sends batches.
pub struct Writes {
    http: reqwest::Client,
    queue: Arc<Mutex<Vec<Pending>>>,
}

struct Pending {
    /// The leader it is for.
    leader: BaseUrl,
    call: BatchedCall,
    answer: oneshot::Sender<Answer>,
}

impl Writes {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            queue: Arc::default(),
        }
    }

    /// Sends `call` with the next batch to `leader`; the answer is what the call's own route
    /// would have given. Dropping the future leaves the call in its batch: like a call whose
    /// answer is not awaited, it may execute.
    pub async fn write<T: DeserializeOwned>(
        &self,
        leader: BaseUrl,
        call: BatchedCall,
    ) -> Result<T, RemoteError> {
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut queue = lock(&self.queue);
            queue.push(Pending {
                leader,
                call,
                answer,
            });
            queue.len() == 1
        };
        if first {
            let (queue, http) = (self.queue.clone(), self.http.clone());
            tokio::spawn(async move {
                // The requests that arrived with this one queue while it yields.
                tokio::task::yield_now().await;
                let batch = std::mem::take(&mut *lock(&queue));
                send(&http, batch).await;
            });
        }
        let raw = answered.await.unwrap_or_else(|_| {
            Err(RemoteError::Decode(
                "the batch's call ended without an answer".into(),
            ))
        })?;
        serde_json::from_str(raw.get()).map_err(|e| RemoteError::Decode(e.to_string()))
    }
}

fn lock(queue: &Mutex<Vec<Pending>>) -> MutexGuard<'_, Vec<Pending>> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends what queued, as one call per leader (the leader may have changed in between) and
/// per [`MAX_BATCH`] writes, side by side.
async fn send(http: &reqwest::Client, mut queued: Vec<Pending>) {
    let mut calls: Vec<(BaseUrl, Vec<Pending>)> = Vec::new();
    for pending in queued.drain(..) {
        match calls
            .iter_mut()
            .find(|(leader, batch)| *leader == pending.leader && batch.len() < MAX_BATCH)
        {
            Some((_, batch)) => batch.push(pending),
            None => calls.push((pending.leader.clone(), vec![pending])),
        }
    }
    join_all(
        calls
            .into_iter()
            .map(|(leader, batch)| send_batch(http, leader, batch)),
    )
    .await;
}

async fn send_batch(http: &reqwest::Client, leader: BaseUrl, batch: Vec<Pending>) {
    let (calls, answers): (Vec<BatchedCall>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.call, Some(pending.answer)))
        .unzip();
    let mut waiting = Waiting(answers);
    let sent = match paths::ORDER_BATCH.url(&leader, &[]) {
        Ok(url) => http.post(url).json(&calls).send().await,
        Err(e) => {
            waiting.fail(&leader, e);
            return;
        }
    };
    let failure = match sent {
        Ok(response) if response.status().is_success() => {
            match read_answers(response, &mut waiting).await {
                Ok(()) => RemoteError::Decode("the leader's answers to a batch ended early".into()),
                Err(e) => e,
            }
        }
        // A leader of an older version, without the batch route: each on its own.
        Ok(response)
            if matches!(
                response.status(),
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) =>
        {
            let alone = calls
                .into_iter()
                .map(|call| write_alone(http, &leader, call));
            for (index, result) in join_all(alone).await.into_iter().enumerate() {
                waiting.answer(index, result);
            }
            return;
        }
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(bytes) => match decode::<()>(status, &bytes) {
                    Err(e) => each_failed(e),
                    Ok(()) => RemoteError::Decode(format!("{status} to a batch")),
                },
                Err(e) => RemoteError::unreachable(e),
            }
        }
        Err(e) => RemoteError::unreachable(e),
    };
    waiting.fail(&leader, failure);
}

/// The callers of a batch's writes still waiting for their answer, by the write's index.
struct Waiting(Vec<Option<oneshot::Sender<Answer>>>);

impl Waiting {
    fn answer(&mut self, index: usize, result: Answer) {
        if let Some(answer) = self.0.get_mut(index).and_then(Option::take) {
            // A caller that stopped waiting has dropped its receiver.
            let _ = answer.send(result);
        }
    }

    /// Answers every write still waiting with `failure`, the batch's to `leader`.
    fn fail(&mut self, leader: &BaseUrl, failure: RemoteError) {
        let unanswered = self.0.iter().flatten().count();
        if unanswered > 0 {
            tracing::warn!(%leader, unanswered, "a batch of order writes failed: {failure}");
            for index in 0..self.0.len() {
                self.answer(index, Err(failure.clone()));
            }
        }
    }
}

/// Hands each answer line of a batch to its caller as it arrives. Ends when the answer does,
/// or with the failure of reading it.
async fn read_answers(
    mut response: reqwest::Response,
    waiting: &mut Waiting,
) -> Result<(), RemoteError> {
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(RemoteError::unreachable)? {
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            match serde_json::from_slice::<BatchAnswer<Box<RawValue>>>(line) {
                Ok(answer) => waiting.answer(answer.index, batch_answer(answer)),
                // Which write it was for is unknown: each still waiting is answered at the end.
                Err(e) => tracing::warn!("an answer to a batch that is not one: {e}"),
            }
        }
        pending.drain(..start);
    }
    Ok(())
}

/// What a batch's failure says of each write in it. An error answer a write's own route
/// would have its client see (a 4xx but a 401) concerns the batch as a whole, not the write,
/// and may have come after writes executed (a 408 from the leader's deadline, say): for each
/// write it is a bad gateway, whose outcome is unknown. Anything else is each write's as it is,
/// for [`Attempt::of`](super::order_group::Attempt::of) to tell what it means.
fn each_failed(error: RemoteError) -> RemoteError {
    match error {
        RemoteError::Api(error) if is_for_client(&error) => RemoteError::Api(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "the leader answered a batch of order writes with {}: {}",
                error.status, error.message
            ),
        )),
        other => other,
    }
}

/// One batched call sent to `leader` on its own route.
async fn write_alone(http: &reqwest::Client, leader: &BaseUrl, batched: BatchedCall) -> Answer {
    let order = |number: u64| paths::ORDER.url(leader, &[&number.to_string()]);
    let mut request = match batched.command {
        BatchedCommand::Place(new) => http.post(paths::ORDERS.url(leader, &[])?).json(&new),
        BatchedCommand::Modify { number, change } => http.put(order(number)?).json(&change),
        BatchedCommand::Cancel { number } => http.delete(order(number)?),
        BatchedCommand::CancelByClientOrderId { client_order_id } => http
            .delete(paths::ORDERS.url(leader, &[])?)
            .query(&[("client_order_id", client_order_id)]),
    };
    if let Some(key) = &batched.key {
        request = request.header(IDEMPOTENCY_KEY, key);
    }
    if let Some(user) = batched.user {
        request = request.header(USER, user);
    }
    if let Some(id) = &batched.request_id {
        request = request.header(REQUEST_ID, id);
    }
    call::<Box<RawValue>>(request).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use axum::Router;
    use serde_json::{json, Value};
    use stocknet_common::wire::{NewOrder, Placed};
    use stocknet_common::Status;

    use super::*;

    /// What a fake leader was sent: the size of each batch.
    #[derive(Clone, Default)]
    struct Seen {
        batches: Arc<Mutex<Vec<usize>>>,
        /// Lets the answers held back go.
        gate: Arc<tokio::sync::Notify>,
    }

    fn placed(order: &NewOrder) -> Placed {
        Placed {
            transaction_number: u64::from(order.quantity),
            client_order_id: None,
            status: Status::Filled,
            filled_quantity: order.quantity,
            remaining_quantity: 0,
            fills: Vec::new(),
        }
    }

    /// A leader that numbers each placement by its quantity, refuses a quantity of 13, and
    /// holds back the answer to a quantity of 99 until the test lets it go.
    async fn leader() -> (BaseUrl, Seen) {
        let seen = Seen::default();
        let routes = Router::new().route(
            "/orders/batch",
            post(
                |State(seen): State<Seen>,
                 axum::Json(orders): axum::Json<Vec<BatchedCall>>| async move {
                    lock_seen(&seen.batches).push(orders.len());
                    let (lines, body) = futures::channel::mpsc::unbounded();
                    // Last first, a quantity of 99 only once the test lets it go.
                    tokio::spawn(async move {
                        let mut held = Vec::new();
                        for (index, batched) in orders.iter().enumerate().rev() {
                            let BatchedCommand::Place(order) = &batched.command else {
                                panic!("only placements here: {batched:?}");
                            };
                            let line = match order.quantity {
                                13 => json!({"index": index, "status": 409, "error":
                                    {"code": 409, "message": "Refused", "reason": "unlucky"}}),
                                _ => json!({"index": index, "status": 200,
                                    "data": placed(order)}),
                            };
                            let line = Ok::<_, std::io::Error>(format!("{line}\n"));
                            match order.quantity {
                                99 => held.push(line),
                                _ => lines.unbounded_send(line).unwrap(),
                            }
                        }
                        if !held.is_empty() {
                            seen.gate.notified().await;
                            for line in held {
                                lines.unbounded_send(line).unwrap();
                            }
                        }
                    });
                    axum::body::Body::from_stream(body)
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = routes.with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url: BaseUrl = format!("http://{address}").parse().unwrap();
        (url, seen)
    }

    fn lock_seen<T>(seen: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        seen.lock().unwrap()
    }

    fn new_order(quantity: u32) -> NewOrder {
        NewOrder {
            name: "GameStart".into(),
            quantity,
            side: stocknet_common::Side::Buy,
            price: None,
            guard: None,
            terms: Default::default(),
            client_order_id: None,
            protection_bps: None,
        }
    }

    /// `command` as a call with the key, user and request id a frontend gives it.
    fn call(command: BatchedCommand, n: u32) -> BatchedCall {
        BatchedCall {
            command,
            key: Some(format!("key-{n}")),
            user: Some(7),
            request_id: Some(format!("trace-{n}")),
        }
    }

    fn order(quantity: u32) -> BatchedCall {
        call(BatchedCommand::Place(new_order(quantity)), quantity)
    }

    fn writes() -> Writes {
        Writes::new(stocknet_common::http_client(Duration::from_secs(2)))
    }

    /// Orders placed together go in one call, and each caller gets its own order's answer.
    #[tokio::test]
    async fn orders_placed_together_go_in_one_call_each_answered_as_its_own() {
        let (url, seen) = leader().await;
        let writes = writes();
        let answers =
            join_all((1..=20).map(|quantity| writes.write::<Placed>(url.clone(), order(quantity))))
                .await;
        assert_eq!(*lock_seen(&seen.batches), vec![20]);
        for (quantity, answer) in (1..=20_u32).zip(answers) {
            match answer {
                Ok(placed) => assert_eq!(placed.transaction_number, u64::from(quantity)),
                Err(RemoteError::Api(error)) if quantity == 13 => {
                    assert_eq!(error.status, StatusCode::CONFLICT);
                    assert_eq!(error.extra["reason"], "unlucky");
                }
                Err(e) => panic!("{quantity}: {e}"),
            }
        }
        // One placed later goes in a call of its own.
        let later = writes.write::<Placed>(url.clone(), order(21)).await;
        assert_eq!(later.ok().map(|p| p.transaction_number), Some(21));
        assert_eq!(*lock_seen(&seen.batches), vec![20, 1]);
    }

    /// An order is answered as soon as the leader answers it, not when the slowest of its
    /// batch is.
    #[tokio::test]
    async fn an_order_is_answered_without_waiting_for_a_slower_one_of_its_batch() {
        let (url, seen) = leader().await;
        let writes = writes();
        let mut slow = Box::pin(writes.write::<Placed>(url.clone(), order(99)));
        assert!(futures::poll!(&mut slow).is_pending());
        let quick = tokio::time::timeout(
            Duration::from_secs(10),
            writes.write::<Placed>(url.clone(), order(1)),
        )
        .await
        .expect("answered while the other waits");
        assert_eq!(quick.ok().map(|p| p.transaction_number), Some(1));
        assert_eq!(*lock_seen(&seen.batches), vec![2]);
        assert!(futures::poll!(&mut slow).is_pending());
        seen.gate.notify_one();
        assert_eq!(slow.await.ok().map(|p| p.transaction_number), Some(99));
    }

    /// Lines split across chunks (within a character) are read whole; a line for no order,
    /// a second line for one, and one that is not an answer change nothing; an order the
    /// answer ends without is one whose outcome is unknown.
    #[tokio::test]
    async fn a_batch_answer_read_in_pieces_leaves_an_order_without_a_line_unknown() {
        let mut first = placed(&new_order(1));
        first.client_order_id = Some("é".into());
        let line = format!("{}\n", json!({"index": 0, "status": 200, "data": first}));
        let cut = line.find('é').unwrap() + 1;
        let other = |answer: Value| format!("{answer}\n").into_bytes();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(line.as_bytes()[..cut].to_vec()),
            Ok(line.as_bytes()[cut..].to_vec()),
            Ok(other(
                json!({"index": 0, "status": 409, "error": {"message": "x"}}),
            )),
            Ok(other(json!({"index": 7, "status": 200, "data": first}))),
            Ok(b"not an answer\n".to_vec()),
        ];
        let pieces = Arc::new(Mutex::new(Some(chunks)));
        let answering = Router::new().route(
            "/orders/batch",
            post(move || {
                let chunks = pieces.lock().unwrap().take().unwrap_or_default();
                async move { axum::body::Body::from_stream(futures::stream::iter(chunks)) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, answering).await });
        let writes = writes();
        let url: BaseUrl = url.parse().unwrap();
        let (answered, unanswered) = futures::join!(
            writes.write::<Placed>(url.clone(), order(1)),
            writes.write::<Placed>(url.clone(), order(2))
        );
        assert_eq!(answered.ok(), Some(first));
        let unanswered = unanswered.unwrap_err();
        assert_eq!(
            super::super::order_group::Attempt::<()>::of(Err(unanswered)),
            super::super::order_group::Attempt::Unknown { catalog: false }
        );
    }

    /// Each call holds at most [`MAX_BATCH`] orders, all for one leader; an order whose
    /// caller stopped waiting is still sent.
    #[tokio::test]
    async fn calls_hold_one_leaders_orders_up_to_the_most_and_dropped_callers_orders_go_too() {
        let ((first, first_seen), (second, second_seen)) = (leader().await, leader().await);
        let writes = writes();
        let mut dropped = Box::pin(writes.write::<Placed>(first.clone(), order(1)));
        assert!(futures::poll!(&mut dropped).is_pending());
        drop(dropped);
        // Six of them for the second leader, the rest and the dropped one for the first.
        let orders = (0..MAX_BATCH + 10).map(|n| {
            let url = if n % 100 == 0 { &second } else { &first };
            writes.write::<Placed>(url.clone(), order(2))
        });
        let answers = join_all(orders).await;
        assert!(answers.iter().all(Result::is_ok));
        let mut sizes = lock_seen(&first_seen.batches).clone();
        sizes.sort();
        assert_eq!(sizes, vec![5, MAX_BATCH]);
        assert_eq!(*lock_seen(&second_seen.batches), vec![6]);
    }

    /// A leader without the batch route gets each write on its own route, with the key, the
    /// user and the request id a single call carries.
    #[tokio::test]
    async fn a_leader_without_the_batch_route_gets_each_write_on_its_own_route() {
        // It echoes each call: method, path, query, headers and body.
        let echo = |method: axum::http::Method,
                    uri: axum::http::Uri,
                    headers: HeaderMap,
                    body: String| async move {
            let header = |name: &str| headers[name].to_str().unwrap().to_owned();
            stocknet_common::data(json!({
                "call": format!("{method} {uri}"),
                "key": header(IDEMPOTENCY_KEY),
                "user": header(USER),
                "request_id": header("x-request-id"),
                "body": body,
            }))
        };
        let old = Router::new()
            .route("/orders", post(echo).delete(echo))
            .route("/orders/{number}", axum::routing::put(echo).delete(echo));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, old).await });
        let url: BaseUrl = url.parse().unwrap();
        let change = stocknet_common::wire::OrderChange {
            quantity: Some(3),
            price: None,
        };
        let commands = [
            (
                order(1).command,
                "POST /orders",
                r#"{"name":"GameStart","quantity":1,"type":"buy"}"#,
            ),
            (
                BatchedCommand::Modify { number: 12, change },
                "PUT /orders/12",
                r#"{"quantity":3}"#,
            ),
            (
                BatchedCommand::Cancel { number: 13 },
                "DELETE /orders/13",
                "",
            ),
            (
                BatchedCommand::CancelByClientOrderId {
                    client_order_id: "mm:1".into(),
                },
                "DELETE /orders?client_order_id=mm%3A1",
                "",
            ),
        ];
        let writes = writes();
        let sent = commands.iter().enumerate().map(|(n, (command, _, _))| {
            writes.write::<Value>(url.clone(), call(command.clone(), n as u32))
        });
        let answers = join_all(sent).await;
        for (n, ((_, expected, body), answer)) in commands.iter().zip(answers).enumerate() {
            let expected = json!({"call": expected, "key": format!("key-{n}"), "user": "7",
                "request_id": format!("trace-{n}"), "body": body});
            assert_eq!(answer.unwrap(), expected);
        }
    }

    /// A batch refused as a whole: a 503 or an unreachable leader is each order's as it is (not
    /// executed), any other refusal (here a 400) leaves each order's outcome unknown, never the
    /// client's error.
    #[tokio::test]
    async fn a_batch_refused_whole_is_never_the_clients_error() {
        for (status, expected) in [
            (
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (StatusCode::BAD_REQUEST, StatusCode::BAD_GATEWAY),
            (StatusCode::REQUEST_TIMEOUT, StatusCode::BAD_GATEWAY),
        ] {
            let refusing = Router::new().route(
                "/orders/batch",
                post(move || async move { ApiError::new(status, "no") }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, refusing).await });
            let writes = writes();
            let url: BaseUrl = url.parse().unwrap();
            for answer in
                join_all((1..=2).map(|n| writes.write::<Placed>(url.clone(), order(n)))).await
            {
                match answer {
                    Err(RemoteError::Api(error)) => assert_eq!(error.status, expected, "{status}"),
                    other => panic!("{status}: {other:?}"),
                }
            }
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let writes = writes();
        let url: BaseUrl = url.parse().unwrap();
        for answer in join_all((1..=2).map(|n| writes.write::<Placed>(url.clone(), order(n)))).await
        {
            assert!(answer.is_err_and(|e| e.never_sent()));
        }
    }
}
