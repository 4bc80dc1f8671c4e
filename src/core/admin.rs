//! Administration in the core, for both doors: generating, changing and deleting keys (the
//! store first, then the auth cache, so a change takes effect at once) and spend reports. Master
//! key only; a generated key gets 403.

use std::time::{Duration, SystemTime};

use super::auth::Principal;
use super::error::{Error, ErrorKind};
use super::{Gateway, RequestContext};
use crate::store::clock::day_start;
use crate::store::{
    GroupBy, KeyPatch, KeyQuery, KeyRecord, NewKey, ReportRow, SpendLogFilter, SpendRecord,
    StoreError, token_hash_of,
};

/// A key as the admin API shows it: the record and the spend of its current budget window.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub record: KeyRecord,
    pub spend: f64,
}

const DAY: Duration = Duration::from_secs(86_400);

/// A date filter as both doors take it: `YYYY-MM-DD` (longer ISO strings are cut to the date),
/// inclusive bounds, as `[start, end)`. Empty means unbounded.
pub fn day_range(
    start_date: Option<&str>,
    end_date: Option<&str>,
) -> Result<(Option<SystemTime>, Option<SystemTime>), Error> {
    let parse = |name: &str, v: Option<&str>| -> Result<Option<SystemTime>, Error> {
        match v.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => day_start(s.get(..10).unwrap_or(s))
                .map(Some)
                .ok_or_else(|| {
                    Error::bad_request(format!("{name} must be a date, YYYY-MM-DD"))
                        .with_param(name)
                }),
        }
    };
    let start = parse("start_date", start_date)?;
    let end = parse("end_date", end_date)?.map(|d| d + DAY);
    Ok((start, end))
}

/// `key`/`api_key`, `model`/`model_group`, or `day`/`date` (default `day`).
pub fn parse_group_by(s: Option<&str>) -> Result<GroupBy, Error> {
    match s.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("day") {
        "key" | "api_key" => Ok(GroupBy::Key),
        "model" | "model_group" => Ok(GroupBy::Model),
        "day" | "date" => Ok(GroupBy::Day),
        other => Err(Error::bad_request(format!(
            "group_by {other:?} is not one of key, model, day"
        ))
        .with_param("group_by")),
    }
}

fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::Invalid { field, .. } => Error::bad_request(e.to_string()).with_param(field),
        StoreError::KeyNotFound => Error::not_found("no such key").with_param("key"),
        StoreError::Conflict(_) => Error::bad_request(e.to_string()).with_code("conflict"),
        other if other.is_transient() => Error::new(
            ErrorKind::Unavailable,
            format!("the database is unavailable: {other}"),
        ),
        other => Error::internal(format!("database error: {other}")),
    }
}

impl Gateway {
    fn require_master(&self, ctx: &RequestContext) -> Result<&crate::store::Store, Error> {
        match self.authorize(ctx)? {
            Principal::Master | Principal::Open => {}
            Principal::Key(_) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    "only the master key may use the admin API",
                )
                .with_code("admin_only"));
            }
        }
        self.inner.auth.store().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "no database is configured for keys and spend",
            )
        })
    }

    fn view(&self, record: KeyRecord) -> KeyView {
        let spend = self
            .inner
            .auth
            .cached(&record.token_hash)
            .map(|k| k.spend(self.inner.router.clock().wall()))
            .unwrap_or(0.0);
        KeyView { record, spend }
    }

    /// Creates a key; the plain key is returned here and nowhere else.
    pub async fn generate_key(
        &self,
        ctx: &RequestContext,
        new: NewKey,
    ) -> Result<(String, KeyView), Error> {
        let store = self.require_master(ctx)?;
        let (plain, record) = store.generate_key(new).await.map_err(store_error)?;
        self.inner
            .auth
            .refresh(record.clone())
            .await
            .map_err(store_error)?;
        tracing::info!(key = %record.key_name, alias = ?record.key_alias, "key generated");
        Ok((plain, self.view(record)))
    }

    pub async fn update_key(
        &self,
        ctx: &RequestContext,
        key: &str,
        patch: KeyPatch,
    ) -> Result<KeyView, Error> {
        let store = self.require_master(ctx)?;
        if key.is_empty() {
            return Err(Error::bad_request("key is required").with_param("key"));
        }
        let record = store.update_key(key, patch).await.map_err(store_error)?;
        self.inner
            .auth
            .refresh(record.clone())
            .await
            .map_err(store_error)?;
        Ok(self.view(record))
    }

    /// Deletes keys (plain or hashes); returns how many existed.
    pub async fn delete_keys(&self, ctx: &RequestContext, keys: &[String]) -> Result<u64, Error> {
        let store = self.require_master(ctx)?;
        if keys.is_empty() {
            return Err(Error::bad_request("keys must name at least one key").with_param("keys"));
        }
        let n = store.delete_keys(keys).await.map_err(store_error)?;
        let hashes: Vec<String> = keys.iter().map(|k| token_hash_of(k)).collect();
        self.inner.auth.forget(&hashes);
        Ok(n)
    }

    pub async fn key_info(&self, ctx: &RequestContext, key: &str) -> Result<KeyView, Error> {
        let store = self.require_master(ctx)?;
        match store.key_info(key).await.map_err(store_error)? {
            Some(record) => Ok(self.view(record)),
            None => Err(Error::not_found("no such key").with_param("key")),
        }
    }

    pub async fn list_keys(&self, ctx: &RequestContext) -> Result<Vec<KeyView>, Error> {
        let store = self.require_master(ctx)?;
        let records = store
            .list_keys(&KeyQuery::default())
            .await
            .map_err(store_error)?;
        Ok(records.into_iter().map(|r| self.view(r)).collect())
    }

    pub async fn spend_logs(
        &self,
        ctx: &RequestContext,
        mut filter: SpendLogFilter,
    ) -> Result<Vec<SpendRecord>, Error> {
        let store = self.require_master(ctx)?;
        // A plain key may be given: look it up by its hash.
        filter.key_hash = filter.key_hash.as_deref().map(token_hash_of);
        store.spend_logs(&filter).await.map_err(store_error)
    }

    /// Spend grouped by key, model or day; an open range runs from the start of time to the
    /// end of today.
    pub async fn spend_report(
        &self,
        ctx: &RequestContext,
        group_by: GroupBy,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> Result<Vec<ReportRow>, Error> {
        let store = self.require_master(ctx)?;
        let start = start.unwrap_or(SystemTime::UNIX_EPOCH);
        let end = end.unwrap_or_else(|| SystemTime::now() + DAY);
        store
            .spend_report(group_by, start, end)
            .await
            .map_err(store_error)
    }
}
