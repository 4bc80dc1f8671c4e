//! The spend ledger (`spend_logs`, one row per request), the per-minute totals
//! (`spend_totals`) that budget checks and reports read, and the exactly-once batch write that
//! feeds both.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use sqlx::QueryBuilder;
use uuid::Uuid;

use super::clock::{DAY_MS, MINUTE_MS, format_day, from_unix_ms, to_unix_ms};
use super::{RowExt, Store, StoreError, with_pool};

/// Nano-USD per USD: money is stored as integer nano-USD.
const NANOS_PER_USD: f64 = 1e9;

/// Minutes per day (totals buckets are minutes).
const MINUTES_PER_DAY: i64 = DAY_MS / MINUTE_MS;

/// Ledger rows per INSERT statement (15 parameters each). A batch goes in chunks of this many
/// and the rest in chunks of descending powers of two ([`ledger_chunks`]), so the statements
/// come in a few fixed shapes that the connection keeps prepared: a statement for every batch
/// size would be parsed anew for each batch, and fill the statement cache.
const LEDGER_CHUNK: usize = 64;
const _: () = assert!(LEDGER_CHUNK.is_power_of_two());
/// Totals rows per upsert statement (7 parameters each).
const TOTALS_CHUNK: usize = 1000;

/// One request's spend, as the core reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRecord {
    /// The request's id: the client's `x-request-id`, else one the gateway made (UUIDv7). Not
    /// a key: a client may send the same id twice, and both requests are logged and counted.
    pub request_id: Arc<str>,
    /// When the request was received (UTC).
    pub time: SystemTime,
    /// Token hash of the calling key; `None` for the master key.
    pub key_hash: Option<String>,
    pub key_alias: Option<String>,
    /// Shared with the deployment (and the request id with the request): a record costs
    /// reference counts, not copies, and is freed on the writer's thread.
    pub model_group: Arc<str>,
    pub deployment_id: Arc<str>,
    pub provider_model: Arc<str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// USD (stored to the nano-dollar).
    pub cost_usd: f64,
    pub latency_ms: u64,
    /// HTTP status of the answer (>= 400: a failed request).
    pub status: u16,
    pub error_kind: Option<String>,
    /// Stored only when set (the caller decides whether bodies are logged).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

impl SpendRecord {
    /// True for a failed request (status >= 400).
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }
}

/// What a batch writes besides the totals (which are always written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendLogOptions {
    /// No ledger rows at all (LiteLLM's `disable_spend_logs`); totals are still kept.
    pub disable_spend_logs: bool,
    /// No ledger rows for failed requests (`disable_error_logs`); they still count in totals.
    pub disable_error_logs: bool,
}

impl SpendLogOptions {
    fn ledger_keeps(&self, r: &SpendRecord) -> bool {
        let dropped = self.disable_spend_logs || (self.disable_error_logs && r.is_error());
        !dropped
    }
}

/// The result of [`Store::write_spend_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The batch was committed now.
    Written {
        /// New ledger rows (the records the options keep).
        ledger_rows: u64,
        /// Records added to the totals: all of them.
        counted: u64,
    },
    /// A batch with this id was committed before: nothing was written.
    AlreadyWritten,
}

/// Filter of [`Store::spend_logs`]: `[start_date, end_date)` and exact matches.
#[derive(Debug, Clone, Default)]
pub struct SpendLogFilter {
    pub start_date: Option<SystemTime>,
    pub end_date: Option<SystemTime>,
    pub key_hash: Option<String>,
    pub request_id: Option<String>,
    /// At most this many rows (default 100, at most 10,000).
    pub limit: Option<u32>,
}

/// What [`Store::spend_report`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Token hash; the empty string for the master key.
    Key,
    /// Model group.
    Model,
    /// UTC day, `YYYY-MM-DD`.
    Day,
}

/// One group of [`Store::spend_report`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub group: String,
    /// USD.
    pub spend: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub requests: u64,
}

fn usd_to_nanos(usd: f64) -> i64 {
    if usd.is_finite() {
        // `as` saturates at the i64 range.
        (usd * NANOS_PER_USD).round() as i64
    } else {
        0
    }
}

fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// PostgreSQL's TEXT cannot hold NUL; SQLite would truncate at it in some tools. Replace it.
fn clean(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn clean_opt(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(clean)
}

#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    cost_nanos: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    requests: i64,
}

/// (key hash or '', minute bucket, model group) → sums, sorted so concurrent writers upsert in
/// the same order.
type Totals<'a> = BTreeMap<(Cow<'a, str>, i64, Cow<'a, str>), Sums>;

fn add_to_totals<'a>(totals: &mut Totals<'a>, r: &'a SpendRecord) {
    let key = (
        r.key_hash.as_deref().map_or(Cow::Borrowed(""), clean),
        to_unix_ms(r.time).div_euclid(MINUTE_MS),
        clean(&r.model_group),
    );
    let s = totals.entry(key).or_default();
    s.cost_nanos = s.cost_nanos.saturating_add(usd_to_nanos(r.cost_usd));
    s.prompt_tokens = s.prompt_tokens.saturating_add(to_i64(r.prompt_tokens));
    s.completion_tokens = s
        .completion_tokens
        .saturating_add(to_i64(r.completion_tokens));
    s.requests += 1;
}

/// The sizes a ledger of `n` rows is inserted in: [`LEDGER_CHUNK`]s, then the rest in
/// descending powers of two (its binary digits), so at most 7 statement shapes in all.
fn ledger_chunks(n: usize) -> impl Iterator<Item = usize> {
    let full = std::iter::repeat_n(LEDGER_CHUNK, n / LEDGER_CHUNK);
    let rest = n % LEDGER_CHUNK;
    let bits = (0..LEDGER_CHUNK.trailing_zeros())
        .rev()
        .map(|b| 1 << b)
        .filter(move |size| rest & size != 0);
    full.chain(bits)
}

const LOG_COLUMNS: &str = "request_id, request_time, key_hash, key_alias, model_group, \
     deployment_id, provider_model, prompt_tokens, completion_tokens, cost_nanos, latency_ms, \
     status, error_kind, request_body, response_body";

fn record_from_row<R: RowExt>(row: &R) -> Result<SpendRecord, StoreError> {
    Ok(SpendRecord {
        request_id: row.text("request_id")?.into(),
        time: from_unix_ms(row.int("request_time")?),
        key_hash: row.opt_text("key_hash")?,
        key_alias: row.opt_text("key_alias")?,
        model_group: row.text("model_group")?.into(),
        deployment_id: row.text("deployment_id")?.into(),
        provider_model: row.text("provider_model")?.into(),
        prompt_tokens: to_u64(row.int("prompt_tokens")?),
        completion_tokens: to_u64(row.int("completion_tokens")?),
        cost_usd: nanos_to_usd(row.int("cost_nanos")?),
        latency_ms: to_u64(row.int("latency_ms")?),
        status: u16::try_from(row.int("status")?).unwrap_or(0),
        error_kind: row.opt_text("error_kind")?,
        request_body: row.opt_text("request_body")?,
        response_body: row.opt_text("response_body")?,
    })
}

impl Store {
    /// Writes one batch of spend records in ONE transaction, exactly once:
    ///
    /// 1. records `batch_id` in `spend_batches`; if it is already there (a retry after a commit
    ///    whose outcome was unknown) nothing else is written: [`BatchOutcome::AlreadyWritten`];
    /// 2. inserts the ledger rows the options keep;
    /// 3. upserts the totals of all the records, pre-aggregated per (key, minute, model group).
    ///
    /// Every record is a request served: two with the same request id are two requests (a
    /// client may reuse its `x-request-id`), both logged and both counted.
    pub async fn write_spend_batch(
        &self,
        batch_id: Uuid,
        records: &[SpendRecord],
        options: SpendLogOptions,
    ) -> Result<BatchOutcome, StoreError> {
        let ledger: Vec<&SpendRecord> =
            records.iter().filter(|r| options.ledger_keeps(r)).collect();
        let mut totals = Totals::new();
        for r in records {
            add_to_totals(&mut totals, r);
        }
        let totals: Vec<_> = totals.into_iter().collect();
        let now = to_unix_ms(SystemTime::now());

        with_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let claimed = sqlx::query(
                "INSERT INTO spend_batches (batch_id, written_at, records) VALUES ($1, $2, $3) \
                 ON CONFLICT (batch_id) DO NOTHING",
            )
            .bind(batch_id.to_string())
            .bind(now)
            .bind(i64::try_from(records.len()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                tx.rollback().await?;
                return Ok(BatchOutcome::AlreadyWritten);
            }

            let mut rest = ledger.as_slice();
            for size in ledger_chunks(ledger.len()) {
                let (chunk, more) = rest.split_at(size);
                rest = more;
                let mut q =
                    QueryBuilder::<Db>::new(format!("INSERT INTO spend_logs ({LOG_COLUMNS}) "));
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(clean(&r.request_id))
                        .push_bind(to_unix_ms(r.time))
                        .push_bind(clean_opt(&r.key_hash))
                        .push_bind(clean_opt(&r.key_alias))
                        .push_bind(clean(&r.model_group))
                        .push_bind(clean(&r.deployment_id))
                        .push_bind(clean(&r.provider_model))
                        .push_bind(to_i64(r.prompt_tokens))
                        .push_bind(to_i64(r.completion_tokens))
                        .push_bind(usd_to_nanos(r.cost_usd))
                        .push_bind(to_i64(r.latency_ms))
                        .push_bind(i64::from(r.status))
                        .push_bind(clean_opt(&r.error_kind))
                        .push_bind(clean_opt(&r.request_body))
                        .push_bind(clean_opt(&r.response_body));
                });
                q.build().execute(&mut *tx).await?;
            }

            for chunk in totals.chunks(TOTALS_CHUNK) {
                let mut q = QueryBuilder::<Db>::new(
                    "INSERT INTO spend_totals (key_hash, bucket, model_group, cost_nanos, \
                     prompt_tokens, completion_tokens, requests) ",
                );
                q.push_values(chunk, |mut b, ((key, bucket, model), s)| {
                    b.push_bind(key.as_ref())
                        .push_bind(*bucket)
                        .push_bind(model.as_ref())
                        .push_bind(s.cost_nanos)
                        .push_bind(s.prompt_tokens)
                        .push_bind(s.completion_tokens)
                        .push_bind(s.requests);
                });
                q.push(
                    " ON CONFLICT (key_hash, bucket, model_group) DO UPDATE SET \
                     cost_nanos = spend_totals.cost_nanos + excluded.cost_nanos, \
                     prompt_tokens = spend_totals.prompt_tokens + excluded.prompt_tokens, \
                     completion_tokens = spend_totals.completion_tokens + excluded.completion_tokens, \
                     requests = spend_totals.requests + excluded.requests",
                );
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(BatchOutcome::Written {
                ledger_rows: ledger.len() as u64,
                counted: records.len() as u64,
            })
        })
    }

    /// Forgets batch ids written before `before` (they only guard retries of recent batches).
    pub async fn prune_batch_ids(&self, before: SystemTime) -> Result<u64, StoreError> {
        let before = to_unix_ms(before);
        Ok(with_pool!(self, |p| {
            sqlx::query("DELETE FROM spend_batches WHERE written_at < $1")
                .bind(before)
                .execute(p)
                .await?
                .rows_affected()
        }))
    }

    /// Ledger rows matching `filter`, newest first.
    pub async fn spend_logs(
        &self,
        filter: &SpendLogFilter,
    ) -> Result<Vec<SpendRecord>, StoreError> {
        let limit = i64::from(filter.limit.unwrap_or(100).min(10_000));
        with_pool!(self, |p| {
            let mut q = QueryBuilder::<Db>::new(format!(
                "SELECT {LOG_COLUMNS} FROM spend_logs WHERE 1 = 1"
            ));
            if let Some(t) = filter.start_date {
                q.push(" AND request_time >= ").push_bind(to_unix_ms(t));
            }
            if let Some(t) = filter.end_date {
                q.push(" AND request_time < ").push_bind(to_unix_ms(t));
            }
            if let Some(k) = &filter.key_hash {
                q.push(" AND key_hash = ").push_bind(k.as_str());
            }
            if let Some(id) = &filter.request_id {
                q.push(" AND request_id = ").push_bind(id.as_str());
            }
            q.push(" ORDER BY request_time DESC, request_id DESC LIMIT ")
                .push_bind(limit);
            let rows = q.build().fetch_all(p).await?;
            rows.iter().map(record_from_row).collect()
        })
    }

    /// Spend, tokens and requests from `start` to `end`, grouped, from the totals (so it works
    /// with spend logs disabled). Resolution is one minute: a minute counts when it starts in
    /// `[start, end)`, rounded outwards (`start` down, `end` up). Day groups ascend; key and
    /// model groups come by spend, highest first.
    pub async fn spend_report(
        &self,
        group_by: GroupBy,
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let from = to_unix_ms(start).div_euclid(MINUTE_MS);
        let to = ceil_div(to_unix_ms(end), MINUTE_MS);
        let (group, order) = match group_by {
            GroupBy::Key => ("key_hash", "spend DESC, grp"),
            GroupBy::Model => ("model_group", "spend DESC, grp"),
            // Buckets are non-negative minutes here (times after 1970), so `/` floors.
            GroupBy::Day => ("bucket / 1440", "grp"),
        };
        debug_assert_eq!(MINUTES_PER_DAY, 1440);
        let sql = format!(
            "SELECT {group} AS grp, CAST(SUM(cost_nanos) AS BIGINT) AS spend, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
             CAST(SUM(requests) AS BIGINT) AS requests \
             FROM spend_totals WHERE bucket >= $1 AND bucket < $2 GROUP BY {group} ORDER BY {order}"
        );
        with_pool!(self, |p| {
            let rows = sqlx::query(&sql).bind(from).bind(to).fetch_all(p).await?;
            rows.iter()
                .map(|row| {
                    let group = match group_by {
                        GroupBy::Day => format_day(row.int("grp")?),
                        _ => row.text("grp")?,
                    };
                    Ok(ReportRow {
                        group,
                        spend: nanos_to_usd(row.int("spend")?),
                        prompt_tokens: to_u64(row.int("prompt_tokens")?),
                        completion_tokens: to_u64(row.int("completion_tokens")?),
                        requests: to_u64(row.int("requests")?),
                    })
                })
                .collect()
        })
    }

    /// USD spent by the key since `since` (budget checks: pass the start of
    /// [`KeyRecord::budget_window`](super::KeyRecord::budget_window)). Minute resolution: the
    /// minute containing `since` counts whole.
    pub async fn key_spend_since(
        &self,
        key_hash: &str,
        since: SystemTime,
    ) -> Result<f64, StoreError> {
        self.key_spend_from_bucket(key_hash, to_unix_ms(since).div_euclid(MINUTE_MS))
            .await
    }

    /// USD spent by the key over its whole life.
    pub async fn key_total_spend(&self, key_hash: &str) -> Result<f64, StoreError> {
        self.key_spend_from_bucket(key_hash, i64::MIN).await
    }

    async fn key_spend_from_bucket(&self, key_hash: &str, from: i64) -> Result<f64, StoreError> {
        let nanos = with_pool!(self, |p| {
            sqlx::query(
                "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS spend FROM spend_totals \
                 WHERE key_hash = $1 AND bucket >= $2",
            )
            .bind(key_hash)
            .bind(from)
            .fetch_one(p)
            .await?
            .int("spend")?
        });
        Ok(nanos_to_usd(nanos))
    }

    /// USD the key spent in its current budget window (`now`), or over its life when it has no
    /// `budget_duration`: the number to compare with `max_budget`.
    pub async fn key_budget_spend(
        &self,
        key: &super::KeyRecord,
        now: SystemTime,
    ) -> Result<f64, StoreError> {
        match key.budget_window(now) {
            Some(w) => self.key_spend_since(&key.token_hash, w.start).await,
            None => self.key_total_spend(&key.token_hash).await,
        }
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 { q } else { q + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_goes_in_few_statement_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..=1000 {
            let sizes: Vec<usize> = ledger_chunks(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}: {sizes:?}");
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{n}: {sizes:?}");
            shapes.extend(sizes);
        }
        assert_eq!(
            shapes.into_iter().collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 64]
        );
    }

    #[test]
    fn money_is_exact_nanos() {
        assert_eq!(usd_to_nanos(0.000_001_5), 1_500);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(f64::INFINITY), 0);
        assert_eq!(nanos_to_usd(2_500_000_000), 2.5);
        assert_eq!(ceil_div(120_001, 60_000), 3);
        assert_eq!(ceil_div(120_000, 60_000), 2);
        assert_eq!(ceil_div(-1, 60_000), 0);
    }

    #[test]
    fn totals_aggregate_per_key_minute_and_model() {
        let base = SpendRecord {
            request_id: "a".into(),
            time: from_unix_ms(10 * MINUTE_MS + 5),
            key_hash: Some("k".into()),
            key_alias: None,
            model_group: "m".into(),
            deployment_id: "d".into(),
            provider_model: "p".into(),
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_usd: 0.25,
            latency_ms: 1,
            status: 200,
            error_kind: None,
            request_body: None,
            response_body: None,
        };
        let same_minute = SpendRecord {
            request_id: "b".into(),
            time: from_unix_ms(11 * MINUTE_MS - 1),
            ..base.clone()
        };
        let master = SpendRecord {
            request_id: "c".into(),
            key_hash: None,
            ..base.clone()
        };
        let mut totals = Totals::new();
        for r in [&base, &same_minute, &master] {
            add_to_totals(&mut totals, r);
        }
        assert_eq!(totals.len(), 2);
        let s = totals[&(Cow::Borrowed("k"), 10, Cow::Borrowed("m"))];
        assert_eq!(
            (s.cost_nanos, s.prompt_tokens, s.requests),
            (500_000_000, 6, 2)
        );
        assert!(totals.contains_key(&(Cow::Borrowed(""), 10, Cow::Borrowed("m"))));
    }

    #[test]
    fn ledger_options() {
        let ok = SpendRecord {
            request_id: "a".into(),
            time: SystemTime::now(),
            key_hash: None,
            key_alias: None,
            model_group: "".into(),
            deployment_id: "".into(),
            provider_model: "".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            latency_ms: 0,
            status: 200,
            error_kind: None,
            request_body: None,
            response_body: None,
        };
        let err = SpendRecord {
            status: 429,
            ..ok.clone()
        };
        let no_errors = SpendLogOptions {
            disable_error_logs: true,
            ..Default::default()
        };
        assert!(no_errors.ledger_keeps(&ok) && !no_errors.ledger_keeps(&err));
        let none = SpendLogOptions {
            disable_spend_logs: true,
            ..Default::default()
        };
        assert!(!none.ledger_keeps(&ok) && !none.ledger_keeps(&err));
        assert_eq!(clean("a\0b"), "a\u{FFFD}b");
    }
}
