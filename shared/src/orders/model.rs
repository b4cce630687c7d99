//! The canonical order: what every source's payload becomes.
//!
//! Lines track quantities in buckets; order-level statuses are derived from the
//! buckets and the holds, never stored as independent truth.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kernel::error::FieldError;
use crate::kernel::money::{Currency, Money};

/// Where an order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Shopify,
    Woocommerce,
    Commercetools,
    Api,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Shopify => "shopify",
            Source::Woocommerce => "woocommerce",
            Source::Commercetools => "commercetools",
            Source::Api => "api",
        }
    }
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "shopify" => Some(Source::Shopify),
            "woocommerce" => Some(Source::Woocommerce),
            "commercetools" => Some(Source::Commercetools),
            "api" => Some(Source::Api),
            _ => None,
        }
    }
}

/// Hold reasons (Shopify's fulfillment hold reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    AwaitingPayment,
    PaymentFailed,
    HighFraudRisk,
    IncorrectAddress,
    OutOfStock,
    ManualReview,
    Other,
}

impl HoldReason {
    pub const ALL: [HoldReason; 7] = [
        HoldReason::AwaitingPayment,
        HoldReason::PaymentFailed,
        HoldReason::HighFraudRisk,
        HoldReason::IncorrectAddress,
        HoldReason::OutOfStock,
        HoldReason::ManualReview,
        HoldReason::Other,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            HoldReason::AwaitingPayment => "awaiting_payment",
            HoldReason::PaymentFailed => "payment_failed",
            HoldReason::HighFraudRisk => "high_fraud_risk",
            HoldReason::IncorrectAddress => "incorrect_address",
            HoldReason::OutOfStock => "out_of_stock",
            HoldReason::ManualReview => "manual_review",
            HoldReason::Other => "other",
        }
    }
    pub fn parse(s: &str) -> Option<HoldReason> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinancialStatus {
    Pending,
    Authorized,
    PartiallyPaid,
    Paid,
    PartiallyRefunded,
    Refunded,
    Voided,
}

impl FinancialStatus {
    pub const ALL: [FinancialStatus; 7] = [
        FinancialStatus::Pending,
        FinancialStatus::Authorized,
        FinancialStatus::PartiallyPaid,
        FinancialStatus::Paid,
        FinancialStatus::PartiallyRefunded,
        FinancialStatus::Refunded,
        FinancialStatus::Voided,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            FinancialStatus::Pending => "pending",
            FinancialStatus::Authorized => "authorized",
            FinancialStatus::PartiallyPaid => "partially_paid",
            FinancialStatus::Paid => "paid",
            FinancialStatus::PartiallyRefunded => "partially_refunded",
            FinancialStatus::Refunded => "refunded",
            FinancialStatus::Voided => "voided",
        }
    }
    pub fn parse(s: &str) -> Option<FinancialStatus> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The source's customer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl Customer {
    pub fn display_name(&self) -> Option<String> {
        let n = [self.first_name.as_deref(), self.last_name.as_deref()]
            .iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        (!n.is_empty()).then_some(n)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(default)]
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(default)]
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, upper case.
    #[serde(default)]
    pub country_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

/// A line as it arrives (before persistence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    pub external_id: Option<String>,
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    /// Price of one unit before discounts (minor units).
    pub unit_price: i64,
    /// All units before discounts; usually unit_price x quantity.
    pub subtotal: i64,
    /// Discounts allocated to this line.
    pub discount: i64,
    /// Tax on this line (included in the prices when the order's `taxes_included`).
    pub tax: i64,
    pub requires_shipping: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingLine {
    /// The method code routing and carriers key on (`standard`, `express`, ...).
    pub method: String,
    pub title: String,
    pub price: i64,
    #[serde(default)]
    pub discount: i64,
    #[serde(default)]
    pub tax: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The gateway's reference (Stripe PaymentIntent id, Woo transaction id, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The authorized amount when it differs from the order total (minor units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// When the authorization lapses (captures after it are declined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_expires_at: Option<DateTime<Utc>>,
}

/// A normalised order from any source, validated before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub source: Source,
    pub external_id: String,
    pub external_number: Option<String>,
    pub channel: String,
    pub currency: Currency,
    pub placed_at: DateTime<Utc>,
    pub customer: Customer,
    pub shipping_address: Option<Address>,
    pub billing_address: Option<Address>,
    pub lines: Vec<NewLine>,
    pub shipping_lines: Vec<ShippingLine>,
    pub taxes_included: bool,
    pub financial_status: FinancialStatus,
    pub payment: Payment,
    pub holds: Vec<(HoldReason, String)>,
    pub note: Option<String>,
    pub tags: Vec<String>,
    /// The total the source states, checked against the computed total.
    pub source_total: Option<i64>,
    /// The source says the order is already cancelled.
    pub cancelled: bool,
    /// Click & collect: the pickup location (a facility id or name; empty = any
    /// facility offering click & collect).
    pub pickup_location: Option<String>,
    /// A merchant override: ship from this facility only.
    pub preferred_facility: Option<String>,
    /// When the source last modified the order (Shopify `updated_at`,
    /// WooCommerce `date_modified_gmt`, commercetools `lastModifiedAt`): an
    /// update older than the one applied is ignored ([`is_stale_update`]).
    pub source_modified_at: Option<DateTime<Utc>>,
    /// The source's own revision counter, where it has one (commercetools `version`).
    pub source_version: Option<i64>,
}

/// Whether a source update is older than what was applied: by the source's
/// revision counter when both sides have one, else by its modification time.
/// Equal marks are not stale (a redelivery of the same state is "unchanged"),
/// and an order stored without a mark accepts any update.
pub fn is_stale_update(
    applied: (Option<i64>, Option<DateTime<Utc>>),
    incoming: (Option<i64>, Option<DateTime<Utc>>),
) -> bool {
    match (applied, incoming) {
        ((Some(a), _), (Some(b), _)) => b < a,
        ((_, Some(a)), (_, Some(b))) => b < a,
        _ => false,
    }
}

/// Order totals in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub subtotal: i64,
    pub discount: i64,
    pub shipping: i64,
    pub tax: i64,
    pub total: i64,
}

impl Totals {
    pub fn compute(lines: &[NewLine], shipping: &[ShippingLine], taxes_included: bool) -> Totals {
        // Saturating: validation bounds every amount, but totals are computed before it runs.
        let sum = |it: &mut dyn Iterator<Item = i64>| it.fold(0i64, |a, b| a.saturating_add(b));
        let subtotal = sum(&mut lines.iter().map(|l| l.subtotal));
        let discount = sum(&mut lines.iter().map(|l| l.discount))
            .saturating_add(sum(&mut shipping.iter().map(|s| s.discount)));
        let ship = sum(&mut shipping.iter().map(|s| s.price));
        let tax = sum(&mut lines.iter().map(|l| l.tax))
            .saturating_add(sum(&mut shipping.iter().map(|s| s.tax)));
        let total = subtotal
            .saturating_sub(discount)
            .saturating_add(ship)
            .saturating_add(if taxes_included { 0 } else { tax });
        Totals {
            subtotal,
            discount,
            shipping: ship,
            tax,
            total,
        }
    }

    pub fn to_json(&self, c: Currency) -> serde_json::Value {
        serde_json::json!({
            "subtotal": Money::new(self.subtotal, c),
            "discount": Money::new(self.discount, c),
            "shipping": Money::new(self.shipping, c),
            "tax": Money::new(self.tax, c),
            "total": Money::new(self.total, c),
        })
    }
}

pub const MAX_LINES: usize = 1000;
pub const MAX_SHIPPING_LINES: usize = 100;
pub const MAX_QUANTITY: i64 = 1_000_000;
/// The largest amount any one line or shipping line may carry, in minor units
/// (10^15: ten trillion in a 2-decimal currency). With the line limits, no
/// order total can overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

impl NewOrder {
    pub fn totals(&self) -> Totals {
        Totals::compute(&self.lines, &self.shipping_lines, self.taxes_included)
    }

    /// Checks the invariants every stored order holds. `prefix` is the JSON pointer
    /// of the order in the request (empty for a single order).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut e = |p: &str, d: &str| errs.push(FieldError::new(format!("{prefix}{p}"), d));
        if self.external_id.trim().is_empty() {
            e("/external_id", "must not be empty");
        } else if self.external_id.len() > 255 {
            e("/external_id", "must be at most 255 characters");
        }
        if self.channel.trim().is_empty() || self.channel.len() > 64 {
            e("/channel", "must be 1 to 64 characters");
        }
        if self.lines.is_empty() {
            e("/lines", "an order needs at least one line");
        }
        if let Some(a) = self.payment.amount {
            if !(0..=MAX_AMOUNT).contains(&a) {
                e(
                    "/payment/amount",
                    "must be between 0 and the largest amount",
                );
            }
        }
        if self.lines.len() > MAX_LINES {
            e("/lines", &format!("at most {MAX_LINES} lines per order"));
        }
        if self.shipping_lines.len() > MAX_SHIPPING_LINES {
            e(
                "/shipping_lines",
                &format!("at most {MAX_SHIPPING_LINES} shipping lines per order"),
            );
        }
        if let Some(t) = self.source_total {
            if !(0..=MAX_AMOUNT).contains(&t) {
                e("/total", "is out of range");
            }
        }
        if let Some(email) = &self.customer.email {
            if !crate::kernel::email::is_single_address(email) {
                e("/customer/email", "is not one e-mail address");
            }
        }
        for (name, addr) in [
            ("shipping_address", &self.shipping_address),
            ("billing_address", &self.billing_address),
        ] {
            if let Some(a) = addr {
                if a.country_code.len() != 2
                    || !a.country_code.chars().all(|c| c.is_ascii_uppercase())
                {
                    e(
                        &format!("/{name}/country_code"),
                        "must be an ISO 3166-1 alpha-2 code",
                    );
                }
                // Each coordinate finite and in range (NaN and infinities fail
                // the range), and both or neither.
                match (a.latitude, a.longitude) {
                    (Some(lat), Some(lon)) => {
                        if !(-90.0..=90.0).contains(&lat) {
                            e(&format!("/{name}/latitude"), "must be from -90 to 90");
                        }
                        if !(-180.0..=180.0).contains(&lon) {
                            e(&format!("/{name}/longitude"), "must be from -180 to 180");
                        }
                    }
                    (Some(_), None) | (None, Some(_)) => e(
                        &format!("/{name}/longitude"),
                        "latitude and longitude go together",
                    ),
                    (None, None) => {}
                }
            }
        }
        if self.lines.iter().any(|l| l.requires_shipping)
            && self.shipping_address.is_none()
            && !self.cancelled
        {
            e(
                "/shipping_address",
                "required when a line requires shipping",
            );
        }
        for (i, l) in self.lines.iter().enumerate() {
            let p = format!("/lines/{i}");
            if l.sku.trim().is_empty() {
                e(&format!("{p}/sku"), "must not be empty");
            }
            if l.quantity <= 0 {
                e(&format!("{p}/quantity"), "must be a positive whole number");
            } else if l.quantity > MAX_QUANTITY {
                e(
                    &format!("{p}/quantity"),
                    &format!("must be at most {MAX_QUANTITY}"),
                );
            }
            if l.unit_price < 0 || l.subtotal < 0 {
                e(&format!("{p}/unit_price"), "must not be negative");
            }
            if l.discount < 0 || l.discount > l.subtotal {
                e(
                    &format!("{p}/discount"),
                    "must be between 0 and the line's subtotal",
                );
            }
            if l.tax < 0 {
                e(&format!("{p}/tax"), "must not be negative");
            }
            if l.unit_price > MAX_AMOUNT || l.subtotal > MAX_AMOUNT || l.tax > MAX_AMOUNT {
                e(&format!("{p}/unit_price"), "is out of range");
            }
        }
        for (i, s) in self.shipping_lines.iter().enumerate() {
            let p = format!("/shipping_lines/{i}");
            if s.price > MAX_AMOUNT || s.tax > MAX_AMOUNT {
                e(&format!("{p}/price"), "is out of range");
            }
            if s.price < 0 || s.tax < 0 || s.discount < 0 || s.discount > s.price {
                e(
                    &format!("{p}/price"),
                    "amounts must not be negative and the discount at most the price",
                );
            }
            if s.method.trim().is_empty() {
                e(&format!("{p}/method"), "must not be empty");
            }
        }
        errs
    }
}

/// A stored line with its quantity buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    pub ordered: i64,
    pub cancelled: i64,
    pub backordered: i64,
    pub allocated: i64,
    pub released: i64,
    pub shipped: i64,
    pub delivered: i64,
    pub returned: i64,
}

impl Buckets {
    /// Units still to be fulfilled: ordered less cancelled less everything past allocation.
    pub fn open(&self) -> i64 {
        (self.ordered - self.cancelled - self.shipped).max(0)
    }
    pub fn active(&self) -> i64 {
        self.ordered - self.cancelled
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Received,
    Processing,
    Completed,
    Closed,
    OnHold,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Received => "received",
            OrderStatus::Processing => "processing",
            OrderStatus::Completed => "completed",
            OrderStatus::Closed => "closed",
            OrderStatus::OnHold => "on_hold",
            OrderStatus::Cancelled => "cancelled",
        }
    }
    pub const ALL: [&'static str; 6] = [
        "received",
        "processing",
        "completed",
        "closed",
        "on_hold",
        "cancelled",
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FulfillmentStatus {
    Unfulfilled,
    PartiallyFulfilled,
    Fulfilled,
    PartiallyDelivered,
    Delivered,
    PartiallyReturned,
    Returned,
}

impl FulfillmentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            FulfillmentStatus::Unfulfilled => "unfulfilled",
            FulfillmentStatus::PartiallyFulfilled => "partially_fulfilled",
            FulfillmentStatus::Fulfilled => "fulfilled",
            FulfillmentStatus::PartiallyDelivered => "partially_delivered",
            FulfillmentStatus::Delivered => "delivered",
            FulfillmentStatus::PartiallyReturned => "partially_returned",
            FulfillmentStatus::Returned => "returned",
        }
    }
}

/// The order status from the line buckets, the open holds and the closed flag.
pub fn derive_status(lines: &[Buckets], open_holds: usize, closed: bool) -> OrderStatus {
    let active: i64 = lines.iter().map(Buckets::active).sum();
    if active <= 0 {
        return OrderStatus::Cancelled;
    }
    if closed {
        return OrderStatus::Closed;
    }
    let shipped: i64 = lines.iter().map(|b| b.shipped.min(b.active())).sum();
    if shipped >= active {
        return OrderStatus::Completed;
    }
    if open_holds > 0 {
        return OrderStatus::OnHold;
    }
    let moving: i64 = lines
        .iter()
        .map(|b| b.allocated + b.released + b.shipped + b.backordered)
        .sum();
    if moving > 0 {
        OrderStatus::Processing
    } else {
        OrderStatus::Received
    }
}

/// The fulfillment status from the line buckets.
pub fn derive_fulfillment(lines: &[Buckets]) -> FulfillmentStatus {
    let active: i64 = lines.iter().map(Buckets::active).sum();
    let shipped: i64 = lines.iter().map(|b| b.shipped).sum();
    let delivered: i64 = lines.iter().map(|b| b.delivered).sum();
    let returned: i64 = lines.iter().map(|b| b.returned).sum();
    if active <= 0 || shipped == 0 {
        return FulfillmentStatus::Unfulfilled;
    }
    if returned > 0 {
        return if returned >= shipped {
            FulfillmentStatus::Returned
        } else {
            FulfillmentStatus::PartiallyReturned
        };
    }
    if delivered > 0 {
        return if delivered >= active {
            FulfillmentStatus::Delivered
        } else {
            FulfillmentStatus::PartiallyDelivered
        };
    }
    if shipped >= active {
        FulfillmentStatus::Fulfilled
    } else {
        FulfillmentStatus::PartiallyFulfilled
    }
}

/// A payment transaction as the shop records it (Shopify's
/// `order_transactions/create` webhook, REST Transaction resource).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTransaction {
    pub id: String,
    pub order_id: String,
    /// authorization, capture, sale, void or refund.
    pub kind: String,
    /// success, pending, failure or error.
    pub status: String,
    pub amount: i64,
    pub currency: Currency,
    pub gateway: Option<String>,
    pub authorization: Option<String>,
    pub authorization_expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_update_is_stale_only_when_older_than_what_was_applied() {
        let t = |m: i64| {
            Some(chrono::DateTime::<Utc>::from_timestamp(1_700_000_000 + m * 60, 0).unwrap())
        };
        // By time.
        assert!(is_stale_update((None, t(10)), (None, t(5))));
        assert!(
            !is_stale_update((None, t(10)), (None, t(10))),
            "same state: unchanged, not stale"
        );
        assert!(!is_stale_update((None, t(10)), (None, t(11))));
        // The revision counter wins over the clock when both sides have one.
        assert!(is_stale_update((Some(7), t(1)), (Some(6), t(99))));
        assert!(!is_stale_update((Some(7), t(99)), (Some(8), t(1))));
        // Nothing to compare: accepted.
        assert!(!is_stale_update((None, None), (None, t(1))));
        assert!(!is_stale_update((None, t(1)), (None, None)));
    }
    use super::*;

    fn b(ordered: i64) -> Buckets {
        Buckets {
            ordered,
            ..Default::default()
        }
    }

    #[test]
    fn statuses_follow_buckets() {
        assert_eq!(derive_status(&[b(2)], 0, false), OrderStatus::Received);
        assert_eq!(derive_status(&[b(2)], 1, false), OrderStatus::OnHold);
        let mut l = b(5);
        l.allocated = 3;
        l.backordered = 2;
        assert_eq!(
            derive_status(&[l.clone()], 0, false),
            OrderStatus::Processing
        );
        l.shipped = 3;
        assert_eq!(
            derive_fulfillment(&[l.clone()]),
            FulfillmentStatus::PartiallyFulfilled
        );
        l.shipped = 5;
        assert_eq!(
            derive_status(&[l.clone()], 1, false),
            OrderStatus::Completed
        );
        assert_eq!(
            derive_fulfillment(&[l.clone()]),
            FulfillmentStatus::Fulfilled
        );
        l.delivered = 2;
        assert_eq!(
            derive_fulfillment(&[l.clone()]),
            FulfillmentStatus::PartiallyDelivered
        );
        l.delivered = 5;
        assert_eq!(
            derive_fulfillment(&[l.clone()]),
            FulfillmentStatus::Delivered
        );
        l.returned = 1;
        assert_eq!(
            derive_fulfillment(&[l.clone()]),
            FulfillmentStatus::PartiallyReturned
        );
        assert_eq!(derive_status(&[l.clone()], 0, true), OrderStatus::Closed);
        let mut c = b(2);
        c.cancelled = 2;
        assert_eq!(
            derive_status(&[c.clone()], 1, false),
            OrderStatus::Cancelled
        );
        // A partly cancelled line completes when the rest ships.
        let mut p = b(3);
        p.cancelled = 1;
        p.shipped = 2;
        assert_eq!(derive_status(&[p], 0, false), OrderStatus::Completed);
    }

    #[test]
    fn huge_amounts_are_rejected_not_overflowed() {
        let line = |p: i64| NewLine {
            external_id: None,
            sku: "A".into(),
            name: "A".into(),
            quantity: 1_000_000,
            unit_price: p,
            subtotal: p.saturating_mul(1_000_000),
            discount: 0,
            tax: 0,
            requires_shipping: false,
        };
        let lines = vec![line(i64::MAX / 2), line(i64::MAX / 2)];
        assert_eq!(
            Totals::compute(&lines, &[], false).total,
            i64::MAX,
            "saturates instead of wrapping"
        );
        let o = NewOrder {
            source: Source::Api,
            external_id: "x".into(),
            external_number: None,
            channel: "api".into(),
            currency: crate::kernel::money::Currency::from_code("EUR").unwrap(),
            placed_at: chrono::Utc::now(),
            customer: Customer::default(),
            shipping_address: None,
            billing_address: None,
            lines,
            shipping_lines: Vec::new(),
            taxes_included: false,
            financial_status: FinancialStatus::Pending,
            payment: Payment::default(),
            holds: Vec::new(),
            note: None,
            tags: Vec::new(),
            source_total: None,
            cancelled: false,
            pickup_location: None,
            preferred_facility: None,
            source_modified_at: None,
            source_version: None,
        };
        let errs = o.validate("");
        assert!(
            errs.iter()
                .any(|e| e.pointer == "/lines/0/unit_price" && e.detail == "is out of range"),
            "{errs:?}"
        );
    }

    #[test]
    fn totals_with_and_without_included_tax() {
        let lines = vec![NewLine {
            external_id: None,
            sku: "A".into(),
            name: "A".into(),
            quantity: 2,
            unit_price: 1000,
            subtotal: 2000,
            discount: 300,
            tax: 323,
            requires_shipping: true,
        }];
        let ship = vec![ShippingLine {
            method: "standard".into(),
            title: "Standard".into(),
            price: 500,
            discount: 0,
            tax: 95,
        }];
        let t = Totals::compute(&lines, &ship, false);
        assert_eq!(
            (t.subtotal, t.discount, t.shipping, t.tax, t.total),
            (2000, 300, 500, 418, 2618)
        );
        assert_eq!(Totals::compute(&lines, &ship, true).total, 2200);
    }
}
