use super::*;
use crate::kernel::db::native::NativeDb;
use crate::routing::allocation::{process_order, Trigger};

use crate::testkit::{self, one, stock};

fn setup() -> NativeDb {
    let db = testkit::db();
    for (id, kind, lat) in [
        ("wh", "warehouse", 53.5),
        ("wh2", "warehouse", 48.1),
        ("fc", "fulfillment_center", 52.5),
    ] {
        testkit::facility(&db, id, id, kind, "[]", lat, 10.0);
    }
    for sku in ["A", "B"] {
        testkit::product(&db, sku, 400, true);
    }
    db
}

fn order(db: &NativeDb, ext: &str, lines: &[(&str, i64)]) -> String {
    let v = json!({
        "external_id": ext, "currency": "EUR", "customer": {"email": "k@example.com"},
        "shipping_address": {"line1": "x", "city": "Hamburg", "postal_code": "20095", "country_code": "DE", "latitude": 53.5, "longitude": 10.0},
        "lines": lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q, "unit_price": "1.00"})).collect::<Vec<_>>(),
    });
    let id = testkit::api_order(db, &v);
    process_order(db, &id, Trigger::Intake, Utc::now()).unwrap();
    id
}

fn fo_of(db: &NativeDb, order: &str, facility: &str) -> String {
    db.execute(
        "SELECT id FROM fulfillment_orders WHERE order_id = ? AND facility_id = ? ORDER BY name DESC",
        params![order, facility],
    )
    .unwrap()
    .first()
    .unwrap()
    .str("id")
}

fn job(db: &NativeDb, fo: &str, kind: &str) -> String {
    db.execute(
        "SELECT id FROM fulfillment_jobs WHERE fulfillment_order_id = ? AND kind = ?",
        params![fo, kind],
    )
    .unwrap()
    .first()
    .map(|r| r.str("id"))
    .unwrap_or_default()
}

fn b(db: &NativeDb, id: &str) -> Vec<crate::orders::model::Buckets> {
    orders_store::load_buckets(db, id).unwrap()
}

#[test]
fn rate_lookups_at_the_bracket_edges() {
    let db = setup();
    transaction(&db, |db| {
        put_rates(db, &json!({
            "zones": [{"country": "DE", "postal_prefix": "", "zone": "de"}, {"country": "DE", "postal_prefix": "2", "zone": "de-north"},
                      {"country": "FR", "postal_prefix": "", "zone": "eu1"}],
            "rates": [
                {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 1000, "price": "4.99", "currency": "EUR"},
                {"carrier": "dhl", "service": "parcel", "zone": "de", "max_weight_grams": 5000, "price": "6.99", "currency": "EUR"},
                {"carrier": "dhl", "service": "parcel", "zone": "de-north", "max_weight_grams": 1000, "price": "3.99", "currency": "EUR"},
                {"carrier": "dhl", "service": "parcel", "zone": "eu1", "max_weight_grams": 1000, "price": "9.99", "currency": "EUR"},
                {"carrier": "ups", "service": "standard", "zone": "de", "max_weight_grams": 2000, "price": "5.50", "currency": "EUR"}
            ]}))
    })
    .unwrap();
    let price =
        |country: &str, postal: &str, w: i64, carrier: Option<&str>| -> Vec<(String, i64)> {
            quote(&db, country, postal, w, carrier, None)
                .unwrap()
                .1
                .iter()
                .map(|r| (r.carrier.clone(), r.price_minor))
                .collect()
        };
    assert_eq!(
        price("DE", "10115", 1, Some("dhl")),
        vec![("dhl".into(), 499)]
    );
    assert_eq!(
        price("DE", "10115", 1000, Some("dhl")),
        vec![("dhl".into(), 499)],
        "the upper bound is inclusive"
    );
    assert_eq!(
        price("DE", "10115", 1001, Some("dhl")),
        vec![("dhl".into(), 699)],
        "one gram more: the next bracket"
    );
    assert_eq!(
        price("DE", "10115", 5000, Some("dhl")),
        vec![("dhl".into(), 699)]
    );
    assert!(
        price("DE", "10115", 5001, Some("dhl")).is_empty(),
        "above every bracket: no rate"
    );
    assert_eq!(
        price("DE", "20095", 1000, Some("dhl")),
        vec![("dhl".into(), 399)],
        "the longest postal prefix wins"
    );
    assert!(
        price("DE", "20095", 1001, Some("dhl")).is_empty(),
        "de-north has one bracket"
    );
    assert_eq!(price("FR", "75001", 500, None), vec![("dhl".into(), 999)]);
    assert_eq!(
        price("DE", "10115", 1500, None),
        vec![("ups".into(), 550), ("dhl".into(), 699)],
        "cheapest first"
    );
    assert_eq!(
        quote(&db, "US", "10001", 100, None, None).unwrap().0,
        None,
        "no zone"
    );
    let bad = transaction(&db, |db| {
        put_rates(
            db,
            &json!({"zones": [], "rates": [{"carrier": "x", "service": "y", "zone": "nowhere", "max_weight_grams": 0, "price": "-1", "currency": "EUR"}]}),
        )
    });
    assert_eq!(bad.unwrap_err().status(), 422);
    assert_eq!(
        rates_view(&db).unwrap()["rates"].as_array().unwrap().len(),
        5,
        "a refused table changes nothing"
    );
}

#[test]
fn a_center_confirms_in_parts_and_a_repeat_changes_nothing() {
    let db = setup();
    stock(&db, "fc", "A", 5);
    let id = order(&db, "fc1", &[("A", 3)]);
    let fo = fo_of(&db, &id, "fc");
    assert_eq!(job(&db, &fo, "pick"), "", "a center gets no pick job");
    let first = json!({"order_number": "WB-100001", "ship_date": "2026-11-21", "tracking_number": "TRK1",
                       "carrier": "dhl", "shipping_method": "standard", "lines": [{"sku": "A", "quantity": 2}]});
    let r = transaction(&db, |db| {
        crate::flows::shipping::center_event(db, "fc", &first, Utc::now())
    })
    .unwrap();
    assert_eq!(
        (
            r["result"].as_str(),
            r["units"].as_i64(),
            r["partial"].as_bool()
        ),
        (Some("shipped"), Some(2), Some(true))
    );
    let again = transaction(&db, |db| {
        crate::flows::shipping::center_event(db, "fc", &first, Utc::now())
    })
    .unwrap();
    assert_eq!(again["result"], "duplicate");
    assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM shipments"), 1);
    assert_eq!((b(&db, &id)[0].shipped, b(&db, &id)[0].released), (2, 1));
    assert_eq!(
        one(
            &db,
            "SELECT on_hand AS n FROM stock WHERE facility_id = 'fc'"
        ),
        3
    );
    assert_eq!(
        one(
            &db,
            "SELECT reserved AS n FROM stock WHERE facility_id = 'fc'"
        ),
        1
    );
    // Too many, or a part the order does not have: 422, nothing booked.
    let over = json!({"order_number": "WB-100001", "tracking_number": "TRK2", "lines": [{"sku": "A", "quantity": 2}]});
    assert_eq!(
        transaction(&db, |db| crate::flows::shipping::center_event(
            db,
            "fc",
            &over,
            Utc::now()
        ))
        .unwrap_err()
        .status(),
        422
    );
    let odd = json!({"order_number": "WB-100001", "tracking_number": "TRK2", "lines": [{"part_number": "NOPE", "quantity": 1}]});
    assert_eq!(
        transaction(&db, |db| crate::flows::shipping::center_event(
            db,
            "fc",
            &odd,
            Utc::now()
        ))
        .unwrap_err()
        .status(),
        422
    );
    let unknown = json!({"order_number": "WB-999", "tracking_number": "T"});
    assert_eq!(
        transaction(&db, |db| crate::flows::shipping::center_event(
            db,
            "fc",
            &unknown,
            Utc::now()
        ))
        .unwrap_err()
        .status(),
        404
    );
    // The rest (no lines: whatever is open).
    let rest = json!({"order_number": "WB-100001", "tracking_number": "TRK2"});
    let r = transaction(&db, |db| {
        crate::flows::shipping::center_event(db, "fc", &rest, Utc::now())
    })
    .unwrap();
    assert_eq!(
        (r["units"].as_i64(), r["partial"].as_bool()),
        (Some(1), Some(false))
    );
    let st = db
        .execute(
            "SELECT status, request_status FROM fulfillment_orders WHERE id = ?",
            params![fo],
        )
        .unwrap();
    assert_eq!(
        (
            st.first().unwrap().str("status"),
            st.first().unwrap().str("request_status")
        ),
        ("closed".into(), "accepted".into())
    );
    let o = db
        .execute(
            "SELECT status, fulfillment_status FROM orders WHERE id = ?",
            params![id.clone()],
        )
        .unwrap();
    assert_eq!(o.first().unwrap().str("fulfillment_status"), "fulfilled");
    assert_eq!(o.first().unwrap().str("status"), "completed");
    // Tracking: both parcels delivered → delivered.
    for (n, t) in [
        ("TRK1", Status::InTransit),
        ("TRK1", Status::Delivered),
        ("TRK2", Status::Delivered),
    ] {
        let u = Update {
            provider: "easypost",
            tracking_number: n.into(),
            carrier: None,
            status: t,
            raw_status: t.as_str().into(),
            message: None,
            occurred_at: Some(Utc::now()),
            public_url: None,
        };
        transaction(&db, |db| apply_tracking(db, &u, Utc::now())).unwrap();
    }
    assert_eq!(b(&db, &id)[0].delivered, 3);
    let o = db
        .execute(
            "SELECT fulfillment_status FROM orders WHERE id = ?",
            params![id],
        )
        .unwrap();
    assert_eq!(o.first().unwrap().str("fulfillment_status"), "delivered");
    let unknown = Update {
        provider: "shippo",
        tracking_number: "NOPE".into(),
        carrier: None,
        status: Status::InTransit,
        raw_status: "TRANSIT".into(),
        message: None,
        occurred_at: None,
        public_url: None,
    };
    assert_eq!(
        transaction(&db, |db| apply_tracking(db, &unknown, Utc::now())).unwrap(),
        "unknown_tracking_number"
    );
}

#[test]
fn in_house_pick_pack_handover_and_short_picks() {
    for policy in ["reroute", "backorder"] {
        let db = setup();
        transaction(&db, |db| put_settings(db, &json!({"short_pick": policy}))).unwrap();
        stock(&db, "wh", "A", 3);
        stock(&db, "wh", "B", 1);
        stock(&db, "wh2", "A", 5);
        let id = order(&db, policy, &[("A", 3), ("B", 1)]);
        let fo = fo_of(&db, &id, "wh");
        let pick = job(&db, &fo, "pick");
        let v = job_view(&db, &pick).unwrap();
        assert_eq!(v["data"]["checklist"].as_array().unwrap().len(), 2);
        // One A is missing from the shelf.
        let r = transaction(&db, |db| {
            crate::flows::shipping::complete_job_step(
                db,
                "pick",
                &pick,
                &json!({"lines": [{"line_no": 1, "picked": 2}]}),
                Utc::now(),
            )
        })
        .unwrap();
        assert_eq!(r["short"], 1);
        assert_eq!(
            one(
                &db,
                "SELECT on_hand AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
            ),
            2,
            "the missing unit leaves the count"
        );
        assert_eq!(
            one(
                &db,
                "SELECT reserved AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
            ),
            2
        );
        if policy == "reroute" {
            assert_eq!(
                one(
                    &db,
                    "SELECT reserved AS n FROM stock WHERE facility_id = 'wh2' AND sku = 'A'"
                ),
                1,
                "routed to the other warehouse"
            );
            assert_eq!(b(&db, &id)[0].backordered, 0);
        } else {
            assert_eq!(b(&db, &id)[0].backordered, 1, "waits for stock");
            assert_eq!(
                one(
                    &db,
                    "SELECT reserved AS n FROM stock WHERE facility_id = 'wh2' AND sku = 'A'"
                ),
                0
            );
        }
        let pack = job(&db, &fo, "pack");
        assert!(!pack.is_empty());
        // Every picked unit must go into a parcel.
        let partial = json!({"carrier": "dhl", "parcels": [{"tracking_number": "P1", "items": [{"line_no": 1, "quantity": 1}]}]});
        assert_eq!(
            transaction(&db, |db| crate::flows::shipping::complete_job_step(
                db,
                "pack",
                &pack,
                &partial,
                Utc::now()
            ))
            .unwrap_err()
            .status(),
            422
        );
        let packed = json!({"carrier": "dhl", "service": "parcel", "parcels": [
            {"tracking_number": "P1", "items": [{"line_no": 1, "quantity": 2}]},
            {"tracking_number": "P2", "weight_grams": 450, "length_mm": 300, "width_mm": 200, "height_mm": 100, "items": [{"line_no": 2, "quantity": 1}]}]});
        transaction(&db, |db| {
            crate::flows::shipping::complete_job_step(db, "pack", &pack, &packed, Utc::now())
        })
        .unwrap();
        let hand = job(&db, &fo, "handover");
        let pickups = carrier_pickups(&db, Some("wh".into())).unwrap();
        assert_eq!(pickups["carriers"][0]["carrier"], "dhl");
        assert_eq!(pickups["carriers"][0]["parcels"], 2);
        let h = job_view(&db, &hand).unwrap();
        assert_eq!(
            h["data"]["parcels"][0]["weight_grams"], 800,
            "from the catalog: 2 x 400 g"
        );
        assert_eq!(
            h["data"]["parcels"][0]["return_label"]["to"]["facility"],
            "wh"
        );
        transaction(&db, |db| {
            crate::flows::shipping::complete_job_step(db, "handover", &hand, &json!({}), Utc::now())
        })
        .unwrap();
        assert_eq!(
            transaction(&db, |db| crate::flows::shipping::complete_job_step(
                db,
                "handover",
                &hand,
                &json!({}),
                Utc::now()
            ))
            .unwrap_err()
            .status(),
            409
        );
        assert_eq!(b(&db, &id)[0].shipped, 2);
        assert_eq!(b(&db, &id)[1].shipped, 1);
        assert_eq!(one(&db, "SELECT COUNT(*) AS n FROM parcels"), 2);
        assert_eq!(
            one(
                &db,
                "SELECT on_hand AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
            ),
            0
        );
        assert_eq!(
            one(
                &db,
                "SELECT reserved AS n FROM stock WHERE facility_id = 'wh' AND sku = 'A'"
            ),
            0
        );
        assert_eq!(
            carrier_pickups(&db, None).unwrap()["carriers"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            one(
                &db,
                "SELECT COUNT(*) AS n FROM outbox WHERE topic = 'shipment.created'"
            ),
            1
        );
    }
}

#[test]
fn click_and_collect_is_handed_to_the_customer_and_exceptions_are_action_items() {
    let db = setup();
    db.execute(
        "UPDATE facilities SET services = '[\"ship\", \"click_collect\"]' WHERE id = 'wh'",
        &[],
    )
    .unwrap();
    stock(&db, "wh", "A", 1);
    let v = json!({"external_id": "cc", "currency": "EUR", "pickup_location": "wh",
        "shipping_address": {"line1": "x", "city": "Hamburg", "country_code": "DE"},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}]});
    let o = crate::intake::sources::api::map_order(&v, "", Utc::now()).unwrap();
    let id = transaction(&db, |db| {
        crate::flows::intake::place(db, &o, Utc::now(), "t")
    })
    .unwrap()
    .id;
    process_order(&db, &id, Trigger::Intake, Utc::now()).unwrap();
    let fo = fo_of(&db, &id, "wh");
    let pick = job(&db, &fo, "pick");
    transaction(&db, |db| {
        crate::flows::shipping::complete_job_step(db, "pick", &pick, &json!({}), Utc::now())
    })
    .unwrap();
    let pack = job(&db, &fo, "pack");
    // No carrier and no tracking number for a parcel the customer collects.
    transaction(&db, |db| {
        crate::flows::shipping::complete_job_step(
            db,
            "pack",
            &pack,
            &json!({"parcels": [{"items": [{"line_no": 1, "quantity": 1}]}]}),
            Utc::now(),
        )
    })
    .unwrap();
    let hand = job(&db, &fo, "handover");
    assert_eq!(job_view(&db, &hand).unwrap()["data"]["to"], "customer");
    assert_eq!(
        carrier_pickups(&db, None).unwrap()["carriers"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "not a carrier pickup"
    );
    transaction(&db, |db| {
        crate::flows::shipping::complete_job_step(db, "handover", &hand, &json!({}), Utc::now())
    })
    .unwrap();
    assert_eq!(b(&db, &id)[0].delivered, 1, "handed over = delivered");
    let st = db
        .execute(
            "SELECT fulfillment_status FROM orders WHERE id = ?",
            params![id.clone()],
        )
        .unwrap();
    assert_eq!(st.first().unwrap().str("fulfillment_status"), "delivered");

    // A carrier exception on a shipped parcel is an action item until it moves on.
    stock(&db, "fc", "B", 1);
    let other = order(&db, "ex", &[("B", 1)]);
    let f2 = fo_of(&db, &other, "fc");
    let name = db
        .execute(
            "SELECT name FROM fulfillment_orders WHERE id = ?",
            params![f2],
        )
        .unwrap()
        .first()
        .unwrap()
        .str("name");
    transaction(&db, |db| {
        crate::flows::shipping::center_event(
            db,
            "fc",
            &json!({"fulfillment_order": name, "tracking_number": "EXC1"}),
            Utc::now(),
        )
    })
    .unwrap();
    let u = |st: Status, raw: &str| Update {
        provider: "aftership",
        tracking_number: "EXC1".into(),
        carrier: None,
        status: st,
        raw_status: raw.into(),
        message: Some("Address issue".into()),
        occurred_at: Some(Utc::now()),
        public_url: None,
    };
    transaction(&db, |db| {
        apply_tracking(db, &u(Status::Exception, "Exception_004"), Utc::now())
    })
    .unwrap();
    let items = action_items(&db).unwrap();
    assert_eq!(items["items"][0]["kind"], "exception");
    assert_eq!(items["items"][0]["tracking_number"], "EXC1");
    transaction(&db, |db| {
        apply_tracking(db, &u(Status::Delivered, "Delivered_001"), Utc::now())
    })
    .unwrap();
    assert_eq!(
        action_items(&db).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_pick_list_goes_by_bin_then_line_with_lines_without_a_bin_first() {
    let db = setup();
    testkit::product(&db, "C", 400, true);
    for sku in ["A", "B", "C"] {
        stock(&db, "wh", sku, 5);
    }
    let now = Utc::now();
    crate::inventory::stock::set_bin(&db, "A", "wh", "C-09", now).unwrap();
    crate::inventory::stock::set_bin(&db, "C", "wh", "A-01", now).unwrap();
    let id = order(&db, "bins", &[("A", 1), ("B", 2), ("C", 3)]);
    let pick = job(&db, &fo_of(&db, &id, "wh"), "pick");
    let v = job_view(&db, &pick).unwrap();
    let list: Vec<(String, Json)> = v["data"]["checklist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["sku"].as_str().unwrap().to_string(), l["bin"].clone()))
        .collect();
    assert_eq!(
        list,
        [
            ("B".to_string(), Json::Null),
            ("C".to_string(), json!("A-01")),
            ("A".to_string(), json!("C-09")),
        ]
    );
}
