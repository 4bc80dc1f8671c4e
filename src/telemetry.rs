//! Logging: a `tracing` subscriber filtered by `RUST_LOG` (default `info`), human-readable, or
//! one JSON object per line with `AI_API_LOG_FORMAT=json`. Keys never reach a log line: the
//! config holds them as redacting `Secret`s.
//!
//! A request never waits on stderr: lines are appended to an in-memory buffer of the thread
//! that writes them, and a background thread writes all the buffers every [`FLUSH_EVERY`], or
//! as soon as one holds [`WAKE_AT`] bytes, in one `write`. (`tracing-appender`'s writer, used
//! before, wakes its thread for every line: at one request at a time that thread, its futex
//! wake-ups and one `write` per line were a quarter of the gateway's CPU.) Should more than
//! [`MAX_PENDING`] bytes wait in one buffer, further lines are dropped and counted rather than
//! blocking requests, and the count is logged. Dropping the [`LogGuard`] writes what is left.
//!
//! The one line every request writes ([`Served`]) is formatted here directly, byte for byte as
//! the subscriber would, into the same buffer.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

/// Lines wait at most this long before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The writer thread is woken early once this much waits in one thread's buffer.
pub const WAKE_AT: usize = 64 * 1024;
/// Lines beyond this much waiting in one thread's buffer are dropped (and counted).
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// Keeps the log writer running; dropping it writes what is left. Hold it until exit.
#[derive(Debug)]
pub struct LogGuard {
    writer: Option<(Arc<Shared>, JoinHandle<()>)>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((shared, thread)) = self.writer.take() {
            shared.stop.store(true, Ordering::Release);
            shared.wake_writer();
            let _ = thread.join();
        }
    }
}

/// Where lines wait for the writer thread: one buffer per thread that logs.
///
/// Each thread appends to a buffer of its own, so the gateway's workers (one per core) never
/// take the same lock or write the same cache lines for their request lines: with one shared
/// buffer, every request moved its lock and the buffer's tail between cores. The writer takes
/// every thread's lines at each flush, thread by thread, so a thread's lines stay in their
/// order; lines of different threads written within one flush interval may come out of time
/// order (their timestamps tell).
#[derive(Debug)]
struct Shared {
    /// Tells apart two writers in one process (tests make several): a thread's buffer belongs
    /// to one of them.
    id: u64,
    /// The threads' buffers, in the order the threads first logged.
    buffers: Mutex<Vec<Arc<ThreadLines>>>,
    /// Whether a thread asked for an early write (its buffer reached [`WAKE_AT`]).
    woken: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    dropped: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            buffers: Mutex::default(),
            woken: Mutex::default(),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }
}

/// One thread's lines waiting to be written.
#[derive(Debug, Default)]
struct ThreadLines(Mutex<Vec<u8>>);

thread_local! {
    /// This thread's buffer, and the id of the writer it belongs to.
    static MY_LINES: std::cell::RefCell<Option<(u64, Arc<ThreadLines>)>> =
        const { std::cell::RefCell::new(None) };
}

impl Shared {
    fn register(&self) -> Arc<ThreadLines> {
        let lines = Arc::new(ThreadLines::default());
        self.buffers.lock().push(Arc::clone(&lines));
        lines
    }

    /// Appends one line to the calling thread's buffer, registered with this writer on the
    /// thread's first line.
    fn append(&self, bytes: &[u8]) {
        let wake = MY_LINES.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            match &*mine {
                Some((id, lines)) if *id == self.id => self.push(lines, bytes),
                _ => {
                    let lines = self.register();
                    let wake = self.push(&lines, bytes);
                    *mine = Some((self.id, lines));
                    wake
                }
            }
        });
        // A thread that logs while its thread-locals are torn down: a buffer for this line.
        let wake = wake.unwrap_or_else(|_| self.push(&self.register(), bytes));
        if wake {
            self.wake_writer();
        }
    }

    /// Adds `bytes` to `lines`, or drops and counts them when `lines` holds [`MAX_PENDING`]
    /// bytes; true when `lines` just reached [`WAKE_AT`].
    fn push(&self, lines: &ThreadLines, bytes: &[u8]) -> bool {
        let mut pending = lines.0.lock();
        if pending.len() + bytes.len() > MAX_PENDING {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let was_below = pending.len() < WAKE_AT;
        pending.extend_from_slice(bytes);
        was_below && pending.len() >= WAKE_AT
    }

    fn wake_writer(&self) {
        *self.woken.lock() = true;
        self.wake.notify_one();
    }

    /// Moves every thread's waiting lines to the end of `batch`, and forgets the buffers of
    /// threads that have exited once they are empty.
    fn take_all(&self, batch: &mut Vec<u8>, spare: &mut Vec<u8>) {
        let mut buffers = self.buffers.lock();
        buffers.retain(|lines| {
            // Read before taking: a thread that is gone cannot add lines after the take, while
            // one that is alive at the take may add lines and exit before a later check.
            let alive = Arc::strong_count(lines) > 1;
            let mut waiting = lines.0.lock();
            if batch.is_empty() {
                // The first lines: taken whole, not copied.
                std::mem::swap(&mut *waiting, batch);
            } else if !waiting.is_empty() {
                std::mem::swap(&mut *waiting, spare);
                drop(waiting);
                batch.extend_from_slice(spare);
                spare.clear();
            }
            // Only this list held it before the take: its thread is gone and its lines are in
            // `batch`.
            alive
        });
    }

    #[cfg(test)]
    fn pending_bytes(&self) -> usize {
        self.buffers.lock().iter().map(|l| l.0.lock().len()).sum()
    }
}

/// The subscriber's writer: each formatted line is appended to the writing thread's buffer.
#[derive(Debug, Clone)]
struct BufferedLines(Arc<Shared>);

/// One line being written (`tracing-subscriber` writes each event with one `write_all`).
struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedLines {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0)
    }
}

/// The writer thread: takes every thread's lines and writes them in one `write`, every
/// [`FLUSH_EVERY`] or when woken, until stopped and empty.
fn write_lines(shared: &Shared, out: &mut impl Write) {
    let mut batch: Vec<u8> = Vec::with_capacity(WAKE_AT);
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let stopping = {
            let mut woken = shared.woken.lock();
            if !*woken && !shared.stop.load(Ordering::Acquire) {
                shared.wake.wait_for(&mut woken, FLUSH_EVERY);
            }
            *woken = false;
            shared.stop.load(Ordering::Acquire)
        };
        shared.take_all(&mut batch, &mut spare);
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                batch,
                "ai-api: {dropped} log lines were dropped: more than {MAX_PENDING} bytes of \
                 log waited to be written"
            );
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
            // A burst may have grown them: keep the resting size small.
            batch.shrink_to(WAKE_AT);
            spare.shrink_to(WAKE_AT);
        }
        if stopping {
            shared.take_all(&mut batch, &mut spare);
            if batch.is_empty() {
                return;
            }
        }
    }
}

/// Plain `name=value` fields separated by spaces, the message bare, strings quoted as `{:?}`
/// quotes them. Written directly: the default field formatter styles every name through
/// nu-ansi-term even with colours off, and formatting every value through `core::fmt` was
/// half the cost of a request's log line; integers and plain strings are copied as they are.
#[derive(Debug, Clone, Copy)]
struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut v = PlainVisitor {
            w: writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct PlainVisitor<'w> {
    w: Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes the separator and `name=` (nothing for the message), then `value`.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> std::fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let w = &mut self.w;
        let mut r = Ok(());
        if !std::mem::take(&mut self.first) {
            r = w.write_char(' ');
        }
        if field.name() != "message" {
            r = r.and_then(|()| w.write_str(field.name()));
            r = r.and_then(|()| w.write_char('='));
        }
        self.result = r.and_then(|()| value(w));
    }
}

/// Characters `{:?}` would leave as they are inside quotes.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A string as `{:?}` writes it, copied between quotes where it has nothing to escape.
fn write_quoted(w: &mut impl std::fmt::Write, s: &str) -> std::fmt::Result {
    if plain(s) {
        w.write_char('"')?;
        w.write_str(s)?;
        w.write_char('"')
    } else {
        write!(w, "{s:?}")
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| write_quoted(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

/// The line's timestamp as the default timer writes it (`2026-11-24T04:21:40.865027Z`, UTC),
/// with the date and time of day formatted once per second per thread: formatting the whole
/// timestamp through `core::fmt` was a fifth of a request line's cost.
#[derive(Debug, Clone, Copy)]
struct UtcMicros;

thread_local! {
    /// The last second formatted on this thread: (seconds since the epoch, `YYYY-MM-DDTHH:MM:SS`).
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a time since the epoch.
fn write_utc_micros(w: &mut Writer<'_>, since_epoch: Duration) -> std::fmt::Result {
    let secs = since_epoch.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let day = i64::try_from(secs / 86_400).unwrap_or(0);
            let t = secs % 86_400;
            cached.1 = format!(
                "{}T{:02}:{:02}:{:02}",
                crate::store::clock::format_day(day),
                t / 3600,
                t / 60 % 60,
                t % 60
            );
            cached.0 = secs;
        }
        w.write_str(&cached.1)
    })?;
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    w.write_char('.')?;
    // Six ASCII digits.
    w.write_str(std::str::from_utf8(&digits).unwrap_or("000000"))?;
    w.write_char('Z')
}

fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl tracing_subscriber::fmt::time::FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write_utc_micros(w, since_epoch())
    }
}

/// The target of the per-request log lines.
pub const REQUEST_TARGET: &str = "ai_api::request";

/// Where [`Served::log`] writes its line itself: set by [`init`] for the plain-text and JSON
/// formats (not for colours at a terminal), with the subscriber's own buffer.
static DIRECT: OnceLock<Direct> = OnceLock::new();

#[derive(Debug)]
struct Direct {
    shared: Arc<Shared>,
    json: bool,
}

thread_local! {
    /// The line being written (its capacity kept between lines).
    static SERVED_LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A served request's log line (`request served`, target [`REQUEST_TARGET`], level INFO), its
/// fields in the order they are written.
///
/// It is the one line every request writes, so [`Served::log`] writes it itself, byte for
/// byte as the subscriber would (a unit test holds the two together): through `tracing` the
/// line cost ~6.7k instructions of a plain request's ~81k, most of them the per-event
/// machinery (dispatch, the field visitors, the writer's indirections) rather than the text.
/// The `RUST_LOG` filter still decides whether it is written. It bypasses only what the
/// global subscriber would add to it, which for this line is nothing: no span is ever open
/// around it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub request_id: &'a str,
    pub door: &'static str,
    pub model: &'a str,
    pub model_group: &'a str,
    pub deployment: &'a str,
    pub latency_ms: u64,
    pub overhead_us: u64,
    pub retries: u32,
    pub fallbacks: u32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_usd: f64,
}

/// serde_json's output appended to a line. It writes whole UTF-8 pieces (the text between
/// escapes, escapes, digits), so each write is checked and copied as it comes.
struct JsonInto<'a>(&'a mut String);

impl Write for JsonInto<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(bytes).map_err(std::io::Error::other)?;
        self.0.push_str(text);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Served<'_> {
    pub fn log(&self) {
        if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO) {
            return;
        }
        match DIRECT.get() {
            Some(d) => SERVED_LINE.with(|line| {
                let mut line = line.borrow_mut();
                line.clear();
                let written = if d.json {
                    self.write_json(&mut line, since_epoch())
                } else {
                    self.write_text(&mut line, since_epoch())
                };
                if written.is_ok() {
                    let _ = Line(&d.shared).write_all(line.as_bytes());
                }
            }),
            None => self.log_through_tracing(),
        }
    }

    fn log_through_tracing(&self) {
        tracing::info!(
            target: REQUEST_TARGET,
            request_id = %self.request_id,
            door = self.door,
            model = %self.model,
            model_group = %self.model_group,
            deployment = %self.deployment,
            status = 200u16,
            latency_ms = self.latency_ms,
            overhead_us = self.overhead_us,
            retries = self.retries,
            fallbacks = self.fallbacks,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            cost_usd = self.cost_usd,
            "request served"
        );
    }

    /// The integer fields after `status`, in order.
    fn counts(&self) -> [(&'static str, u64); 6] {
        [
            ("latency_ms", self.latency_ms),
            ("overhead_us", self.overhead_us),
            ("retries", u64::from(self.retries)),
            ("fallbacks", u64::from(self.fallbacks)),
            ("prompt_tokens", u64::from(self.prompt_tokens)),
            ("completion_tokens", u64::from(self.completion_tokens)),
        ]
    }

    /// As the fmt subscriber with [`PlainFields`] writes it.
    fn write_text(&self, out: &mut String, at: Duration) -> std::fmt::Result {
        use std::fmt::Write as _;
        write_utc_micros(&mut Writer::new(out), at)?;
        out.push_str("  INFO ");
        out.push_str(REQUEST_TARGET);
        out.push_str(": request served request_id=");
        out.push_str(self.request_id);
        out.push_str(" door=");
        write_quoted(out, self.door)?;
        for (name, value) in [
            (" model=", self.model),
            (" model_group=", self.model_group),
            (" deployment=", self.deployment),
        ] {
            out.push_str(name);
            out.push_str(value);
        }
        out.push_str(" status=200");
        let mut digits = itoa::Buffer::new();
        for (name, value) in self.counts() {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            out.push_str(digits.format(value));
        }
        write!(out, " cost_usd={:?}", self.cost_usd)?;
        out.push('\n');
        Ok(())
    }

    /// As the fmt subscriber's JSON format (events flattened, no span) writes it.
    fn write_json(&self, out: &mut String, at: Duration) -> std::fmt::Result {
        // Strings and the cost as the subscriber writes them: by serde_json.
        fn json(out: &mut String, value: &(impl serde::Serialize + ?Sized)) -> std::fmt::Result {
            serde_json::to_writer(JsonInto(out), value).map_err(|_| std::fmt::Error)
        }
        out.push_str("{\"timestamp\":\"");
        write_utc_micros(&mut Writer::new(out), at)?;
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request served\",\"request_id\":");
        json(out, self.request_id)?;
        for (name, value) in [
            (",\"door\":", self.door),
            (",\"model\":", self.model),
            (",\"model_group\":", self.model_group),
            (",\"deployment\":", self.deployment),
        ] {
            out.push_str(name);
            json(out, value)?;
        }
        out.push_str(",\"status\":200");
        let mut digits = itoa::Buffer::new();
        for (name, value) in self.counts() {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            out.push_str(digits.format(value));
        }
        out.push_str(",\"cost_usd\":");
        json(out, &self.cost_usd)?;
        out.push_str(",\"target\":\"");
        out.push_str(REQUEST_TARGET);
        out.push_str("\"}\n");
        Ok(())
    }
}

/// Installs the global subscriber (once; later calls return a guard that does nothing).
pub fn init() -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AI_API_LOG_FORMAT")
        .map(|v| v.eq_ignore_ascii_case("json"))
        .unwrap_or(false);
    // Colours only for a person at a terminal: escape codes cost time on every line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let shared = Arc::new(Shared::default());
    let writer = BufferedLines(Arc::clone(&shared));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(UtcMicros)
        .with_writer(writer);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else if ansi {
        builder.try_init()
    } else {
        builder.fmt_fields(PlainFields).try_init()
    };
    if installed.is_err() {
        return LogGuard { writer: None };
    }
    if !ansi {
        let _ = DIRECT.set(Direct {
            shared: Arc::clone(&shared),
            json,
        });
    }
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("ai-api-log".into())
            .spawn(move || write_lines(&shared, &mut std::io::stderr()))
    };
    match thread {
        Ok(thread) => LogGuard {
            writer: Some((shared, thread)),
        },
        Err(e) => {
            // Without the thread nothing would be written: say so where it can be seen.
            eprintln!("ai-api: cannot start the log writer thread ({e}); logs are lost");
            LogGuard { writer: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into memory that tests can read back.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl SharedBuf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().clone()).unwrap()
        }
    }

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(shared: &Shared, text: &str) {
        Line(shared).write_all(text.as_bytes()).unwrap();
    }

    /// A writer thread writing into memory, and the guard that stops it.
    fn start_writer() -> (Arc<Shared>, SharedBuf, LogGuard) {
        let shared = Arc::new(Shared::default());
        let out = SharedBuf::default();
        let thread = {
            let (shared, mut out) = (Arc::clone(&shared), out.clone());
            std::thread::spawn(move || write_lines(&shared, &mut out))
        };
        let guard = LogGuard {
            writer: Some((Arc::clone(&shared), thread)),
        };
        (shared, out, guard)
    }

    #[test]
    fn lines_are_written_in_order_and_all_of_them_on_stop() {
        let (shared, out, writer) = start_writer();
        let mut want = String::new();
        for i in 0..5000 {
            let l = format!("line {i} {}\n", "x".repeat(i % 200));
            line(&shared, &l);
            want.push_str(&l);
        }
        drop(writer);
        assert_eq!(out.text(), want);
    }

    /// Each thread's lines reach the output, all of them and in that thread's order, and the
    /// buffers of threads that have exited are let go once written.
    #[test]
    fn every_threads_lines_are_written_in_their_order() {
        let (shared, out, writer) = start_writer();
        let loggers: Vec<_> = (0..4)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for i in 0..3000 {
                        line(&shared, &format!("t{t} {i} {}\n", "x".repeat(i % 100)));
                    }
                })
            })
            .collect();
        for l in loggers {
            l.join().unwrap();
        }
        drop(writer);
        let text = out.text();
        for t in 0..4 {
            let got: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
                .map(|l| l.split(' ').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(got, (0..3000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 4 * 3000);
        assert!(
            shared.buffers.lock().is_empty(),
            "exited threads' buffers kept"
        );
    }

    /// The plain field formatter writes what `name={value:?}` fields wrote before it.
    #[test]
    fn plain_fields_read_as_debug_formatted_ones() {
        use tracing_subscriber::field::MakeExt;
        use tracing_subscriber::fmt::format::debug_fn;

        fn emit() {
            let id = "3f2a-\"quoted\"";
            tracing::info!(
                target: "ai_api::request",
                request_id = %id,
                door = "http",
                model = %"m",
                odd = "tab\there é",
                status = 200u16,
                latency_ms = 12u64,
                delta = -3i64,
                ok = true,
                cost_usd = 4.95e-6,
                "request served"
            );
        }
        let capture = |plain: bool| {
            let out = SharedBuf::default();
            let w = out.clone();
            let builder = tracing_subscriber::fmt()
                .without_time()
                .with_ansi(false)
                .with_writer(move || w.clone());
            if plain {
                tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), emit);
            } else {
                let fields = debug_fn(|w, field, value| match field.name() {
                    "message" => write!(w, "{value:?}"),
                    name => write!(w, "{name}={value:?}"),
                })
                .delimited(" ");
                tracing::subscriber::with_default(builder.fmt_fields(fields).finish(), emit);
            }
            out.text()
        };
        let (plain, debug) = (capture(true), capture(false));
        assert!(
            plain.contains("request served request_id=3f2a-\"quoted\" door=\"http\""),
            "{plain}"
        );
        assert_eq!(plain, debug);
    }

    /// The served-request line written directly is the line the subscriber writes, in both
    /// formats, for values that need quoting or escaping and for costs of every shape.
    #[test]
    fn the_direct_request_line_is_the_subscribers_line() {
        const AT: Duration = Duration::new(1_700_000_000, 123_456_000);
        struct Fixed;
        impl tracing_subscriber::fmt::time::FormatTime for Fixed {
            fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
                write_utc_micros(w, AT)
            }
        }
        let through_tracing = |served: &Served<'_>, json: bool| {
            let out = SharedBuf::default();
            let w = out.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_timer(Fixed)
                .with_writer(move || w.clone());
            if json {
                let sub = builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .finish();
                tracing::subscriber::with_default(sub, || served.log_through_tracing());
            } else {
                let sub = builder.fmt_fields(PlainFields).finish();
                tracing::subscriber::with_default(sub, || served.log_through_tracing());
            }
            out.text()
        };
        let base = Served {
            request_id: "3f2a-9c",
            door: "http",
            model: "gpt-4o-mini",
            model_group: "gpt-4o-mini",
            deployment: "gpt-4o-mini-0",
            latency_ms: 1234,
            overhead_us: 57,
            retries: 2,
            fallbacks: 1,
            prompt_tokens: 9,
            completion_tokens: u32::MAX,
            cost_usd: 4.95e-6,
        };
        let odd = Served {
            request_id: "a\"b\\c\té\u{7f}\u{1}",
            door: "grpc",
            model: "m \"quoted\"",
            model_group: "ünïcode",
            deployment: "tab\there\u{1}",
            latency_ms: 0,
            overhead_us: u64::MAX,
            retries: 0,
            fallbacks: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
        };
        let mut cases = vec![
            base,
            odd,
            Served {
                deployment: "",
                door: "del\u{7f}",
                ..base
            },
        ];
        for cost in [1.5, 0.1 + 0.2, 1e21, 167_271_932_131_646.62, 12.0, 3.4e-12] {
            cases.push(Served {
                cost_usd: cost,
                ..base
            });
        }
        for served in &cases {
            for json in [false, true] {
                let mut direct = String::new();
                if json {
                    served.write_json(&mut direct, AT).unwrap();
                } else {
                    served.write_text(&mut direct, AT).unwrap();
                }
                assert_eq!(direct, through_tracing(served, json), "json: {json}");
            }
        }
        let mut text = String::new();
        base.write_text(&mut text, AT).unwrap();
        assert!(
            text.starts_with("2023-11-14T22:13:20.123456Z  INFO ai_api::request: request served request_id=3f2a-9c door=\"http\" model=gpt-4o-mini"),
            "{text}"
        );
    }

    #[test]
    fn timestamps_read_as_rfc3339_with_microseconds() {
        let render = |d: Duration| {
            let mut s = String::new();
            write_utc_micros(&mut Writer::new(&mut s), d).unwrap();
            s
        };
        assert_eq!(render(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            render(Duration::new(1_700_000_000, 123_456_789)),
            "2023-11-14T22:13:20.123456Z"
        );
        // The same second again (cached), then the next day.
        assert_eq!(
            render(Duration::new(1_700_000_000, 7_000)),
            "2023-11-14T22:13:20.000007Z"
        );
        assert_eq!(
            render(Duration::new(1_700_000_000 + 86_400, 0)),
            "2023-11-15T22:13:20.000000Z"
        );
        assert_eq!(
            render(Duration::new(951_782_400 + 86_399, 999_999_000)),
            "2000-02-29T23:59:59.999999Z"
        );
    }

    #[test]
    fn lines_beyond_the_limit_are_dropped_and_counted() {
        let shared = Shared::default();
        let big = "y".repeat(1024 * 1024 - 1) + "\n";
        for _ in 0..6 {
            line(&shared, &big);
        }
        assert_eq!(shared.pending_bytes(), 4 * big.len());
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 2);
        shared.stop.store(true, Ordering::Release);
        let mut out = Vec::new();
        write_lines(&shared, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&big));
        assert!(
            text.ends_with("ai-api: 2 log lines were dropped: more than 4194304 bytes of log waited to be written\n"),
            "{}",
            &text[text.len() - 200..]
        );
    }
}
