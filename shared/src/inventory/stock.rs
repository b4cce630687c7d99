//! Stock levels per facility and SKU and the licence-key pools: low-stock alerts.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::kernel::db::{Db, Value};
use crate::kernel::error::{Error, Result};
use crate::kernel::time::ts;
use crate::orders::store::enqueue;
use crate::params;

/// Alerts once (`stock.low`) when a facility's available stock of a SKU falls
/// below the product's threshold; re-armed when stock comes back.
pub fn low_stock_check(db: &dyn Db, sku: &str, facility: &str, now: DateTime<Utc>) -> Result<()> {
    let r = db.execute(
        "SELECT s.on_hand - s.reserved AS available, p.low_stock_threshold AS threshold FROM stock s JOIN products p ON p.sku = s.sku
         WHERE s.sku = ? AND s.facility_id = ? AND s.low_alerted = 0 AND s.on_hand - s.reserved < p.low_stock_threshold",
        params![sku, facility],
    )?;
    if let Some(x) = r.first() {
        if db.exec(
            "UPDATE stock SET low_alerted = 1 WHERE sku = ? AND facility_id = ? AND low_alerted = 0",
            params![sku, facility],
        )? == 1
        {
            enqueue(
                db,
                "stock.low",
                None,
                json!({"sku": sku, "facility": facility, "available": x.i64("available"), "threshold": x.i64("threshold")}),
                now,
            )?;
        }
    }
    Ok(())
}

/// Alerts once when a licence-key pool falls below the product's threshold.
pub fn pool_low_check(db: &dyn Db, sku: &str, now: DateTime<Utc>) -> Result<()> {
    let r = db.execute(
        "SELECT (SELECT COUNT(*) FROM license_keys WHERE sku = ?1 AND order_id IS NULL) AS available, low_stock_threshold AS threshold
         FROM products WHERE sku = ?1 AND low_stock_alerted = 0",
        params![sku],
    )?;
    if let Some(x) = r.first() {
        if x.i64("available") < x.i64("threshold")
            && db.exec(
                "UPDATE products SET low_stock_alerted = 1 WHERE sku = ? AND low_stock_alerted = 0",
                params![sku],
            )? == 1
        {
            enqueue(
                db,
                "stock.low",
                None,
                json!({"sku": sku, "facility": "licence key pool", "available": x.i64("available"), "threshold": x.i64("threshold")}),
                now,
            )?;
        }
    }
    Ok(())
}

/// The answer of a conditional reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reservation {
    Reserved,
    /// Fewer than the units asked are available: nothing was reserved.
    Short,
}

/// Reserves `q` units of a SKU at a facility in one conditional statement
/// (`on_hand - reserved >= q`), so no number of concurrent instances can
/// oversell: a race can only make a reservation miss.
pub fn reserve(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    q: i64,
    now: DateTime<Utc>,
) -> Result<Reservation> {
    Ok(reserve_at(db, facility, &[(sku, q)], now)?[0])
}

/// [`reserve`] for several SKUs at one facility: each (SKU, units) reserved
/// whole or not at all, one conditional statement per round (a SKU named
/// twice goes in a second round, after the first took its units). The rows
/// reserved are counted with `RETURNING`, not with the host's `changes()`.
pub fn reserve_at(
    db: &dyn Db,
    facility: &str,
    wanted: &[(&str, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<Reservation>> {
    let mut out = vec![Reservation::Short; wanted.len()];
    let mut left: Vec<usize> = (0..wanted.len()).collect();
    while !left.is_empty() {
        let mut round: Vec<usize> = Vec::new();
        let mut later = Vec::new();
        for i in left {
            if round.iter().any(|&j| wanted[j].0 == wanted[i].0) {
                later.push(i);
            } else {
                round.push(i);
            }
        }
        let mut prm = vec![Value::from(ts(now)), Value::from(facility)];
        let mut rows = Vec::with_capacity(round.len());
        for &i in &round {
            rows.push(format!("(?{}, ?{})", prm.len() + 1, prm.len() + 2));
            prm.extend([Value::from(wanted[i].0), Value::from(wanted[i].1)]);
        }
        let got: BTreeSet<String> = db
            .execute(
                &format!(
                    "UPDATE stock SET reserved = stock.reserved + v.column2, updated_at = ?1
                     FROM (VALUES {}) AS v
                     WHERE stock.sku = v.column1 AND stock.facility_id = ?2
                       AND stock.on_hand - stock.reserved >= v.column2
                     RETURNING stock.sku",
                    rows.join(", ")
                ),
                &prm,
            )?
            .iter()
            .map(|r| r.str("sku"))
            .collect();
        for &i in &round {
            if got.contains(wanted[i].0) {
                out[i] = Reservation::Reserved;
            }
        }
        left = later;
    }
    Ok(out)
}

/// Gives back `q` reserved units (never below zero).
pub fn give_back(db: &dyn Db, sku: &str, facility: &str, q: i64, now: DateTime<Utc>) -> Result<()> {
    db.execute(
        "UPDATE stock SET reserved = MAX(reserved - ?, 0), updated_at = ? WHERE sku = ? AND facility_id = ?",
        params![q, ts(now), sku, facility],
    )?;
    Ok(())
}

/// Why units leave or enter the shelf, for the movement log.
pub struct Movement<'a> {
    /// `shipment`, `short_pick`, `return`, ...
    pub kind: &'a str,
    pub reason: String,
    pub reference: String,
    pub actor: &'a str,
}

/// Reserved units leave the shelf (shipped, or found missing at picking): on
/// hand and reserved go down together, and the movement is logged.
pub fn consume(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    q: i64,
    m: &Movement,
    now: DateTime<Utc>,
) -> Result<()> {
    let level = db.execute(
        "UPDATE stock SET on_hand = MAX(on_hand - ?1, 0), reserved = MAX(reserved - ?1, 0), updated_at = ?2
         WHERE sku = ?3 AND facility_id = ?4 RETURNING on_hand",
        params![q, ts(now), sku, facility],
    )?;
    if let Some(r) = level.first() {
        log_movement(db, sku, facility, -q, r.i64("on_hand"), m, now)?;
    }
    Ok(())
}

/// Units come back on the shelf (a good return); returns the level after.
pub fn restock(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    q: i64,
    m: &Movement,
    now: DateTime<Utc>,
) -> Result<i64> {
    let level = db.execute(
        "INSERT INTO stock (sku, facility_id, on_hand, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (sku, facility_id) DO UPDATE SET on_hand = on_hand + ?3, updated_at = ?4 RETURNING on_hand",
        params![sku, facility, q, ts(now)],
    )?;
    let after = level.first().map(|x| x.i64("on_hand")).unwrap_or(0);
    log_movement(db, sku, facility, q, after, m, now)?;
    Ok(after)
}

fn log_movement(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    delta: i64,
    after: i64,
    m: &Movement,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute(
        "INSERT INTO stock_movements (sku, facility_id, kind, on_hand_delta, on_hand_after, reason, reference, actor, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![sku, facility, m.kind, delta, after, m.reason.as_str(), m.reference.as_str(), m.actor, ts(now)],
    )?;
    Ok(())
}

/// Claims up to `q` unassigned licence keys of a SKU for an order line in one
/// conditional statement (no key is ever given twice); returns how many.
pub fn claim_keys(
    db: &dyn Db,
    sku: &str,
    order_id: &str,
    line_no: i64,
    q: i64,
    now: DateTime<Utc>,
) -> Result<i64> {
    Ok(db.exec(
        "UPDATE license_keys SET order_id = ?1, line_no = ?2, assigned_at = ?3
         WHERE id IN (SELECT id FROM license_keys WHERE sku = ?4 AND order_id IS NULL ORDER BY id LIMIT ?5)",
        params![order_id, line_no, ts(now), sku, q],
    )? as i64)
}

/// Keys claimed for an order that no live capture pays for yet, per line
/// (delivered or not; a key given back is no longer claimed).
pub fn unpaid_keys(db: &dyn Db, order_id: &str) -> Result<BTreeMap<i64, i64>> {
    Ok(db
        .execute(
            "SELECT k.line_no, COUNT(*) AS n FROM license_keys k WHERE k.order_id = ?
               AND (k.capture_id IS NULL OR NOT EXISTS (SELECT 1 FROM payment_transactions t WHERE t.id = k.capture_id
                    AND t.status IN ('pending', 'succeeded', 'unknown', 'deferred')))
             GROUP BY k.line_no",
            params![order_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect())
}

/// The keys [`unpaid_keys`] counts are now paid for by `capture_id`.
pub fn pay_keys(db: &dyn Db, order_id: &str, capture_id: &str) -> Result<()> {
    db.execute(
        "UPDATE license_keys SET capture_id = ?1 WHERE order_id = ?2
           AND (capture_id IS NULL OR NOT EXISTS (SELECT 1 FROM payment_transactions t WHERE t.id = license_keys.capture_id
                AND t.status IN ('pending', 'succeeded', 'unknown', 'deferred')))",
        params![capture_id, order_id],
    )?;
    Ok(())
}

/// Keys claimed for an order that `capture_id` pays for, per line (after a
/// cancellation gave some back, fewer than the capture holds).
pub fn keys_paid_by(db: &dyn Db, capture_id: &str) -> Result<BTreeMap<i64, i64>> {
    Ok(db
        .execute(
            "SELECT line_no, COUNT(*) AS n FROM license_keys WHERE capture_id = ? AND order_id IS NOT NULL GROUP BY line_no",
            params![capture_id],
        )?
        .iter()
        .map(|r| (r.i64("line_no"), r.i64("n")))
        .collect())
}

/// A delivered licence key.
#[derive(Debug, Clone)]
pub struct DeliveredKey {
    pub line_no: i64,
    pub key: String,
}

/// Marks the order's claimed, undelivered keys as delivered (only one line's,
/// or only those `capture_id` paid for, when given) and returns them in
/// claim order.
pub fn deliver_keys(
    db: &dyn Db,
    order_id: &str,
    line_no: Option<i64>,
    capture_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<DeliveredKey>> {
    let r = db.execute(
        "UPDATE license_keys SET delivered_at = ?1
         WHERE order_id = ?2 AND delivered_at IS NULL AND (?3 IS NULL OR line_no = ?3) AND (?4 IS NULL OR capture_id = ?4)
         RETURNING id, line_no, key",
        params![ts(now), order_id, line_no, capture_id],
    )?;
    let mut keys: Vec<(i64, DeliveredKey)> = r
        .iter()
        .map(|k| {
            (
                k.i64("id"),
                DeliveredKey {
                    line_no: k.i64("line_no"),
                    key: k.str("key"),
                },
            )
        })
        .collect();
    keys.sort_by_key(|(id, _)| *id);
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

/// Gives up to `q` claimed, undelivered keys of an order line back to the
/// pool (a cancellation, a re-route). Returns how many, and the captures that
/// paid for them.
pub fn give_back_keys(
    db: &dyn Db,
    order_id: &str,
    line_no: Option<i64>,
    q: i64,
) -> Result<(i64, Vec<String>)> {
    let picked = db.execute(
        "SELECT id, line_no, capture_id FROM license_keys WHERE order_id = ?1 AND delivered_at IS NULL
           AND (?2 IS NULL OR line_no = ?2) ORDER BY id DESC LIMIT ?3",
        params![order_id, line_no, q],
    )?;
    if picked.is_empty() {
        return Ok((0, Vec::new()));
    }
    let ids: Vec<crate::kernel::db::Value> = picked.iter().map(|r| r.i64("id").into()).collect();
    let ph = vec!["?"; ids.len()].join(",");
    db.execute(
        &format!(
            "UPDATE license_keys SET order_id = NULL, line_no = NULL, assigned_at = NULL, capture_id = NULL
             WHERE id IN ({ph}) AND delivered_at IS NULL"
        ),
        &ids,
    )?;
    let mut captures: Vec<String> = picked
        .iter()
        .filter_map(|r| r.opt_str("capture_id"))
        .collect();
    captures.sort();
    captures.dedup();
    Ok((picked.len() as i64, captures))
}

/// Moves on-hand stock (`Delta`) or sets it (`Set`), logs the movement, re-arms
/// the low-stock alert when back at or above the threshold. Returns (before, after) available.
pub enum Change {
    Delta(i64),
    Set(i64),
}

#[allow(clippy::too_many_arguments)]
pub fn move_stock(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    change: Change,
    kind: &str,
    reason: Option<&str>,
    reference: Option<&str>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(i64, i64)> {
    let before = db
        .execute(
            "SELECT on_hand, reserved FROM stock WHERE sku = ? AND facility_id = ?",
            params![sku, facility],
        )?
        .first()
        .map(|r| (r.i64("on_hand"), r.i64("reserved")))
        .unwrap_or((0, 0));
    let new_on_hand = match change {
        Change::Delta(d) => before.0 + d,
        Change::Set(n) => n,
    };
    if new_on_hand < 0 {
        return Err(Error::conflict(format!(
            "{sku} at {facility}: on hand is {}; the change would make it negative",
            before.0
        )));
    }
    db.execute(
        "INSERT INTO stock (sku, facility_id, on_hand, reserved, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
         ON CONFLICT (sku, facility_id) DO UPDATE SET on_hand = ?3, updated_at = ?4,
           low_alerted = CASE WHEN ?3 - reserved >= (SELECT low_stock_threshold FROM products WHERE sku = ?1) THEN 0 ELSE low_alerted END",
        params![sku, facility, new_on_hand, ts(now)],
    )?;
    db.execute(
        "INSERT INTO stock_movements (sku, facility_id, kind, on_hand_delta, on_hand_after, reason, reference, actor, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![sku, facility, kind, new_on_hand - before.0, new_on_hand, reason, reference, actor, ts(now)],
    )?;
    let (was, is) = (
        (before.0 - before.1).max(0),
        (new_on_hand - before.1).max(0),
    );
    if is < was {
        low_stock_check(db, sku, facility, now)?;
    }
    // Fewer units on hand than already promised: an action item for the merchant.
    let short_before = (before.1 - before.0).max(0);
    let short_now = (before.1 - new_on_hand).max(0);
    if short_now > short_before {
        crate::orders::store::enqueue(
            db,
            "stock.shortage",
            None,
            json!({"sku": sku, "facility": facility, "on_hand": new_on_hand, "reserved": before.1,
                   "shortage": short_now, "kind": kind, "reason": reason}),
            now,
        )?;
    }
    Ok((was, is))
}

/// The bin a SKU is picked from at a facility; false when the facility holds
/// no stock row for it.
pub fn set_bin(
    db: &dyn Db,
    sku: &str,
    facility: &str,
    bin: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    Ok(db.exec(
        "UPDATE stock SET bin = ?, updated_at = ? WHERE facility_id = ? AND sku = ?",
        params![bin, ts(now), facility, sku],
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(db: &dyn Db) -> (i64, i64) {
        let r = db
            .execute("SELECT on_hand, reserved FROM stock", &[])
            .unwrap();
        let r = r.first().unwrap();
        (r.i64("on_hand"), r.i64("reserved"))
    }

    #[test]
    fn a_part_is_reserved_sku_by_sku_whole_or_not_at_all_and_a_repeated_sku_after_the_first() {
        let db = crate::testkit::db();
        crate::testkit::facility(&db, "f", "F", "warehouse", "[]", 0.0, 0.0);
        crate::testkit::facility(&db, "g", "G", "warehouse", "[]", 0.0, 0.0);
        for (sku, n) in [("A", 3), ("B", 1), ("C", 5)] {
            crate::testkit::product(&db, sku, 100, false);
            crate::testkit::stock(&db, "f", sku, n);
            crate::testkit::stock(&db, "g", sku, 100);
        }
        let now = Utc::now();
        use Reservation::*;
        // B is short (1 < 2); A twice: 2 then 2 more of 3 is short; D has no row.
        let got = reserve_at(
            &db,
            "f",
            &[("A", 2), ("B", 2), ("C", 5), ("A", 2), ("D", 1), ("A", 1)],
            now,
        )
        .unwrap();
        assert_eq!(got, vec![Reserved, Short, Reserved, Short, Short, Reserved]);
        let reserved = |f: &str, sku: &str| {
            crate::testkit::one(
                &db,
                &format!(
                    "SELECT reserved AS n FROM stock WHERE facility_id = '{f}' AND sku = '{sku}'"
                ),
            )
        };
        assert_eq!(
            (reserved("f", "A"), reserved("f", "B"), reserved("f", "C")),
            (3, 0, 5)
        );
        assert_eq!(reserved("g", "A"), 0, "only the facility named");
        assert_eq!(
            reserve_at(&db, "f", &[("A", 1), ("C", 1)], now).unwrap(),
            vec![Short, Short]
        );
    }

    #[test]
    fn reservations_never_exceed_what_is_on_hand_and_movements_are_logged() {
        let db = crate::testkit::db();
        crate::testkit::facility(&db, "f", "F", "warehouse", "[]", 0.0, 0.0);
        crate::testkit::product(&db, "A", 100, false);
        crate::testkit::stock(&db, "f", "A", 3);
        let now = Utc::now();
        assert_eq!(
            reserve(&db, "A", "f", 2, now).unwrap(),
            Reservation::Reserved
        );
        assert_eq!(reserve(&db, "A", "f", 2, now).unwrap(), Reservation::Short);
        assert_eq!(level(&db), (3, 2), "a short reservation reserves nothing");
        assert_eq!(reserve(&db, "B", "f", 1, now).unwrap(), Reservation::Short);
        give_back(&db, "A", "f", 5, now).unwrap();
        assert_eq!(level(&db), (3, 0), "never below zero");
        assert_eq!(
            reserve(&db, "A", "f", 1, now).unwrap(),
            Reservation::Reserved
        );
        let m = |kind| Movement {
            kind,
            reason: "r".into(),
            reference: "x".into(),
            actor: "t",
        };
        consume(&db, "A", "f", 1, &m("shipment"), now).unwrap();
        assert_eq!(level(&db), (2, 0));
        assert_eq!(restock(&db, "A", "f", 4, &m("return"), now).unwrap(), 6);
        let log = db
            .execute(
                "SELECT kind, on_hand_delta, on_hand_after FROM stock_movements ORDER BY id",
                &[],
            )
            .unwrap();
        let log: Vec<(String, i64, i64)> = log
            .iter()
            .map(|r| {
                (
                    r.str("kind"),
                    r.i64("on_hand_delta"),
                    r.i64("on_hand_after"),
                )
            })
            .collect();
        assert_eq!(
            log,
            vec![("shipment".into(), -1, 2), ("return".into(), 4, 6)]
        );
    }
}
