//! The gRPC door (tonic): `ai_api.v1.AiApiService`, `grpc.health.v1.Health` (overall and per
//! service) and reflection v1 and v1alpha. Health and reflection need no key; the service
//! passes the caller's key to the core, which decides.

pub mod admin;
pub mod convert;
pub mod pb;
pub mod service;
pub mod status;

use tonic::service::Routes;

use crate::core::Gateway;
use pb::admin_service_server::AdminServiceServer;
use pb::ai_api_service_server::AiApiServiceServer;

/// The door's services, ready for a tonic server.
pub async fn routes(
    gateway: Gateway,
    max_message_bytes: usize,
) -> Result<Routes, Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
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
    let api = AiApiServiceServer::new(service::AiApi::new(gateway))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let mut routes = Routes::builder();
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(admin);
    Ok(routes.routes())
}
