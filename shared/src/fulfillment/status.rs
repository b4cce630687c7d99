//! The fulfillment order's status: the vocabulary, every allowed transition in
//! one table, and the one function that writes `fulfillment_orders.status`.
//!
//! ```text
//! (created) -> on_hold | scheduled | open
//! on_hold    -> scheduled (its capture is due) | open (released) | cancelled
//! scheduled  -> open (captured, released) | on_hold (capture declined) | cancelled
//! open       -> in_progress (picking, or shipped in part) | closed (shipped) | cancelled
//! in_progress-> in_progress (shipped in part again) | closed | cancelled
//! closed, cancelled: final
//! ```

use chrono::{DateTime, Utc};

use crate::kernel::db::{Db, Value};
use crate::kernel::error::{Error, Result};
use crate::kernel::time::ts;

/// Where a fulfillment order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FoStatus {
    /// Allocated; waiting for a hold to lift or a declined payment to be fixed.
    OnHold,
    /// Allocated; waiting for its capture.
    Scheduled,
    /// Released to the facility.
    Open,
    /// Being picked, or shipped in part.
    InProgress,
    /// Shipped (everything that was not cancelled).
    Closed,
    Cancelled,
}

use FoStatus::*;

/// Every allowed (from, to).
pub const TRANSITIONS: &[(FoStatus, FoStatus)] = &[
    (OnHold, Scheduled),
    (OnHold, Open),
    (OnHold, Cancelled),
    (Scheduled, Open),
    (Scheduled, OnHold),
    (Scheduled, Cancelled),
    (Open, InProgress),
    (Open, Closed),
    (Open, Cancelled),
    (InProgress, InProgress),
    (InProgress, Closed),
    (InProgress, Cancelled),
];

impl FoStatus {
    pub const ALL: [FoStatus; 6] = [OnHold, Scheduled, Open, InProgress, Closed, Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            OnHold => "on_hold",
            Scheduled => "scheduled",
            Open => "open",
            InProgress => "in_progress",
            Closed => "closed",
            Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<FoStatus> {
        FoStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The statuses a fulfillment order is created in.
    pub fn is_initial(self) -> bool {
        matches!(self, OnHold | Scheduled | Open)
    }

    pub fn can_become(self, to: FoStatus) -> bool {
        TRANSITIONS.contains(&(self, to))
    }

    /// The statuses from which `to` may be reached.
    pub fn sources_of(to: FoStatus) -> Vec<FoStatus> {
        TRANSITIONS
            .iter()
            .filter(|(_, t)| *t == to)
            .map(|(f, _)| *f)
            .collect()
    }
}

/// Moves a fulfillment order to `to` from whichever status the table allows;
/// returns whether it moved. Moving to `open` records the release time.
pub fn set_status(db: &dyn Db, fo_id: &str, to: FoStatus, now: DateTime<Utc>) -> Result<bool> {
    set_status_from(db, fo_id, &FoStatus::sources_of(to), to, now)
}

/// Moves a fulfillment order to `to` only from one of `from` (each of which the
/// table must allow: asking for another transition is a bug, answered 500).
pub fn set_status_from(
    db: &dyn Db,
    fo_id: &str,
    from: &[FoStatus],
    to: FoStatus,
    now: DateTime<Utc>,
) -> Result<bool> {
    if let Some(f) = from.iter().find(|f| !f.can_become(to)) {
        return Err(Error::internal(format!(
            "a fulfillment order cannot go from {} to {}",
            f.as_str(),
            to.as_str()
        )));
    }
    let ph = vec!["?"; from.len()].join(", ");
    let released = if to == Open {
        ", released_at = COALESCE(released_at, ?1)"
    } else {
        ""
    };
    let mut p: Vec<Value> = vec![ts(now).into(), to.as_str().into(), fo_id.into()];
    p.extend(from.iter().map(|f| Value::from(f.as_str())));
    Ok(db.exec(
        &format!(
            "UPDATE fulfillment_orders SET status = ?2, updated_at = ?1{released} WHERE id = ?3 AND status IN ({ph})"
        ),
        &p,
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_round_trips_and_final_states_go_nowhere() {
        for s in FoStatus::ALL {
            assert_eq!(FoStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(FoStatus::parse("shipped"), None);
        for to in FoStatus::ALL {
            assert!(!Closed.can_become(to) && !Cancelled.can_become(to));
        }
        assert!(
            !Open.can_become(OnHold),
            "a released order is never un-released"
        );
    }

    #[test]
    fn set_status_moves_only_along_the_table() {
        let db = crate::testkit::db();
        crate::testkit::facility(&db, "f", "F", "warehouse", "[]", 0.0, 0.0);
        let order = crate::testkit::api_order(
            &db,
            &serde_json::json!({"external_id": "x", "currency": "EUR",
                "shipping_address": {"line1": "x", "city": "Munich", "country_code": "DE"},
                "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}]}),
        );
        db.execute(
            "INSERT INTO fulfillment_orders (id, order_id, name, facility_id, status, request_status, pickup, created_at, updated_at)
             VALUES ('fo', ?, 'WB-1-F1', 'f', 'scheduled', 'unsubmitted', 0, 't', 't')",
            crate::params![order],
        )
        .unwrap();
        let status = || {
            let r = db
                .execute("SELECT status, released_at FROM fulfillment_orders", &[])
                .unwrap();
            let row = r.first().unwrap();
            (row.str("status"), row.opt_str("released_at"))
        };
        let now = Utc::now();
        assert!(
            !set_status(&db, "fo", InProgress, now).unwrap(),
            "scheduled cannot start picking"
        );
        assert_eq!(status().0, "scheduled");
        assert!(set_status(&db, "fo", Open, now).unwrap());
        assert_eq!(status(), ("open".to_string(), Some(ts(now))));
        assert!(!set_status_from(&db, "fo", &[OnHold], Cancelled, now).unwrap());
        assert!(set_status_from(&db, "fo", &[Scheduled], OnHold, now).is_ok());
        assert!(set_status_from(&db, "fo", &[Open], OnHold, now).is_err());
        assert!(set_status(&db, "fo", Closed, now).unwrap());
        assert!(
            !set_status(&db, "fo", Cancelled, now).unwrap(),
            "closed is final"
        );
        assert_eq!(status().0, "closed");
    }
}
