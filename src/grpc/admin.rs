//! `ai_api.v1.AdminService`: the same key and spend operations as the HTTP door's
//! `/key/*` and `/spend/*`, through the same core methods (master key only).

use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::convert::{json_to_struct, struct_to_json};
use super::pb;
use super::pb::admin_service_server::AdminService;
use super::service::context;
use crate::core::Gateway;
use crate::core::admin::{KeyView, day_range, parse_group_by};
use crate::store::clock::to_unix_ms;
use crate::store::{KeyPatch, NewKey, SpendLogFilter, SpendRecord};

#[derive(Debug, Clone)]
pub struct Admin {
    gateway: Gateway,
}

impl Admin {
    pub fn new(gateway: Gateway) -> Self {
        Admin { gateway }
    }
}

fn unix_s(t: Option<SystemTime>) -> i64 {
    t.map_or(0, |t| to_unix_ms(t).div_euclid(1000))
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<&KeyView> for pb::KeyInfo {
    fn from(v: &KeyView) -> Self {
        let r = &v.record;
        pb::KeyInfo {
            token_hash: r.token_hash.clone(),
            key_name: r.key_name.clone(),
            key_alias: r.key_alias.clone().unwrap_or_default(),
            models: r.models.clone(),
            max_budget: r.max_budget,
            budget_duration: r.budget_duration.clone().unwrap_or_default(),
            budget_reset_at: unix_s(r.budget_reset_at),
            rpm_limit: r.rpm_limit,
            tpm_limit: r.tpm_limit,
            max_parallel_requests: r
                .max_parallel_requests
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            expires: unix_s(r.expires),
            metadata: json_to_struct(&r.metadata),
            blocked: r.blocked,
            spend: v.spend,
            created_at: unix_s(Some(r.created_at)),
            updated_at: unix_s(Some(r.updated_at)),
        }
    }
}

impl From<pb::GenerateKeyRequest> for NewKey {
    fn from(r: pb::GenerateKeyRequest) -> Self {
        let pb::GenerateKeyRequest {
            key_alias,
            models,
            max_budget,
            budget_duration,
            rpm_limit,
            tpm_limit,
            max_parallel_requests,
            duration,
            metadata,
        } = r;
        NewKey {
            key: None,
            key_alias: opt(key_alias),
            models,
            max_budget,
            budget_duration: opt(budget_duration),
            rpm_limit,
            tpm_limit,
            max_parallel_requests: max_parallel_requests.map(u64::from),
            duration: opt(duration),
            metadata: metadata
                .map(struct_to_json)
                .unwrap_or(serde_json::Value::Null),
            blocked: false,
        }
    }
}

fn patch_from(r: pb::UpdateKeyRequest) -> (String, KeyPatch) {
    let pb::UpdateKeyRequest {
        key,
        key_alias,
        models,
        max_budget,
        budget_duration,
        rpm_limit,
        tpm_limit,
        max_parallel_requests,
        duration,
        metadata,
        blocked,
    } = r;
    let patch = KeyPatch {
        key_alias: key_alias.map(opt),
        models: models.map(|m| m.names),
        max_budget: max_budget.map(Some),
        budget_duration: budget_duration.map(opt),
        rpm_limit: rpm_limit.map(Some),
        tpm_limit: tpm_limit.map(Some),
        max_parallel_requests: max_parallel_requests.map(|n| Some(u64::from(n))),
        duration: duration.map(opt),
        metadata: metadata.map(struct_to_json),
        blocked,
    };
    (key, patch)
}

impl From<&SpendRecord> for pb::SpendLog {
    fn from(r: &SpendRecord) -> Self {
        pb::SpendLog {
            request_id: r.request_id.to_string(),
            time_ms: to_unix_ms(r.time),
            key_hash: r.key_hash.clone().unwrap_or_default(),
            key_alias: r.key_alias.clone().unwrap_or_default(),
            model_group: r.model_group.to_string(),
            deployment: r.deployment_id.to_string(),
            provider_model: r.provider_model.to_string(),
            prompt_tokens: u32::try_from(r.prompt_tokens).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(r.completion_tokens).unwrap_or(u32::MAX),
            cost_usd: r.cost_usd,
            latency_ms: r.latency_ms,
            status: u32::from(r.status),
            error_kind: r.error_kind.clone().unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn generate_key(
        &self,
        request: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::GenerateKeyResponse>, Status> {
        let ctx = context(request.metadata());
        let (key, view) = self
            .gateway
            .generate_key(&ctx, request.into_inner().into())
            .await?;
        Ok(Response::new(pb::GenerateKeyResponse {
            key,
            info: Some((&view).into()),
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::UpdateKeyResponse>, Status> {
        let ctx = context(request.metadata());
        let (key, patch) = patch_from(request.into_inner());
        let view = self.gateway.update_key(&ctx, &key, patch).await?;
        Ok(Response::new(pb::UpdateKeyResponse {
            info: Some((&view).into()),
        }))
    }

    async fn delete_keys(
        &self,
        request: Request<pb::DeleteKeysRequest>,
    ) -> Result<Response<pb::DeleteKeysResponse>, Status> {
        let ctx = context(request.metadata());
        let deleted = self
            .gateway
            .delete_keys(&ctx, &request.into_inner().keys)
            .await?;
        Ok(Response::new(pb::DeleteKeysResponse { deleted }))
    }

    async fn get_key_info(
        &self,
        request: Request<pb::GetKeyInfoRequest>,
    ) -> Result<Response<pb::GetKeyInfoResponse>, Status> {
        let ctx = context(request.metadata());
        let view = self
            .gateway
            .key_info(&ctx, &request.into_inner().key)
            .await?;
        Ok(Response::new(pb::GetKeyInfoResponse {
            info: Some((&view).into()),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let ctx = context(request.metadata());
        let views = self.gateway.list_keys(&ctx).await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: views.iter().map(pb::KeyInfo::from).collect(),
        }))
    }

    async fn get_spend_logs(
        &self,
        request: Request<pb::GetSpendLogsRequest>,
    ) -> Result<Response<pb::GetSpendLogsResponse>, Status> {
        let ctx = context(request.metadata());
        let pb::GetSpendLogsRequest {
            start_date,
            end_date,
            api_key,
            request_id,
            limit,
        } = request.into_inner();
        let (start_date, end_date) = day_range(Some(&start_date), Some(&end_date))?;
        let filter = SpendLogFilter {
            start_date,
            end_date,
            key_hash: opt(api_key),
            request_id: opt(request_id),
            limit,
        };
        let rows = self.gateway.spend_logs(&ctx, filter).await?;
        Ok(Response::new(pb::GetSpendLogsResponse {
            logs: rows.iter().map(pb::SpendLog::from).collect(),
        }))
    }

    async fn get_spend_report(
        &self,
        request: Request<pb::GetSpendReportRequest>,
    ) -> Result<Response<pb::GetSpendReportResponse>, Status> {
        let ctx = context(request.metadata());
        let pb::GetSpendReportRequest {
            group_by,
            start_date,
            end_date,
        } = request.into_inner();
        let group_by = parse_group_by(Some(&group_by))?;
        let (start, end) = day_range(Some(&start_date), Some(&end_date))?;
        let rows = self
            .gateway
            .spend_report(&ctx, group_by, start, end)
            .await?;
        Ok(Response::new(pb::GetSpendReportResponse {
            rows: rows
                .iter()
                .map(|r| pb::SpendReportRow {
                    group: r.group.clone(),
                    spend_usd: r.spend,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    requests: r.requests,
                })
                .collect(),
        }))
    }
}
