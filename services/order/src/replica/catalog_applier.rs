//! The leader's catalog applier: it applies what the book has committed and the catalog lacks,
//! in order, under the leader's term, and tells waiting commands how far it got.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stocknet_common::wire::{ApplyRequest, CatalogTrade};
use stocknet_common::{Price, RemoteError};
use tokio::sync::watch;

use super::{Replica, BATCH};
use crate::error::OrderError;

/// How often the leader's catalog applier looks for committed entries the catalog lacks
/// when nothing wakes it: after a catalog outage, the catalog catches up within this.
pub const CATALOG_RETRY: Duration = Duration::from_millis(300);

/// How often the leader asks the catalog where it stands while nothing commits: a catalog
/// brought back from an older copy of its files would otherwise lack acknowledged orders
/// (and serve quantities from before them) until the next order commits (I3).
const CATALOG_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Where the leader's catalog applier is: entries through `applied` are in the catalog, so
/// commands through it can be acknowledged.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    pub(super) round: u64,
    pub(super) applied: u64,
    /// The last round's failure, which concerns the entries through `through`.
    pub(super) failure: Option<RoundFailure>,
}

#[derive(Debug, Clone)]
pub(super) struct RoundFailure {
    pub(super) round: u64,
    pub(super) through: u64,
    pub(super) cause: String,
    /// Whether the catalog is what failed; not when it said a newer leader took over.
    pub(super) catalog: bool,
}

impl Replica {
    /// The leader's catalog applier, one per term: applies what the book has and the catalog
    /// lacks, as soon as the book applies an entry and every [`CATALOG_RETRY`] otherwise
    /// (which catches the catalog up after an outage).
    pub(super) async fn apply_loop(
        self: Arc<Self>,
        term: u64,
        progress: watch::Sender<Progress>,
        mut catalog_applied: u64,
    ) {
        let mut ticks = tokio::time::interval(CATALOG_RETRY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A round starts as soon as the book applies an entry, before its commands' answers
        // reach the requests waiting for them.
        let mut book_applied = self.book.feed().applied();
        let mut last_round = Instant::now();
        loop {
            tokio::select! {
                Ok(()) = book_applied.changed() => {}
                _ = ticks.tick() => {}
            }
            let through = self.book().applied();
            // (After a failed round, every tick: new commands are refused meanwhile, so
            // nothing else would bring the next one.)
            let failing = self.catalog_failing.load(Ordering::Acquire);
            if through <= catalog_applied && !failing && last_round.elapsed() < CATALOG_CHECK_EVERY
            {
                continue;
            }
            last_round = Instant::now();
            let (applying, before) = (Instant::now(), catalog_applied);
            let result = self
                .apply_to_catalog(term, &mut catalog_applied, through)
                .await;
            let fenced = matches!(result, Err(OrderError::NotLeader { .. }));
            if fenced {
                self.catalog_fenced.store(term, Ordering::Release);
            } else if result.is_ok() {
                // The catalog takes this term again (its own set back by an operator).
                let _ = self.catalog_fenced.compare_exchange(
                    term,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            self.catalog_failing
                .store(result.is_err() && !fenced, Ordering::Release);
            match &result {
                Ok(()) => {
                    // (None for a look at where the catalog stands; fewer than none from a
                    // catalog that went back to an older copy.)
                    let entries = catalog_applied.saturating_sub(before);
                    if entries > 0 {
                        let metrics = &self.metrics;
                        metrics
                            .catalog_apply_seconds
                            .observe(applying.elapsed().as_secs_f64());
                        metrics.commit_round_entries.observe(entries as f64);
                    }
                }
                Err(OrderError::NotLeader { .. }) => {
                    tracing::info!(term, "the catalog knows a newer term; no longer applying");
                }
                Err(e) => tracing::warn!(term, through, "catalog apply failed: {e}"),
            }
            progress.send_modify(|now| {
                now.round += 1;
                now.applied = catalog_applied;
                now.failure = result.err().map(|error| RoundFailure {
                    round: now.round,
                    through,
                    cause: error.to_string(),
                    catalog: !fenced,
                });
            });
        }
    }

    /// Applies the log through `number` to the catalog, in order, under the leader's term.
    pub(super) async fn apply_to_catalog(
        &self,
        term: u64,
        catalog_applied: &mut u64,
        number: u64,
    ) -> Result<(), OrderError> {
        let (mut answered, mut retried) = (false, false);
        // Answered at least once even when there is nothing to apply: that records the term
        // (and says where the catalog stands). A retry after a failed call sends it again.
        while *catalog_applied < number || !answered {
            let through = number.min(*catalog_applied + BATCH as u64);
            let orders = self.orders_between(*catalog_applied, through)?;
            // (A trade the archive cannot give fails the round, which is retried: a price
            // missing from it would be a change the catalog never gets.)
            let prices: Vec<Option<Price>> = self
                .book
                .read(|book| orders.iter().map(|o| book.entry_price(o.number)).collect())?;
            let trades: Vec<CatalogTrade> = orders
                .into_iter()
                .zip(prices)
                .map(|(o, price)| {
                    let mut trade = CatalogTrade {
                        number: o.number,
                        delta: o.market().map_or(0, |(side, count)| side.delta(count)),
                        price,
                        request_id: None,
                        name: o.name,
                    };
                    if trade.changes_stock() {
                        trade.request_id = o.stamp.request_id;
                    }
                    trade
                })
                .collect();
            let request = ApplyRequest {
                term,
                trades,
                leader_applied: Some(number),
            };
            match self.catalog.apply(&request).await {
                Ok(outcome) => {
                    answered = true;
                    *catalog_applied = outcome.applied;
                    continue;
                }
                Err(RemoteError::Api(error))
                    if error.status == axum::http::StatusCode::CONFLICT =>
                {
                    // Out of step with the catalog: a newer leader, or a different position.
                    let snapshot = self.catalog.snapshot().await.map_err(OrderError::catalog)?;
                    if snapshot.term > term {
                        return Err(self.not_leader());
                    }
                    if snapshot.applied == *catalog_applied {
                        return Err(OrderError::CatalogUnavailable(error.message));
                    }
                    *catalog_applied = snapshot.applied;
                }
                // One quick retry rides over a dropped connection; a catalog that is down or
                // hung fails the round (its entries answer "outcome unknown" at once, and new
                // orders are refused until the catalog is back), and the next round tries
                // again.
                Err(e) if !retried && !is_timeout(&e) => {
                    retried = true;
                    tracing::warn!("catalog apply failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(OrderError::catalog(e)),
            }
        }
        Ok(())
    }
}

/// Whether a call got no answer in time: a hung peer, not worth an immediate retry.
pub(super) fn is_timeout(error: &RemoteError) -> bool {
    matches!(error, RemoteError::Unreachable(e) if e.is_timeout())
}
