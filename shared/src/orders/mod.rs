//! Orders: the canonical model, derived statuses, holds, line buckets, the
//! timeline and the outbox, and the read views.

pub mod lines;
pub mod model;
pub mod store;
pub mod views;
