//! The per-core worker runtimes, as seen by request handlers: which worker a thread is, and
//! moving a call to a less busy worker.
//!
//! Connections are spread over the workers when accepted, and a connection stays where it was
//! accepted. That balances HTTP/1 clients, but a gRPC client usually sends every call over one
//! HTTP/2 connection: all its calls would be served by one core. [`Workers::run`] lets the
//! gRPC door run a call's work (translation, the provider call) on another worker when that one
//! has at least two calls fewer in flight; the connection's framing stays where it is. With
//! connections already balanced, or one call at a time, calls stay where they arrived.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::runtime::Handle;
use tokio::task::{JoinError, JoinHandle};

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The workers' runtimes, installed once they exist; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    inner: Arc<OnceLock<Vec<Worker>>>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Calls running on this worker through [`Workers::run`].
    in_flight: AtomicUsize,
}

/// One call counted on a worker until dropped; counted from the moment it is sent there, so
/// calls decided in a burst see each other.
struct Counted {
    workers: Arc<OnceLock<Vec<Worker>>>,
    at: usize,
}

impl Counted {
    fn new(workers: &Arc<OnceLock<Vec<Worker>>>, at: usize) -> Self {
        if let Some(w) = workers.get().and_then(|w| w.get(at)) {
            w.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Counted {
            workers: Arc::clone(workers),
            at,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(w) = self.workers.get().and_then(|w| w.get(self.at)) {
            w.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A task on another worker, aborted if the caller stops waiting (client cancel, deadline).
struct Remote<T>(JoinHandle<T>);

impl<T> Future for Remote<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Remote<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Workers {
    /// The worker runtimes, in worker order (a second call is ignored).
    pub fn install(&self, handles: Vec<Handle>) {
        let workers = handles
            .into_iter()
            .map(|handle| Worker {
                handle,
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        let _ = self.inner.set(workers);
    }

    /// Marks the calling thread as worker `index`.
    pub fn enter(index: usize) {
        CURRENT.with(|c| c.set(Some(index)));
    }

    /// The worker the calling thread is, if it is one (the upstream client picks its
    /// connection pool by it).
    pub fn current() -> Option<usize> {
        CURRENT.with(Cell::get)
    }

    /// Runs `work` here, or on the least busy worker if it has at least two calls fewer in
    /// flight than this one. A panic on the other worker comes back as `Err`.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, JoinError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (Some(workers), Some(here)) = (self.inner.get(), Self::current()) else {
            return Ok(work.await);
        };
        let Some(local) = workers.get(here) else {
            return Ok(work.await);
        };
        let busy = |w: &Worker| w.in_flight.load(Ordering::Relaxed);
        let (to, least) = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i, busy(w)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((here, 0));
        if to == here || least + 2 > busy(local) {
            let _counted = Counted::new(&self.inner, here);
            return Ok(work.await);
        }
        let counted = Counted::new(&self.inner, to);
        let task = workers[to].handle.spawn(async move {
            let _counted = counted;
            work.await
        });
        Remote(task).await
    }
}

/// Spinning before sleeping, so a lone request is not slowed by the worker's own wake-ups.
///
/// A worker with nothing to do sleeps in `epoll_wait`; waking it when the provider answers, or
/// when the client sends its next request, costs tens of microseconds on a virtual machine
/// (the idle CPU halts and is woken by an interrupt) — more than the gateway's own work on a
/// call. While a worker has at most one request in flight, and for `window` after a request
/// starts or ends, its spinner keeps it awake instead: it yields to the runtime, which then
/// polls its sockets without sleeping, and to the OS (`sched_yield`), which runs any other
/// thread that wants the CPU. Busier workers never spin: their own requests keep them awake,
/// and spinning would only take CPU from them. An idle gateway does not spin at all.
pub mod spin {
    use std::cell::Cell;
    use std::task::{Poll, Waker};
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct State {
        /// Requests started on this thread and not yet ended.
        in_flight: Cell<usize>,
        /// Starts and ends so far: the spinner's sign that something happened.
        activity: Cell<u64>,
        /// The spinner, while it sleeps.
        waker: Cell<Option<Waker>>,
        /// Turns the spinner has taken (for tests).
        turns: Cell<u64>,
    }

    thread_local! {
        static STATE: State = State::default();
    }

    /// A request on this worker, from start to end (drop). Keep it on the worker's thread,
    /// where the request's future runs.
    #[derive(Debug)]
    pub struct InFlight(());

    impl InFlight {
        pub fn start() -> Self {
            STATE.with(|s| s.in_flight.set(s.in_flight.get() + 1));
            touch();
            InFlight(())
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            STATE.with(|s| s.in_flight.set(s.in_flight.get().saturating_sub(1)));
            touch();
        }
    }

    /// Counts the change and wakes the spinner if this worker is quiet enough to spin.
    fn touch() {
        STATE.with(|s| {
            s.activity.set(s.activity.get().wrapping_add(1));
            if s.in_flight.get() <= 1
                && let Some(w) = s.waker.take()
            {
                w.wake();
            }
        });
    }

    /// Turns this worker's spinner has taken.
    pub fn turns() -> u64 {
        STATE.with(|s| s.turns.get())
    }

    /// The worker's spinner: run it as a task on the worker's single-threaded runtime.
    pub async fn spinner(window: Duration) {
        let activity = || STATE.with(|s| s.activity.get());
        let quiet = || STATE.with(|s| s.in_flight.get() <= 1);
        let mut seen = activity();
        loop {
            // Asleep until a request starts or ends here.
            std::future::poll_fn(|cx| {
                if activity() != seen && quiet() {
                    Poll::Ready(())
                } else {
                    STATE.with(|s| s.waker.set(Some(cx.waker().clone())));
                    Poll::Pending
                }
            })
            .await;
            seen = activity();
            let mut until = Instant::now() + window;
            while quiet() {
                STATE.with(|s| s.turns.set(s.turns.get() + 1));
                std::thread::yield_now();
                tokio::task::yield_now().await;
                let now = Instant::now();
                if activity() != seen {
                    seen = activity();
                    until = now + window;
                } else if now >= until {
                    break;
                }
            }
            seen = activity();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two single-threaded runtimes on their own threads, as the server starts them.
    fn two_workers() -> (
        Workers,
        Vec<std::thread::JoinHandle<()>>,
        Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        let workers = Workers::default();
        let (mut handles, mut threads, mut stops) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            threads.push(std::thread::spawn(move || {
                Workers::enter(i);
                rt.block_on(async {
                    let _ = rx.await;
                });
            }));
        }
        workers.install(handles);
        (workers, threads, stops)
    }

    fn on_worker<T: Send + 'static>(
        workers: &Workers,
        i: usize,
        f: impl Future<Output = T> + Send + 'static,
    ) -> T {
        let h = workers.inner.get().unwrap()[i].handle.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().unwrap()
    }

    #[test]
    fn busy_worker_hands_calls_to_an_idle_one_and_one_call_stays_home() {
        let (workers, threads, stops) = two_workers();
        let w = workers.clone();
        let ran_on: Vec<Option<usize>> = on_worker(&workers, 0, async move {
            // One call at a time: it runs where it arrived.
            let alone = w.run(async { Workers::current() }).await.unwrap();
            // Eight calls at once, each waiting: the later ones move to worker 1.
            let (release, wait) = tokio::sync::watch::channel(false);
            let calls: Vec<_> = (0..8)
                .map(|_| {
                    let (w, mut wait) = (w.clone(), wait.clone());
                    tokio::spawn(async move {
                        w.run(async move {
                            let at = Workers::current();
                            let _ = wait.wait_for(|r| *r).await;
                            at
                        })
                        .await
                        .unwrap()
                    })
                })
                .collect();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let _ = release.send(true);
            let mut out = vec![alone];
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        });
        assert_eq!(ran_on[0], Some(0));
        let moved = ran_on[1..].iter().filter(|i| **i == Some(1)).count();
        let stayed = ran_on[1..].iter().filter(|i| **i == Some(0)).count();
        assert_eq!(moved + stayed, 8, "{ran_on:?}");
        assert!(
            (3..=5).contains(&moved),
            "balanced, not all on one: {ran_on:?}"
        );
        drop(stops);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_worker_spins_only_while_quiet_and_only_for_its_window() {
        use std::time::Duration;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ms = Duration::from_millis;
        rt.block_on(async {
            tokio::spawn(spin::spinner(ms(5)));
            tokio::time::sleep(ms(1)).await;
            let idle = spin::turns();
            tokio::time::sleep(ms(20)).await;
            assert_eq!(spin::turns(), idle, "an idle worker sleeps");

            let one = spin::InFlight::start();
            tokio::time::sleep(ms(2)).await;
            assert!(spin::turns() > idle, "one request in flight: it spins");

            let two = spin::InFlight::start();
            tokio::time::sleep(ms(1)).await;
            let busy = spin::turns();
            tokio::time::sleep(ms(20)).await;
            assert_eq!(
                spin::turns(),
                busy,
                "two in flight: their work keeps it awake"
            );

            drop(two);
            tokio::time::sleep(ms(1)).await;
            assert!(spin::turns() > busy, "one left: it spins again");
            drop(one);
            tokio::time::sleep(ms(30)).await;
            let after = spin::turns();
            tokio::time::sleep(ms(20)).await;
            assert_eq!(spin::turns(), after, "the window is over: it sleeps");
        });
    }

    #[test]
    fn outside_the_workers_calls_run_in_place() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let workers = Workers::default();
        assert_eq!(rt.block_on(workers.run(async { 7 })).unwrap(), 7);
    }
}
