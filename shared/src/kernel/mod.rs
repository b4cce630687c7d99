//! The foundation: storage ports (SQL and key-value), errors, money, signatures,
//! the schema and time. Names nothing else in the crate.

pub mod db;
pub mod email;
pub mod error;
pub mod idempotency;
pub mod json;
pub mod kv;
pub mod lease;
pub mod money;
pub mod replay;
pub mod schema;
pub mod settings;
pub mod signature;
pub mod time;
pub mod url;
