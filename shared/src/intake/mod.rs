//! Intake: the mappings from every order source, receipts and idempotency keys.

pub mod api;
pub mod sources;
pub mod webhooks;
