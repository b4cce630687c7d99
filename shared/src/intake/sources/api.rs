//! Waybill's own order format (JSON, or XML with the same element names), used by
//! `POST /api/orders` and the CRM batch endpoint. See docs/api.md.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{checked, country, non_empty, ptr, Reader};
use crate::kernel::error::Error;
use crate::kernel::money::Currency;
use crate::orders::model::{
    Address, Customer, FinancialStatus, NewLine, NewOrder, Payment, ShippingLine, Source,
};

pub(crate) fn address(r: &mut Reader, v: &Value, key: &str, base: &str) -> Option<Address> {
    let a = v.get(key)?;
    if a.is_null() {
        return None;
    }
    let p = ptr(base, key);
    if !a.is_object() {
        r.err(p, "must be an object");
        return None;
    }
    let lat = coordinate(r, a, "latitude", &p);
    let lon = coordinate(r, a, "longitude", &p);
    Some(Address {
        first_name: non_empty(r.opt_str(a, "first_name", &p)),
        last_name: non_empty(r.opt_str(a, "last_name", &p)),
        company: non_empty(r.opt_str(a, "company", &p)),
        line1: r.req_str(a, "line1", &p),
        line2: non_empty(r.opt_str(a, "line2", &p)),
        city: r.req_str(a, "city", &p),
        region: non_empty(r.opt_str(a, "region", &p)),
        postal_code: non_empty(r.opt_str(a, "postal_code", &p)),
        country_code: country(r.opt_str(a, "country_code", &p)),
        phone: non_empty(r.opt_str(a, "phone", &p)),
        latitude: lat,
        longitude: lon,
    })
}

fn coordinate(r: &mut Reader, v: &Value, key: &str, base: &str) -> Option<f64> {
    match v.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(f) => Some(f),
            Err(_) => {
                r.err(ptr(base, key), "must be a number");
                None
            }
        },
        Some(_) => {
            r.err(ptr(base, key), "must be a number");
            None
        }
    }
}

/// Maps one order document; `prefix` locates it in a batch (`/orders/3`).
pub fn map_order(v: &Value, prefix: &str, now: DateTime<Utc>) -> Result<NewOrder, Error> {
    let mut r = Reader::default();
    if !v.is_object() {
        return Err(Error::invalid(vec![crate::kernel::error::FieldError::new(
            if prefix.is_empty() { "/" } else { prefix },
            "an order must be a JSON object",
        )]));
    }
    let b = prefix;
    let currency = r.currency(v, "currency", b);
    let external_id = r.req_str(v, "external_id", b);
    let placed_at = r.time(v, "placed_at", b).unwrap_or(now);
    let c = v.get("customer").cloned().unwrap_or(Value::Null);
    let cp = ptr(b, "customer");
    let customer = Customer {
        email: non_empty(r.opt_str(&c, "email", &cp)),
        first_name: non_empty(r.opt_str(&c, "first_name", &cp)),
        last_name: non_empty(r.opt_str(&c, "last_name", &cp)),
        phone: non_empty(r.opt_str(&c, "phone", &cp)),
        external_id: non_empty(r.opt_str(&c, "external_id", &cp)),
    };
    let mut lines = Vec::new();
    let lp = ptr(b, "lines");
    if v.get("lines").is_none() {
        r.err(lp.clone(), "is required");
    }
    for (i, l) in r.array(v, "lines", b).to_vec().iter().enumerate() {
        let p = format!("{lp}/{i}");
        let quantity = r.int(l, "quantity", &p).unwrap_or(0);
        let unit_price = match r.opt_money(l, "unit_price", &p, currency) {
            Some(m) => m,
            None => {
                if l.get("unit_price").is_none() {
                    r.err(ptr(&p, "unit_price"), "is required");
                }
                0
            }
        };
        let subtotal = unit_price.saturating_mul(quantity.max(0));
        lines.push(NewLine {
            external_id: non_empty(r.opt_str(l, "external_id", &p)),
            sku: r.req_str(l, "sku", &p),
            name: non_empty(r.opt_str(l, "name", &p)).unwrap_or_default(),
            quantity,
            unit_price,
            subtotal,
            discount: r.money(l, "discount", &p, currency),
            tax: r.money(l, "tax", &p, currency),
            requires_shipping: r.opt_bool(l, "requires_shipping", &p).unwrap_or(true),
        });
    }
    spread_order_amounts(&mut r, v, b, currency, &mut lines);
    let mut shipping_lines = Vec::new();
    let sp = ptr(b, "shipping_lines");
    for (i, s) in r.array(v, "shipping_lines", b).to_vec().iter().enumerate() {
        let p = format!("{sp}/{i}");
        let method = r.req_str(s, "method", &p);
        shipping_lines.push(ShippingLine {
            title: non_empty(r.opt_str(s, "title", &p)).unwrap_or_else(|| method.clone()),
            method,
            price: r.money(s, "price", &p, currency),
            discount: r.money(s, "discount", &p, currency),
            tax: r.money(s, "tax", &p, currency),
        });
    }
    let financial_status = match r.opt_str(v, "financial_status", b) {
        None => FinancialStatus::Pending,
        Some(s) => FinancialStatus::parse(&s).unwrap_or_else(|| {
            r.err(ptr(b, "financial_status"), format!("'{s}' is not one of pending, authorized, partially_paid, paid, partially_refunded, refunded, voided"));
            FinancialStatus::Pending
        }),
    };
    let pay = v.get("payment").cloned().unwrap_or(Value::Null);
    let pp = ptr(b, "payment");
    let payment = Payment {
        gateway: non_empty(r.opt_str(&pay, "gateway", &pp)),
        reference: non_empty(r.opt_str(&pay, "reference", &pp)),
        amount: r.opt_money(&pay, "amount", &pp, currency),
        authorization_expires_at: r.time(&pay, "authorization_expires_at", &pp),
    };
    let tags = r
        .array(v, "tags", b)
        .iter()
        .filter_map(|t| t.as_str().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    let order = NewOrder {
        source: Source::Api,
        external_id,
        external_number: non_empty(r.opt_str(v, "number", b)),
        channel: non_empty(r.opt_str(v, "channel", b)).unwrap_or_else(|| "api".into()),
        currency: currency.unwrap_or(Currency::from_code("USD").expect("USD")),
        placed_at,
        customer,
        shipping_address: address(&mut r, v, "shipping_address", b),
        billing_address: address(&mut r, v, "billing_address", b),
        lines,
        shipping_lines,
        taxes_included: r.opt_bool(v, "taxes_included", b).unwrap_or(false),
        financial_status,
        payment,
        holds: Vec::new(),
        note: non_empty(r.opt_str(v, "note", b)),
        tags,
        source_total: r.opt_money(v, "total", b, currency),
        cancelled: false,
        pickup_location: r
            .opt_str(v, "pickup_location", b)
            .map(|s| s.trim().to_string()),
        preferred_facility: non_empty(r.opt_str(v, "facility", b)),
        source_modified_at: None,
        source_version: None,
    };
    checked(order, r, prefix)
}

/// An order-level discount (a cart coupon, as CRM exports carry it) and an
/// order-level tax are spread over the lines in proportion to what each line
/// charges, by the largest-remainder rule: the parts add up exactly.
fn spread_order_amounts(
    r: &mut Reader,
    v: &Value,
    b: &str,
    currency: Option<Currency>,
    lines: &mut [NewLine],
) {
    for (key, is_tax) in [("discount", false), ("tax", true)] {
        let Some(amount) = r.opt_money(v, key, b, currency) else {
            continue;
        };
        if amount < 0 {
            r.err(ptr(b, key), "must not be negative");
            continue;
        }
        let weights: Vec<i64> = lines
            .iter()
            .map(|l| (l.subtotal - l.discount).max(0))
            .collect();
        if weights.iter().all(|w| *w == 0) && amount > 0 {
            r.err(ptr(b, key), "the lines charge nothing to spread it over");
            continue;
        }
        for (l, part) in lines
            .iter_mut()
            .zip(crate::kernel::money::allocate(amount, &weights))
        {
            if is_tax {
                l.tax += part;
            } else {
                l.discount += part;
            }
        }
    }
}

// ---- XML ----

/// Elements that hold a list of like children.
const LIST_ELEMENTS: &[&str] = &["orders", "lines", "shipping_lines", "tags"];
/// The deepest nesting an XML order document may have (`orders/order/lines/line/...`
/// needs six); deeper is refused before it is built, so no document becomes a
/// value too deep to handle.
pub const MAX_XML_DEPTH: usize = 16;
const INTEGER_ELEMENTS: &[&str] = &["quantity"];
const BOOL_ELEMENTS: &[&str] = &["requires_shipping", "taxes_included"];

/// Reads `<orders><order>...</order>...</orders>` into JSON values shaped like the JSON API.
pub fn xml_orders(body: &[u8]) -> Result<Vec<Value>, Error> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::bad_request("the XML document is not UTF-8"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(false);
    // A stack of (element name, children, text).
    let mut stack: Vec<(String, Vec<(String, Value)>, String)> =
        vec![("#document".into(), Vec::new(), String::new())];
    loop {
        let ev = reader.read_event().map_err(|e| {
            Error::bad_request(format!(
                "malformed XML at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match ev {
            Event::Start(e) => {
                if stack.len() > MAX_XML_DEPTH {
                    return Err(Error::bad_request(format!(
                        "the XML document nests deeper than {MAX_XML_DEPTH} elements"
                    )));
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push((name, Vec::new(), String::new()));
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let v = finish_element(&name, Vec::new(), String::new());
                stack.last_mut().expect("document").1.push((name, v));
            }
            Event::Text(t) => {
                let s = t
                    .decode()
                    .map_err(|e| Error::bad_request(format!("malformed XML text: {e}")))?;
                let s = quick_xml::escape::unescape(&s)
                    .map_err(|e| Error::bad_request(format!("malformed XML entity: {e}")))?;
                stack.last_mut().expect("document").2.push_str(&s);
            }
            Event::CData(t) => {
                stack
                    .last_mut()
                    .expect("document")
                    .2
                    .push_str(&String::from_utf8_lossy(&t));
            }
            Event::GeneralRef(r) => {
                let name = String::from_utf8_lossy(&r).into_owned();
                let ch = match name.as_str() {
                    "amp" => "&".to_string(),
                    "lt" => "<".to_string(),
                    "gt" => ">".to_string(),
                    "quot" => "\"".to_string(),
                    "apos" => "'".to_string(),
                    n if n.starts_with('#') => {
                        let code = if let Some(h) = n.strip_prefix("#x") {
                            u32::from_str_radix(h, 16).ok()
                        } else {
                            n[1..].parse().ok()
                        };
                        code.and_then(char::from_u32)
                            .map(String::from)
                            .ok_or_else(|| {
                                Error::bad_request(format!(
                                    "malformed XML character reference &{n};"
                                ))
                            })?
                    }
                    other => {
                        return Err(Error::bad_request(format!("unknown XML entity &{other};")))
                    }
                };
                stack.last_mut().expect("document").2.push_str(&ch);
            }
            Event::End(_) => {
                let (name, children, text) = stack.pop().expect("balanced");
                if stack.is_empty() {
                    return Err(Error::bad_request("malformed XML: unbalanced end tag"));
                }
                let v = finish_element(&name, children, text);
                stack.last_mut().expect("document").1.push((name, v));
            }
            Event::Eof => break,
            Event::DocType(_) => {
                return Err(Error::bad_request(
                    "XML document type declarations are not accepted",
                ))
            }
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err(Error::bad_request("malformed XML: unclosed element"));
    }
    let (_, mut roots, _) = stack.pop().expect("document");
    match roots.pop() {
        Some((name, Value::Array(orders))) if name == "orders" && roots.is_empty() => Ok(orders),
        Some((name, v)) if name == "order" && roots.is_empty() => Ok(vec![v]),
        _ => Err(Error::bad_request(
            "the XML document must have a single <orders> (or <order>) root element",
        )),
    }
}

fn finish_element(name: &str, children: Vec<(String, Value)>, text: String) -> Value {
    if LIST_ELEMENTS.contains(&name) {
        return Value::Array(children.into_iter().map(|(_, v)| v).collect());
    }
    if children.is_empty() {
        let t = text.trim();
        if INTEGER_ELEMENTS.contains(&name) {
            if let Ok(i) = t.parse::<i64>() {
                return Value::from(i);
            }
        }
        if BOOL_ELEMENTS.contains(&name) {
            match t {
                "true" | "1" => return Value::Bool(true),
                "false" | "0" => return Value::Bool(false),
                _ => {}
            }
        }
        return Value::String(t.to_string());
    }
    let mut m = Map::new();
    for (k, v) in children {
        m.insert(k, v);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_order_level_discount_and_tax_are_spread_over_the_lines_exactly() {
        let v = serde_json::json!({
            "external_id": "D-1", "currency": "EUR",
            "shipping_address": {"line1": "x", "city": "Berlin", "country_code": "DE"},
            "lines": [
                {"sku": "A", "quantity": 1, "unit_price": "10.00"},
                {"sku": "B", "quantity": 1, "unit_price": "10.00"},
                {"sku": "C", "quantity": 1, "unit_price": "10.00", "discount": "5.00"}
            ],
            "discount": "1.00", "tax": "0.05"
        });
        let o = super::map_order(&v, "", chrono::Utc::now()).unwrap();
        // Weights 1000, 1000, 500: 1.00 → 40, 40, 20; 0.05 → 2, 2, 1.
        let d: Vec<i64> = o.lines.iter().map(|l| l.discount).collect();
        let t: Vec<i64> = o.lines.iter().map(|l| l.tax).collect();
        assert_eq!(d, vec![40, 40, 500 + 20]);
        assert_eq!(t, vec![2, 2, 1]);
        assert_eq!(o.totals().total, 3000 - 500 - 100 + 5);
        let mut bad = v.clone();
        bad["discount"] = "-1".into();
        assert!(super::map_order(&bad, "", chrono::Utc::now()).is_err());
    }

    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-11-20T10:00:00Z".parse().unwrap()
    }

    fn order() -> Value {
        json!({
            "external_id": "CRM-1", "currency": "KWD", "channel": "crm",
            "customer": {"email": "a@example.com", "first_name": "Ada", "last_name": "L"},
            "shipping_address": {"line1": "1 Road", "city": "Kuwait City", "country_code": "kw"},
            "lines": [{"sku": "A", "name": "Thing", "quantity": 3, "unit_price": "1.005", "discount": "0.015", "tax": "0.100"}],
            "shipping_lines": [{"method": "standard", "price": "2.000"}],
            "financial_status": "authorized"
        })
    }

    #[test]
    fn maps_money_exactly() {
        let o = map_order(&order(), "", now()).unwrap();
        assert_eq!(o.lines[0].unit_price, 1005);
        assert_eq!(o.lines[0].subtotal, 3015);
        let t = o.totals();
        assert_eq!(
            (t.subtotal, t.discount, t.shipping, t.tax, t.total),
            (3015, 15, 2000, 100, 5100)
        );
        assert_eq!(o.shipping_address.unwrap().country_code, "KW");
        assert_eq!(o.placed_at, now());
    }

    #[test]
    fn reports_every_bad_field() {
        let mut v = order();
        v["currency"] = json!("XXX");
        v["lines"][0]["quantity"] = json!("three");
        let e = map_order(&v, "", now()).unwrap_err();
        assert_eq!(e.status(), 422);
        let ptrs: Vec<_> = e.errors.iter().map(|f| f.pointer.as_str()).collect();
        assert!(ptrs.contains(&"/currency"), "{ptrs:?}");
        assert!(ptrs.contains(&"/lines/0/quantity"), "{ptrs:?}");

        let mut v = order();
        v["lines"][0]["quantity"] = json!(0);
        assert_eq!(
            map_order(&v, "", now()).unwrap_err().errors[0].pointer,
            "/lines/0/quantity"
        );
        let mut v = order();
        v["lines"][0]["quantity"] = json!(-2);
        assert_eq!(
            map_order(&v, "", now()).unwrap_err().errors[0].pointer,
            "/lines/0/quantity"
        );
        let mut v = order();
        v["lines"] = json!([]);
        assert_eq!(
            map_order(&v, "", now()).unwrap_err().errors[0].pointer,
            "/lines"
        );
        let mut v = order();
        v["lines"][0]["unit_price"] = json!("1.0005");
        assert_eq!(
            map_order(&v, "/orders/2", now()).unwrap_err().errors[0].pointer,
            "/orders/2/lines/0/unit_price"
        );
    }

    #[test]
    fn xml_batch_reads_like_json() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<orders>
  <order>
    <external_id>CRM-7</external_id><currency>EUR</currency>
    <customer><email>b@example.com</email></customer>
    <shipping_address><line1>Hauptstr. 1 &amp; 2</line1><city>Berlin</city><country_code>DE</country_code></shipping_address>
    <lines>
      <line><sku>A</sku><quantity>2</quantity><unit_price>9.99</unit_price></line>
      <line><sku>B</sku><quantity>1</quantity><unit_price>5.00</unit_price><requires_shipping>false</requires_shipping></line>
    </lines>
    <tags><tag>vip</tag></tags>
  </order>
  <order><external_id>CRM-8</external_id><currency>EUR</currency><lines/></order>
</orders>"#;
        let orders = xml_orders(xml).unwrap();
        assert_eq!(orders.len(), 2);
        let o = map_order(&orders[0], "/orders/0", now()).unwrap();
        assert_eq!(o.lines.len(), 2);
        assert_eq!(o.lines[0].subtotal, 1998);
        assert!(!o.lines[1].requires_shipping);
        assert_eq!(o.shipping_address.unwrap().line1, "Hauptstr. 1 & 2");
        assert_eq!(o.tags, vec!["vip"]);
        assert_eq!(
            map_order(&orders[1], "/orders/1", now())
                .unwrap_err()
                .errors[0]
                .pointer,
            "/orders/1/lines"
        );
        assert_eq!(
            xml_orders(b"<orders><order></orders>")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(xml_orders(b"not xml").unwrap_err().status(), 400);
        assert_eq!(
            xml_orders(b"<!DOCTYPE x [<!ENTITY a 'b'>]><orders/>")
                .unwrap_err()
                .status(),
            400
        );
    }
}
