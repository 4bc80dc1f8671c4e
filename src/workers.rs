//! The per-core worker runtimes, as seen by request handlers: which worker a thread is, and
//! moving a call to another worker when its own is saturated.
//!
//! Connections are spread over the workers when accepted, and a connection stays where it was
//! accepted. That balances HTTP/1 clients, but a gRPC client usually sends every call over one
//! HTTP/2 connection: all its calls are served by one core. [`Workers::run`] lets the gRPC door
//! run a call's work (translation, the provider call) on another worker, but only once the
//! connection's worker is saturated — its thread used 99 % or more of a core over its last
//! [`WINDOW`] — and the other worker is not, with at least two calls fewer in flight; the
//! connection's framing stays where it is. A moved call costs more than one served in place
//! (the hand-off wakes the other thread, and its answer wakes this one again; measured on the
//! bench machine, a quarter more CPU per call), so calls move only when the connection's own
//! worker cannot keep up. With connections already balanced, or a worker with time to spare,
//! calls stay where they arrived.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
    load: Arc<Load>,
}

/// The span over which a worker's busy share is measured.
pub const WINDOW: Duration = Duration::from_millis(50);

/// A worker whose thread was on the CPU for at least 99 % of a [`WINDOW`] counts as
/// saturated. The thread's own CPU time, not the time between its parks: on a machine whose
/// cores are all busy a worker's thread waits for a core while not parked, and moving calls
/// to another worker would not find a free core either. Measured on the bench's 2-core
/// machine (where the load driver and the upstream use the other core), the worker serving
/// one gRPC connection at full speed used 70-90 % of a core, with bursts above 95 % over
/// 10 ms; moving even 2 % of its calls away then cost more than it gave (30-34k calls/s
/// against 35-40k without moving).
const BUSY_NUMERATOR: u64 = 99;
const BUSY_DENOMINATOR: u64 = 100;

/// How busy a worker's thread is: judged by its own thread at the end of each [`WINDOW`]
/// (on waking from a park, and when a call arrives on it) and read by the others. Times
/// are microseconds; wall times after `origin`.
#[derive(Debug)]
struct Load {
    origin: Instant,
    /// Parked (waiting for its sockets and timers) right now.
    parked: AtomicBool,
    /// The current window's start, and the thread's CPU time then.
    window_start: AtomicU64,
    window_cpu: AtomicU64,
    /// The last whole window's verdict.
    saturated: AtomicBool,
}

impl Load {
    fn new(origin: Instant) -> Self {
        Load {
            origin,
            parked: AtomicBool::new(false),
            window_start: AtomicU64::new(0),
            window_cpu: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The park hook.
    fn parked(&self) {
        self.parked.store(true, Ordering::Relaxed);
    }

    /// The unpark hook.
    fn unparked(&self) {
        self.parked.store(false, Ordering::Relaxed);
        self.tick_now();
    }

    /// [`Load::tick`] with the clocks read now.
    fn tick_now(&self) {
        self.tick(self.now(), thread_cpu_micros);
    }

    /// Closes the window if it is over (as of `now`), judging it by the CPU time its thread
    /// used (`cpu`, read only then). Only the worker's own thread calls this.
    fn tick(&self, now: u64, cpu: impl FnOnce() -> Option<u64>) {
        let span = now.saturating_sub(self.window_start.load(Ordering::Relaxed));
        if span < WINDOW.as_micros() as u64 {
            return;
        }
        let Some(cpu) = cpu() else { return };
        let used = cpu.saturating_sub(self.window_cpu.load(Ordering::Relaxed));
        self.saturated.store(
            used.saturating_mul(BUSY_DENOMINATOR) >= span.saturating_mul(BUSY_NUMERATOR),
            Ordering::Relaxed,
        );
        self.window_start.store(now, Ordering::Relaxed);
        self.window_cpu.store(cpu, Ordering::Relaxed);
    }

    /// Saturated: the last window said so, and the thread is not parked now.
    fn saturated(&self) -> bool {
        !self.parked.load(Ordering::Relaxed) && self.saturated.load(Ordering::Relaxed)
    }
}

/// The calling thread's CPU time so far, in microseconds.
fn thread_cpu_micros() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u64::try_from(t.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000))
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
    /// Builds `n` single-threaded worker runtimes whose park and unpark tell [`Workers::run`]
    /// how busy each is, and installs them (in worker order; a second call is ignored).
    pub fn build(&self, n: usize) -> std::io::Result<Vec<tokio::runtime::Runtime>> {
        let origin = Instant::now();
        let mut runtimes = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let load = Arc::new(Load::new(origin));
            let (on_park, on_unpark) = (Arc::clone(&load), Arc::clone(&load));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || on_park.parked())
                .on_thread_unpark(move || on_unpark.unparked())
                .build()?;
            workers.push(Worker {
                handle: runtime.handle().clone(),
                in_flight: AtomicUsize::new(0),
                load,
            });
            runtimes.push(runtime);
        }
        let _ = self.inner.set(workers);
        Ok(runtimes)
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

    /// Runs `work` here, or, when this worker is saturated, on the least busy worker that is
    /// not, if that one has at least two calls fewer in flight. A panic on the other worker
    /// comes back as `Err`.
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
        local.load.tick_now();
        let load = |i: usize| {
            workers.get(i).map_or((true, usize::MAX), |w| {
                (w.load.saturated(), w.in_flight.load(Ordering::Relaxed))
            })
        };
        let Some(to) = destination(here, workers.len(), load) else {
            let _counted = Counted::new(&self.inner, here);
            return Ok(work.await);
        };
        let counted = Counted::new(&self.inner, to);
        let there = Arc::clone(&workers[to].load);
        let task = workers[to].handle.spawn(async move {
            let _counted = counted;
            // A worker busy with moved calls alone may not park for a while: judge it here too.
            there.tick_now();
            work.await
        });
        Remote(task).await
    }
}

/// Where a call arriving on worker `here` (of `n`) runs, `None` meaning here: elsewhere only
/// when `here` is saturated, on the non-saturated worker with the fewest calls in flight, if it
/// has at least two fewer than `here`. `load(i)` is worker `i`'s (saturated, calls in flight).
fn destination(here: usize, n: usize, load: impl Fn(usize) -> (bool, usize)) -> Option<usize> {
    let (saturated, mine) = load(here);
    if !saturated {
        return None;
    }
    (0..n)
        .filter(|&i| i != here)
        .filter_map(|i| {
            let (busy, in_flight) = load(i);
            (!busy).then_some((i, in_flight))
        })
        .min_by_key(|&(_, in_flight)| in_flight)
        .filter(|&(_, least)| least.saturating_add(2) <= mine)
        .map(|(i, _)| i)
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

    /// Two worker runtimes on their own threads, as the server starts them.
    fn two_workers() -> (
        Workers,
        Vec<std::thread::JoinHandle<()>>,
        Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        let workers = Workers::default();
        let (mut threads, mut stops) = (Vec::new(), Vec::new());
        for (i, rt) in workers.build(2).unwrap().into_iter().enumerate() {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            threads.push(std::thread::spawn(move || {
                Workers::enter(i);
                rt.block_on(async {
                    let _ = rx.await;
                });
            }));
        }
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
    fn calls_move_only_off_a_saturated_worker_to_one_with_fewer() {
        let load = |l: Vec<(bool, usize)>| move |i: usize| l[i];
        // A worker with time to spare keeps its calls, however many.
        assert_eq!(destination(0, 2, load(vec![(false, 50), (false, 0)])), None);
        // Saturated: to the other worker, if it has at least two calls fewer.
        assert_eq!(
            destination(0, 2, load(vec![(true, 5), (false, 3)])),
            Some(1)
        );
        assert_eq!(destination(0, 2, load(vec![(true, 5), (false, 4)])), None);
        // Never to a worker that is saturated itself; the least busy of the others.
        assert_eq!(destination(1, 2, load(vec![(true, 0), (true, 9)])), None);
        let three = load(vec![(false, 4), (true, 9), (false, 2)]);
        assert_eq!(destination(1, 3, three), Some(2));
        // Alone, nowhere to go.
        assert_eq!(destination(0, 1, load(vec![(true, 9)])), None);
    }

    #[test]
    fn a_worker_is_saturated_when_its_thread_used_99_percent_of_a_window() {
        let w = WINDOW.as_micros() as u64;
        let l = Load::new(Instant::now());
        let unread = || -> Option<u64> { panic!("the CPU time is read only when a window ends") };
        l.tick(w - 1, unread);
        // The first window: its thread ran half of it.
        l.tick(w, || Some(w / 2));
        assert!(!l.saturated());
        // The next: 99.5 % of it.
        l.tick(2 * w, || Some(w / 2 + w * 995 / 1000));
        assert!(l.saturated());
        // Parked now: not saturated, whatever the last window said.
        l.parked();
        assert!(!l.saturated());
        l.parked.store(false, Ordering::Relaxed);
        assert!(l.saturated());
        // 98 %: not saturated; a window whose CPU time cannot be read keeps the last verdict.
        l.tick(3 * w, || Some(w / 2 + w * 995 / 1000 + w * 98 / 100));
        assert!(!l.saturated());
        l.tick(4 * w, || None);
        assert!(!l.saturated());
        // The thread's real CPU clock moves while it works.
        let before = thread_cpu_micros().unwrap();
        let until = Instant::now() + Duration::from_millis(5);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        assert!(thread_cpu_micros().unwrap() > before);
    }

    #[test]
    fn a_saturated_worker_hands_calls_to_an_idle_one_and_an_idle_worker_parks() {
        let (workers, threads, stops) = two_workers();
        let w = workers.clone();
        let ran_on: Vec<Option<usize>> = on_worker(&workers, 0, async move {
            // Worker 0's last window said saturated (set here: a test machine's load would
            // decide it otherwise), and no window ends during the test. It starts eight calls
            // at once, each waiting: the later ones move to the idle worker 1, until the two
            // have about as many.
            let here = &w.inner.get().unwrap()[0].load;
            here.window_start.store(u64::MAX, Ordering::Relaxed);
            here.saturated.store(true, Ordering::Relaxed);
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
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = release.send(true);
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        });
        let moved = ran_on.iter().filter(|i| **i == Some(1)).count();
        let stayed = ran_on.iter().filter(|i| **i == Some(0)).count();
        assert_eq!(moved + stayed, 8, "{ran_on:?}");
        assert!(
            (3..=5).contains(&moved),
            "balanced, not all on one: {ran_on:?}"
        );
        // With nothing left to do, both workers park: neither counts as saturated.
        let all = workers.inner.get().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all.iter().all(|w| w.load.parked.load(Ordering::Relaxed)) {
            assert!(Instant::now() < deadline, "a worker never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
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
