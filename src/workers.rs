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
    fn outside_the_workers_calls_run_in_place() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let workers = Workers::default();
        assert_eq!(rt.block_on(workers.run(async { 7 })).unwrap(), 7);
    }
}
