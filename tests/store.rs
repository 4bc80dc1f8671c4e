//! Storage layer (`ai_api::store`) on both backends: every test runs on SQLite (a temp dir)
//! and on PostgreSQL (its own schema, dropped at the end), written once.
//!
//! PostgreSQL: `AI_API_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Unreachable → a notice and the SQLite half only, except with `CI=true`, where it fails.
//! The store reaches PostgreSQL through a local TCP proxy the outage test can cut.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::io::ErrorKind;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use ai_api::store::clock::day_start;
use ai_api::store::{
    Backend, BatchOutcome, GroupBy, KeyPatch, KeyQuery, NewKey, SpendLogFilter, SpendLogOptions,
    SpendRecord, SpendWriter, SpendWriterOptions, Store, StoreError, StoreOptions, display_key,
    hash_key,
};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn test_options() -> StoreOptions {
    StoreOptions {
        max_connections: None,
        acquire_timeout: Duration::from_secs(1),
        sqlite_busy_timeout: Duration::from_millis(500),
    }
}

/// One backend's database for one test.
struct Db {
    store: Store,
    dir: TempDir,
    url: Option<String>,
    pg: Option<PgSide>,
}

struct PgSide {
    admin: PgPool,
    schema: String,
    proxy: Proxy,
}

/// Having a `Drop` makes test bodies capture the whole `Db` (not only `db.store`), so the temp
/// dir lives as long as the test.
impl Drop for Db {
    fn drop(&mut self) {}
}

impl Db {
    /// A second store on the same database (a restart).
    async fn reopen(&self) -> Store {
        Store::open_with(self.url.as_deref(), self.dir.path(), &test_options())
            .await
            .unwrap()
    }

    /// Makes the database unusable for the store until [`Outage::end`]: SQLite is locked by
    /// another connection (`BEGIN EXCLUSIVE`), PostgreSQL's TCP connections are cut and new
    /// ones refused.
    async fn outage(&self) -> Outage {
        match &self.pg {
            None => {
                let path = self.dir.path().join(ai_api::store::SQLITE_FILE_NAME);
                let mut conn =
                    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
                        .await
                        .unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Outage::Sqlite(conn)
            }
            Some(pg) => {
                pg.proxy.set_up(false);
                Outage::Postgres(Arc::clone(&pg.proxy.inner))
            }
        }
    }

    /// Runs one admin statement on the test database, outside the store: `sqlite` on the
    /// SQLite file, or `postgres` (with `{schema}` replaced) on PostgreSQL.
    async fn admin_exec(&self, sqlite: &str, postgres: &str) {
        match &self.pg {
            None => {
                let path = self.dir.path().join(ai_api::store::SQLITE_FILE_NAME);
                let mut conn =
                    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
                        .await
                        .unwrap();
                sqlx::query(sqlite).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            Some(pg) => {
                let sql = postgres.replace("{schema}", &pg.schema);
                sqlx::query(&sql).execute(&pg.admin).await.unwrap();
            }
        }
    }

    /// Every byte the database holds, as text: the SQLite files, or each PostgreSQL row cast
    /// to text.
    async fn all_contents(&self) -> String {
        match &self.pg {
            None => {
                let mut all = Vec::new();
                for entry in std::fs::read_dir(self.dir.path()).unwrap() {
                    all.extend(std::fs::read(entry.unwrap().path()).unwrap());
                }
                String::from_utf8_lossy(&all).into_owned()
            }
            Some(pg) => {
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                )
                .bind(&pg.schema)
                .fetch_all(&pg.admin)
                .await
                .unwrap();
                assert!(tables.len() >= 4, "{tables:?}");
                let mut all = String::new();
                for (table,) in tables {
                    let (text,): (String,) = sqlx::query_as(&format!(
                        "SELECT COALESCE(string_agg(t::text, E'\\n'), '') FROM \"{}\".\"{table}\" t",
                        pg.schema
                    ))
                    .fetch_one(&pg.admin)
                    .await
                    .unwrap();
                    all.push_str(&text);
                }
                all
            }
        }
    }
}

enum Outage {
    Sqlite(SqliteConnection),
    Postgres(Arc<ProxyInner>),
}

impl Outage {
    async fn end(self) {
        match self {
            Outage::Sqlite(mut conn) => {
                sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            Outage::Postgres(proxy) => proxy.up.store(true, Ordering::SeqCst),
        }
    }
}

async fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(None, dir.path(), &test_options())
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    Db {
        store,
        dir,
        url: None,
        pg: None,
    }
}

fn pg_base_url() -> String {
    std::env::var("AI_API_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The admin pool, or `None` (after a notice) when PostgreSQL is unreachable outside CI.
async fn pg_admin(url: &str) -> Option<PgPool> {
    let connect = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url);
    let err = match tokio::time::timeout(Duration::from_secs(8), connect).await {
        Ok(Ok(pool)) => return Some(pool),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL at {url} is unreachable ({err}) and CI=true");
    }
    eprintln!(
        "notice: PostgreSQL at {url} is unreachable ({err}); running the SQLite half only \
         (set AI_API_TEST_DATABASE_URL)"
    );
    None
}

/// `url` with its host and port replaced by `127.0.0.1:port`.
fn via_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}127.0.0.1:{port}{path}")
}

async fn pg_db(base: &str, admin: PgPool, schema: &str) -> Db {
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&admin)
        .await
        .unwrap();
    let target = PgConnectOptions::from_str(base).unwrap();
    let proxy = Proxy::start(format!("{}:{}", target.get_host(), target.get_port())).await;
    let proxied = via_port(base, proxy.port);
    let sep = if proxied.contains('?') { '&' } else { '?' };
    let url = format!("{proxied}{sep}options[search_path]={schema}");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(Some(&url), dir.path(), &test_options())
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    // No SQLite file when PostgreSQL is used.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    Db {
        store,
        dir,
        url: Some(url),
        pg: Some(PgSide {
            admin,
            schema: schema.to_owned(),
            proxy,
        }),
    }
}

/// Runs `test` on SQLite, then on PostgreSQL in a fresh schema that is dropped afterwards (also
/// when the test fails).
async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = sqlite_db().await;
    if let Err(e) = tokio::spawn(test(db)).await {
        eprintln!("failed on SQLite");
        std::panic::resume_unwind(e.into_panic());
    }

    let base = pg_base_url();
    let Some(admin) = pg_admin(&base).await else {
        return;
    };
    let schema = format!("store_test_{}", Uuid::new_v4().simple());
    eprintln!("running on PostgreSQL, schema {schema}");
    let db = pg_db(&base, admin.clone(), &schema).await;
    let outcome = tokio::spawn(test(db)).await;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    if let Err(e) = outcome {
        eprintln!("failed on PostgreSQL");
        std::panic::resume_unwind(e.into_panic());
    }
}

// A TCP proxy to PostgreSQL that can be cut: existing connections are dropped and new ones
// closed right after accept until it is up again.

struct ProxyInner {
    up: AtomicBool,
    target: String,
    conns: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

struct Proxy {
    port: u16,
    inner: Arc<ProxyInner>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(ProxyInner {
            up: AtomicBool::new(true),
            target,
            conns: parking_lot::Mutex::new(Vec::new()),
        });
        let shared = Arc::clone(&inner);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !shared.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = shared.target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = pump(&inbound, &outbound) => {}
                            _ = pump(&outbound, &inbound) => {}
                        }
                    }
                });
                let mut conns = shared.conns.lock();
                conns.retain(|c| !c.is_finished());
                if shared.up.load(Ordering::SeqCst) {
                    conns.push(conn);
                } else {
                    conn.abort();
                }
            }
        });
        Proxy {
            port,
            inner,
            accept,
        }
    }

    fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
        if !up {
            for conn in self.inner.conns.lock().drain(..) {
                conn.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in self.inner.conns.lock().drain(..) {
            conn.abort();
        }
    }
}

/// Copies bytes from `from` to `to` until EOF or an error.
async fn pump(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn day(s: &str) -> SystemTime {
    day_start(s).unwrap()
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

fn rec(id: &str, key: Option<&str>, model: &str, time: SystemTime, cost: f64) -> SpendRecord {
    SpendRecord {
        request_id: id.into(),
        time,
        key_hash: key.map(str::to_owned),
        key_alias: key.map(|k| format!("alias-{k}")),
        model_group: model.into(),
        deployment_id: format!("{model}-dep").into(),
        provider_model: format!("provider/{model}").into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_usd: cost,
        latency_ms: 42,
        status: 200,
        error_kind: None,
        request_body: None,
        response_body: None,
    }
}

fn nanos(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

async fn all_logs(store: &Store) -> Vec<SpendRecord> {
    store
        .spend_logs(&SpendLogFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Totals over all time: (spend nanos, prompt, completion, requests).
async fn grand_totals(store: &Store) -> (i64, u64, u64, u64) {
    let rows = store
        .spend_report(GroupBy::Model, day("2000-01-01"), day("2100-01-01"))
        .await
        .unwrap();
    rows.iter().fold((0, 0, 0, 0), |acc, r| {
        (
            acc.0 + nanos(r.spend),
            acc.1 + r.prompt_tokens,
            acc.2 + r.completion_tokens,
            acc.3 + r.requests,
        )
    })
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_writer() -> SpendWriterOptions {
    SpendWriterOptions {
        flush_interval: Duration::from_millis(50),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        close_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn key_lifecycle_and_no_plain_key_in_the_database() {
    each_backend(|db| async move {
        let store = &db.store;
        let before = SystemTime::now();
        let (plain, key) = store
            .generate_key(NewKey {
                key_alias: Some("billing-svc".into()),
                models: vec!["gpt-4o".into(), "claude".into()],
                max_budget: Some(10.0),
                budget_duration: Some("30d".into()),
                rpm_limit: Some(60),
                tpm_limit: Some(10_000),
                max_parallel_requests: Some(4),
                duration: Some("1h".into()),
                metadata: serde_json::json!({"team": "billing"}),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(plain.starts_with("sk-") && plain.len() >= 3 + 32, "{plain}");
        assert_eq!(key.token_hash, hash_key(&plain));
        assert_eq!(key.key_name, display_key(&plain));
        assert_eq!(key.key_name.len(), "sk-...abcd".len());
        assert!(plain.ends_with(&key.key_name["sk-...".len()..]));
        assert_eq!(key.key_alias.as_deref(), Some("billing-svc"));
        assert_eq!(key.models, ["gpt-4o", "claude"]);
        assert_eq!(
            (key.rpm_limit, key.tpm_limit, key.max_parallel_requests),
            (Some(60), Some(10_000), Some(4))
        );
        assert_eq!(key.metadata["team"], "billing");
        assert!(!key.blocked);
        let expires = key.expires.unwrap();
        assert!(expires >= before + Duration::from_secs(3599));
        assert!(expires <= SystemTime::now() + Duration::from_secs(3600));
        // 30d resets on the 1st of next month at 00:00 UTC.
        let reset = key.budget_reset_at.unwrap();
        let window = key.budget_window(SystemTime::now()).unwrap();
        assert_eq!(window.end, reset);
        assert!(window.start <= SystemTime::now() && reset > SystemTime::now());
        let reset_day = ai_api::store::clock::format_day(
            reset
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                / 86_400,
        );
        assert!(reset_day.ends_with("-01"), "{reset_day}");
        assert!(key.allows_model("claude") && !key.allows_model("gemini"));

        // Info by plain value and by hash.
        let by_plain = store.key_info(&plain).await.unwrap().unwrap();
        let by_hash = store.key_info(&key.token_hash).await.unwrap().unwrap();
        assert_eq!(by_plain, key);
        assert_eq!(by_hash, key);
        assert_eq!(
            store.key_by_hash(&key.token_hash).await.unwrap(),
            Some(key.clone())
        );
        assert_eq!(store.key_by_hash(&plain).await.unwrap(), None);

        // Update by plain value, then by hash.
        let updated = store
            .update_key(
                &plain,
                KeyPatch {
                    key_alias: Some(Some("billing-v2".into())),
                    models: Some(vec![]),
                    max_budget: Some(None),
                    rpm_limit: Some(Some(120)),
                    metadata: Some(serde_json::json!({"team": "billing", "tier": 2})),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(updated.key_alias.as_deref(), Some("billing-v2"));
        assert!(updated.models.is_empty() && updated.allows_model("anything"));
        assert_eq!(updated.max_budget, None);
        assert_eq!(updated.rpm_limit, Some(120));
        assert_eq!(updated.tpm_limit, Some(10_000), "untouched");
        assert_eq!(updated.metadata["tier"], 2);
        assert!(updated.updated_at >= key.updated_at);
        assert_eq!(updated.created_at, key.created_at);
        let blocked = store
            .update_key(
                &key.token_hash,
                KeyPatch {
                    blocked: Some(true),
                    duration: Some(None),
                    budget_duration: Some(Some("1d".into())),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(blocked.blocked);
        assert_eq!(blocked.expires, None);
        assert_eq!(blocked.budget_duration.as_deref(), Some("1d"));
        assert_eq!(
            blocked.budget_reset_at,
            Some(key_window_end("1d", SystemTime::now()))
        );
        assert_eq!(blocked.rpm_limit, Some(120));

        // A second key; aliases are unique; a custom key; listing.
        let (plain2, key2) = store
            .generate_key(NewKey {
                key: Some("sk-my-custom-service-key-0001".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(plain2, "sk-my-custom-service-key-0001");
        assert_eq!(key2.key_name, "sk-...0001");
        let dup = store
            .generate_key(NewKey {
                key: Some(plain2.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "{dup}");
        let dup_alias = store
            .generate_key(NewKey {
                key_alias: Some("billing-v2".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(dup_alias, StoreError::Conflict(_)), "{dup_alias}");
        let clash = store
            .update_key(
                &plain2,
                KeyPatch {
                    key_alias: Some(Some("billing-v2".into())),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(clash, StoreError::Conflict(_)), "{clash}");
        for bad in [
            NewKey {
                budget_duration: Some("3x".into()),
                ..Default::default()
            },
            NewKey {
                key: Some("not-sk".into()),
                ..Default::default()
            },
            NewKey {
                max_budget: Some(-1.0),
                ..Default::default()
            },
            NewKey {
                metadata: serde_json::json!([1]),
                ..Default::default()
            },
        ] {
            let err = store.generate_key(bad).await.unwrap_err();
            assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        }

        let all = store.list_keys(&KeyQuery::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].token_hash, key.token_hash, "oldest first");
        let cache = store.all_keys_for_cache().await.unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.iter().any(|k| k.blocked));
        let by_alias = store
            .list_keys(&KeyQuery {
                key_alias: Some("billing-v2".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_alias.len(), 1);
        let page = store
            .list_keys(&KeyQuery {
                offset: 1,
                limit: Some(5),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].token_hash, key2.token_hash);

        // Spend for the key goes through the ledger too; then look for the plain keys.
        store
            .write_spend_batch(
                Uuid::new_v4(),
                &[rec(
                    "r1",
                    Some(&key.token_hash),
                    "gpt-4o",
                    SystemTime::now(),
                    0.5,
                )],
                SpendLogOptions::default(),
            )
            .await
            .unwrap();
        let contents = db.all_contents().await;
        assert!(contents.contains(&key.token_hash), "the scan sees the data");
        for p in [&plain, &plain2] {
            assert!(!contents.contains(p.as_str()), "plain key {p} stored");
            assert!(!contents.contains(&p[3..]), "plain key body stored");
        }

        // Delete by plain value and by hash; unknown keys count 0.
        let deleted = store
            .delete_keys(&[
                plain.as_str(),
                key2.token_hash.as_str(),
                "sk-unknown",
                plain.as_str(),
            ])
            .await
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(
            store
                .list_keys(&KeyQuery::default())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.key_info(&plain).await.unwrap(), None);
        let missing = store
            .update_key(&plain, KeyPatch::default())
            .await
            .unwrap_err();
        assert!(matches!(missing, StoreError::KeyNotFound), "{missing}");
        assert_eq!(store.delete_keys::<&str>(&[]).await.unwrap(), 0);
    })
    .await;
}

fn key_window_end(duration: &str, now: SystemTime) -> SystemTime {
    duration
        .parse::<ai_api::store::BudgetDuration>()
        .unwrap()
        .next_reset(now)
}

#[tokio::test]
async fn budget_windows_and_spend_since() {
    each_backend(|db| async move {
        let store = &db.store;
        let (_, key) = store
            .generate_key(NewKey {
                max_budget: Some(1.0),
                budget_duration: Some("1d".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let now = SystemTime::now();
        let window = key.budget_window(now).unwrap();
        assert_eq!(window.end, key.budget_reset_at.unwrap());
        assert_eq!(
            window.end.duration_since(window.start).unwrap(),
            mins(24 * 60)
        );
        let h = key.token_hash.as_str();
        let records = [
            rec("in-1", Some(h), "m", window.start, 0.25),
            rec("in-2", Some(h), "m", window.start + mins(30), 0.125),
            rec("before-1", Some(h), "m", window.start - mins(1), 1.0),
            rec(
                "before-2",
                Some(h),
                "m",
                window.start - mins(3 * 24 * 60),
                2.0,
            ),
            rec("other-key", Some("other"), "m", window.start, 4.0),
        ];
        store
            .write_spend_batch(Uuid::new_v4(), &records, SpendLogOptions::default())
            .await
            .unwrap();
        assert_eq!(store.key_budget_spend(&key, now).await.unwrap(), 0.375);
        assert_eq!(store.key_spend_since(h, window.start).await.unwrap(), 0.375);
        assert_eq!(
            store
                .key_spend_since(h, window.start - mins(1))
                .await
                .unwrap(),
            1.375
        );
        assert_eq!(store.key_total_spend(h).await.unwrap(), 3.375);
        // Minute resolution: a window starting mid-minute counts that minute whole.
        assert_eq!(
            store
                .key_spend_since(h, window.start + Duration::from_secs(59))
                .await
                .unwrap(),
            0.375
        );
        assert_eq!(
            store
                .key_spend_since(h, window.start + mins(1))
                .await
                .unwrap(),
            0.125
        );
        // A key without budget_duration: the lifetime spend.
        let (_, lifetime) = store
            .generate_key(NewKey {
                max_budget: Some(1.0),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(lifetime.budget_window(now).is_none());
        assert_eq!(store.key_budget_spend(&lifetime, now).await.unwrap(), 0.0);

        // Stored reset times move forward once they have passed.
        let later = now + mins(3 * 24 * 60);
        assert_eq!(store.advance_budget_resets(now).await.unwrap(), 0);
        assert_eq!(store.advance_budget_resets(later).await.unwrap(), 1);
        let moved = store.key_by_hash(h).await.unwrap().unwrap();
        assert_eq!(moved.budget_reset_at, Some(key_window_end("1d", later)));
        assert_eq!(moved.budget_window(later), key.budget_window(later));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Ledger and totals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_repeated_request_id_is_another_request() {
    // Clients send their own x-request-id, and may send the same one again: each request was
    // served and costs money, so each is a ledger row and each counts in the totals.
    each_backend(|db| async move {
        let store = &db.store;
        let t = day("2024-05-01") + mins(600);
        let r1 = rec("req-1", Some("k1"), "m", t, 1.5);
        let r2 = rec("req-2", Some("k1"), "m", t, 0.5);
        let out = store
            .write_spend_batch(
                Uuid::new_v4(),
                std::slice::from_ref(&r1),
                SpendLogOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            BatchOutcome::Written {
                ledger_rows: 1,
                counted: 1
            }
        );
        // Again in another batch, and twice within a batch.
        let again = SpendRecord {
            cost_usd: 2.0,
            ..r1.clone()
        };
        let out = store
            .write_spend_batch(
                Uuid::new_v4(),
                &[again.clone(), r2.clone(), r2.clone()],
                SpendLogOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            BatchOutcome::Written {
                ledger_rows: 3,
                counted: 3
            }
        );
        let logs = all_logs(store).await;
        assert_eq!(logs.len(), 4);
        let mut req1: Vec<_> = logs.iter().filter(|l| &*l.request_id == "req-1").collect();
        req1.sort_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd));
        assert_eq!(
            req1,
            [&r1, &again],
            "both requests are in the ledger as sent"
        );
        assert_eq!(store.key_total_spend("k1").await.unwrap(), 4.5);
        assert_eq!(grand_totals(store).await, (nanos(4.5), 40, 20, 4));

        // With the ledger off, the totals count every record all the same.
        let out = store
            .write_spend_batch(
                Uuid::new_v4(),
                &[r2.clone(), r2.clone()],
                SpendLogOptions {
                    disable_spend_logs: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            BatchOutcome::Written {
                ledger_rows: 0,
                counted: 2
            }
        );
        assert_eq!(store.key_total_spend("k1").await.unwrap(), 5.5);
    })
    .await;
}

#[tokio::test]
async fn a_ledger_from_the_first_schema_is_kept_and_takes_repeated_ids() {
    // A database written by a build with the first schema (request_id the ledger's primary
    // key), opened by this one: its rows stay, and a second row with the same id now fits.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ai_api::store::SQLITE_FILE_NAME);
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::raw_sql(include_str!("../migrations/0001_keys_and_spend.sql"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO spend_logs (request_id, request_time, key_hash, key_alias, model_group, \
         deployment_id, provider_model, prompt_tokens, completion_tokens, cost_nanos, \
         latency_ms, status, error_kind, request_body, response_body) VALUES \
         ('old-1', 1714521600000, 'k1', 'alias-k1', 'm', 'm-dep', 'provider/m', 10, 5, \
          1500000000, 42, 200, NULL, NULL, NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let store = Store::open_with(None, dir.path(), &test_options())
        .await
        .unwrap();
    let old = rec("old-1", Some("k1"), "m", day("2024-05-01"), 1.5);
    assert_eq!(all_logs(&store).await, std::slice::from_ref(&old));
    store
        .write_spend_batch(
            Uuid::new_v4(),
            std::slice::from_ref(&old),
            SpendLogOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(all_logs(&store).await, [old.clone(), old]);
}

#[tokio::test]
async fn retried_batch_is_skipped() {
    each_backend(|db| async move {
        let store = &db.store;
        let t = day("2024-05-02");
        // With the ledger on, and off (where the batch id alone stops the double count).
        for (pass, options) in [
            SpendLogOptions::default(),
            SpendLogOptions {
                disable_spend_logs: true,
                ..Default::default()
            },
        ]
        .into_iter()
        .enumerate()
        {
            let records: Vec<_> = (0..10)
                .map(|i| rec(&format!("p{pass}-r{i}"), Some("k"), "m", t + mins(i), 0.1))
                .collect();
            let id = Uuid::new_v4();
            let first = store
                .write_spend_batch(id, &records, options)
                .await
                .unwrap();
            assert!(matches!(first, BatchOutcome::Written { .. }));
            let again = store
                .write_spend_batch(id, &records, options)
                .await
                .unwrap();
            assert_eq!(again, BatchOutcome::AlreadyWritten);
        }
        assert_eq!(all_logs(store).await.len(), 10, "the first pass only");
        let (spend, _, _, requests) = grand_totals(store).await;
        assert_eq!((spend, requests), (nanos(2.0), 20));
        assert_eq!(
            store
                .prune_batch_ids(SystemTime::now() + mins(1))
                .await
                .unwrap(),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn totals_equal_the_sum_of_the_ledger() {
    each_backend(|db| async move {
        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(
            store.clone(),
            SpendWriterOptions {
                batch_size: 300,
                ..fast_writer()
            },
        );
        let keys = [Some("ka"), Some("kb"), Some("kc"), None];
        let models = ["gpt", "claude", "gemini"];
        let start = day("2024-06-01");
        let mut expected = 0i64;
        for i in 0..2_000u64 {
            let cost = (i % 17) as f64 * 0.000_123_457 + 0.000_000_001;
            expected += nanos(cost);
            let mut r = rec(
                &format!("req-{i:05}"),
                keys[(i % 4) as usize],
                models[(i % 3) as usize],
                start + Duration::from_secs(i * 173),
                cost,
            );
            r.prompt_tokens = i;
            r.completion_tokens = i % 7;
            writer.record(r);
        }
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert_eq!(writer.pending(), 0);
        assert_eq!(writer.dropped(), 0);
        assert_eq!(writer.written(), 2_000);

        let logs = all_logs(&store).await;
        assert_eq!(logs.len(), 2_000);
        let ledger_spend: i64 = logs.iter().map(|l| nanos(l.cost_usd)).sum();
        let ledger_prompt: u64 = logs.iter().map(|l| l.prompt_tokens).sum();
        let ledger_completion: u64 = logs.iter().map(|l| l.completion_tokens).sum();
        assert_eq!(ledger_spend, expected);
        assert_eq!(
            grand_totals(&store).await,
            (ledger_spend, ledger_prompt, ledger_completion, 2_000)
        );
        // Per key, too (the master key's group is the empty string).
        let by_key = store
            .spend_report(GroupBy::Key, day("2024-01-01"), day("2025-01-01"))
            .await
            .unwrap();
        assert_eq!(by_key.len(), 4);
        for row in &by_key {
            let want: i64 = logs
                .iter()
                .filter(|l| l.key_hash.as_deref().unwrap_or("") == row.group)
                .map(|l| nanos(l.cost_usd))
                .sum();
            assert_eq!(nanos(row.spend), want, "{}", row.group);
            assert_eq!(row.requests, 500);
            if !row.group.is_empty() {
                assert_eq!(
                    nanos(store.key_total_spend(&row.group).await.unwrap()),
                    want
                );
            }
        }
    })
    .await;
}

/// Records that keep arriving are written in full batches: a partial batch waits for the
/// interval (or close) instead of being written a few records at a time.
#[tokio::test]
async fn partial_batches_wait_for_the_interval() {
    each_backend(|db| async move {
        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(
            store.clone(),
            SpendWriterOptions {
                batch_size: 4,
                flush_interval: Duration::from_secs(3600),
                ..fast_writer()
            },
        );
        for i in 0..10 {
            writer.record(rec(&format!("p{i}"), None, "m", day("2024-07-01"), 0.01));
        }
        wait_until("two full batches", Duration::from_secs(10), || {
            writer.written() == 8
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!((writer.written(), writer.pending()), (8, 2));
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert_eq!((writer.written(), writer.pending()), (10, 0));
        assert_eq!(all_logs(&store).await.len(), 10);
    })
    .await;
}

#[tokio::test]
async fn disable_spend_logs_keeps_totals() {
    each_backend(|db| async move {
        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(
            store.clone(),
            SpendWriterOptions {
                disable_spend_logs: true,
                ..fast_writer()
            },
        );
        for i in 0..50 {
            writer.record(rec(
                &format!("r{i}"),
                Some("k"),
                "m",
                day("2024-07-01"),
                0.01,
            ));
        }
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert!(all_logs(&store).await.is_empty());
        assert_eq!(grand_totals(&store).await, (nanos(0.5), 500, 250, 50));
        assert_eq!(nanos(store.key_total_spend("k").await.unwrap()), nanos(0.5));
    })
    .await;
}

#[tokio::test]
async fn disable_error_logs_drops_error_rows_only() {
    each_backend(|db| async move {
        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(
            store.clone(),
            SpendWriterOptions {
                disable_error_logs: true,
                ..fast_writer()
            },
        );
        for (i, status) in [200u16, 500, 429, 201, 400, 399].into_iter().enumerate() {
            let mut r = rec(&format!("r{i}"), Some("k"), "m", day("2024-07-02"), 0.25);
            r.status = status;
            if status >= 400 {
                r.error_kind = Some("upstream".into());
            }
            writer.record(r);
        }
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        let mut statuses: Vec<u16> = all_logs(&store).await.iter().map(|l| l.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 201, 399]);
        // Failed requests still count in totals.
        assert_eq!(grand_totals(&store).await.3, 6);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn writer_flushes_on_close_and_survives_a_restart() {
    each_backend(|db| async move {
        let store = db.store.clone();
        let (_, key) = store.generate_key(NewKey::default()).await.unwrap();
        // Long interval and large batches: only the close writes.
        let (writer, task) = SpendWriter::start(
            store.clone(),
            SpendWriterOptions {
                flush_interval: Duration::from_secs(3600),
                batch_size: 10_000,
                ..Default::default()
            },
        );
        for i in 0..7 {
            let mut r = rec(
                &format!("r{i}"),
                Some(&key.token_hash),
                "m",
                day("2024-08-01"),
                1.0,
            );
            r.request_body = Some(format!("{{\"n\": {i}}}"));
            r.response_body = (i == 0).then(|| "nul\0inside".to_owned());
            writer.record(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(writer.pending(), 7);
        assert!(all_logs(&store).await.is_empty(), "nothing before close");
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert_eq!(writer.pending(), 0);
        writer.record(rec("late", None, "m", day("2024-08-01"), 1.0));
        assert_eq!(writer.dropped(), 1, "records after close are dropped");

        // "Restart": close the pool, open the database again.
        store.close().await;
        assert!(store.is_closed());
        assert!(store.key_total_spend(&key.token_hash).await.is_err());
        let reopened = db.reopen().await;
        assert_eq!(
            reopened.key_by_hash(&key.token_hash).await.unwrap(),
            Some(key.clone())
        );
        let logs = all_logs(&reopened).await;
        assert_eq!(logs.len(), 7);
        let r0 = logs.iter().find(|l| &*l.request_id == "r0").unwrap();
        assert_eq!(r0.request_body.as_deref(), Some("{\"n\": 0}"));
        assert_eq!(r0.response_body.as_deref(), Some("nul\u{FFFD}inside"));
        assert_eq!(
            reopened.key_total_spend(&key.token_hash).await.unwrap(),
            7.0
        );
        reopened.close().await;
    })
    .await;
}

#[tokio::test]
async fn writer_keeps_records_through_a_database_outage() {
    each_backend(|db| async move {
        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(store.clone(), fast_writer());
        for i in 0..5 {
            writer.record(rec(
                &format!("before-{i}"),
                Some("k"),
                "m",
                day("2024-09-01"),
                0.5,
            ));
        }
        wait_until("the first records", Duration::from_secs(10), || {
            writer.pending() == 0
        })
        .await;
        assert_eq!(writer.write_errors(), 0);

        let outage = db.outage().await;
        for i in 0..20 {
            writer.record(rec(
                &format!("during-{i}"),
                Some("k"),
                "m",
                day("2024-09-01"),
                0.5,
            ));
        }
        wait_until("failed writes", Duration::from_secs(15), || {
            writer.write_errors() >= 2
        })
        .await;
        assert_eq!(writer.pending(), 20, "kept in memory");
        assert_eq!(writer.dropped(), 0);
        outage.end().await;

        wait_until("the delayed records", Duration::from_secs(30), || {
            writer.pending() == 0
        })
        .await;
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert_eq!(writer.dropped(), 0);
        let logs = all_logs(&store).await;
        assert_eq!(logs.len(), 25);
        assert_eq!(grand_totals(&store).await, (nanos(12.5), 250, 125, 25));
    })
    .await;
}

#[tokio::test]
async fn a_record_the_database_refuses_is_dropped_alone() {
    each_backend(|db| async move {
        // A trigger refuses one request id: SQLite with a constraint error, PostgreSQL with a
        // data exception (SQLSTATE 22023). Neither is worth retrying.
        db.admin_exec(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON spend_logs \
             WHEN NEW.request_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poison record'); END",
            "CREATE FUNCTION \"{schema}\".refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.request_id = 'poison' THEN \
             RAISE EXCEPTION 'poison record' USING ERRCODE = '22023'; END IF; RETURN NEW; END $$",
        )
        .await;
        db.admin_exec(
            "SELECT 1",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON \"{schema}\".spend_logs \
             FOR EACH ROW EXECUTE FUNCTION \"{schema}\".refuse_poison()",
        )
        .await;

        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(store.clone(), fast_writer());
        for id in ["ok-1", "ok-2", "poison", "ok-3", "ok-4"] {
            writer.record(rec(id, Some("k"), "m", day("2024-11-01"), 1.0));
        }
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert_eq!(writer.dropped(), 1);
        assert_eq!(writer.pending(), 0);
        let mut ids: Vec<String> = all_logs(&store)
            .await
            .into_iter()
            .map(|l| l.request_id.to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["ok-1", "ok-2", "ok-3", "ok-4"]);
        assert_eq!(grand_totals(&store).await, (nanos(4.0), 40, 20, 4));
    })
    .await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn overflow_drops_with_one_error_line_per_episode() {
    each_backend(|db| async move {
        let logs = LogBuffer::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        // This test's runtime has one thread: the writer task logs into this subscriber too.
        let _guard = tracing::subscriber::set_default(subscriber);

        let store = db.store.clone();
        let (writer, task) = SpendWriter::start(
            store.clone(),
            SpendWriterOptions {
                capacity: 10,
                flush_interval: Duration::from_secs(3600),
                ..Default::default()
            },
        );
        // No await in between: the writer task cannot run, the buffer fills.
        for i in 0..25 {
            writer.record(rec(
                &format!("r{i}"),
                Some("k"),
                "m",
                day("2024-10-01"),
                1.0,
            ));
        }
        assert_eq!(writer.pending(), 10);
        assert_eq!(writer.dropped(), 15);
        writer.flush_and_close().await.unwrap();
        task.await.unwrap();
        assert_eq!(all_logs(&store).await.len(), 10);
        assert_eq!(grand_totals(&store).await.3, 10);

        let text = String::from_utf8(logs.0.lock().clone()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("dropped 15 spend records"), "{text}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reports_by_key_model_and_day_over_a_range() {
    each_backend(|db| async move {
        let store = &db.store;
        let d1 = day("2024-03-01");
        let d2 = day("2024-03-02");
        let d3 = day("2024-03-03");
        let mut failed = rec("e1", Some("ka"), "m1", d2 + mins(5), 0.0);
        failed.status = 502;
        let records = [
            rec("a1", Some("ka"), "m1", d1 + mins(1), 1.0),
            rec("a2", Some("ka"), "m2", d2 + mins(23 * 60 + 59), 0.5),
            rec("b1", Some("kb"), "m2", d1 + mins(12 * 60), 2.0),
            rec("master", None, "m1", d1 + mins(30), 0.25),
            rec("late", Some("kb"), "m1", d3, 8.0),
            rec("early", Some("kb"), "m1", d1 - mins(1), 16.0),
            failed,
        ];
        store
            .write_spend_batch(Uuid::new_v4(), &records, SpendLogOptions::default())
            .await
            .unwrap();

        let by_day = store.spend_report(GroupBy::Day, d1, d3).await.unwrap();
        let summary: Vec<_> = by_day
            .iter()
            .map(|r| (r.group.as_str(), r.spend, r.requests))
            .collect();
        assert_eq!(summary, [("2024-03-01", 3.25, 3), ("2024-03-02", 0.5, 2)]);
        assert_eq!(by_day[0].prompt_tokens, 30);
        assert_eq!(by_day[0].completion_tokens, 15);

        let by_key = store.spend_report(GroupBy::Key, d1, d3).await.unwrap();
        let summary: Vec<_> = by_key
            .iter()
            .map(|r| (r.group.as_str(), r.spend, r.requests))
            .collect();
        assert_eq!(summary, [("kb", 2.0, 1), ("ka", 1.5, 3), ("", 0.25, 1)]);

        let by_model = store.spend_report(GroupBy::Model, d1, d3).await.unwrap();
        let summary: Vec<_> = by_model
            .iter()
            .map(|r| (r.group.as_str(), r.spend, r.requests))
            .collect();
        assert_eq!(summary, [("m2", 2.5, 2), ("m1", 1.25, 3)]);

        // Wider range includes the edges; an empty range is empty.
        let all = store
            .spend_report(GroupBy::Day, d1 - mins(1), d3 + mins(1))
            .await
            .unwrap();
        let days: Vec<_> = all.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(
            days,
            ["2024-02-29", "2024-03-01", "2024-03-02", "2024-03-03"]
        );
        assert_eq!((all[0].spend, all[3].spend), (16.0, 8.0));
        assert!(
            store
                .spend_report(GroupBy::Key, d3 + mins(1), d3 + mins(2))
                .await
                .unwrap()
                .is_empty()
        );

        // Spend logs: newest first, filters, limit.
        let logs = store
            .spend_logs(&SpendLogFilter {
                start_date: Some(d1),
                end_date: Some(d3),
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = logs.iter().map(|l| &*l.request_id).collect();
        assert_eq!(ids, ["a2", "e1", "b1", "master", "a1"]);
        assert_eq!(logs[1].status, 502);
        let ka = store
            .spend_logs(&SpendLogFilter {
                key_hash: Some("ka".into()),
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = ka.iter().map(|l| &*l.request_id).collect();
        assert_eq!(ids, ["a2", "e1"]);
        let one = store
            .spend_logs(&SpendLogFilter {
                request_id: Some("master".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].key_hash, None);
        assert_eq!(one[0], records[3]);
    })
    .await;
}

#[tokio::test]
async fn opens_sqlite_by_default_and_refuses_unknown_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a").join("data");
    let store = Store::open(None, &data).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(Path::new(&data).join("ai-api.db").is_file());
    store.close().await;
    let err = Store::open(Some("redis://127.0.0.1/"), &data)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err}");
}
