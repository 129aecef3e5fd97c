//! Graceful shutdown in two steps.
//!
//! *Requested* (SIGTERM/SIGINT): fetchers start no new FetchMatches; queued and in-flight matches
//! still get allocated. *Forced* (SHUTDOWN_TIMEOUT later): in-progress streams are cancelled, retry
//! sleeps end, and every match still queued is released instead of allocated.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::sync::lock;

/// A one-way flag that threads can wait on and `select!` over.
struct Latch {
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
    set: AtomicBool,
}

impl Latch {
    fn new() -> Latch {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Latch {
            sender: Mutex::new(Some(sender)),
            receiver,
            set: AtomicBool::new(false),
        }
    }

    /// Sets the latch; returns whether this call was the one that set it.
    fn set(&self) -> bool {
        self.set.store(true, Ordering::SeqCst);
        let mut sender = lock(&self.sender);
        sender.take().is_some()
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }
}

/// Shared shutdown state.
pub struct Shutdown {
    grace: Duration,
    deadline: OnceLock<Instant>,
    requested: Latch,
    forced: Latch,
    stream_wakers: Mutex<Vec<Waker>>,
}

impl Shutdown {
    /// A shutdown that has not been requested; once requested, it is forced after `grace`.
    pub fn new(grace: Duration) -> Arc<Shutdown> {
        Arc::new(Shutdown {
            grace,
            deadline: OnceLock::new(),
            requested: Latch::new(),
            forced: Latch::new(),
            stream_wakers: Mutex::new(Vec::new()),
        })
    }

    /// Calls [`Shutdown::request`] on the first SIGINT or SIGTERM, [`Shutdown::force`] on the next.
    pub fn install_signal_handler(self: &Arc<Self>) -> Result<(), ctrlc::Error> {
        let shutdown = Arc::clone(self);
        ctrlc::set_handler(move || {
            if shutdown.request() {
                log::info!(
                    "Shutdown requested: no new fetches; draining queued and in-flight matches (signal again to stop at once)"
                );
            } else {
                log::warn!("Second signal: releasing queued matches and stopping now");
                shutdown.force();
            }
        })
    }

    /// Asks every thread to finish; returns whether this call was the first.
    pub fn request(&self) -> bool {
        self.deadline.get_or_init(|| Instant::now() + self.grace);
        self.requested.set()
    }

    /// When shutdown will be forced, once it has been requested.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get().copied()
    }

    /// Ends all waiting: streams are cancelled and queued matches are released.
    pub fn force(&self) {
        self.request();
        if self.forced.set() {
            let wakers = std::mem::take(&mut *lock(&self.stream_wakers));
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        self.requested.is_set()
    }

    /// Whether the shutdown deadline has passed.
    pub fn is_forced(&self) -> bool {
        self.forced.is_set()
    }

    /// A channel that becomes ready (disconnected) when shutdown is requested, for `select!`.
    pub fn requested_channel(&self) -> &Receiver<()> {
        &self.requested.receiver
    }

    /// A channel that becomes ready (disconnected) when shutdown is forced, for `select!`.
    pub fn forced_channel(&self) -> &Receiver<()> {
        &self.forced.receiver
    }

    /// Blocks until shutdown is requested.
    pub fn wait_requested(&self) {
        let _ = self.requested.receiver.recv();
    }

    /// Sleeps for `duration`; returns `false` early if shutdown is forced meanwhile.
    pub fn sleep(&self, duration: Duration) -> bool {
        matches!(
            self.forced.receiver.recv_timeout(duration),
            Err(RecvTimeoutError::Timeout)
        )
    }

    /// Drives `future` on this thread until it completes (`Some(output)`), or until shutdown is
    /// forced while it is not ready (`None`). Output that is ready is returned even after the
    /// force, so that matches already received are not dropped.
    pub fn block_on_unless_forced<F: Future + Unpin>(&self, mut future: F) -> Option<F::Output> {
        futures_executor::block_on(std::future::poll_fn(|cx| {
            let forced = self.poll_forced(cx);
            match Pin::new(&mut future).poll(cx) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending if forced => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        }))
    }

    /// Arranges a wake-up of `cx` when shutdown is forced, and tells whether it already is.
    /// Register first, then check, so that no force can slip in between.
    fn poll_forced(&self, cx: &Context<'_>) -> bool {
        {
            let mut wakers = lock(&self.stream_wakers);
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        self.is_forced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_reported_once_and_wakes_select() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        assert!(!shutdown.is_requested());
        assert!(shutdown.request());
        assert!(!shutdown.request());
        assert!(shutdown.is_requested());
        assert!(shutdown.requested_channel().recv().is_err());
        assert!(!shutdown.is_forced());
        assert!(shutdown.deadline().is_some());
    }

    #[test]
    fn force_interrupts_sleep_from_another_thread() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let sleeper = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || shutdown.sleep(Duration::from_secs(600)))
        };
        shutdown.force();
        assert!(!sleeper.join().unwrap());
        assert!(shutdown.is_requested());
    }

    #[test]
    fn force_abandons_a_pending_future_but_not_a_ready_one() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let waiter = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || {
                shutdown.block_on_unless_forced(std::future::pending::<()>())
            })
        };
        shutdown.force();
        assert_eq!(waiter.join().unwrap(), None);
        assert_eq!(
            shutdown.block_on_unless_forced(std::future::ready(7)),
            Some(7)
        );
    }

    #[test]
    fn sleep_runs_its_course_without_force() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        assert!(shutdown.sleep(Duration::from_millis(1)));
    }
}
