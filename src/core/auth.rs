//! Who is calling and what they may do: the master key, or a generated key with its model
//! list, budget and limits. Keys are checked against an in-memory cache (no database round trip
//! on the hot path), loaded at startup and refreshed by every admin change. Budgets are
//! enforced before any provider call; the spend of the current budget window is kept in memory
//! (loaded from the store's totals at startup) and charged as requests finish.
//!
//! Concurrent requests on one key cannot overspend by more than about one request: with a
//! budget set, a request is admitted only if the spend so far plus what the requests already in
//! flight may cost (estimated by the largest single request seen) stays under the budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use super::error::{Error, ErrorKind};
use crate::config::Secret;
use crate::store::{KeyRecord, Store, StoreError, hash_key};

/// The key a request presents, read the same way from an HTTP request's headers and a gRPC
/// call's metadata (HTTP/2 headers too): `Authorization: Bearer <key>` (or the bare key), else
/// `x-api-key: <key>`. A value that is not visible ASCII counts as absent.
pub fn presented_key(headers: &http::HeaderMap) -> Option<String> {
    const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
    super::header_text(headers, &http::header::AUTHORIZATION)
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim()
        })
        .or_else(|| super::header_text(headers, &X_API_KEY))
        .map(str::to_string)
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No master key is configured: everything is open.
    Open,
    /// The master key: every model, the admin API.
    Master,
    /// A generated key, within its limits.
    Key(Arc<CachedKey>),
}

impl Principal {
    pub fn key_hash(&self) -> Option<&str> {
        match self {
            Principal::Key(k) => Some(&k.record.token_hash),
            Principal::Open | Principal::Master => None,
        }
    }

    pub fn key_alias(&self) -> Option<&str> {
        match self {
            Principal::Key(k) => k.record.key_alias.as_deref(),
            Principal::Open | Principal::Master => None,
        }
    }

    /// The label for metrics: the key's alias, `master`, or `open`.
    pub fn metrics_label(&self) -> String {
        match self {
            Principal::Key(k) => k
                .record
                .key_alias
                .clone()
                .unwrap_or_else(|| k.record.key_name.clone()),
            Principal::Master => "master".into(),
            Principal::Open => "open".into(),
        }
    }
}

#[derive(Debug, Default)]
struct Budget {
    /// USD spent in the current window (or ever, without a budget_duration).
    spend: f64,
    /// When the current window ends.
    window_end: Option<SystemTime>,
    /// The most one request of this key has cost.
    largest: f64,
}

/// A key as the hot path sees it.
#[derive(Debug)]
pub struct CachedKey {
    pub record: KeyRecord,
    budget: Mutex<Budget>,
    in_flight: Arc<AtomicU32>,
}

impl CachedKey {
    fn new(record: KeyRecord, spend: f64, now: SystemTime) -> Self {
        let window_end = record.budget_window(now).map(|w| w.end);
        CachedKey {
            record,
            budget: Mutex::new(Budget {
                spend,
                window_end,
                largest: 0.0,
            }),
            in_flight: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Starts a new window when the current one has ended.
    fn roll(&self, b: &mut Budget, now: SystemTime) {
        if b.window_end.is_some_and(|end| now >= end) {
            b.spend = 0.0;
            b.window_end = self.record.budget_window(now).map(|w| w.end);
        }
    }

    /// The spend of the current window.
    pub fn spend(&self, now: SystemTime) -> f64 {
        let mut b = self.budget.lock();
        self.roll(&mut b, now);
        b.spend
    }

    /// Charges a finished request.
    pub fn charge(&self, cost: f64, now: SystemTime) {
        if cost.is_nan() || cost <= 0.0 {
            return;
        }
        let mut b = self.budget.lock();
        self.roll(&mut b, now);
        b.spend += cost;
        b.largest = b.largest.max(cost);
    }

    /// Admits a request within the budget; the reservation lasts until it is dropped.
    fn reserve(&self, now: SystemTime) -> Result<Reservation, Error> {
        let Some(max) = self.record.max_budget else {
            return Ok(Reservation::none());
        };
        let mut b = self.budget.lock();
        self.roll(&mut b, now);
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let over = b.spend >= max;
        // Unknown cost per request: one at a time until the first has been charged.
        let projected_over = if b.largest > 0.0 {
            b.spend + f64::from(in_flight) * b.largest >= max
        } else {
            in_flight > 0
        };
        if over || projected_over {
            let reset = b
                .window_end
                .map(|e| {
                    let secs = e
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    format!("; the budget resets at unix time {secs}")
                })
                .unwrap_or_default();
            let msg = if over {
                format!(
                    "Budget has been exceeded! Current cost: {:.6}, Max budget: {max}{reset}",
                    b.spend
                )
            } else {
                format!(
                    "Budget would be exceeded by the requests in flight. Current cost: {:.6}, Max budget: {max}",
                    b.spend
                )
            };
            return Err(Error::new(ErrorKind::BudgetExceeded, msg).with_code("budget_exceeded"));
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Reservation {
            in_flight: Some(self.in_flight.clone()),
        })
    }

    /// Checks the key may be used now for `model` (a model group name).
    pub fn admit(&self, model: &str, now: SystemTime) -> Result<Reservation, Error> {
        if !self.record.allows_model(model) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "this key may not use model {model:?}; allowed: {}",
                    self.record.models.join(", ")
                ),
            )
            .with_param("model")
            .with_code("key_model_access_denied"));
        }
        self.reserve(now)
    }
}

/// A request's place in its key's in-flight count (for the budget projection).
#[derive(Debug)]
pub struct Reservation {
    in_flight: Option<Arc<AtomicU32>>,
}

impl Reservation {
    pub fn none() -> Self {
        Reservation { in_flight: None }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(c) = &self.in_flight {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The master key and the cache of generated keys.
#[derive(Debug)]
pub struct Auth {
    master: Option<Secret>,
    store: Option<Store>,
    keys: RwLock<HashMap<String, Arc<CachedKey>>>,
}

/// Compares keys without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Loads every key (and the spend of its current budget window) from the store.
    pub async fn load(master: Option<Secret>, store: Option<Store>) -> Result<Self, StoreError> {
        let auth = Auth {
            master,
            store,
            keys: RwLock::new(HashMap::new()),
        };
        if let Some(store) = &auth.store {
            let now = SystemTime::now();
            let mut map = HashMap::new();
            for record in store.all_keys_for_cache().await? {
                let spend = if record.max_budget.is_some() {
                    store.key_budget_spend(&record, now).await?
                } else {
                    0.0
                };
                map.insert(
                    record.token_hash.clone(),
                    Arc::new(CachedKey::new(record, spend, now)),
                );
            }
            *auth.keys.write() = map;
        }
        Ok(auth)
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Who presents `key`.
    pub fn authenticate(&self, key: Option<&str>, now: SystemTime) -> Result<Principal, Error> {
        let Some(master) = &self.master else {
            return Ok(Principal::Open);
        };
        let key = match key {
            None | Some("") => {
                return Err(Error::unauthenticated(
                    "no API key: send it as \"Authorization: Bearer <key>\"",
                )
                .with_code("missing_api_key"));
            }
            Some(k) => k,
        };
        if constant_time_eq(key.as_bytes(), master.expose().as_bytes()) {
            return Ok(Principal::Master);
        }
        let invalid = || Error::unauthenticated("invalid API key").with_code("invalid_api_key");
        let cached = self.keys.read().get(&hash_key(key)).cloned();
        let Some(k) = cached else {
            return Err(invalid());
        };
        if k.record.blocked {
            return Err(Error::unauthenticated("this API key is blocked").with_code("key_blocked"));
        }
        if k.record.is_expired(now) {
            return Err(Error::unauthenticated("this API key has expired").with_code("key_expired"));
        }
        Ok(Principal::Key(k))
    }

    /// Puts a key (new or changed) into the cache, keeping its spend.
    pub async fn refresh(&self, record: KeyRecord) -> Result<Arc<CachedKey>, StoreError> {
        let now = SystemTime::now();
        let spend = match (&self.store, record.max_budget) {
            (Some(store), Some(_)) => store.key_budget_spend(&record, now).await?,
            _ => 0.0,
        };
        let existing_spend = self
            .keys
            .read()
            .get(&record.token_hash)
            .map(|k| k.spend(now));
        // In-memory spend includes what the writer has not flushed yet: never go below it.
        let spend = existing_spend.map_or(spend, |s| s.max(spend));
        let cached = Arc::new(CachedKey::new(record, spend, now));
        self.keys
            .write()
            .insert(cached.record.token_hash.clone(), cached.clone());
        Ok(cached)
    }

    /// Drops keys from the cache (they stop working at once).
    pub fn forget(&self, hashes: &[String]) {
        let mut keys = self.keys.write();
        for h in hashes {
            keys.remove(h);
        }
    }

    /// A cached key by hash.
    pub fn cached(&self, hash: &str) -> Option<Arc<CachedKey>> {
        self.keys.read().get(hash).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        h
    }

    #[test]
    fn presented_key_reads_bearer_then_x_api_key() {
        let key = |pairs: &[(&'static str, &[u8])]| presented_key(&headers(pairs));
        assert_eq!(
            key(&[("authorization", b"Bearer sk-1")]).as_deref(),
            Some("sk-1")
        );
        assert_eq!(
            key(&[("authorization", b"bearer  sk-1 ")]).as_deref(),
            Some("sk-1")
        );
        assert_eq!(
            key(&[("authorization", b"sk-bare")]).as_deref(),
            Some("sk-bare")
        );
        assert_eq!(key(&[("x-api-key", b" sk-2 ")]).as_deref(), Some("sk-2"));
        // Authorization wins over x-api-key.
        let both = [
            ("authorization", &b"Bearer sk-1"[..]),
            ("x-api-key", b"sk-2"),
        ];
        assert_eq!(key(&both).as_deref(), Some("sk-1"));
        // An Authorization value that is not visible ASCII is as if absent.
        let odd = [
            ("authorization", &b"Bearer \xe9"[..]),
            ("x-api-key", b"sk-2"),
        ];
        assert_eq!(key(&odd).as_deref(), Some("sk-2"));
        assert_eq!(key(&[]), None);
    }

    #[test]
    fn key_comparison_is_exact() {
        assert!(constant_time_eq(b"sk-1", b"sk-1"));
        assert!(!constant_time_eq(b"sk-1", b"sk-2"));
        assert!(!constant_time_eq(b"sk-1", b"sk-12"));
    }
}
