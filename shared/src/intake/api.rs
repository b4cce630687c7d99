//! Waybill's own order API: the batch limit. (Idempotency-Keys are
//! `kernel::idempotency`; creating the orders is `flows::intake`.)

/// The most orders one batch may carry.
pub const MAX_BATCH: usize = 500;
