//! Storage for per-service API keys and spend: SQLite by default, PostgreSQL when the database
//! URL says `postgres://` or `postgresql://`.
//!
//! - [`Store`] opens the database ([`Store::open`]), runs the embedded migrations (one schema,
//!   `migrations/`, valid on both backends) and serves the key API ([`keys`]), the spend
//!   ledger and totals ([`spend`]) and the reports. It is a connection pool: cheap to clone.
//! - [`SpendWriter`] takes spend records off the request path: a bounded in-memory buffer and a
//!   background task that writes them in batches, each in one transaction.
//! - [`BudgetDuration`] parses LiteLLM's duration strings and computes budget windows.
//!
//! # Schema
//!
//! | table | one row per | notes |
//! | --- | --- | --- |
//! | `api_keys` | key | `token_hash` = SHA-256 hex of the plain key, which is never stored |
//! | `spend_logs` | request | append-only ledger; `request_id` indexed, not unique (clients reuse ids) |
//! | `spend_totals` | (key, minute, model group) | pre-aggregated sums, upserted once per batch |
//! | `spend_batches` | written batch | batch id (UUID) → a retried batch is skipped |
//!
//! Times are Unix milliseconds (UTC); money is integer nano-USD so sums are exact.
//! Budget checks and reports read `spend_totals`, which keeps one-minute buckets: a window is
//! exact to the minute (a window starting mid-minute also counts that whole minute).

pub mod budget;
pub mod clock;
pub mod keys;
pub mod spend;
pub mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use budget::{BudgetDuration, BudgetWindow, DurationParseError, DurationUnit};
pub use keys::{KeyPatch, KeyQuery, KeyRecord, NewKey, display_key, hash_key, token_hash_of};
pub use spend::{BatchOutcome, GroupBy, ReportRow, SpendLogFilter, SpendLogOptions, SpendRecord};
pub use writer::{SpendWriter, SpendWriterOptions};

/// The SQLite file's name inside the data directory.
pub const SQLITE_FILE_NAME: &str = "ai-api.db";

/// The embedded migrations (`migrations/` at the crate root), shared by both backends.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this store understands.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database refused or failed a statement, or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A caller-supplied value is invalid.
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// No key has that value or hash.
    #[error("key not found")]
    KeyNotFound,
    /// The change collides with an existing row (a key alias or a custom key already in use).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value could not be read back (for example malformed JSON in a key row).
    #[error("corrupt {what} in the database: {message}")]
    Corrupt { what: &'static str, message: String },
    /// [`SpendWriter::flush_and_close`] gave up waiting for the database.
    #[error("spend writer did not finish within {waited:?}: {pending} spend records not written")]
    FlushTimeout { waited: Duration, pending: usize },
}

impl StoreError {
    /// True when retrying the same operation later may succeed (the database is unreachable,
    /// busy, read-only or out of space, or refuses the connection), false when the operation
    /// itself is wrong (invalid data, constraint violations, bad SQL).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => sqlx_error_is_transient(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_error_is_transient(e),
            _ => false,
        }
    }
}

fn sqlx_error_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite result codes (primary code in the low byte): CONSTRAINT (19),
                // MISMATCH (20), TOOBIG (18), RANGE (25) and plain ERROR (1: bad SQL) are about
                // the statement; BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN, ... are not.
                let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                !matches!(code & 0xff, 1 | 18 | 19 | 20 | 25)
            } else if let Some(e) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // PostgreSQL SQLSTATE classes: 22 data exception, 23 integrity constraint
                // violation and 42 syntax error or access rule violation are about the statement,
                // except 42501 (insufficient privilege), which an operator fixes.
                let code = e.code();
                let class = code.get(..2).unwrap_or_default();
                !matches!(class, "22" | "23" | "42") || code == "42501"
            } else {
                true
            }
        }
        _ => false,
    }
}

/// Tuning of [`Store::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections in the pool (default 5 for PostgreSQL, 4 for SQLite).
    pub max_connections: Option<u32>,
    /// How long an operation waits for a connection before failing (default 5 s).
    pub acquire_timeout: Duration,
    /// How long SQLite waits on a locked database before failing (default 5 s).
    pub sqlite_busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the backend's pool; the body is compiled once per backend
/// (`Db` names the backend's `sqlx::Database` inside it).
macro_rules! with_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($p) => {
                #[allow(dead_code)]
                type Db = ::sqlx::Sqlite;
                $body
            }
            $crate::store::Pool::Postgres($p) => {
                #[allow(dead_code)]
                type Db = ::sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// Key and spend storage on SQLite or PostgreSQL. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

impl Store {
    /// Opens the store with default [`StoreOptions`]: PostgreSQL when `database_url` starts with
    /// `postgres://` or `postgresql://`, an SQLite file named by a `sqlite:` URL, and otherwise
    /// (no URL, or an empty one) SQLite at `data_dir/ai-api.db`, creating `data_dir` if needed.
    /// Runs the migrations.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(database_url, data_dir, &StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit pool options.
    pub async fn open_with(
        database_url: Option<&str>,
        data_dir: &Path,
        options: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let url = database_url.map(str::trim).filter(|u| !u.is_empty());
        let pool = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                let connect = PgConnectOptions::from_str(u)
                    .map_err(|e| StoreError::InvalidUrl(format!("PostgreSQL URL: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections.unwrap_or(5))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await?;
                Pool::Postgres(pool)
            }
            Some(u) if u.starts_with("sqlite:") => {
                let connect = SqliteConnectOptions::from_str(u)
                    .map_err(|e| StoreError::InvalidUrl(format!("SQLite URL: {e}")))?;
                if let Some(dir) = connect.get_filename().parent() {
                    create_dir(dir)?;
                }
                Pool::Sqlite(sqlite_pool(connect, options).await?)
            }
            Some(u) => {
                let scheme = u.split_once(':').map_or("", |(s, _)| s);
                return Err(StoreError::InvalidUrl(format!(
                    "unsupported scheme {scheme:?}: use postgres://, postgresql:// or sqlite:, or no URL for {SQLITE_FILE_NAME} in the data directory"
                )));
            }
            None => {
                create_dir(data_dir)?;
                let connect = SqliteConnectOptions::new().filename(data_dir.join(SQLITE_FILE_NAME));
                Pool::Sqlite(sqlite_pool(connect, options).await?)
            }
        };
        let store = Self { pool };
        with_pool!(store, |p| MIGRATOR.run(p).await)?;
        Ok(store)
    }

    /// The backend this store uses.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the pool: waits for connections in use to be returned and closes them all. Later
    /// operations on this store (and its clones) fail with a [`StoreError::Database`].
    pub async fn close(&self) {
        with_pool!(self, |p| p.close().await);
    }

    /// True once [`Store::close`] was called.
    pub fn is_closed(&self) -> bool {
        with_pool!(self, |p| p.is_closed())
    }
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

async fn sqlite_pool(
    connect: SqliteConnectOptions,
    options: &StoreOptions,
) -> Result<SqlitePool, StoreError> {
    let connect = connect
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(options.sqlite_busy_timeout)
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(options.max_connections.unwrap_or(4))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?)
}

/// Reading one row of either backend by column name.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn opt_real(&self, col: &str) -> Result<Option<f64>, sqlx::Error>;
    fn boolean(&self, col: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn opt_real(&self, col: &str) -> Result<Option<f64>, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
            fn boolean(&self, col: &str) -> Result<bool, sqlx::Error> {
                sqlx::Row::try_get(self, col)
            }
        }
    };
}
impl_row_ext!(sqlx::sqlite::SqliteRow);
impl_row_ext!(sqlx::postgres::PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_sqlite_in_a_new_data_dir_and_refuses_other_schemes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("data");
        let store = Store::open(None, &dir).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        assert!(dir.join(SQLITE_FILE_NAME).exists());
        store.close().await;
        // Opening again re-runs the (already applied) migrations.
        let store = Store::open(Some(""), &dir).await.unwrap();
        store.close().await;

        let err = Store::open(Some("mysql://u:secret@h/db"), &dir)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl(_)), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
