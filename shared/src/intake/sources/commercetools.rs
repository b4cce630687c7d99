//! commercetools: the `OrderCreated` message of a Subscription, delivered over
//! HTTP. The message envelope carries `id` (the message id, used to
//! de-duplicate), `type`, `resource` and the full `order` (unless the payload
//! was too large: `payloadNotIncluded`).
//!
//! Money is `{ "type": "centPrecision", "currencyCode", "centAmount", "fractionDigits" }`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{checked, country, non_empty, ptr, Reader};
use crate::kernel::error::Error;
use crate::kernel::money::Currency;
use crate::orders::model::{
    Address, Customer, FinancialStatus, HoldReason, NewLine, NewOrder, Payment, ShippingLine,
    Source,
};

/// The parts of a message the intake needs.
pub struct Message {
    pub id: String,
    pub kind: String,
    pub order: Option<Value>,
}

pub fn message(v: &Value) -> Result<Message, Error> {
    let mut r = Reader::default();
    let id = r.req_str(v, "id", "");
    let kind = r.req_str(v, "type", "");
    r.finish()?;
    if v.get("payloadNotIncluded").is_some() {
        return Err(Error::unprocessable(
            "the message payload was not included (too large); configure the subscription to deliver full OrderCreated messages",
        ));
    }
    Ok(Message {
        id,
        kind,
        order: v.get("order").cloned(),
    })
}

/// A commercetools Money value in `currency`'s minor units.
fn money(r: &mut Reader, v: Option<&Value>, pointer: &str, currency: Option<Currency>) -> i64 {
    let Some(m) = v.filter(|m| !m.is_null()) else {
        return 0;
    };
    let cent = match m.get("centAmount").and_then(Value::as_i64) {
        Some(c) => c,
        None => {
            r.err(format!("{pointer}/centAmount"), "must be a whole number");
            return 0;
        }
    };
    let code = m
        .get("currencyCode")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(c) = currency {
        if !code.eq_ignore_ascii_case(c.code()) {
            r.err(
                format!("{pointer}/currencyCode"),
                format!("'{code}' differs from the order currency {c}"),
            );
            return 0;
        }
        let digits = m
            .get("fractionDigits")
            .and_then(Value::as_u64)
            .unwrap_or(c.exponent() as u64);
        if digits > 18 {
            r.err(format!("{pointer}/fractionDigits"), "must be at most 18");
            return 0;
        }
        let (digits, exp) = (digits as u32, c.exponent() as u32);
        if digits <= exp {
            return match cent.checked_mul(10i64.pow(exp - digits)) {
                Some(v) => v,
                None => {
                    r.err(format!("{pointer}/centAmount"), "is out of range");
                    0
                }
            };
        }
        let div = 10i64.pow(digits - exp);
        if cent % div != 0 {
            r.err(
                pointer.to_string(),
                format!("{cent} at {digits} digits is not a whole amount in {c}"),
            );
            return 0;
        }
        return cent / div;
    }
    0
}

fn localized(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => m
            .get("en")
            .or_else(|| m.values().next())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

fn address(r: &mut Reader, v: &Value, key: &str) -> Option<Address> {
    let a = v.get(key).filter(|a| a.is_object())?;
    let p = ptr("/order", key);
    let street = [
        r.opt_str(a, "streetName", &p),
        r.opt_str(a, "streetNumber", &p),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.trim().is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Some(Address {
        first_name: non_empty(r.opt_str(a, "firstName", &p)),
        last_name: non_empty(r.opt_str(a, "lastName", &p)),
        company: non_empty(r.opt_str(a, "company", &p)),
        line1: street,
        line2: non_empty(r.opt_str(a, "additionalStreetInfo", &p))
            .or_else(|| non_empty(r.opt_str(a, "additionalAddressInfo", &p))),
        city: r.opt_str(a, "city", &p).unwrap_or_default(),
        region: non_empty(r.opt_str(a, "state", &p))
            .or_else(|| non_empty(r.opt_str(a, "region", &p))),
        postal_code: non_empty(r.opt_str(a, "postalCode", &p)),
        country_code: country(r.opt_str(a, "country", &p)),
        phone: non_empty(r.opt_str(a, "phone", &p))
            .or_else(|| non_empty(r.opt_str(a, "mobile", &p))),
        latitude: None,
        longitude: None,
    })
}

/// Maps the `order` of an OrderCreated message.
pub fn map_order(o: &Value, now: DateTime<Utc>) -> Result<NewOrder, Error> {
    let mut r = Reader::default();
    let base = "/order";
    let total_price = o.get("totalPrice");
    let code = total_price
        .and_then(|m| m.get("currencyCode"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let currency = Currency::from_code(code);
    if currency.is_none() {
        r.err(
            "/order/totalPrice/currencyCode",
            format!("'{code}' is not an ISO 4217 currency code"),
        );
    }
    let external_id = r.req_str(o, "id", base);
    let mut taxes_included = false;
    let lines: Vec<NewLine> = (r.array(o, "lineItems", base).to_vec().iter().enumerate())
        .map(|(i, l)| line_item(&mut r, l, i, currency, base, &mut taxes_included))
        .collect();
    let mut shipping_lines = Vec::new();
    if let Some(si) = o.get("shippingInfo").filter(|s| s.is_object()) {
        let p = format!("{base}/shippingInfo");
        let name = r
            .opt_str(si, "shippingMethodName", &p)
            .unwrap_or_else(|| "shipping".into());
        let price = money(&mut r, si.get("price"), &format!("{p}/price"), currency);
        let discounted = si.get("discountedPrice").and_then(|d| d.get("value"));
        let discount = match discounted {
            Some(d) => (price
                - money(
                    &mut r,
                    Some(d),
                    &format!("{p}/discountedPrice/value"),
                    currency,
                ))
            .max(0),
            None => 0,
        };
        let tax = taxed_amount(&mut r, si.get("taxedPrice"), &p, currency);
        shipping_lines.push(ShippingLine {
            method: name.clone(),
            title: name,
            price,
            discount,
            tax,
        });
    }
    let mut holds = Vec::new();
    let financial_status = match r.opt_str(o, "paymentState", base).as_deref() {
        Some("Paid") | Some("CreditOwed") => FinancialStatus::Paid,
        Some("Failed") => {
            holds.push((
                HoldReason::PaymentFailed,
                "commercetools reports the payment failed".into(),
            ));
            FinancialStatus::Pending
        }
        _ => FinancialStatus::Pending,
    };
    let cancelled = r.opt_str(o, "orderState", base).as_deref() == Some("Cancelled");
    let billing = o.get("billingAddress").cloned().unwrap_or(Value::Null);
    let customer = Customer {
        email: non_empty(r.opt_str(o, "customerEmail", base))
            .or_else(|| non_empty(r.opt_str(&billing, "email", "/order/billingAddress"))),
        first_name: non_empty(r.opt_str(&billing, "firstName", "/order/billingAddress")),
        last_name: non_empty(r.opt_str(&billing, "lastName", "/order/billingAddress")),
        phone: non_empty(r.opt_str(&billing, "phone", "/order/billingAddress")),
        external_id: non_empty(r.opt_str(o, "customerId", base)),
    };
    let total = total_price.map(|t| money(&mut r, Some(t), "/order/totalPrice", currency));
    let source_total = match o.get("taxedPrice").and_then(|t| t.get("totalGross")) {
        Some(g) => Some(money(
            &mut r,
            Some(g),
            "/order/taxedPrice/totalGross",
            currency,
        )),
        None => total,
    };
    let order = NewOrder {
        source: Source::Commercetools,
        external_id,
        external_number: non_empty(r.opt_str(o, "orderNumber", base)),
        channel: "commercetools".into(),
        currency: currency.unwrap_or(Currency::from_code("USD").expect("USD")),
        placed_at: r.time(o, "createdAt", base).unwrap_or(now),
        customer,
        shipping_address: address(&mut r, o, "shippingAddress"),
        billing_address: address(&mut r, o, "billingAddress"),
        lines,
        shipping_lines,
        taxes_included,
        financial_status,
        payment: Payment::default(),
        holds,
        note: None,
        tags: Vec::new(),
        source_total,
        cancelled,
        pickup_location: None,
        preferred_facility: None,
        source_modified_at: r.time(o, "lastModifiedAt", base),
        source_version: o["version"].as_i64(),
    };
    checked(order, r, "")
}

/// One `lineItems[i]`; a line whose tax is included in its price marks the
/// order `taxes_included`.
fn line_item(
    r: &mut Reader,
    l: &Value,
    i: usize,
    currency: Option<Currency>,
    base: &str,
    taxes_included: &mut bool,
) -> NewLine {
    let p = format!("{base}/lineItems/{i}");
    let quantity = r.int(l, "quantity", &p).unwrap_or(0);
    let unit_price = money(
        r,
        l.get("price").and_then(|p| p.get("value")),
        &format!("{p}/price/value"),
        currency,
    );
    let subtotal = unit_price.saturating_mul(quantity.max(0));
    let total = money(r, l.get("totalPrice"), &format!("{p}/totalPrice"), currency);
    let included = l
        .get("taxRate")
        .and_then(|t| t.get("includedInPrice"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    *taxes_included |= included;
    let taxed = l.get("taxedPrice");
    let tax = taxed_amount(r, taxed, &p, currency);
    let sku = l
        .get("variant")
        .and_then(|v| v.get("sku"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let sku = match non_empty(sku) {
        Some(s) => s,
        None => {
            r.err(format!("{p}/variant/sku"), "is required to fulfil the line");
            String::new()
        }
    };
    NewLine {
        external_id: r.opt_str(l, "id", &p),
        sku,
        name: localized(l.get("name")),
        quantity,
        unit_price,
        subtotal,
        // totalPrice is after discounts (and gross when tax is included in the price).
        discount: (subtotal - total).max(0),
        tax,
        requires_shipping: true,
    }
}

/// A `taxedPrice`'s tax: `totalTax`, else gross less net.
fn taxed_amount(r: &mut Reader, taxed: Option<&Value>, p: &str, currency: Option<Currency>) -> i64 {
    match taxed {
        Some(t) if t.get("totalTax").is_some() => money(
            r,
            t.get("totalTax"),
            &format!("{p}/taxedPrice/totalTax"),
            currency,
        ),
        Some(t) => {
            money(
                r,
                t.get("totalGross"),
                &format!("{p}/taxedPrice/totalGross"),
                currency,
            ) - money(
                r,
                t.get("totalNet"),
                &format!("{p}/taxedPrice/totalNet"),
                currency,
            )
        }
        None => 0,
    }
}
