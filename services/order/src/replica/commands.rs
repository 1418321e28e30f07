//! The API's writes on the leader: a new order, a modify, a cancel, each checked, handed to
//! the term's sequencer ([`super::sequencer`]) and answered once committed, applied and, where
//! it changes the catalog, in the catalog.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use stocknet_common::model::{check_client_order_id, ANONYMOUS_CLIENT_ORDER_ID};
use stocknet_common::wire::{Changed, NewOrder, OrderChange, Placed, PriceGuard};
use stocknet_common::{request_id, Command, Order, OrderOptions, Price};
use tokio::sync::oneshot;

use super::sequencer::{Asked, Proposed, Request};
use super::Replica;
use crate::error::OrderError;

/// Who sends a write: its `Idempotency-Key` as logged, and its user (`None`: anonymous).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub key: Option<String>,
    pub user: Option<u64>,
}

impl Caller {
    pub fn new(key: Option<String>, user: Option<u64>) -> Self {
        Self { key, user }
    }
}

/// A command to sequence, with who sends it and what it must be checked against.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The stock; `None` for a modify or cancel, which names its stock through its target.
    pub name: Option<String>,
    pub command: Command,
    pub key: Option<String>,
    pub user: Option<u64>,
    pub guard: Option<PriceGuard>,
}

impl Replica {
    /// Leader side: places a new order (see [`submit`](Self::submit)) for `user`, or for
    /// nobody. An order the leader refuses is logged too, and answered with its refusal.
    pub async fn place(
        self: &Arc<Self>,
        order: NewOrder,
        caller: Caller,
    ) -> Result<Placed, OrderError> {
        let Caller { key, user } = caller;
        if order.quantity == 0 {
            return Err(OrderError::InvalidChange(
                "quantity must be a positive integer",
            ));
        }
        // A market order on the book is priced like a limit order for these checks.
        let priced = order
            .price
            .or(order.protection_bps.map(|_| Price::from_cents(1)));
        match order.protection_bps {
            Some(_) if order.price.is_some() => Err("a market order on the book has no price"),
            Some(_) => order.terms.check_market(),
            None => order.terms.check_new(order.price, order.quantity),
        }
        .map_err(OrderError::InvalidChange)?;
        if let Some(id) = &order.client_order_id {
            check_client_order_id(id, priced).map_err(OrderError::InvalidChange)?;
            if user.is_none() {
                return Err(OrderError::InvalidChange(ANONYMOUS_CLIENT_ORDER_ID));
            }
        }
        let client_order_id = order.client_order_id.clone();
        let command = match order.protection_bps {
            Some(protection_bps) => Command::Sweep {
                side: order.side,
                quantity: order.quantity,
                protection_bps,
                options: OrderOptions::boxed(order.terms, order.client_order_id),
            },
            None => Command::Place {
                side: order.side,
                quantity: order.quantity,
                limit: order.price,
                options: OrderOptions::boxed(order.terms, order.client_order_id),
            },
        };
        let number = self
            .submit(Submission {
                name: Some(order.name),
                command,
                key,
                user,
                guard: order.guard,
            })
            .await?;
        let unread = |e| answer_unread(number, e);
        let entry = self.get(number).map_err(unread)?;
        let entry = entry.ok_or_else(|| unread(OrderError::OrderNotFound))?;
        if let Some(rejection) = entry.stamp.rejected {
            return Err(OrderError::Rejected {
                rejection,
                quote: entry.stamp.quote,
                number,
            });
        }
        self.check_refusal(number)?;
        let view = self.order_view(number).map_err(unread)?;
        Ok(Placed {
            transaction_number: number,
            client_order_id,
            status: view.status,
            filled_quantity: view.filled_quantity,
            remaining_quantity: view.remaining_quantity,
            fills: view.fills,
        })
    }

    /// Leader side: changes the quantity and/or price of open limit order `target`.
    pub async fn modify(
        self: &Arc<Self>,
        target: u64,
        change: OrderChange,
        caller: Caller,
    ) -> Result<Changed, OrderError> {
        if change.quantity == Some(0) {
            return Err(OrderError::InvalidChange(
                "quantity must be a positive integer",
            ));
        }
        if change.quantity.is_none() && change.price.is_none() {
            return Err(OrderError::InvalidChange(
                "give a new quantity, a new price or both",
            ));
        }
        let command = Command::Modify {
            target,
            quantity: change.quantity,
            price: change.price,
        };
        self.change(target, command, caller).await
    }

    /// Leader side: cancels open limit order `target`.
    pub async fn cancel(
        self: &Arc<Self>,
        target: u64,
        caller: Caller,
    ) -> Result<Changed, OrderError> {
        self.change(target, Command::Cancel { target }, caller)
            .await
    }

    /// Leader side: cancels `user`'s open order with client order id `id`. A retry under the
    /// key of a cancel already logged gets that cancel's answer, whatever the order's state.
    pub async fn cancel_by_client_order_id(
        self: &Arc<Self>,
        id: &str,
        key: Option<String>,
        user: u64,
    ) -> Result<Changed, OrderError> {
        // Only a leader that has taken over its term has applied every committed entry: any
        // other replica's book may lag, and its "no open order has it" would be untrue.
        let term = self.leader_term().ok_or_else(|| self.not_leader())?;
        if self.leading().as_ref().is_none_or(|led| led.term != term) {
            return Err(OrderError::NotReady);
        }
        // (A leader deposed without knowing it yet would answer from a book that lags.)
        self.confirm_leadership().await?;
        let logged = match key.as_deref() {
            Some(key) => self.log().number_for_key(key)?,
            None => None,
        };
        let target = match logged.map(|number| self.get(number)).transpose()?.flatten() {
            Some(Order {
                command: Command::Cancel { target },
                ..
            }) => {
                // The key's cancel is this request's only if it cancelled the order with this
                // id: else the key came back with another request.
                let cancelled = self.get(target)?;
                if cancelled
                    .as_ref()
                    .and_then(|order| order.command.client_order_id())
                    != Some(id)
                {
                    return Err(OrderError::KeyReused);
                }
                target
            }
            _ => self
                .book()
                .open_by_client_order_id(user, id)
                .ok_or_else(|| OrderError::ClientOrderIdNotOpen(id.to_owned()))?,
        };
        let caller = Caller {
            key,
            user: Some(user),
        };
        self.cancel(target, caller).await
    }

    pub(super) async fn change(
        self: &Arc<Self>,
        target: u64,
        command: Command,
        caller: Caller,
    ) -> Result<Changed, OrderError> {
        let number = self
            .submit(Submission {
                name: None,
                command,
                key: caller.key,
                user: caller.user,
                guard: None,
            })
            .await?;
        self.check_refusal(number)?;
        let unread = |e| answer_unread(number, e);
        Ok(Changed {
            transaction_number: number,
            order: self.order_view(target).map_err(unread)?,
        })
    }

    /// `Refused` if the book refused entry `number` (a failed read: the outcome is unknown).
    fn check_refusal(&self, number: u64) -> Result<(), OrderError> {
        let refusal = self
            .book
            .read(|book| book.refusal(number))
            .map_err(|e| answer_unread(number, e))?;
        match refusal {
            Some(refusal) => Err(OrderError::Refused { refusal, number }),
            None => Ok(()),
        }
    }

    /// Leader side: checks and proposes one command, then waits until the group committed
    /// it, the book applied it and the catalog took it (which has invalidated the frontends'
    /// caches by then). Commands that arrive while the consensus layer writes share its
    /// next fsync and replication; commands the catalog applier finds waiting share one
    /// catalog call. A new order the checks refuse is proposed as a refusal, which changes
    /// nothing but is committed like the rest.
    pub(super) async fn submit(
        self: &Arc<Self>,
        submission: Submission,
    ) -> Result<u64, OrderError> {
        let (requests, mut progress) = {
            let guard = self.leading();
            let term = self.leader_term().ok_or_else(|| self.not_leader())?;
            self.not_handing_over()?;
            match guard.as_ref() {
                Some(sequencer) if sequencer.term == term => {
                    (sequencer.requests.clone(), sequencer.progress.clone())
                }
                _ if self.catalog_failing.load(Ordering::Acquire) => {
                    return Err(OrderError::CatalogUnavailable(
                        "the new leader cannot bring the catalog up to date yet".into(),
                    ))
                }
                _ => return Err(OrderError::NotReady),
            }
        };
        let market = matches!(submission.command, Command::Place { limit: None, .. });
        let (reply, proposed) = oneshot::channel();
        let request = Request::Propose(Asked {
            submission,
            // The request's id, as the frontend passed it on: the sequencer is another task.
            request_id: request_id::current().and_then(|id| id.to_str().ok().map(str::to_owned)),
            reply,
            stock: None,
        });
        // A sequencer that is gone proposed nothing: this replica no longer leads that term.
        requests.send(request).map_err(|_| OrderError::NotReady)?;
        let proposed = proposed.await.map_err(|_| OrderError::NotReady)??;
        // The commit round of a command this request proposed, from proposal to answer.
        let proposed_now = matches!(proposed, Proposed::Now(_)).then(std::time::Instant::now);
        let number = match proposed {
            Proposed::Logged(number) => number,
            // Proposed, so perhaps written: only its outcome, or a retry under its key, can say.
            Proposed::InFlight(mut outcome) | Proposed::Now(mut outcome) => {
                let known = outcome.wait_for(Option::is_some).await.ok();
                if let Some(proposed) = proposed_now {
                    self.metrics
                        .commit_round_seconds
                        .observe(proposed.elapsed().as_secs_f64());
                }
                match known.as_deref().cloned().flatten() {
                    Some(Ok(number)) => number,
                    Some(Err(cause)) => {
                        return Err(OrderError::OutcomeUnknown {
                            cause,
                            catalog: false,
                        })
                    }
                    None => {
                        return Err(OrderError::OutcomeUnknown {
                            cause: "the same command under this key did not finish".into(),
                            catalog: false,
                        })
                    }
                }
            }
        };
        // Committed and in the book. A book command that did not trade changes nothing in the
        // catalog (the catalog gets it in order with the others, for its position alone), so
        // it is answered now; anything else once the catalog has it too (I3, I7).
        if !market && self.book.read(|book| book.entry_price(number))?.is_none() {
            return Ok(number);
        }
        let waiting_since = progress.borrow().round;
        loop {
            {
                let now = progress.borrow_and_update();
                if now.applied >= number {
                    return Ok(number);
                }
                if let Some(failure) = &now.failure {
                    // A catalog round that began after this command committed and covered it:
                    // committed but not in the catalog, which the next round retries.
                    if failure.round > waiting_since && failure.through >= number {
                        let cause = match failure.catalog {
                            true => format!("catalog unavailable: {}", failure.cause),
                            false => failure.cause.clone(),
                        };
                        return Err(OrderError::OutcomeUnknown {
                            cause,
                            catalog: failure.catalog,
                        });
                    }
                }
            }
            if progress.changed().await.is_err() {
                return Err(OrderError::OutcomeUnknown {
                    cause: "this replica stopped leading".into(),
                    catalog: false,
                });
            }
        }
    }
}

/// An error reading the answer of entry `number`, which committed: the command executed, so
/// nothing may say it did not (a 404, a 503); a retry under its key reads the answer again.
fn answer_unread(number: u64, error: OrderError) -> OrderError {
    OrderError::OutcomeUnknown {
        cause: format!("entry {number} committed, and its answer could not be read: {error}"),
        catalog: false,
    }
}
