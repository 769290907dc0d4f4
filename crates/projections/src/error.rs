//! The crate's error types.
use serde::Serialize;
use uuid::Uuid;

/// One problem with a request, located by a JSON pointer (RFC 6901) into the request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// A recorded event that cannot be folded. The log is the truth, so this means a bug or a
/// damaged/foreign log; it is reported, never skipped silently.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("event at position {position}: unknown event type {event_type:?}")]
    UnknownType { position: u64, event_type: String },
    #[error("event at position {position} ({event_type}): data does not decode: {message}")]
    Decode {
        position: u64,
        event_type: String,
        message: String,
    },
    #[error("event at position {position} arrived after position {last}: positions must increase")]
    OutOfOrder { position: u64, last: u64 },
    #[error(
        "event at position {position}: incident {incident} is at version {current}, \
         the event has stream_version {got}"
    )]
    StreamVersion {
        position: u64,
        incident: Uuid,
        current: u64,
        got: u64,
    },
    #[error("event at position {position}: incident {incident}: {message}")]
    Rule {
        position: u64,
        incident: Uuid,
        message: String,
    },
}
