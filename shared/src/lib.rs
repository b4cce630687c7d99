//! Waybill's domain crate, laid out by bounded context (see docs/architecture.md,
//! "Map"). `kernel` is the foundation every context builds on; each context owns
//! its tables and rules; `flows` are the use cases that span contexts; `http`
//! turns requests into calls and results into answers. Components stay thin:
//! parse the request, call one function here, answer.

pub mod kernel;

pub mod fulfillment;
pub mod intake;
pub mod inventory;
pub mod notify;
pub mod orders;
pub mod payments;
pub mod reporting;
pub mod returns;
pub mod routing;

pub mod flows;
pub mod http;

#[cfg(test)]
mod layout;
#[cfg(test)]
pub(crate) mod testkit;

pub use kernel::error::{Error, Result};

#[cfg(feature = "spin")]
pub mod spin_glue;
