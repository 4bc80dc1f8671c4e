//! Logging: a `tracing` subscriber filtered by `RUST_LOG` (default `info`), human-readable, or
//! one JSON object per line with `AI_API_LOG_FORMAT=json`. Keys never reach a log line: the
//! config holds them as redacting `Secret`s.
//!
//! Lines are written by a background thread (`tracing-appender`), buffered and flushed whenever
//! it has caught up: a request never waits on a `write` to stderr, and a busy server writes its
//! lines in a few large writes instead of one syscall each. Should the thread fall 8,192 lines
//! behind, further lines are dropped rather than blocking requests. (The appender's default,
//! 128,000, preallocates its queue: about 5 MB of resident memory, a third of an idle gateway.)

use std::io::{BufWriter, Stderr};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::debug_fn;

/// Keeps the log writer running; dropping it writes what is left. Hold it until exit.
#[derive(Debug)]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber (once; later calls return a guard that does nothing).
pub fn init() -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AI_API_LOG_FORMAT")
        .map(|v| v.eq_ignore_ascii_case("json"))
        .unwrap_or(false);
    // Colours only for a person at a terminal: escape codes cost time on every line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let out: BufWriter<Stderr> = BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .thread_name("ai-api-log")
        .buffered_lines_limit(8192)
        .finish(out);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
        // Plain `name=value` fields: the default field formatter styles every name (italic)
        // through nu-ansi-term even with colours off, a third of the cost of a request line.
        let fields = debug_fn(|w, field, value| match field.name() {
            "message" => write!(w, "{value:?}"),
            name => write!(w, "{name}={value:?}"),
        })
        .delimited(" ");
        builder.fmt_fields(fields).try_init()
    };
    LogGuard {
        _writer: installed.ok().map(|()| guard),
    }
}
