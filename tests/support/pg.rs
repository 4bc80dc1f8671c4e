//! A PostgreSQL schema of its own for one test: `AI_API_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Unreachable → a printed notice and `None`, except
//! with `CI=true`, where it is a failure. The schema is dropped when the guard goes.

use sqlx::postgres::PgPoolOptions;

pub struct PgSchema {
    /// A URL whose connections use the schema.
    pub url: String,
    base: String,
    schema: String,
}

fn base_url() -> String {
    std::env::var("AI_API_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub async fn schema() -> Option<PgSchema> {
    let base = base_url();
    let admin = match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(&base)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL at {base} is unreachable ({e}) and CI=true");
            }
            eprintln!(
                "NOTICE: PostgreSQL at {base} is unreachable ({e}); skipping the PostgreSQL half of this test"
            );
            return None;
        }
    };
    let schema = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(PgSchema {
        url: format!("{base}{sep}options[search_path]={schema}"),
        base,
        schema,
    })
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        // Drop runs inside a runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(p) = PgPoolOptions::new().max_connections(1).connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&p)
                        .await;
                    p.close().await;
                }
            });
        })
        .join();
    }
}
