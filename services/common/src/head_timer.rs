//! hyper's header-read timeout on one timer per connection. hyper asks its timer for a new
//! sleep each time it starts reading a request head and drops it once the head is read: with
//! tokio's own sleeps (`hyper_util::rt::TokioTimer`) that is an allocation and a registration in
//! tokio's timer wheel, and a removal from it, for every request, which cost cached lookups
//! several hundredths of their rate (docs/BENCHMARKS.md, "A connection's head timer"). Here
//! each connection keeps one tokio timer, armed at the earliest deadline it was asked for; a
//! sleep hyper asks for only notes its deadline, and the timer, when it fires early, is armed
//! again at the deadline of the sleep being waited on. Deadlines only move later on one
//! connection, so the timer never fires late.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The timer of one connection (give each connection's builder its own).
#[derive(Clone, Default)]
pub struct HeadTimer {
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadDeadline {
            due: tokio::time::Instant::from_std(deadline),
            armed: self.armed.clone(),
        })
    }

    /// tokio's clock, so that tests which pause it see hyper's deadlines follow it.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One wait of hyper's, due at `due`, on its connection's timer.
struct HeadDeadline {
    due: tokio::time::Instant,
    armed: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl hyper::rt::Sleep for HeadDeadline {}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let due = self.due;
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let timer = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
        loop {
            std::task::ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= due {
                return Poll::Ready(());
            }
            // It fired for an earlier wait of this connection's.
            timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer;

    use super::*;

    fn pending(wait: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        wait.as_mut().poll(&mut cx).is_pending()
    }

    /// Each wait ends at its own deadline, though the connection's one timer was armed for
    /// an earlier one; and a wait whose deadline is earlier than the timer's is not late.
    #[tokio::test(start_paused = true)]
    async fn each_wait_ends_at_its_own_deadline_on_one_timer() {
        let timer = HeadTimer::default();
        let started = tokio::time::Instant::now();
        // The first wait arms the timer for 10 s, and ends (a head read) before it is due.
        assert!(pending(&mut timer.sleep(Duration::from_secs(10))));
        tokio::time::advance(Duration::from_secs(4)).await;
        let second = timer.sleep(Duration::from_secs(10));
        second.await;
        assert_eq!(started.elapsed(), Duration::from_secs(14));

        assert!(pending(&mut timer.sleep(Duration::from_secs(30))));
        let earlier = timer.sleep(Duration::from_secs(5));
        earlier.await;
        assert_eq!(started.elapsed(), Duration::from_secs(19));
    }
}
