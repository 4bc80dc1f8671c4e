//! Per-service API keys with LiteLLM's key fields. Only the SHA-256 hex of a key is stored; the
//! plain key is returned once, by [`Store::generate_key`], and never stored or logged.
//! Every operation that takes a key accepts the plain value (`sk-...`) or its hash.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use sqlx::QueryBuilder;

use super::budget::{BudgetDuration, BudgetWindow};
use super::clock::{from_unix_ms, to_unix_ms};
use super::{RowExt, Store, StoreError, with_pool};

/// Prefix of every key (LiteLLM's virtual keys start with `sk-` too).
pub const KEY_PREFIX: &str = "sk-";

/// SHA-256 of the plain key, as lowercase hex (LiteLLM's `hash_token`).
pub fn hash_key(plain: &str) -> String {
    format!("{:x}", Sha256::digest(plain.as_bytes()))
}

/// The token hash a caller means: the hash of a plain key (`sk-...`), or the value itself when
/// it is already a hash.
pub fn token_hash_of(key_or_hash: &str) -> String {
    if key_or_hash.starts_with(KEY_PREFIX) {
        hash_key(key_or_hash)
    } else {
        key_or_hash.to_owned()
    }
}

/// The non-secret display form of a key, `sk-...abcd` (its last four characters).
pub fn display_key(plain: &str) -> String {
    let tail: String = {
        let mut rev: Vec<char> = plain.chars().rev().take(4).collect();
        rev.reverse();
        rev.into_iter().collect()
    };
    format!("{KEY_PREFIX}...{tail}")
}

/// A new random key: `sk-` and 43 URL-safe characters (256 bits from the OS CSPRNG, via two
/// UUIDv4s: 244 random bits).
fn random_key() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What `/key/generate` asks for (LiteLLM's field names). Deserializable from its JSON body;
/// unknown fields are ignored.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct NewKey {
    /// A caller-chosen plain key (must start with `sk-`); a random one when `None`.
    pub key: Option<String>,
    pub key_alias: Option<String>,
    /// Model groups the key may call; empty = all.
    pub models: Vec<String>,
    /// USD.
    pub max_budget: Option<f64>,
    /// `30s`, `10m`, `1h`, `1d`, `7d`, `30d`, `1mo`, ...
    pub budget_duration: Option<String>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    /// The key expires this long after generation (same syntax as `budget_duration`).
    pub duration: Option<String>,
    /// A JSON object (`null` = `{}`).
    pub metadata: serde_json::Value,
    pub blocked: bool,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_alias", &self.key_alias)
            .field("models", &self.models)
            .field("max_budget", &self.max_budget)
            .field("budget_duration", &self.budget_duration)
            .field("rpm_limit", &self.rpm_limit)
            .field("tpm_limit", &self.tpm_limit)
            .field("max_parallel_requests", &self.max_parallel_requests)
            .field("duration", &self.duration)
            .field("metadata", &self.metadata)
            .field("blocked", &self.blocked)
            .finish()
    }
}

/// A partial update (`/key/update`): `None` leaves a field alone; for nullable fields
/// `Some(None)` (JSON `null`) clears it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeyPatch {
    #[serde(deserialize_with = "nullable")]
    pub key_alias: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub max_budget: Option<Option<f64>>,
    /// Setting it restarts the budget window (a new `budget_reset_at`).
    #[serde(deserialize_with = "nullable")]
    pub budget_duration: Option<Option<String>>,
    #[serde(deserialize_with = "nullable")]
    pub rpm_limit: Option<Option<u64>>,
    #[serde(deserialize_with = "nullable")]
    pub tpm_limit: Option<Option<u64>>,
    #[serde(deserialize_with = "nullable")]
    pub max_parallel_requests: Option<Option<u64>>,
    /// A new lifetime from now (`Some(None)`: never expires).
    #[serde(deserialize_with = "nullable")]
    pub duration: Option<Option<String>>,
    pub metadata: Option<serde_json::Value>,
    pub blocked: Option<bool>,
}

/// A present field (even `null`) becomes `Some(..)`; a missing one stays `None` via `default`.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A stored key. Holds no plain key: `token_hash` and the display form `key_name` only.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub token_hash: String,
    /// `sk-...abcd`.
    pub key_name: String,
    pub key_alias: Option<String>,
    /// Model groups the key may call; empty = all.
    pub models: Vec<String>,
    /// USD.
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    /// End of the budget window current when it was last computed (see
    /// [`KeyRecord::budget_window`] for the window now).
    pub budget_reset_at: Option<SystemTime>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub expires: Option<SystemTime>,
    pub metadata: serde_json::Value,
    pub blocked: bool,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl KeyRecord {
    /// True when the key has an expiry at or before `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// True when the key may call `model_group` (an empty list allows all).
    pub fn allows_model(&self, model_group: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model_group)
    }

    /// The budget window containing `now`, or `None` for a key without `budget_duration` (its
    /// budget, if any, covers its whole lifetime: use [`Store::key_total_spend`]).
    pub fn budget_window(&self, now: SystemTime) -> Option<BudgetWindow> {
        let duration: BudgetDuration = self.budget_duration.as_deref()?.parse().ok()?;
        Some(duration.window(now, self.budget_reset_at))
    }
}

/// Filter and page of [`Store::list_keys`]; the default lists every key.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub key_alias: Option<String>,
    pub offset: u64,
    pub limit: Option<u64>,
}

const KEY_COLUMNS: &str = "token_hash, key_name, key_alias, models, max_budget, budget_duration, \
     budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, expires, metadata, blocked, \
     created_at, updated_at";

fn key_from_row<R: RowExt>(row: &R) -> Result<KeyRecord, StoreError> {
    let models: Vec<String> =
        serde_json::from_str(&row.text("models")?).map_err(|e| StoreError::Corrupt {
            what: "api_keys.models",
            message: e.to_string(),
        })?;
    let metadata: serde_json::Value =
        serde_json::from_str(&row.text("metadata")?).map_err(|e| StoreError::Corrupt {
            what: "api_keys.metadata",
            message: e.to_string(),
        })?;
    let unsigned = |v: Option<i64>| v.map(|n| u64::try_from(n).unwrap_or(0));
    Ok(KeyRecord {
        token_hash: row.text("token_hash")?,
        key_name: row.text("key_name")?,
        key_alias: row.opt_text("key_alias")?,
        models,
        max_budget: row.opt_real("max_budget")?,
        budget_duration: row.opt_text("budget_duration")?,
        budget_reset_at: row.opt_int("budget_reset_at")?.map(from_unix_ms),
        rpm_limit: unsigned(row.opt_int("rpm_limit")?),
        tpm_limit: unsigned(row.opt_int("tpm_limit")?),
        max_parallel_requests: unsigned(row.opt_int("max_parallel_requests")?),
        expires: row.opt_int("expires")?.map(from_unix_ms),
        metadata,
        blocked: row.boolean("blocked")?,
        created_at: from_unix_ms(row.int("created_at")?),
        updated_at: from_unix_ms(row.int("updated_at")?),
    })
}

fn parse_duration(field: &'static str, s: &str) -> Result<BudgetDuration, StoreError> {
    s.parse()
        .map_err(|e: super::DurationParseError| StoreError::Invalid {
            field,
            message: e.to_string(),
        })
}

fn check_budget(b: Option<f64>) -> Result<Option<f64>, StoreError> {
    match b {
        Some(v) if !v.is_finite() || v < 0.0 => Err(StoreError::Invalid {
            field: "max_budget",
            message: format!("{v} is not a non-negative amount of USD"),
        }),
        other => Ok(other),
    }
}

fn check_metadata(m: serde_json::Value) -> Result<String, StoreError> {
    match m {
        serde_json::Value::Null => Ok("{}".to_owned()),
        serde_json::Value::Object(_) => Ok(m.to_string()),
        _ => Err(StoreError::Invalid {
            field: "metadata",
            message: "must be a JSON object".to_owned(),
        }),
    }
}

fn check_alias(alias: Option<String>) -> Result<Option<String>, StoreError> {
    match alias {
        Some(a) if a.trim().is_empty() => Err(StoreError::Invalid {
            field: "key_alias",
            message: "must not be empty".to_owned(),
        }),
        other => Ok(other),
    }
}

fn models_json(models: &[String]) -> String {
    serde_json::Value::from(models.to_vec()).to_string()
}

fn limit(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Maps a unique violation on insert/update to [`StoreError::Conflict`].
fn conflict_or(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        let what =
            if db.message().contains("alias") || db.constraint() == Some("api_keys_key_alias") {
                "key_alias is already used by another key"
            } else {
                "this key already exists"
            };
        return StoreError::Conflict(what.to_owned());
    }
    StoreError::Database(e)
}

impl Store {
    /// Creates a key and returns its plain value (shown to the caller once, never stored) with
    /// the stored record.
    pub async fn generate_key(&self, new: NewKey) -> Result<(String, KeyRecord), StoreError> {
        let now = SystemTime::now();
        let plain = match new.key {
            Some(k) => {
                if !k.starts_with(KEY_PREFIX) || k.len() <= KEY_PREFIX.len() {
                    return Err(StoreError::Invalid {
                        field: "key",
                        message: format!("a custom key must start with {KEY_PREFIX:?}"),
                    });
                }
                k
            }
            None => random_key(),
        };
        let budget_duration = new
            .budget_duration
            .as_deref()
            .map(|s| parse_duration("budget_duration", s))
            .transpose()?;
        let expires = new
            .duration
            .as_deref()
            .map(|s| parse_duration("duration", s).map(|d| d.after(now)))
            .transpose()?;
        let metadata = check_metadata(new.metadata)?;
        let record = KeyRecord {
            token_hash: hash_key(&plain),
            key_name: display_key(&plain),
            key_alias: check_alias(new.key_alias)?,
            models: new.models,
            max_budget: check_budget(new.max_budget)?,
            budget_duration: budget_duration.map(|d| d.to_string()),
            budget_reset_at: budget_duration.map(|d| d.next_reset(now)),
            rpm_limit: new.rpm_limit,
            tpm_limit: new.tpm_limit,
            max_parallel_requests: new.max_parallel_requests,
            expires,
            metadata: serde_json::Value::Null, // stored from `metadata`, read back below
            blocked: new.blocked,
            created_at: now,
            updated_at: now,
        };
        let r = &record;
        let sql = format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        with_pool!(self, |p| {
            sqlx::query(&sql)
                .bind(&r.token_hash)
                .bind(&r.key_name)
                .bind(&r.key_alias)
                .bind(models_json(&r.models))
                .bind(r.max_budget)
                .bind(&r.budget_duration)
                .bind(r.budget_reset_at.map(to_unix_ms))
                .bind(limit(r.rpm_limit))
                .bind(limit(r.tpm_limit))
                .bind(limit(r.max_parallel_requests))
                .bind(r.expires.map(to_unix_ms))
                .bind(&metadata)
                .bind(r.blocked)
                .bind(to_unix_ms(r.created_at))
                .bind(to_unix_ms(r.updated_at))
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(conflict_or)?;
        // Reading back gives exactly what later reads return (millisecond times).
        let stored = self
            .key_by_hash(&record.token_hash)
            .await?
            .ok_or(StoreError::KeyNotFound)?;
        Ok((plain, stored))
    }

    /// The key with this token hash.
    pub async fn key_by_hash(&self, token_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE token_hash = $1");
        let record = with_pool!(self, |p| {
            match sqlx::query(&sql).bind(token_hash).fetch_optional(p).await? {
                Some(row) => Some(key_from_row(&row)?),
                None => None,
            }
        });
        Ok(record)
    }

    /// The key addressed by its plain value or its hash (`/key/info`).
    pub async fn key_info(&self, key_or_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.key_by_hash(&token_hash_of(key_or_hash)).await
    }

    /// Applies `patch` to the key addressed by its plain value or hash and returns the result,
    /// in one statement (concurrent updates of different fields do not overwrite each other).
    pub async fn update_key(
        &self,
        key_or_hash: &str,
        patch: KeyPatch,
    ) -> Result<KeyRecord, StoreError> {
        let now = SystemTime::now();
        let token_hash = token_hash_of(key_or_hash);
        let budget = match patch.budget_duration {
            Some(Some(ref s)) => {
                let d = parse_duration("budget_duration", s)?;
                Some(Some((d.to_string(), to_unix_ms(d.next_reset(now)))))
            }
            Some(None) => Some(None),
            None => None,
        };
        let expires = match patch.duration {
            Some(Some(ref s)) => Some(Some(to_unix_ms(parse_duration("duration", s)?.after(now)))),
            Some(None) => Some(None),
            None => None,
        };
        let key_alias = match patch.key_alias {
            Some(a) => Some(check_alias(a)?),
            None => None,
        };
        let max_budget = match patch.max_budget {
            Some(b) => Some(check_budget(b)?),
            None => None,
        };
        let metadata = patch.metadata.map(check_metadata).transpose()?;
        let models = patch.models.as_deref().map(models_json);

        let record = with_pool!(self, |p| {
            let mut q = QueryBuilder::<Db>::new("UPDATE api_keys SET updated_at = ");
            q.push_bind(to_unix_ms(now));
            if let Some(v) = &key_alias {
                q.push(", key_alias = ").push_bind(v.clone());
            }
            if let Some(v) = &models {
                q.push(", models = ").push_bind(v.clone());
            }
            if let Some(v) = max_budget {
                q.push(", max_budget = ").push_bind(v);
            }
            if let Some(v) = &budget {
                let (duration, reset) = v.clone().unzip();
                q.push(", budget_duration = ").push_bind(duration);
                q.push(", budget_reset_at = ").push_bind(reset);
            }
            if let Some(v) = patch.rpm_limit {
                q.push(", rpm_limit = ").push_bind(limit(v));
            }
            if let Some(v) = patch.tpm_limit {
                q.push(", tpm_limit = ").push_bind(limit(v));
            }
            if let Some(v) = patch.max_parallel_requests {
                q.push(", max_parallel_requests = ").push_bind(limit(v));
            }
            if let Some(v) = expires {
                q.push(", expires = ").push_bind(v);
            }
            if let Some(v) = &metadata {
                q.push(", metadata = ").push_bind(v.clone());
            }
            if let Some(v) = patch.blocked {
                q.push(", blocked = ").push_bind(v);
            }
            q.push(" WHERE token_hash = ").push_bind(token_hash.clone());
            q.push(" RETURNING ").push(KEY_COLUMNS);
            match q.build().fetch_optional(p).await.map_err(conflict_or)? {
                Some(row) => key_from_row(&row)?,
                None => return Err(StoreError::KeyNotFound),
            }
        });
        Ok(record)
    }

    /// Deletes the keys addressed by plain value or hash; returns how many existed.
    pub async fn delete_keys<S: AsRef<str>>(&self, keys: &[S]) -> Result<u64, StoreError> {
        let mut hashes: Vec<String> = keys.iter().map(|k| token_hash_of(k.as_ref())).collect();
        hashes.sort();
        hashes.dedup();
        let mut deleted = 0;
        for chunk in hashes.chunks(500) {
            deleted += with_pool!(self, |p| {
                let mut q = QueryBuilder::<Db>::new("DELETE FROM api_keys WHERE token_hash IN (");
                let mut list = q.separated(", ");
                for h in chunk {
                    list.push_bind(h.as_str());
                }
                q.push(")");
                q.build().execute(p).await?.rows_affected()
            });
        }
        Ok(deleted)
    }

    /// Keys, oldest first, filtered and paged by `query`. Never includes plain keys.
    pub async fn list_keys(&self, query: &KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
        let limit = query
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        with_pool!(self, |p| {
            let mut q = QueryBuilder::<Db>::new(format!("SELECT {KEY_COLUMNS} FROM api_keys"));
            if let Some(alias) = &query.key_alias {
                q.push(" WHERE key_alias = ").push_bind(alias.as_str());
            }
            q.push(" ORDER BY created_at, token_hash LIMIT ")
                .push_bind(limit)
                .push(" OFFSET ")
                .push_bind(offset);
            let rows = q.build().fetch_all(p).await?;
            rows.iter().map(key_from_row).collect()
        })
    }

    /// Every key, blocked and expired ones included, for an in-memory auth cache.
    pub async fn all_keys_for_cache(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.list_keys(&KeyQuery::default()).await
    }

    /// Moves `budget_reset_at` of every key whose stored reset time has passed to the end of
    /// its current window (for display: [`KeyRecord::budget_window`] is right without it).
    /// Returns how many keys changed.
    pub async fn advance_budget_resets(&self, now: SystemTime) -> Result<u64, StoreError> {
        let now_ms = to_unix_ms(now);
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE budget_reset_at IS NOT NULL \
             AND budget_reset_at <= $1"
        );
        let due: Vec<KeyRecord> = with_pool!(self, |p| {
            let rows = sqlx::query(&sql).bind(now_ms).fetch_all(p).await?;
            rows.iter().map(key_from_row).collect::<Result<_, _>>()?
        });
        let mut changed = 0;
        for key in due {
            let (Some(window), Some(old)) = (key.budget_window(now), key.budget_reset_at) else {
                continue;
            };
            // Only if nobody moved it meanwhile.
            changed += with_pool!(self, |p| {
                sqlx::query(
                    "UPDATE api_keys SET budget_reset_at = $1 \
                     WHERE token_hash = $2 AND budget_reset_at = $3",
                )
                .bind(to_unix_ms(window.end))
                .bind(&key.token_hash)
                .bind(to_unix_ms(old))
                .execute(p)
                .await?
                .rows_affected()
            });
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_display_forms() {
        // The SHA-256 test vector.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(display_key("sk-abcdefgh"), "sk-...efgh");
        assert_eq!(display_key("sk-\u{e9}1"), "sk-...k-\u{e9}1");
        let h = hash_key("sk-x");
        assert_eq!(token_hash_of("sk-x"), h);
        assert_eq!(token_hash_of(&h), h);
    }

    #[test]
    fn random_keys_are_long_url_safe_and_distinct() {
        let a = random_key();
        let b = random_key();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-"));
        assert_eq!(a.len(), 3 + 43);
        assert!(
            a[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn patch_distinguishes_null_from_missing() {
        let p: KeyPatch =
            serde_json::from_str(r#"{"max_budget": null, "rpm_limit": 5, "blocked": true}"#)
                .unwrap();
        assert_eq!(p.max_budget, Some(None));
        assert_eq!(p.rpm_limit, Some(Some(5)));
        assert_eq!(p.tpm_limit, None);
        assert_eq!(p.blocked, Some(true));
        let n: NewKey =
            serde_json::from_str(r#"{"key": "sk-secret", "models": ["a"], "team_id": "t"}"#)
                .unwrap();
        assert!(!format!("{n:?}").contains("sk-secret"));
    }
}
