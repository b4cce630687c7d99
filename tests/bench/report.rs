//! Daily-report aggregation time against order volume.
//!
//! bench-report [N ...]   (default: 10000 100000 1000000)
//!
//! For each N: a fresh SQLite file (WAL, Waybill's schema) seeded directly with
//! N orders in one business day (2 lines each, a shipment event for 60% of them,
//! a capture for 80%, a hold for 5%, a backorder for 3%, spread over 3 channels,
//! 4 facilities and 2 currencies) plus the same volume on the day before, then
//! `waybill::reporting::compute` for that day: min and median of 5 runs.

use std::time::Instant;
use waybill::kernel::db::native::NativeDb;
use waybill::kernel::db::Db;

fn seed(db: &NativeDb, n: i64, day: &str, prefix: &str) {
    let conn = &db.conn;
    conn.execute_batch("BEGIN").unwrap();
    // Orders spread evenly over the day; ids sort with the prefix.
    conn.execute(
        &format!(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n} - 1)
             INSERT INTO orders (id, number, source, external_id, channel, status, fulfillment_status, financial_status, currency,
                total_minor, search_text, placed_at, created_at, updated_at, cancelled_at, doc)
             SELECT '{prefix}' || i, '{prefix}N' || i, 'api', '{prefix}' || i,
                CASE i % 3 WHEN 0 THEN 'shopify' WHEN 1 THEN 'woocommerce' ELSE 'crm' END,
                'received', 'unfulfilled', 'paid', CASE WHEN i % 10 = 0 THEN 'USD' ELSE 'EUR' END,
                1000 + (i % 5000), '{prefix}' || i,
                strftime('%Y-%m-%dT%H:%M:%fZ', '{day}', '+' || (i * 86399 / {n}) || ' seconds'),
                strftime('%Y-%m-%dT%H:%M:%fZ', '{day}', '+' || (i * 86399 / {n}) || ' seconds'),
                strftime('%Y-%m-%dT%H:%M:%fZ', '{day}', '+' || (i * 86399 / {n}) || ' seconds'),
                CASE WHEN i % 50 = 0 THEN strftime('%Y-%m-%dT%H:%M:%fZ', '{day}', '+' || (i * 86399 / {n}) || ' seconds') END,
                '{{}}'
             FROM s"
        ),
        [],
    )
    .unwrap();
    for line in 1..=2 {
        conn.execute(
            &format!(
                "INSERT INTO order_lines (order_id, line_no, sku, name, unit_price_minor, subtotal_minor, discount_minor, tax_minor,
                    requires_shipping, qty_ordered, qty_cancelled, qty_backordered)
                 SELECT id, {line}, 'SKU-' || (rowid % 500), 'x', 500, 1000, 0, 0, 1, 2,
                    CASE WHEN cancelled_at IS NOT NULL THEN 2 ELSE 0 END,
                    CASE WHEN rowid % 33 = 0 AND {line} = 1 THEN 1 ELSE 0 END
                 FROM orders WHERE id LIKE '{prefix}%'"
            ),
            [],
        )
        .unwrap();
    }
    conn.execute(
        &format!(
            "INSERT INTO order_events (order_id, at, actor, kind, summary, data)
             SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', created_at, '+3 hours'), 'bench', 'shipment.shipped', '',
                json_object('facility', 'fc-' || (rowid % 4), 'units', 4, 'partial', rowid % 20 = 0)
             FROM orders WHERE id LIKE '{prefix}%' AND rowid % 10 < 6"
        ),
        [],
    )
    .unwrap();
    conn.execute(
        &format!(
            "INSERT INTO order_events (order_id, at, actor, kind, summary, data)
             SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', created_at, '+1 minutes'), 'bench', 'payment.captured', '',
                json_object('amount_minor', total_minor, 'currency', currency)
             FROM orders WHERE id LIKE '{prefix}%' AND rowid % 10 < 8"
        ),
        [],
    )
    .unwrap();
    conn.execute(
        &format!(
            "INSERT INTO order_holds (order_id, reason, note, created_at)
             SELECT id, CASE rowid % 2 WHEN 0 THEN 'awaiting_payment' ELSE 'manual_review' END, '', created_at
             FROM orders WHERE id LIKE '{prefix}%' AND rowid % 20 = 0"
        ),
        [],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

fn main() {
    let sizes: Vec<i64> = {
        let a: Vec<i64> = std::env::args()
            .skip(1)
            .filter_map(|s| s.parse().ok())
            .collect();
        if a.is_empty() {
            vec![10_000, 100_000, 1_000_000]
        } else {
            a
        }
    };
    let dir = std::env::temp_dir().join(format!("waybill-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 10, 25).unwrap();
    let (from, _) = waybill::reporting::business_day(date, tz);
    let before = from - chrono::Duration::days(1);
    println!("| orders in the day | orders in the file | seed time | report min | report median | orders_received |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let path = dir.join(format!("r{n}.db"));
        let _ = std::fs::remove_file(&path);
        let db = NativeDb::open(&path).unwrap();
        waybill::kernel::schema::prepare_writer(&db).unwrap();
        let t0 = Instant::now();
        seed(&db, n, &waybill::kernel::time::ts(from), "d");
        seed(&db, n, &waybill::kernel::time::ts(before), "p");
        db.execute("ANALYZE", &[]).unwrap();
        let seed_time = t0.elapsed();
        let mut times = Vec::new();
        let mut received = serde_json::Value::Null;
        for _ in 0..5 {
            let t = Instant::now();
            let r = waybill::reporting::compute(&db, date, tz, chrono::Utc::now()).unwrap();
            times.push(t.elapsed());
            received = r["overall"]["orders_received"].clone();
        }
        times.sort();
        println!(
            "| {n} | {} | {:.1} s | {:.1} ms | {:.1} ms | {received} |",
            2 * n,
            seed_time.as_secs_f64(),
            times[0].as_secs_f64() * 1000.0,
            times[2].as_secs_f64() * 1000.0
        );
        assert_eq!(
            received,
            serde_json::json!(n),
            "every seeded order of the day is counted once"
        );
        drop(db);
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
