//! The code generated from `proto/ai_api/v1/ai_api.proto`, and its descriptor set for
//! reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("ai_api.v1");

/// The encoded descriptors of our protos, served through reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ai_api_descriptor");
