//! Core errors as gRPC statuses, through the core's one kind table (`ErrorKind::codes`);
//! `retry-after` travels as metadata.

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::core::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let mut status = Status::new(e.grpc_code(), e.message.clone());
        if let Some(after) = e.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = MetadataValue::try_from(secs.to_string()) {
                status.metadata_mut().insert("retry-after", v);
            }
        }
        if let Some(code) = &e.code
            && let Ok(v) = MetadataValue::try_from(code.as_str())
        {
            status.metadata_mut().insert("x-error-code", v);
        }
        status
    }
}
