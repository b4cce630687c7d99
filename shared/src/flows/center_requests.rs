//! Requests to external fulfillment centers travel through the outbox; their
//! documents and the centers' answers belong to fulfillment. This adapter gives
//! the outbox (`notify`) what it needs from fulfillment.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::kernel::db::Db;
use crate::kernel::error::Result;

/// The fulfillment context as the outbox's [`crate::notify::Centers`].
pub struct FulfillmentCenters;

impl crate::notify::Centers for FulfillmentCenters {
    fn request(&self, db: &dyn Db, released: &Json) -> Result<Json> {
        crate::fulfillment::fc_request(db, released)
    }

    fn request_answered(
        &self,
        db: &dyn Db,
        fo_id: &str,
        answer: &Json,
        now: DateTime<Utc>,
    ) -> Result<()> {
        crate::fulfillment::fc_request_delivered(db, fo_id, answer, now)
    }

    fn cancellation_answered(
        &self,
        db: &dyn Db,
        fo_id: &str,
        answer: &Json,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if crate::fulfillment::fc_cancellation_answered(db, fo_id, answer, now)? {
            crate::flows::changes::cancellation_accepted(db, fo_id, now)?;
        }
        Ok(())
    }
}
