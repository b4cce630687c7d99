//! One error type for the whole app, rendered as RFC 9457 problem+json.
//!
//! Client mistakes carry a precise 4xx; storage or host failures are 500/503
//! and never blame the client.

use serde::Serialize;
use std::fmt;

/// A field-level validation error (`errors` extension member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// A JSON pointer into the request body (`/lines/0/quantity`).
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    /// One error per member of the JSON object `v` not in `allowed`.
    pub fn unknown_fields(v: &serde_json::Value, allowed: &[&str]) -> Vec<FieldError> {
        v.as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| {
                FieldError::new(
                    format!("/{k}"),
                    format!("unknown field (allowed: {})", allowed.join(", ")),
                )
            })
            .collect()
    }

    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    Internal,
    Unavailable,
}

impl ErrorKind {
    pub fn status(&self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unprocessable => 422,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not-found",
            ErrorKind::MethodNotAllowed => "method-not-allowed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload-too-large",
            ErrorKind::UnsupportedMediaType => "unsupported-media-type",
            ErrorKind::Unprocessable => "validation-failed",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "Malformed request",
            ErrorKind::Unauthorized => "Authentication required",
            ErrorKind::Forbidden => "Not allowed",
            ErrorKind::NotFound => "Not found",
            ErrorKind::MethodNotAllowed => "Method not allowed",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::PayloadTooLarge => "Request body too large",
            ErrorKind::UnsupportedMediaType => "Unsupported media type",
            ErrorKind::Unprocessable => "Validation failed",
            ErrorKind::Internal => "Internal error",
            ErrorKind::Unavailable => "Temporarily unavailable",
        }
    }
}

/// An application error; `Display` is the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }
    pub fn bad_request(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::BadRequest, d)
    }
    pub fn unauthorized(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::Unauthorized, d)
    }
    pub fn forbidden(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::Forbidden, d)
    }
    pub fn not_found(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::NotFound, d)
    }
    pub fn conflict(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::Conflict, d)
    }
    pub fn unprocessable(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::Unprocessable, d)
    }
    pub fn internal(d: impl Into<String>) -> Error {
        Self::new(ErrorKind::Internal, d)
    }
    pub fn invalid(errors: Vec<FieldError>) -> Error {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.pointer, one.detail),
            many => format!("{} fields are invalid", many.len()),
        };
        Error {
            kind: ErrorKind::Unprocessable,
            detail,
            errors,
        }
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The RFC 9457 document.
    pub fn problem(&self) -> serde_json::Value {
        let mut p = serde_json::json!({
            "type": format!("https://waybill.dev/problems/{}", self.kind.slug()),
            "title": self.kind.title(),
            "status": self.status(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            p["errors"] = serde_json::to_value(&self.errors).unwrap_or_default();
        }
        p
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.detail, self.status())
    }
}

impl std::error::Error for Error {}

/// The database's own text (table names, SQL, constraint names) stays in the
/// log under a reference; the caller sees the reference only.
impl From<crate::kernel::db::DbError> for Error {
    fn from(e: crate::kernel::db::DbError) -> Error {
        let reference = uuid::Uuid::new_v4().simple().to_string();
        eprintln!("waybill: error {reference}: database: {}", e.0);
        if e.is_busy() {
            Error::new(
                ErrorKind::Unavailable,
                format!("the database is busy; retry (reference {reference})"),
            )
        } else {
            Error::internal(format!("internal storage error (reference {reference})"))
        }
    }
}
