//! Backorders and the sweep.
//!
//! **The FIFO rule.** When stock arrives, waiting orders are served oldest
//! first by (placed_at, id), each in its own transaction, until the stock runs
//! out; a newer order never takes stock an older waiting order could use.
//! Waiting means backordered units, or an order on hold with unplaced units.

use super::*;

/// After stock arrives: orders waiting for these SKUs (all SKUs when `None`),
/// oldest first (by order time), each routed in its own transaction, until the
/// stock runs out or `limit` orders were served. `before` restricts to orders
/// placed before (placed_at, id). Returns the orders that changed.
///
/// Waiting means backordered units or an order on hold with unplaced units.
/// Orders never routed yet are not taken here: their own chained call (or the
/// sweep) routes them, so concurrent new orders do not route one another.
pub fn release_backorders(
    db: &dyn Db,
    skus: Option<&[String]>,
    before: Option<(&str, &str)>,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<usize> {
    serve_waiting(db, skus, before, limit, &|db: &dyn Db, id: &str| {
        transaction(db, |db| route_order(db, id, Trigger::Backorder, now))
    })
}

/// Whether any order placed before `before` (placed_at, id) waits for a SKU
/// that `order_id` has unplaced and that is available somewhere: one
/// statement, the first search of [`release_backorders_within`] for that
/// order's SKUs (their availability, as `available_any` counts it, then the
/// oldest waiting order), which serves nothing when this is false. A batch
/// pays one read per order when no older order waits, instead of the SKUs,
/// their availability and the search; without stock the SKU list is empty
/// and nothing is searched, as before.
pub(crate) fn waiting_before(db: &dyn Db, order_id: &str, before: (&str, &str)) -> Result<bool> {
    let (t, id) = before;
    Ok(!db
        .execute(
            &format!(
                "SELECT 1 FROM order_lines l JOIN orders o ON o.id = l.order_id
                 WHERE l.sku IN (
                     SELECT sku FROM order_lines
                     WHERE order_id = ? AND {UNPLACED} > 0
                       AND (EXISTS (SELECT 1 FROM stock s JOIN facilities f ON f.id = s.facility_id
                                    WHERE f.active = 1 AND s.sku = order_lines.sku AND s.on_hand - s.reserved > 0)
                            OR EXISTS (SELECT 1 FROM license_keys k WHERE k.order_id IS NULL AND k.sku = order_lines.sku)))
                   AND {UNPLACED_LINE} > 0 AND (l.qty_backordered > 0 OR o.status = 'on_hold')
                   AND (o.placed_at < ? OR (o.placed_at = ? AND o.id < ?))
                 LIMIT 1"
            ),
            params![order_id, t, t, id],
        )?
        .is_empty())
}

/// [`release_backorders`] inside the caller's transaction, each order in its
/// own savepoint (the routing worker's batch: `worker`).
pub(crate) fn release_backorders_within(
    db: &dyn Db,
    skus: &[String],
    before: (&str, &str),
    now: DateTime<Utc>,
    limit: usize,
) -> Result<usize> {
    serve_waiting(
        db,
        Some(skus),
        Some(before),
        limit,
        &|db: &dyn Db, id: &str| {
            crate::kernel::db::savepoint(db, |db| route_order(db, id, Trigger::Backorder, now))
        },
    )
}

/// Serves waiting orders oldest first (the FIFO rule), each through `route`.
fn serve_waiting(
    db: &dyn Db,
    skus: Option<&[String]>,
    before: Option<(&str, &str)>,
    limit: usize,
    route: &dyn Fn(&dyn Db, &str) -> Result<Outcome>,
) -> Result<usize> {
    let p = crate::kernel::db::Patient(db);
    let mut served = 0;
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    let mut after: Option<(String, String)> = None;
    loop {
        if served >= limit {
            break;
        }
        // Only SKUs that have something available are worth a pass.
        let wanted: BTreeSet<String> = match skus {
            Some(s) => s.iter().cloned().collect(),
            None => p
                .execute(
                    &format!("SELECT DISTINCT sku FROM order_lines WHERE {UNPLACED} > 0"),
                    &[],
                )?
                .iter()
                .map(|r| r.str("sku"))
                .collect(),
        };
        let avail = available_any(&p, &wanted)?;
        let live: Vec<String> = wanted
            .into_iter()
            .filter(|s| avail.get(s).copied().unwrap_or(0) > 0)
            .collect();
        if live.is_empty() {
            break;
        }
        let (ph, mut params) = in_list(&live);
        let mut cond = String::new();
        if let Some((t, id)) = before {
            cond.push_str(" AND (o.placed_at < ? OR (o.placed_at = ? AND o.id < ?))");
            params.extend([Value::from(t), Value::from(t), Value::from(id)]);
        }
        if let Some((t, id)) = &after {
            cond.push_str(" AND (o.placed_at > ? OR (o.placed_at = ? AND o.id > ?))");
            params.extend([Value::from(t), Value::from(t), Value::from(id)]);
        }
        let next = p.execute(
            &format!(
                "SELECT o.id, o.placed_at FROM order_lines l JOIN orders o ON o.id = l.order_id
                 WHERE l.sku IN ({ph}) AND {UNPLACED_LINE} > 0 AND (l.qty_backordered > 0 OR o.status = 'on_hold'){cond}
                 ORDER BY o.placed_at, o.id LIMIT 1"
            ),
            &params,
        )?;
        let Some(row) = next.first() else { break };
        let (id, placed) = (row.str("id"), row.str("placed_at"));
        after = Some((placed, id.clone()));
        if skipped.contains(&id) {
            continue;
        }
        let o = route(db, &id)?;
        if o.changed || o.released > 0 {
            served += 1;
        } else {
            skipped.insert(id);
        }
    }
    Ok(served)
}

/// [`UNPLACED`] on the alias `l`.
pub(crate) const UNPLACED_LINE: &str =
    "l.qty_ordered - l.qty_cancelled - l.qty_allocated - l.qty_released - l.qty_shipped";

/// The scheduled pass: orders never routed (a chained call failed or
/// inventory was not set up), allocated work whose holds were lifted, then
/// backorders for every SKU with stock. Returns (orders routed, released, backorders served).
pub fn sweep(db: &dyn Db, now: DateTime<Utc>, limit: i64) -> Result<(usize, usize, usize)> {
    // New orders whose kick was lost: the worker takes up their pending rows
    // and routes them, oldest first.
    let kicked = super::worker::kick(db, std::time::Duration::from_secs(20))?;
    let p = crate::kernel::db::Patient(db);
    // Never routed: the chained call failed, or inventory was not set up yet.
    // (Racing a chained call in flight is harmless: routing only places unplaced units.)
    let received: Vec<String> = p
        .execute(
            "SELECT id FROM orders o WHERE status IN ('received', 'on_hold')
               AND NOT EXISTS (SELECT 1 FROM routing_decisions d WHERE d.order_id = o.id)
             ORDER BY placed_at, id LIMIT ?",
            params![limit],
        )?
        .iter()
        .map(|r| r.str("id"))
        .collect();
    let mut routed = kicked.routed;
    for id in &received {
        if process_order(db, id, Trigger::Sweep, now)?.changed {
            routed += 1;
        }
    }
    let waiting: Vec<String> = p
        .execute(
            "SELECT DISTINCT f.order_id FROM fulfillment_orders f
             WHERE f.status = 'on_hold' AND NOT EXISTS (
                SELECT 1 FROM order_holds h WHERE h.order_id = f.order_id AND h.released_at IS NULL AND h.reason <> 'out_of_stock')
             LIMIT ?",
            params![limit],
        )?
        .iter()
        .map(|r| r.str("order_id"))
        .collect();
    let mut released = 0;
    for id in &waiting {
        if transaction(db, |db| route_order(db, id, Trigger::Sweep, now))?.released > 0 {
            released += 1;
        }
    }
    let served = release_backorders(db, None, None, now, limit as usize)?;
    Ok((routed, released, served))
}
