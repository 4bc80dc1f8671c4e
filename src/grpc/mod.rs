//! The gRPC door (tonic): `ai_api.v1.AiApiService`, `grpc.health.v1.Health` (overall and per
//! service) and reflection v1 and v1alpha. Health and reflection need no key; the service
//! passes the caller's key to the core, which decides.

pub mod admin;
pub mod convert;
pub mod pb;
pub mod service;
pub mod status;

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tonic::service::Routes;

use crate::core::Gateway;
use crate::workers::Workers;
use pb::admin_service_server::AdminServiceServer;
use pb::ai_api_service_server::AiApiServiceServer;

/// The door's services, ready for a tonic server: the API service in `api_first`, the
/// layer that serves its calls ahead of `routes`, which hold every other service.
#[derive(Debug, Clone)]
pub struct Services {
    pub routes: Routes,
    pub api_first: ApiFirst,
}

/// The door's services, ready for a tonic server.
pub async fn routes(
    gateway: Gateway,
    workers: Workers,
    max_message_bytes: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Services, tokio::task::JoinHandle<()>), Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let watcher = tokio::spawn(watch_health(gateway.clone(), health_reporter.clone(), stop));
    health_reporter
        .set_serving::<AiApiServiceServer<service::AiApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    health_reporter
        .set_serving::<AdminServiceServer<admin::Admin>>()
        .await;
    let admin = AdminServiceServer::new(admin::Admin::new(gateway.clone()));
    let api = AiApiServiceServer::new(service::AiApi::new(gateway, workers))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let mut routes = Routes::builder();
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin);
    let services = Services {
        routes: routes.routes(),
        api_first: ApiFirst(api),
    };
    Ok((services, watcher))
}

type Api = AiApiServiceServer<service::AiApi>;

/// Serves `ai_api.v1.AiApiService` calls with the service itself, ahead of tonic's `Routes`
/// (an axum router: a route lookup, a boxed future and a cloned service on every call, ~4 %
/// of a unary call's instructions), which do not hold it; every other path goes on to them.
/// The service answers its own unknown methods (`UNIMPLEMENTED`), as it did behind them.
#[derive(Debug, Clone)]
pub struct ApiFirst(Api);

impl<S> tower::Layer<S> for ApiFirst {
    type Service = ApiFirstService<S>;

    fn layer(&self, rest: S) -> Self::Service {
        ApiFirstService {
            api: self.0.clone(),
            rest,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiFirstService<S> {
    api: Api,
    rest: S,
}

/// Whether `path` names a method of the API service (`/ai_api.v1.AiApiService/<method>`).
fn is_api_call(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(Api::NAME))
        .is_some_and(|p| p.starts_with('/'))
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for ApiFirstService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        <Api as tower::Service<http::Request<tonic::body::Body>>>::Future,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The API service is always ready; the routes say for themselves.
        self.rest.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use futures_util::future::Either;
        if is_api_call(req.uri().path()) {
            Either::Left(tower::Service::call(&mut self.api, req))
        } else {
            Either::Right(self.rest.call(req))
        }
    }
}

/// The health name of one model group: `ai_api.v1.AiApiService/<model_name>`.
pub fn group_health_name(group: &str) -> String {
    format!("{}/{group}", API_SERVICE)
}

const API_SERVICE: &str = "ai_api.v1.AiApiService";

/// Keeps gRPC health in step with the router, twice a second until `stop`: each model group
/// (`ai_api.v1.AiApiService/<model_name>`) is NOT_SERVING while every one of its deployments
/// is cooling down, and the service as a whole while every group is.
async fn watch_health(
    gateway: Gateway,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut last: Vec<(String, bool)> = Vec::new();
    loop {
        let groups = gateway.group_health();
        let now: Vec<(String, bool)> = groups
            .iter()
            .map(|(name, total, cooling)| (name.clone(), cooling < total))
            .collect();
        if now != last {
            for (name, up) in &now {
                let status = if *up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter
                    .set_service_status(group_health_name(name), status)
                    .await;
            }
            let any_up = now.is_empty() || now.iter().any(|(_, up)| *up);
            let status = if any_up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(API_SERVICE, status).await;
            last = now;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            r = stop.wait_for(|s| *s) => { let _ = r; return; }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_api_call;

    #[test]
    fn only_the_api_services_methods_go_first() {
        assert!(is_api_call("/ai_api.v1.AiApiService/Chat"));
        assert!(is_api_call("/ai_api.v1.AiApiService/NoSuchMethod"));
        for other in [
            "/ai_api.v1.AiApiServiceX/Chat",
            "/ai_api.v1.AdminService/ListKeys",
            "/grpc.health.v1.Health/Check",
            "/ai_api.v1.AiApiService",
            "ai_api.v1.AiApiService/Chat",
        ] {
            assert!(!is_api_call(other), "{other}");
        }
    }
}
