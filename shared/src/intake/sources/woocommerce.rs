//! WooCommerce's order webhook payload (REST API v3 order object, as sent for
//! `order.created`, `order.updated`, `order.deleted`).
//!
//! WooCommerce line `subtotal` (before coupons) and `total` (after) exclude tax
//! even when the shop enters prices with tax; `total_tax` is separate. So the
//! canonical order has `taxes_included = false` and line discount = subtotal - total.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{checked, country, non_empty, ptr, Reader};
use crate::kernel::error::Error;
use crate::kernel::money::Currency;
use crate::orders::model::{
    Address, Customer, FinancialStatus, HoldReason, NewLine, NewOrder, Payment, ShippingLine,
    Source,
};

fn address(r: &mut Reader, v: &Value, key: &str) -> Option<Address> {
    let a = v.get(key).filter(|a| a.is_object())?;
    let p = ptr("", key);
    let addr = Address {
        first_name: non_empty(r.opt_str(a, "first_name", &p)),
        last_name: non_empty(r.opt_str(a, "last_name", &p)),
        company: non_empty(r.opt_str(a, "company", &p)),
        line1: r.opt_str(a, "address_1", &p).unwrap_or_default(),
        line2: non_empty(r.opt_str(a, "address_2", &p)),
        city: r.opt_str(a, "city", &p).unwrap_or_default(),
        region: non_empty(r.opt_str(a, "state", &p)),
        postal_code: non_empty(r.opt_str(a, "postcode", &p)),
        country_code: country(r.opt_str(a, "country", &p)),
        phone: non_empty(r.opt_str(a, "phone", &p)),
        latitude: None,
        longitude: None,
    };
    // WooCommerce sends empty strings for an address that was never filled in.
    (!super::is_empty_address(&addr)).then_some(addr)
}

pub fn map_order(v: &Value, now: DateTime<Utc>) -> Result<NewOrder, Error> {
    let mut r = Reader::default();
    if !v.is_object() {
        return Err(Error::unprocessable(
            "the WooCommerce payload is not an order object",
        ));
    }
    let currency = r.currency(v, "currency", "");
    let external_id = r.req_str(v, "id", "");
    let mut holds = Vec::new();

    let lines: Vec<NewLine> = (r.array(v, "line_items", "").to_vec().iter().enumerate())
        .map(|(i, l)| line_item(&mut r, l, i, currency, &mut holds))
        .collect();
    let mut pickup_location = None;
    let shipping_lines: Vec<ShippingLine> =
        (r.array(v, "shipping_lines", "").to_vec().iter().enumerate())
            .map(|(i, s)| shipping_line(&mut r, s, i, currency, &mut pickup_location))
            .collect();
    let status = r
        .opt_str(v, "status", "")
        .unwrap_or_else(|| "pending".into());
    let mut cancelled = false;
    // WooCommerce Stripe Gateway with "capture later": the order waits on-hold
    // with the charge authorized but not captured (`_stripe_charge_captured` =
    // `no`) and the PaymentIntent in `_stripe_intent_id`.
    let meta = |key: &str| -> Option<String> {
        v["meta_data"]
            .as_array()?
            .iter()
            .find(|m| m["key"] == key)
            .and_then(|m| m["value"].as_str())
            .map(str::to_string)
    };
    let stripe_intent = meta("_stripe_intent_id").filter(|i| i.starts_with("pi_"));
    let authorized_only = meta("_stripe_charge_captured").as_deref() == Some("no");
    let financial_status = match status.as_str() {
        "on-hold" | "processing" if authorized_only => FinancialStatus::Authorized,
        "pending" | "on-hold" => {
            holds.push((
                HoldReason::AwaitingPayment,
                format!("WooCommerce status '{status}': payment not yet received"),
            ));
            FinancialStatus::Pending
        }
        "failed" => {
            holds.push((
                HoldReason::PaymentFailed,
                "WooCommerce reports the payment failed".into(),
            ));
            FinancialStatus::Pending
        }
        "processing" | "completed" => FinancialStatus::Paid,
        "refunded" => {
            cancelled = true;
            FinancialStatus::Refunded
        }
        "cancelled" | "trash" => {
            cancelled = true;
            FinancialStatus::Voided
        }
        // Custom statuses from extensions: keep the order, let an operator decide.
        other => {
            holds.push((
                HoldReason::ManualReview,
                format!("unknown WooCommerce status '{other}'"),
            ));
            FinancialStatus::Pending
        }
    };
    let billing = v.get("billing").cloned().unwrap_or(Value::Null);
    let customer = Customer {
        email: non_empty(r.opt_str(&billing, "email", "/billing")),
        first_name: non_empty(r.opt_str(&billing, "first_name", "/billing")),
        last_name: non_empty(r.opt_str(&billing, "last_name", "/billing")),
        phone: non_empty(r.opt_str(&billing, "phone", "/billing")),
        external_id: r.opt_str(v, "customer_id", "").filter(|c| c != "0"),
    };
    let placed_at = r.time(v, "date_created_gmt", "").unwrap_or(now);
    let shipping_address = address(&mut r, v, "shipping").or_else(|| address(&mut r, v, "billing"));
    let order = NewOrder {
        source: Source::Woocommerce,
        external_id,
        external_number: non_empty(r.opt_str(v, "number", "")),
        channel: "woocommerce".into(),
        currency: currency.unwrap_or(Currency::from_code("USD").expect("USD")),
        placed_at,
        customer,
        shipping_address,
        billing_address: address(&mut r, v, "billing"),
        lines,
        shipping_lines,
        taxes_included: false,
        financial_status,
        payment: Payment {
            gateway: non_empty(r.opt_str(v, "payment_method", "")),
            reference: stripe_intent.or_else(|| non_empty(r.opt_str(v, "transaction_id", ""))),
            ..Default::default()
        },
        holds,
        note: non_empty(r.opt_str(v, "customer_note", "")),
        tags: Vec::new(),
        source_total: r.opt_money(v, "total", "", currency),
        cancelled,
        pickup_location,
        preferred_facility: None,
        source_modified_at: r.time(v, "date_modified_gmt", ""),
        source_version: None,
    };
    checked(order, r, "")
}

/// One `shipping_lines[i]`; a local pickup names its location in `pickup`.
fn shipping_line(
    r: &mut Reader,
    s: &Value,
    i: usize,
    currency: Option<Currency>,
    pickup: &mut Option<String>,
) -> ShippingLine {
    let p = format!("/shipping_lines/{i}");
    let title = r.opt_str(s, "method_title", &p).unwrap_or_default();
    // WooCommerce's "Local pickup" (method `local_pickup`, classic) and the
    // block checkout's pickup locations (method `pickup_location`, the chosen
    // location's name in the `pickup_location` meta).
    let method_id = s["method_id"].as_str().unwrap_or_default();
    if method_id == "local_pickup" || method_id == "pickup_location" {
        let location = s["meta_data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["key"] == "pickup_location")
            .and_then(|m| m["value"].as_str())
            .unwrap_or_default();
        *pickup = Some(location.trim().to_string());
    }
    ShippingLine {
        method: non_empty(r.opt_str(s, "method_id", &p)).unwrap_or_else(|| title.clone()),
        title,
        price: r.money(s, "total", &p, currency),
        discount: 0,
        tax: r.money(s, "total_tax", &p, currency),
    }
}

/// One `line_items[i]`; a line without a SKU maps to its product (held for review).
fn line_item(
    r: &mut Reader,
    l: &Value,
    i: usize,
    currency: Option<Currency>,
    holds: &mut Vec<(HoldReason, String)>,
) -> NewLine {
    let p = format!("/line_items/{i}");
    let quantity = r.int(l, "quantity", &p).unwrap_or(0);
    let subtotal = r.money(l, "subtotal", &p, currency);
    let total = r.money(l, "total", &p, currency);
    let tax = r.money(l, "total_tax", &p, currency);
    let sku = match non_empty(r.opt_str(l, "sku", &p)) {
        Some(s) => s,
        None => {
            let pid = r
                .opt_str(l, "variation_id", &p)
                .filter(|x| x != "0")
                .or_else(|| r.opt_str(l, "product_id", &p));
            let fallback = format!("woo-product-{}", pid.unwrap_or_else(|| i.to_string()));
            holds.push((
                HoldReason::ManualReview,
                format!("line item {i} has no SKU; mapped to {fallback}"),
            ));
            fallback
        }
    };
    NewLine {
        external_id: r.opt_str(l, "id", &p),
        sku,
        name: r.opt_str(l, "name", &p).unwrap_or_default(),
        quantity,
        unit_price: if quantity > 0 { subtotal / quantity } else { 0 },
        subtotal,
        discount: (subtotal - total).max(0),
        tax,
        requires_shipping: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Value {
        serde_json::from_str(include_str!(
            "../../../../tests/fixtures/woocommerce/order.json"
        ))
        .unwrap()
    }

    #[test]
    fn local_pickup_becomes_click_and_collect_at_the_named_location() {
        let o = map_order(&fixture(), Utc::now()).unwrap();
        assert_eq!(o.pickup_location, None, "flat_rate ships");
        let mut v = fixture();
        // The block checkout's pickup locations: method `pickup_location`, the location in the meta.
        v["shipping_lines"][0]["method_id"] = "pickup_location".into();
        v["shipping_lines"][0]["meta_data"] = serde_json::json!([
            {"id": 1, "key": "pickup_location", "value": "Hamburg Store"},
            {"id": 2, "key": "pickup_address", "value": "Jungfernstieg 1, Hamburg"}
        ]);
        let o = map_order(&v, Utc::now()).unwrap();
        assert_eq!(o.pickup_location.as_deref(), Some("Hamburg Store"));
        // Classic "Local pickup" names no location: any click & collect facility.
        v["shipping_lines"][0]["method_id"] = "local_pickup".into();
        v["shipping_lines"][0]["meta_data"] = serde_json::json!([]);
        let o = map_order(&v, Utc::now()).unwrap();
        assert_eq!(o.pickup_location.as_deref(), Some(""));
    }

    #[test]
    fn a_stripe_authorization_waiting_on_hold_is_captured_by_waybill() {
        let mut v = fixture();
        v["status"] = "on-hold".into();
        v["payment_method"] = "stripe".into();
        v["transaction_id"] = "ch_3Q".into();
        v["meta_data"] = serde_json::json!([
            {"id": 1, "key": "_stripe_intent_id", "value": "pi_3QabcDEF"},
            {"id": 2, "key": "_stripe_charge_captured", "value": "no"}
        ]);
        let o = map_order(&v, Utc::now()).unwrap();
        assert_eq!(o.financial_status, FinancialStatus::Authorized);
        assert!(o.holds.is_empty(), "{:?}", o.holds);
        assert_eq!(o.payment.reference.as_deref(), Some("pi_3QabcDEF"));
        assert_eq!(crate::payments::capture::gateway_for(&o).0, "stripe");
        // Captured already (or another gateway on hold): as before.
        v["meta_data"][1]["value"] = "yes".into();
        let o = map_order(&v, Utc::now()).unwrap();
        assert_eq!(o.financial_status, FinancialStatus::Pending);
        assert_eq!(o.holds[0].0, HoldReason::AwaitingPayment);
    }
}
