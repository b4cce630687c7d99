//! Waybill's domain crate: the canonical order model, money, the mappings from
//! every order source, storage behind one small database interface, and the
//! services the Spin components call. Components stay thin: parse the request,
//! call a handler here, answer.

pub mod allocation;
pub mod capture;
pub mod changes;
pub mod db;
pub mod error;
pub mod fulfillment;
pub mod gateway;
pub mod http;
pub mod intake;
pub mod inventory;
pub mod kv;
pub mod model;
pub mod money;
pub mod notify;
pub mod orders;
pub mod payment;
pub mod report;
pub mod returns;
pub mod routing;
pub mod schema;
pub mod signature;
pub mod sources;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;
pub mod tracking;

pub use error::{Error, Result};

#[cfg(feature = "spin")]
pub mod spin_glue;
