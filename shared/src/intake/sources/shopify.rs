//! Shopify's order webhook payload (REST Admin API `Order` resource, as sent for
//! `orders/create`, `orders/updated` and `orders/cancelled`).
//!
//! Money arrives as decimal strings in the shop currency (`price`, `total_price`);
//! discounts per line come from `discount_allocations` (falling back to the older
//! `total_discount`); tax per line from `tax_lines`. `taxes_included` says whether
//! prices already contain tax.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{checked, country, non_empty, ptr, Reader};
use crate::kernel::error::Error;
use crate::kernel::money::Currency;
use crate::orders::model::SourceTransaction;
use crate::orders::model::{
    Address, Customer, FinancialStatus, HoldReason, NewLine, NewOrder, Payment, ShippingLine,
    Source,
};

fn address(r: &mut Reader, v: &Value, key: &str) -> Option<Address> {
    let a = v.get(key).filter(|a| a.is_object())?;
    let p = ptr("", key);
    Some(Address {
        first_name: non_empty(r.opt_str(a, "first_name", &p)),
        last_name: non_empty(r.opt_str(a, "last_name", &p)),
        company: non_empty(r.opt_str(a, "company", &p)),
        line1: r.opt_str(a, "address1", &p).unwrap_or_default(),
        line2: non_empty(r.opt_str(a, "address2", &p)),
        city: r.opt_str(a, "city", &p).unwrap_or_default(),
        region: non_empty(r.opt_str(a, "province_code", &p))
            .or_else(|| non_empty(r.opt_str(a, "province", &p))),
        postal_code: non_empty(r.opt_str(a, "zip", &p)),
        country_code: country(r.opt_str(a, "country_code", &p)),
        phone: non_empty(r.opt_str(a, "phone", &p)),
        latitude: a.get("latitude").and_then(Value::as_f64),
        longitude: a.get("longitude").and_then(Value::as_f64),
    })
}

/// Sum of `amount` over an array of `{ "amount": "1.00" }` objects.
fn sum_amounts(r: &mut Reader, arr: &[Value], key: &str, base: &str, c: Option<Currency>) -> i64 {
    arr.iter()
        .enumerate()
        .map(|(i, x)| r.money(x, key, &format!("{base}/{i}"), c))
        .sum()
}

/// Maps a Shopify order to the canonical order.
pub fn map_order(v: &Value, now: DateTime<Utc>) -> Result<NewOrder, Error> {
    let mut r = Reader::default();
    if !v.is_object() {
        return Err(Error::unprocessable(
            "the Shopify payload is not an order object",
        ));
    }
    let currency = r.currency(v, "currency", "");
    let external_id = r.req_str(v, "id", "");
    let mut holds = Vec::new();

    let lines: Vec<NewLine> = (r.array(v, "line_items", "").to_vec().iter().enumerate())
        .map(|(i, l)| line_item(&mut r, l, i, currency, &mut holds))
        .collect();

    let shipping_lines: Vec<ShippingLine> =
        (r.array(v, "shipping_lines", "").to_vec().iter().enumerate())
            .map(|(i, s)| shipping_line(&mut r, s, i, currency))
            .collect();

    let financial_status = financial_status(&mut r, v, &mut holds);

    let c = v.get("customer").cloned().unwrap_or(Value::Null);
    let email = non_empty(r.opt_str(v, "email", ""))
        .or_else(|| non_empty(r.opt_str(v, "contact_email", "")));
    let customer = Customer {
        email: email.or_else(|| non_empty(r.opt_str(&c, "email", "/customer"))),
        first_name: non_empty(r.opt_str(&c, "first_name", "/customer")),
        last_name: non_empty(r.opt_str(&c, "last_name", "/customer")),
        phone: non_empty(r.opt_str(&c, "phone", "/customer"))
            .or_else(|| non_empty(r.opt_str(v, "phone", ""))),
        external_id: r.opt_str(&c, "id", "/customer"),
    };
    let gateway = r
        .array(v, "payment_gateway_names", "")
        .first()
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| non_empty(r.opt_str(v, "gateway", "")));
    let tags = r
        .opt_str(v, "tags", "")
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let placed_at = r
        .time(v, "processed_at", "")
        .or_else(|| r.time(v, "created_at", ""))
        .unwrap_or(now);
    let cancelled = matches!(v.get("cancelled_at"), Some(x) if !x.is_null());
    let order = NewOrder {
        source: Source::Shopify,
        external_id,
        external_number: non_empty(r.opt_str(v, "name", "")),
        channel: "shopify".into(),
        currency: currency.unwrap_or(Currency::from_code("USD").expect("USD")),
        placed_at,
        customer,
        shipping_address: address(&mut r, v, "shipping_address"),
        billing_address: address(&mut r, v, "billing_address"),
        lines,
        shipping_lines,
        taxes_included: r.opt_bool(v, "taxes_included", "").unwrap_or(false),
        financial_status,
        payment: Payment {
            gateway,
            ..Default::default()
        },
        holds,
        note: non_empty(r.opt_str(v, "note", "")),
        tags,
        source_total: r.opt_money(v, "total_price", "", currency),
        cancelled,
        pickup_location: None,
        preferred_facility: None,
        source_modified_at: r.time(v, "updated_at", ""),
        source_version: None,
    };
    checked(order, r, "")
}

/// One `line_items[i]`; a line without a SKU maps to its variant (held for review).
fn line_item(
    r: &mut Reader,
    l: &Value,
    i: usize,
    currency: Option<Currency>,
    holds: &mut Vec<(HoldReason, String)>,
) -> NewLine {
    let p = format!("/line_items/{i}");
    let quantity = r.int(l, "quantity", &p).unwrap_or(0);
    let unit_price = r.money(l, "price", &p, currency);
    let allocations = r.array(l, "discount_allocations", &p).to_vec();
    let discount = if allocations.is_empty() {
        r.money(l, "total_discount", &p, currency)
    } else {
        sum_amounts(
            r,
            &allocations,
            "amount",
            &format!("{p}/discount_allocations"),
            currency,
        )
    };
    let tax_lines = r.array(l, "tax_lines", &p).to_vec();
    let tax = sum_amounts(r, &tax_lines, "price", &format!("{p}/tax_lines"), currency);
    let sku = match non_empty(r.opt_str(l, "sku", &p)) {
        Some(s) => s,
        None => {
            let fallback = match r.opt_str(l, "variant_id", &p) {
                Some(id) => format!("shopify-variant-{id}"),
                None => format!(
                    "shopify-line-{}",
                    r.opt_str(l, "id", &p).unwrap_or_else(|| i.to_string())
                ),
            };
            holds.push((
                HoldReason::ManualReview,
                format!("line item {i} has no SKU; mapped to {fallback}"),
            ));
            fallback
        }
    };
    let name = non_empty(r.opt_str(l, "name", &p))
        .or_else(|| non_empty(r.opt_str(l, "title", &p)))
        .unwrap_or_default();
    NewLine {
        external_id: r.opt_str(l, "id", &p),
        sku,
        name,
        quantity,
        unit_price,
        subtotal: unit_price.saturating_mul(quantity.max(0)),
        discount,
        tax,
        requires_shipping: r.opt_bool(l, "requires_shipping", &p).unwrap_or(true),
    }
}

/// One `shipping_lines[i]`: its discount from allocations or `discounted_price`.
fn shipping_line(r: &mut Reader, s: &Value, i: usize, currency: Option<Currency>) -> ShippingLine {
    let p = format!("/shipping_lines/{i}");
    let title = r.opt_str(s, "title", &p).unwrap_or_default();
    let price = r.money(s, "price", &p, currency);
    let allocations = r.array(s, "discount_allocations", &p).to_vec();
    let discount = if allocations.is_empty() {
        match r.opt_money(s, "discounted_price", &p, currency) {
            Some(d) if d <= price => price - d,
            _ => 0,
        }
    } else {
        sum_amounts(
            r,
            &allocations,
            "amount",
            &format!("{p}/discount_allocations"),
            currency,
        )
    };
    let tax_lines = r.array(s, "tax_lines", &p).to_vec();
    let tax = sum_amounts(r, &tax_lines, "price", &format!("{p}/tax_lines"), currency);
    let method = non_empty(r.opt_str(s, "code", &p)).unwrap_or_else(|| title.clone());
    ShippingLine {
        method,
        title,
        price,
        discount,
        tax,
    }
}

/// `financial_status`: pending waits for payment, expired is a failed payment.
fn financial_status(
    r: &mut Reader,
    v: &Value,
    holds: &mut Vec<(HoldReason, String)>,
) -> FinancialStatus {
    let fin = r
        .opt_str(v, "financial_status", "")
        .unwrap_or_else(|| "pending".into());
    match fin.as_str() {
        "pending" => {
            holds.push((
                HoldReason::AwaitingPayment,
                "Shopify reports the payment as pending".into(),
            ));
            FinancialStatus::Pending
        }
        "expired" => {
            holds.push((
                HoldReason::PaymentFailed,
                "the payment authorization expired".into(),
            ));
            FinancialStatus::Pending
        }
        other => FinancialStatus::parse(other).unwrap_or_else(|| {
            r.err(
                "/financial_status",
                format!("unknown financial status '{other}'"),
            );
            FinancialStatus::Pending
        }),
    }
}

pub fn map_transaction(v: &Value) -> Result<SourceTransaction, Error> {
    let mut r = Reader::default();
    if !v.is_object() {
        return Err(Error::unprocessable(
            "the Shopify payload is not a transaction object",
        ));
    }
    let currency = r.currency(v, "currency", "");
    let id = r.req_str(v, "id", "");
    let order_id = r.req_str(v, "order_id", "");
    let kind = r.req_str(v, "kind", "");
    if !kind.is_empty()
        && !matches!(
            kind.as_str(),
            "authorization"
                | "capture"
                | "sale"
                | "void"
                | "refund"
                | "change"
                | "suggested_refund"
        )
    {
        r.err("/kind", format!("unknown transaction kind '{kind}'"));
    }
    let status = r
        .opt_str(v, "status", "")
        .unwrap_or_else(|| "success".into());
    let amount = r.money(v, "amount", "", currency);
    if amount < 0 {
        r.err("/amount", "must not be negative");
    }
    let t = SourceTransaction {
        id,
        order_id,
        kind,
        status,
        amount,
        currency: currency.unwrap_or(Currency::from_code("USD").expect("USD")),
        gateway: non_empty(r.opt_str(v, "gateway", "")),
        authorization: non_empty(r.opt_str(v, "authorization", "")),
        authorization_expires_at: r.time(v, "authorization_expires_at", ""),
    };
    r.finish()?;
    Ok(t)
}
