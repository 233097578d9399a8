//! Running a future that never waits.
//!
//! The write rules (`tombstone_store::rules`) and the deletion planner are async so that
//! one copy of them runs over PostgreSQL, whose queries wait on the network. Over SQLite —
//! a connection on the writer's own thread — and over the tests' in-memory graphs, every
//! step completes when first polled: [`now`] polls once, without a runtime, and costs
//! nothing beyond the calls themselves.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The output of `future`, which must complete on its first poll.
///
/// # Panics
/// When the future waits (returns `Pending`): it needs a runtime, and calling this on it
/// is a bug.
pub fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("ready::now was given a future that waits; it needs a runtime"),
    }
}

#[cfg(test)]
mod tests {
    use super::now;

    #[test]
    fn completes_a_future_that_never_waits() {
        async fn add(a: u32, b: u32) -> u32 {
            a + b
        }
        assert_eq!(now(async { add(1, 2).await * 2 }), 6);
    }

    #[test]
    #[should_panic(expected = "needs a runtime")]
    fn refuses_a_future_that_waits() {
        now(std::future::pending::<()>());
    }
}
