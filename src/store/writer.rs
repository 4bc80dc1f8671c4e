//! The spend writer: spend records leave the request path through a bounded in-memory buffer
//! and are written by a background task in batches (every `flush_interval` or `batch_size`
//! records, whichever comes first), each batch in one exactly-once transaction
//! ([`Store::write_spend_batch`]).
//!
//! - [`SpendWriter::record`] is synchronous, never blocks on the database and never fails: when
//!   the buffer is full the record is dropped and counted, with one `error` log line per
//!   overflow episode (logged when the episode ends) giving how many were dropped.
//! - While the database is unreachable the task keeps the batch in memory and retries it, with
//!   the same batch id, with exponential backoff; new records wait in the buffer (still bounded).
//! - A batch the database refuses outright (invalid data) is split and written record by
//!   record; only the records refused alone are dropped (logged and counted).
//! - [`SpendWriter::flush_and_close`] writes everything pending and returns, for shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::spend::{SpendLogOptions, SpendRecord};
use super::{BatchOutcome, Store, StoreError};

/// Options of [`SpendWriter::start`].
#[derive(Debug, Clone)]
pub struct SpendWriterOptions {
    /// No per-request ledger rows (totals are still written).
    pub disable_spend_logs: bool,
    /// No ledger rows for failed requests (status >= 400); they still count in totals.
    pub disable_error_logs: bool,
    /// Records held in memory at most, waiting or being written (default 100,000).
    pub capacity: usize,
    /// Records per batch (default 500).
    pub batch_size: usize,
    /// A partial batch is written after this long (default 500 ms).
    pub flush_interval: Duration,
    /// First retry delay after a failed write (default 100 ms), doubled per failure...
    pub retry_initial: Duration,
    /// ...up to this (default 5 s).
    pub retry_max: Duration,
    /// How long [`SpendWriter::flush_and_close`] waits for the database (default 30 s).
    pub close_timeout: Duration,
}

impl Default for SpendWriterOptions {
    fn default() -> Self {
        Self {
            disable_spend_logs: false,
            disable_error_logs: false,
            capacity: 100_000,
            batch_size: 500,
            flush_interval: Duration::from_millis(500),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            close_timeout: Duration::from_secs(30),
        }
    }
}

impl SpendWriterOptions {
    fn log_options(&self) -> SpendLogOptions {
        SpendLogOptions {
            disable_spend_logs: self.disable_spend_logs,
            disable_error_logs: self.disable_error_logs,
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<SpendRecord>,
    /// Records taken by the task and not yet written.
    in_flight: usize,
    closed: bool,
    /// Records dropped in the current overflow episode (0 = none going on).
    episode_dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    batch_size: usize,
    dropped: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
    /// Mirror of `queue.len() + in_flight` for lock-free reads.
    pending: AtomicUsize,
}

impl Shared {
    /// Ends the overflow episode, if one is going on and there is room again.
    fn end_episode(&self) {
        let dropped = {
            let mut s = self.state.lock();
            if s.episode_dropped == 0 || s.queue.len() + s.in_flight >= self.capacity {
                return;
            }
            std::mem::take(&mut s.episode_dropped)
        };
        log_overflow(dropped, self.capacity);
    }
}

fn log_overflow(dropped: u64, capacity: usize) {
    tracing::error!(
        dropped,
        capacity,
        "spend writer buffer was full ({capacity} records): dropped {dropped} spend records; \
         spend totals and budgets do not include them"
    );
}

/// Handle of the spend writer; clones share the buffer.
#[derive(Clone)]
pub struct SpendWriter {
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
    close_timeout: Duration,
}

impl std::fmt::Debug for SpendWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendWriter")
            .field("pending", &self.pending())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl SpendWriter {
    /// Starts the background task on the current Tokio runtime. The task ends after
    /// [`SpendWriter::flush_and_close`], or once every handle is dropped and the buffer is
    /// written.
    pub fn start(store: Store, options: SpendWriterOptions) -> (SpendWriter, JoinHandle<()>) {
        let options = SpendWriterOptions {
            capacity: options.capacity.max(1),
            batch_size: options.batch_size.max(1),
            ..options
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            capacity: options.capacity,
            batch_size: options.batch_size,
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
        });
        let (done_tx, done_rx) = watch::channel(false);
        let close_timeout = options.close_timeout;
        let task = tokio::spawn(run(store, Arc::clone(&shared), options, done_tx));
        (
            SpendWriter {
                shared,
                done: done_rx,
                close_timeout,
            },
            task,
        )
    }

    /// Queues a record for writing. Never blocks on the database and never fails: a record
    /// that does not fit in the buffer (or arrives after close) is dropped and counted.
    pub fn record(&self, record: SpendRecord) {
        let shared = &self.shared;
        let (wake, ended_episode) = {
            let mut s = shared.state.lock();
            if s.closed {
                drop(s);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    request_id = %record.request_id,
                    "spend writer is closed: dropped a spend record"
                );
                return;
            }
            if s.queue.len() + s.in_flight >= shared.capacity {
                s.episode_dropped += 1;
                drop(s);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let ended = std::mem::take(&mut s.episode_dropped);
            s.queue.push_back(record);
            shared
                .pending
                .store(s.queue.len() + s.in_flight, Ordering::Relaxed);
            (s.queue.len() >= shared.batch_size, ended)
        };
        if ended_episode > 0 {
            log_overflow(ended_episode, shared.capacity);
        }
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Records waiting to be written (queued or in a batch being written or retried).
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Records dropped since start: buffer full, after close, or refused by the database.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records written since start (including ones the ledger already had).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Failed write attempts since start (each is retried).
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// Stops taking records, writes everything pending and returns once it is written, or with
    /// [`StoreError::FlushTimeout`] after `close_timeout` if the database stays unreachable
    /// (the task keeps trying until the runtime stops).
    pub async fn flush_and_close(&self) -> Result<(), StoreError> {
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_one();
        let mut done = self.done.clone();
        match tokio::time::timeout(self.close_timeout, done.wait_for(|d| *d)).await {
            // A closed channel means the task is gone (finished or aborted).
            Ok(_) => match self.pending() {
                0 => Ok(()),
                pending => Err(StoreError::FlushTimeout {
                    waited: self.close_timeout,
                    pending,
                }),
            },
            Err(_) => Err(StoreError::FlushTimeout {
                waited: self.close_timeout,
                pending: self.pending(),
            }),
        }
    }
}

async fn run(
    store: Store,
    shared: Arc<Shared>,
    options: SpendWriterOptions,
    done: watch::Sender<bool>,
) {
    let log_options = options.log_options();
    let mut last_prune = tokio::time::Instant::now();
    loop {
        let (closed, queued) = {
            let s = shared.state.lock();
            (s.closed, s.queue.len())
        };
        // Every handle dropped: nobody can add records or close; finish what is there.
        let orphaned = Arc::strong_count(&shared) == 1;
        if !closed && !orphaned && queued < shared.batch_size {
            // Until the interval ends, a batch fills or the writer closes (a wake-up can be
            // stale: `notify_one` keeps a permit from records already taken).
            let until = tokio::time::Instant::now() + options.flush_interval;
            loop {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(until) => break,
                }
                let s = shared.state.lock();
                if s.closed || s.queue.len() >= shared.batch_size {
                    break;
                }
            }
        }
        let mut first = true;
        loop {
            let batch: Vec<SpendRecord> = {
                let mut s = shared.state.lock();
                // After the first batch, only full ones: records keep arriving while a batch is
                // written, and draining to empty would write them a few at a time, one
                // transaction each (hundreds a second under steady load). A partial batch
                // waits for the next interval unless the writer is closing.
                let ending = s.closed || Arc::strong_count(&shared) == 1;
                if !first && !ending && s.queue.len() < shared.batch_size {
                    break;
                }
                first = false;
                let n = s.queue.len().min(shared.batch_size);
                let batch: Vec<SpendRecord> = s.queue.drain(..n).collect();
                s.in_flight = batch.len();
                batch
            };
            if batch.is_empty() {
                break;
            }
            write_with_retry(&store, &shared, &options, log_options, batch).await;
            {
                let mut s = shared.state.lock();
                s.in_flight = 0;
                shared.pending.store(s.queue.len(), Ordering::Relaxed);
            }
            shared.end_episode();
        }
        if last_prune.elapsed() > Duration::from_secs(600) {
            last_prune = tokio::time::Instant::now();
            let before = SystemTime::now() - Duration::from_secs(24 * 3600);
            if let Err(e) = store.prune_batch_ids(before).await {
                tracing::warn!(error = %e, "spend writer: could not prune old batch ids");
            }
        }
        let finished = {
            let s = shared.state.lock();
            (s.closed || Arc::strong_count(&shared) == 1) && s.queue.is_empty()
        };
        if finished {
            break;
        }
    }
    shared.end_episode();
    let _ = done.send(true);
}

/// Writes `batch`, retrying transient failures (same batch id) until it is written; a batch
/// the database refuses is split into single records, and single records it refuses are
/// dropped.
async fn write_with_retry(
    store: &Store,
    shared: &Shared,
    options: &SpendWriterOptions,
    log_options: SpendLogOptions,
    batch: Vec<SpendRecord>,
) {
    let mut work: Vec<Vec<SpendRecord>> = vec![batch];
    while let Some(batch) = work.pop() {
        let id = Uuid::new_v4();
        let mut delay = options.retry_initial;
        let mut failures: u64 = 0;
        let mut last_warn: Option<tokio::time::Instant> = None;
        loop {
            match store.write_spend_batch(id, &batch, log_options).await {
                Ok(outcome) => {
                    shared
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(
                            failures,
                            records = batch.len(),
                            already_written = outcome == BatchOutcome::AlreadyWritten,
                            "spend writer: database reachable again, delayed batch written"
                        );
                    }
                    break;
                }
                Err(e) if e.is_transient() => {
                    failures += 1;
                    shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    let now = tokio::time::Instant::now();
                    if last_warn.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30)) {
                        last_warn = Some(now);
                        tracing::warn!(
                            error = %e,
                            failures,
                            pending = shared.pending.load(Ordering::Relaxed),
                            "spend writer: cannot write spend records, keeping them and retrying"
                        );
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(options.retry_max);
                }
                Err(e) => {
                    shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    if batch.len() > 1 {
                        tracing::warn!(
                            error = %e,
                            records = batch.len(),
                            "spend writer: database refused a batch, writing its records one by one"
                        );
                        work.extend(batch.into_iter().map(|r| vec![r]));
                    } else {
                        for r in &batch {
                            tracing::error!(
                                error = %e,
                                request_id = %r.request_id,
                                "spend writer: database refused a spend record, dropped it"
                            );
                        }
                        shared
                            .dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
    }
}
