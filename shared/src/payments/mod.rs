//! Payments: capture shares, gateways, the ledger, captures, refunds,
//! documents and the financial status.

pub mod capture;
pub mod gateway;
pub mod shares;
