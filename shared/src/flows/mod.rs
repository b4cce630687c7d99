//! Use cases that span contexts. Only modules here call more than one context.

pub mod center_requests;
pub mod changes;
pub mod housekeeping;
pub mod intake;
pub mod order_detail;
pub mod payments;
pub mod returns;
pub mod schedules;
pub mod shipping;
pub mod source_payments;
