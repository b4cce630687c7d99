//! The daily performance report for a business day in the merchant's time zone.
//!
//! Sources: orders and lines (received, units, revenue ordered, fill rate,
//! backorders, cancellations), holds (exceptions), and the timeline events the
//! lifecycle components write: `shipment.shipped` (`data.facility`,
//! `data.units`, `data.partial`), `return.received` (`data.units`) and
//! `payment.captured` (`data.amount_minor`, `data.currency`). Stored per date
//! (regenerating replaces), the latest also in key-value, e-mailed to
//! management through the outbox on first generation.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;

use crate::kernel::db::{transaction, Db, Patient};
use crate::kernel::error::{Error, Result};
use crate::kernel::money::Currency;
use crate::kernel::time::ts;
use crate::orders::store::enqueue;
use crate::params;

/// Start (inclusive) and end (exclusive) in UTC of `date` in `tz`, DST-correct:
/// a 23- or 25-hour day where the clocks change.
pub fn business_day(date: NaiveDate, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        local_midnight(date, tz),
        local_midnight(date + Duration::days(1), tz),
    )
}

fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight");
    // Where midnight does not exist (a DST gap at 00:00), the day starts at the first valid minute.
    for _ in 0..180 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.with_timezone(&Utc);
        }
        t += Duration::minutes(1);
    }
    tz.from_utc_datetime(&t).with_timezone(&Utc)
}

/// The business day (in `tz`) that contains `t`.
pub fn day_of(t: DateTime<Utc>, tz: Tz) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

#[derive(Debug, Default, Clone)]
struct Metrics {
    orders_received: i64,
    orders_shipped: i64,
    orders_cancelled: i64,
    orders_returned: i64,
    units_ordered: i64,
    units_shipped: i64,
    units_returned: i64,
    revenue_ordered: BTreeMap<String, i64>,
    revenue_captured: BTreeMap<String, i64>,
    ship_hours: Vec<f64>,
    fill_num: i64,
    fill_den: i64,
    split_shipments: i64,
    partial_shipments: i64,
    exceptions: BTreeMap<String, i64>,
}

fn money_map(m: &BTreeMap<String, i64>) -> Json {
    Json::Object(
        m.iter()
            .map(|(c, v)| {
                (
                    c.clone(),
                    json!(Currency::from_code(c)
                        .map(|cur| cur.format_amount(*v))
                        .unwrap_or_else(|| v.to_string())),
                )
            })
            .collect(),
    )
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Metrics {
    fn to_json(&self) -> Json {
        let mut hours = self.ship_hours.clone();
        hours.sort_by(|a, b| a.total_cmp(b));
        let mean =
            (!hours.is_empty()).then(|| round2(hours.iter().sum::<f64>() / hours.len() as f64));
        json!({
            "orders_received": self.orders_received,
            "orders_shipped": self.orders_shipped,
            "orders_cancelled": self.orders_cancelled,
            "orders_returned": self.orders_returned,
            "units_ordered": self.units_ordered,
            "units_shipped": self.units_shipped,
            "units_returned": self.units_returned,
            "revenue_ordered": money_map(&self.revenue_ordered),
            "revenue_captured": money_map(&self.revenue_captured),
            "time_to_ship_hours": {"mean": mean, "p90": percentile(&hours, 0.9).map(round2), "orders": hours.len()},
            "fill_rate": (self.fill_den > 0).then(|| (self.fill_num as f64 / self.fill_den as f64 * 10_000.0).round() / 10_000.0),
            "split_shipments": self.split_shipments,
            "partial_shipments": self.partial_shipments,
            "exceptions": self.exceptions,
        })
    }
}

/// Computes the report for `date` in `tz`.
pub fn compute(db: &dyn Db, date: NaiveDate, tz: Tz, now: DateTime<Utc>) -> Result<Json> {
    let (from, to) = business_day(date, tz);
    let (f, t) = (ts(from), ts(to));
    let db = &Patient(db);
    let mut tally = Tally::default();
    tally.received(db, &f, &t)?;
    tally.cancelled(db, &f, &t)?;
    tally.shipped(db, &f, &t)?;
    tally.returned(db, &f, &t)?;
    tally.captured(db, &f, &t)?;
    tally.exceptions(db, &f, &t)?;
    let backorders = backorders(db, &t, to, now)?;
    let Tally {
        overall,
        by_channel,
        by_facility,
        aov_counts,
    } = tally;
    let mut overall_json = with_aov(&overall, Some(&aov_counts));
    overall_json["backorders"] = backorders;
    Ok(json!({
        "date": date.to_string(),
        "timezone": tz.name(),
        "window": {"from": ts(from), "to": ts(to)},
        "generated_at": ts(now),
        "overall": overall_json,
        "by_channel": by_channel.iter().map(|(k, m)| (k.clone(), with_aov(m, None))).collect::<Map<String, Json>>(),
        "by_facility": by_facility.iter().map(|(k, m)| (k.clone(), with_aov(m, None))).collect::<Map<String, Json>>(),
    }))
}

/// The day's metrics, overall and by channel and facility, as they are counted.
#[derive(Default)]
struct Tally {
    overall: Metrics,
    by_channel: BTreeMap<String, Metrics>,
    by_facility: BTreeMap<String, Metrics>,
    /// Per-currency order counts, for the average order value.
    aov_counts: BTreeMap<String, i64>,
}

impl Tally {
    /// Orders received that day, and their units (ordered, cancelled, backordered).
    fn received(&mut self, db: &dyn Db, f: &str, t: &str) -> Result<()> {
        let Tally {
            overall,
            by_channel,
            by_facility,
            aov_counts,
        } = self;
        let _ = (&by_facility, &aov_counts);
        let r = db.execute(
            "SELECT channel, currency, COUNT(*) AS n, SUM(total_minor / 1000000) AS revenue_hi, SUM(total_minor % 1000000) AS revenue_lo
             FROM orders WHERE created_at >= ? AND created_at < ? GROUP BY channel, currency",
            params![f, t],
        )?;
        for row in r.iter() {
            let (channel, currency) = (row.str("channel"), row.str("currency"));
            let (n, revenue) = (row.i64("n"), split_sum(&row, "revenue"));
            *aov_counts.entry(currency.clone()).or_default() += n;
            for m in [&mut *overall, by_channel.entry(channel).or_default()] {
                m.orders_received += n;
                let r = m.revenue_ordered.entry(currency.clone()).or_default();
                *r = r.saturating_add(revenue);
            }
        }
        let r = db.execute(
            "SELECT o.channel, SUM(l.qty_ordered) AS ordered, SUM(l.qty_cancelled) AS cancelled, SUM(l.qty_backordered) AS backordered
             FROM orders o JOIN order_lines l ON l.order_id = o.id
             WHERE o.created_at >= ? AND o.created_at < ? GROUP BY o.channel",
            params![f, t],
        )?;
        for row in r.iter() {
            let (ordered, cancelled, back) = (
                row.i64("ordered"),
                row.i64("cancelled"),
                row.i64("backordered"),
            );
            for m in [
                &mut *overall,
                by_channel.entry(row.str("channel")).or_default(),
            ] {
                m.units_ordered += ordered;
                m.fill_den += ordered - cancelled;
                m.fill_num += ordered - cancelled - back;
            }
        }
        Ok(())
    }

    /// Cancellations that day.
    fn cancelled(&mut self, db: &dyn Db, f: &str, t: &str) -> Result<()> {
        let Tally {
            overall,
            by_channel,
            by_facility,
            aov_counts,
        } = self;
        let _ = (&by_facility, &aov_counts);
        let r = db.execute(
            "SELECT channel, COUNT(*) AS n FROM orders WHERE cancelled_at >= ? AND cancelled_at < ? GROUP BY channel",
            params![f, t],
        )?;
        for row in r.iter() {
            overall.orders_cancelled += row.i64("n");
            by_channel
                .entry(row.str("channel"))
                .or_default()
                .orders_cancelled += row.i64("n");
        }
        Ok(())
    }

    /// Shipments that day: units, partial and split shipments, time to ship.
    fn shipped(&mut self, db: &dyn Db, f: &str, t: &str) -> Result<()> {
        let Tally {
            overall,
            by_channel,
            by_facility,
            aov_counts,
        } = self;
        let _ = (&by_facility, &aov_counts);
        let r = db.execute(
            "SELECT e.order_id, o.channel, o.created_at,
                    COALESCE(json_extract(e.data, '$.facility'), 'unknown') AS facility,
                    COALESCE(json_extract(e.data, '$.units'), 0) AS units,
                    COALESCE(json_extract(e.data, '$.partial'), 0) AS partial,
                    e.at,
                    (SELECT MIN(e2.at) FROM order_events e2 WHERE e2.order_id = e.order_id AND e2.kind = 'shipment.shipped') AS first_at,
                    (SELECT COUNT(DISTINCT COALESCE(json_extract(e3.data, '$.facility'), '')) FROM order_events e3
                      WHERE e3.order_id = e.order_id AND e3.kind = 'shipment.shipped') AS facilities
             FROM order_events e JOIN orders o ON o.id = e.order_id
             WHERE e.kind = 'shipment.shipped' AND e.at >= ? AND e.at < ?
             ORDER BY e.id",
            params![f, t],
        )?;
        let mut shipped_orders: BTreeMap<String, (String, bool)> = BTreeMap::new();
        let mut facility_orders: BTreeMap<(String, String), ()> = BTreeMap::new();
        for row in r.iter() {
            let (order, channel, facility) =
                (row.str("order_id"), row.str("channel"), row.str("facility"));
            let units = row.i64("units");
            let partial = row.i64("partial") != 0;
            for m in [
                &mut *overall,
                by_channel.entry(channel.clone()).or_default(),
                by_facility.entry(facility.clone()).or_default(),
            ] {
                m.units_shipped += units;
                m.partial_shipments += partial as i64;
            }
            if facility_orders
                .insert((facility.clone(), order.clone()), ())
                .is_none()
            {
                by_facility
                    .entry(facility.clone())
                    .or_default()
                    .orders_shipped += 1;
            }
            // Time to ship counts each order once, on the day of its first shipment.
            if !shipped_orders.contains_key(&order) {
                let first = row.str("first_at");
                let first_today = first.as_str() >= f && first.as_str() < t;
                shipped_orders.insert(order.clone(), (channel.clone(), first_today));
                if first_today {
                    if let (Some(c), Some(s)) = (
                        crate::kernel::time::parse_time(&row.str("created_at")),
                        crate::kernel::time::parse_time(&first),
                    ) {
                        let h = (s - c).num_seconds() as f64 / 3600.0;
                        overall.ship_hours.push(h);
                        by_channel
                            .entry(channel.clone())
                            .or_default()
                            .ship_hours
                            .push(h);
                        by_facility
                            .entry(facility.clone())
                            .or_default()
                            .ship_hours
                            .push(h);
                    }
                }
                if row.i64("facilities") > 1 {
                    overall.split_shipments += 1;
                    by_channel
                        .entry(channel.clone())
                        .or_default()
                        .split_shipments += 1;
                }
            }
        }
        overall.orders_shipped = shipped_orders.len() as i64;
        for (channel, _) in shipped_orders.values() {
            by_channel
                .entry(channel.clone())
                .or_default()
                .orders_shipped += 1;
        }
        Ok(())
    }

    /// Returns received that day.
    fn returned(&mut self, db: &dyn Db, f: &str, t: &str) -> Result<()> {
        let Tally {
            overall,
            by_channel,
            by_facility,
            aov_counts,
        } = self;
        let _ = (&by_facility, &aov_counts);
        let r = db.execute(
            "SELECT o.channel, COUNT(DISTINCT e.order_id) AS n, COALESCE(SUM(json_extract(e.data, '$.units')), 0) AS units
             FROM order_events e JOIN orders o ON o.id = e.order_id
             WHERE e.kind = 'return.received' AND e.at >= ? AND e.at < ? GROUP BY o.channel",
            params![f, t],
        )?;
        for row in r.iter() {
            for m in [
                &mut *overall,
                by_channel.entry(row.str("channel")).or_default(),
            ] {
                m.orders_returned += row.i64("n");
                m.units_returned += row.i64("units");
            }
        }
        Ok(())
    }

    /// Revenue captured that day.
    fn captured(&mut self, db: &dyn Db, f: &str, t: &str) -> Result<()> {
        let Tally {
            overall,
            by_channel,
            by_facility,
            aov_counts,
        } = self;
        let _ = (&by_facility, &aov_counts);
        let r = db.execute(
            "SELECT o.channel, json_extract(e.data, '$.currency') AS currency,
                    SUM(CAST(json_extract(e.data, '$.amount_minor') AS INTEGER) / 1000000) AS amount_hi,
                    SUM(CAST(json_extract(e.data, '$.amount_minor') AS INTEGER) % 1000000) AS amount_lo
             FROM order_events e JOIN orders o ON o.id = e.order_id
             WHERE e.kind = 'payment.captured' AND e.at >= ? AND e.at < ? GROUP BY o.channel, currency",
            params![f, t],
        )?;
        for row in r.iter() {
            for m in [
                &mut *overall,
                by_channel.entry(row.str("channel")).or_default(),
            ] {
                let r = m.revenue_captured.entry(row.str("currency")).or_default();
                *r = r.saturating_add(split_sum(&row, "amount"));
            }
        }
        Ok(())
    }

    /// Exceptions: holds opened that day, by reason.
    fn exceptions(&mut self, db: &dyn Db, f: &str, t: &str) -> Result<()> {
        let Tally {
            overall,
            by_channel,
            by_facility,
            aov_counts,
        } = self;
        let _ = (&by_facility, &aov_counts);
        let r = db.execute(
            "SELECT o.channel, h.reason, COUNT(*) AS n FROM order_holds h JOIN orders o ON o.id = h.order_id
             WHERE h.created_at >= ? AND h.created_at < ? GROUP BY o.channel, h.reason",
            params![f, t],
        )?;
        for row in r.iter() {
            for m in [
                &mut *overall,
                by_channel.entry(row.str("channel")).or_default(),
            ] {
                *m.exceptions.entry(row.str("reason")).or_default() += row.i64("n");
            }
        }
        Ok(())
    }
}

/// Backorders open at the end of the day (as of generation).
fn backorders(db: &dyn Db, t: &str, to: DateTime<Utc>, now: DateTime<Utc>) -> Result<Json> {
    let r = db.execute(
        "SELECT COUNT(DISTINCT l.order_id) AS orders, COALESCE(SUM(l.qty_backordered), 0) AS units, MIN(o.created_at) AS oldest
         FROM order_lines l JOIN orders o ON o.id = l.order_id
         WHERE l.qty_backordered > 0 AND o.created_at < ?",
        params![t],
    )?;
    let b = r.first();
    let oldest_age = b
        .as_ref()
        .and_then(|b| b.opt_str("oldest"))
        .and_then(|o| crate::kernel::time::parse_time(&o))
        .map(|o| round2((to.min(now) - o).num_seconds() as f64 / 3600.0));
    let backorders = json!({
        "orders": b.as_ref().map(|b| b.i64("orders")).unwrap_or(0),
        "units": b.as_ref().map(|b| b.i64("units")).unwrap_or(0),
        "oldest_age_hours": oldest_age,
    });
    Ok(backorders)
}

/// A group's metrics with its average order value per currency.
fn with_aov(m: &Metrics, counts: Option<&BTreeMap<String, i64>>) -> Json {
    let mut j = m.to_json();
    let mut aov = Map::new();
    for (c, total) in &m.revenue_ordered {
        let n = counts
            .and_then(|k| k.get(c).copied())
            .unwrap_or(m.orders_received)
            .max(1);
        let cur = Currency::from_code(c);
        // Rounded half away from zero to the currency's minor unit.
        let avg = (*total as f64 / n as f64).round() as i64;
        aov.insert(
            c.clone(),
            json!(cur
                .map(|x| x.format_amount(avg))
                .unwrap_or_else(|| avg.to_string())),
        );
    }
    j["average_order_value"] = Json::Object(aov);
    j
}

/// Computes and stores the report for `date`; returns it and whether it is new.
/// A new report also goes to management by e-mail (outbox `report.daily`).
pub fn generate(db: &dyn Db, date: NaiveDate, tz: Tz, now: DateTime<Utc>) -> Result<(Json, bool)> {
    let report = compute(db, date, tz, now)?;
    let fresh = transaction(db, |db| {
        let existed = !db
            .execute(
                "SELECT 1 FROM daily_reports WHERE date = ?",
                params![date.to_string()],
            )?
            .is_empty();
        db.execute(
            "INSERT INTO daily_reports (date, timezone, generated_at, data) VALUES (?, ?, ?, ?)
             ON CONFLICT (date) DO UPDATE SET timezone = excluded.timezone, generated_at = excluded.generated_at, data = excluded.data",
            params![date.to_string(), tz.name(), ts(now), report.to_string()],
        )?;
        if !existed {
            let o = &report["overall"];
            enqueue(
                db,
                "report.daily",
                None,
                json!({
                    "date": date.to_string(), "timezone": tz.name(),
                    "orders_received": o["orders_received"], "orders_shipped": o["orders_shipped"],
                    "orders_cancelled": o["orders_cancelled"],
                    "revenue": o["revenue_captured"].as_object().filter(|m| !m.is_empty()).map(|m| m.iter().map(|(c, v)| format!("{} {c}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", ")).unwrap_or_else(|| "0".into()),
                    "report": report,
                }),
                now,
            )?;
        }
        Ok::<_, Error>(!existed)
    })?;
    Ok((report, fresh))
}

/// Keeps the latest report in key-value (`report:latest`); a cache, so a
/// failure is logged, never fatal.
pub fn cache_latest(kv: &dyn crate::kernel::kv::Kv, report: &Json) {
    if let Err(e) = kv.set("report:latest", report.to_string().as_bytes()) {
        eprintln!("report: cannot cache the latest report: {e}");
    }
}

/// The business day the scheduled run reports on: yesterday in the merchant's zone.
pub fn scheduled_date(now: DateTime<Utc>, tz: Tz) -> NaiveDate {
    day_of(now, tz) - Duration::days(1)
}

/// Flattens a report into CSV rows: `date,scope,metric,value`.
pub fn to_csv(reports: &[Json]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::internal(format!("csv: {e}"));
    w.write_record(["date", "timezone", "scope", "metric", "value"])
        .map_err(csv_err)?;
    for r in reports {
        let date = r["date"].as_str().unwrap_or_default();
        let tz = r["timezone"].as_str().unwrap_or_default();
        let mut scopes: Vec<(String, &Json)> = vec![("overall".into(), &r["overall"])];
        for (k, v) in r["by_channel"].as_object().into_iter().flatten() {
            scopes.push((format!("channel:{k}"), v));
        }
        for (k, v) in r["by_facility"].as_object().into_iter().flatten() {
            scopes.push((format!("facility:{k}"), v));
        }
        for (scope, m) in scopes {
            let mut flat = Vec::new();
            flatten("", m, &mut flat);
            for (metric, value) in flat {
                w.write_record([date, tz, scope.as_str(), metric.as_str(), value.as_str()])
                    .map_err(csv_err)?;
            }
        }
    }
    String::from_utf8(w.into_inner().map_err(|e| Error::internal(e.to_string()))?)
        .map_err(|e| Error::internal(e.to_string()))
}

fn flatten(prefix: &str, v: &Json, out: &mut Vec<(String, String)>) {
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                flatten(
                    &if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    },
                    x,
                    out,
                );
            }
        }
        Json::Null => out.push((prefix.to_string(), String::new())),
        Json::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

pub fn parse_tz(name: &str) -> std::result::Result<Tz, String> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| format!("'{name}' is not an IANA time zone"))
}

/// The stored reports from `from` to `to`, oldest first.
pub fn stored_between(db: &dyn Db, from: NaiveDate, to: NaiveDate) -> Result<Vec<Json>> {
    let rows = db.execute(
        "SELECT data FROM daily_reports WHERE date >= ? AND date <= ? ORDER BY date",
        params![from.to_string(), to.to_string()],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.str("data")).ok())
        .collect())
}

/// The stored report of a day, if generated.
pub fn stored(db: &dyn Db, date: NaiveDate) -> Result<Option<Json>> {
    let rows = db.execute(
        "SELECT data FROM daily_reports WHERE date = ?",
        params![date.to_string()],
    )?;
    Ok(rows
        .first()
        .and_then(|r| serde_json::from_str(&r.str("data")).ok()))
}

/// A money sum SQL took in two parts (`<name>_hi`: the sum of amount / 10^6,
/// `<name>_lo`: of amount % 10^6), so SQLite's SUM cannot overflow on a day of
/// huge orders and fail the report; the whole saturates at the largest i64.
fn split_sum(row: &crate::kernel::db::Row<'_>, name: &str) -> i64 {
    let hi = row.i64(&format!("{name}_hi")) as i128;
    let lo = row.i64(&format!("{name}_lo")) as i128;
    i64::try_from(hi * 1_000_000 + lo).unwrap_or(if hi < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_days_follow_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Spring forward: 23 hours.
        let (a, b) = business_day(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(), berlin);
        assert_eq!(ts(a), "2026-03-28T23:00:00.000000Z");
        assert_eq!((b - a).num_hours(), 23);
        // Fall back: 25 hours.
        let (a, b) = business_day(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap(), berlin);
        assert_eq!(ts(a), "2026-10-24T22:00:00.000000Z");
        assert_eq!((b - a).num_hours(), 25);
        // A zone whose DST gap is at midnight (America/Santiago, 2026-09-06): the day starts at 01:00.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let (a, _) = business_day(NaiveDate::from_ymd_opt(2026, 9, 6).unwrap(), santiago);
        assert_eq!(
            a.with_timezone(&santiago).format("%H:%M").to_string(),
            "01:00"
        );
        assert!(parse_tz("Mars/Olympus").is_err());
    }

    #[test]
    fn a_day_of_huge_orders_saturates_the_revenue_instead_of_failing() {
        let db = crate::kernel::db::native::NativeDb::memory();
        crate::kernel::schema::migrate(&db).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let at = "2026-11-30T12:00:00.000000Z";
        // Twelve orders of 10^18 minor units: their sum is past i64::MAX.
        for i in 0..12 {
            db.execute(
                "INSERT INTO orders (id, number, source, external_id, channel, status, fulfillment_status, financial_status,
                                     currency, total_minor, search_text, placed_at, created_at, updated_at, doc)
                 VALUES (?, ?, 'api', ?, 'web', 'received', 'unfulfilled', 'pending', 'EUR', ?, '', ?, ?, ?, '{}')",
                crate::params![format!("o-{i}"), format!("WB-{i}"), format!("x-{i}"), 1_000_000_000_000_000_000i64, at, at, at],
            )
            .unwrap();
        }
        let (r, _) = generate(&db, day, chrono_tz::UTC, Utc::now()).unwrap();
        assert_eq!(r["overall"]["orders_received"], 12);
        let shown = r["overall"]["revenue_ordered"]["EUR"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            shown,
            Currency::from_code("EUR").unwrap().format_amount(i64::MAX),
            "{r}"
        );
        // Below the limit the sum is exact.
        db.execute("DELETE FROM orders WHERE id <> 'o-0'", &[])
            .unwrap();
        let (r, _) = generate(&db, day, chrono_tz::UTC, Utc::now()).unwrap();
        assert_eq!(
            r["overall"]["revenue_ordered"]["EUR"],
            "10000000000000000.00"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 0.9), Some(9.0));
        assert_eq!(percentile(&v, 0.5), Some(5.0));
        assert_eq!(percentile(&[3.0], 0.9), Some(3.0));
        assert_eq!(percentile(&[], 0.9), None);
    }
}
