//! Payment amounts (pure): what to capture when units are released and what
//! to refund when they come back, so that once everything has shipped the
//! captures add up to the order total to the minor unit, in any currency.
//!
//! Each line's net amount (subtotal less discount) and its tax are spread over
//! its units by a cumulative rule: after `n` of `q` units, `⌊amount·n/q⌋` has
//! been charged, and the `q`-th unit charges the rest. It is the
//! largest-remainder split of the amount over the units with the remainders
//! falling to the later units; any sequence of partial releases therefore sums
//! to the line's amount exactly, each capture differs from the proportional
//! share by less than one minor unit per line, and nothing depends on the
//! order in which fulfillment orders are captured. Shipping (price less its
//! discount, plus its tax) goes with the first capture.
//!
//! The capture component (issue #5) uses this to compute one capture per
//! fulfillment order; returns use [`refund_amount`] the same way.

use std::collections::BTreeMap;

use crate::orders::model::{NewLine, ShippingLine};

/// The amounts of one order line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineAmounts {
    pub line_no: i64,
    /// Units ordered (the denominator of every share).
    pub ordered: i64,
    /// Subtotal less discount, in minor units.
    pub net: i64,
    pub tax: i64,
}

/// What an order charges, line by line, plus shipping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderAmounts {
    pub lines: Vec<LineAmounts>,
    /// Shipping price less its discount.
    pub shipping: i64,
    pub shipping_tax: i64,
    /// Prices include tax: tax is reported but not added.
    pub taxes_included: bool,
}

impl OrderAmounts {
    pub fn from_order(
        lines: &[NewLine],
        shipping: &[ShippingLine],
        taxes_included: bool,
    ) -> OrderAmounts {
        OrderAmounts {
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, l)| LineAmounts {
                    line_no: i as i64 + 1,
                    ordered: l.quantity,
                    net: l.subtotal - l.discount,
                    tax: l.tax,
                })
                .collect(),
            shipping: shipping.iter().map(|s| s.price - s.discount).sum(),
            shipping_tax: shipping.iter().map(|s| s.tax).sum(),
            taxes_included,
        }
    }

    /// Everything the order charges: the sum of all captures once every unit shipped.
    pub fn total(&self) -> i64 {
        let tax = |t: i64| if self.taxes_included { 0 } else { t };
        self.lines.iter().map(|l| l.net + tax(l.tax)).sum::<i64>()
            + self.shipping
            + tax(self.shipping_tax)
    }
}

/// The part of `amount` carried by the first `n` of `q` units.
pub fn share(amount: i64, q: i64, n: i64) -> i64 {
    if q <= 0 || n <= 0 {
        return 0;
    }
    if n >= q {
        return amount;
    }
    ((amount as i128 * n as i128).div_euclid(q as i128)) as i64
}

/// One line's part of a capture or refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinePart {
    pub line_no: i64,
    pub units: i64,
    pub net: i64,
    pub tax: i64,
}

/// A capture (or refund) and how it is made up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Charge {
    pub lines: Vec<LinePart>,
    pub shipping: i64,
    pub shipping_tax: i64,
    /// What the gateway is asked for.
    pub amount: i64,
}

/// The charge for `units` (line → units) when `before` (line → units) were
/// charged already; `with_shipping` adds the shipping charge.
pub fn charge(
    order: &OrderAmounts,
    before: &BTreeMap<i64, i64>,
    units: &BTreeMap<i64, i64>,
    with_shipping: bool,
) -> Charge {
    let mut c = Charge::default();
    for l in &order.lines {
        let k = units.get(&l.line_no).copied().unwrap_or(0);
        if k <= 0 {
            continue;
        }
        let b = before.get(&l.line_no).copied().unwrap_or(0);
        let net = share(l.net, l.ordered, b + k) - share(l.net, l.ordered, b);
        let tax = share(l.tax, l.ordered, b + k) - share(l.tax, l.ordered, b);
        c.amount += net + if order.taxes_included { 0 } else { tax };
        c.lines.push(LinePart {
            line_no: l.line_no,
            units: k,
            net,
            tax,
        });
    }
    if with_shipping {
        c.shipping = order.shipping;
        c.shipping_tax = order.shipping_tax;
        c.amount += order.shipping
            + if order.taxes_included {
                0
            } else {
                order.shipping_tax
            };
    }
    c
}

/// The refund for returned units: the same shares as their capture, counted
/// over the units refunded before, so refunding every unit refunds each line
/// exactly; shipping only when `with_shipping` (the merchant's policy).
pub fn refund_amount(
    order: &OrderAmounts,
    refunded_before: &BTreeMap<i64, i64>,
    returning: &BTreeMap<i64, i64>,
    with_shipping: bool,
) -> Charge {
    charge(order, refunded_before, returning, with_shipping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::money::Currency;
    use crate::orders::model::Totals;

    #[test]
    fn shares_are_cumulative_and_exact() {
        assert_eq!(share(1000, 3, 1), 333);
        assert_eq!(share(1000, 3, 2), 666);
        assert_eq!(share(1000, 3, 3), 1000);
        assert_eq!(share(1000, 3, 9), 1000);
        assert_eq!(share(1000, 0, 1), 0);
        assert_eq!(
            share(-10, 3, 1),
            -4,
            "negative amounts (credits) floor too and still sum exactly"
        );
        assert_eq!(
            share(i64::MAX / 2, 1_000_000, 999_999) <= i64::MAX / 2,
            true,
            "no overflow"
        );
    }

    #[test]
    fn a_partial_release_captures_the_partial_amount_and_the_rest_follows() {
        // 3 mugs at 9.99 with 1.00 discount on the line and 5.51 tax; 1 tee 20.00 + 3.80 tax; shipping 4.90 + 0.93.
        let o = OrderAmounts {
            lines: vec![
                LineAmounts {
                    line_no: 1,
                    ordered: 3,
                    net: 2897,
                    tax: 551,
                },
                LineAmounts {
                    line_no: 2,
                    ordered: 1,
                    net: 2000,
                    tax: 380,
                },
            ],
            shipping: 490,
            shipping_tax: 93,
            taxes_included: false,
        };
        let first = charge(&o, &BTreeMap::new(), &BTreeMap::from([(1, 2)]), true);
        // 2 of 3 mugs: floor(2897*2/3) = 1931, tax floor(551*2/3) = 367, + shipping 583.
        assert_eq!(first.amount, 1931 + 367 + 490 + 93);
        let second = charge(
            &o,
            &BTreeMap::from([(1, 2)]),
            &BTreeMap::from([(1, 1), (2, 1)]),
            false,
        );
        assert_eq!(second.amount, (2897 - 1931) + (551 - 367) + 2000 + 380);
        assert_eq!(first.amount + second.amount, o.total());
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    #[test]
    fn captures_add_up_to_the_order_total_in_jpy_eur_and_kwd() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for code in ["JPY", "EUR", "KWD"] {
            let c = Currency::from_code(code).unwrap();
            let scale = 10i64.pow(c.exponent() as u32);
            for case in 0..2000 {
                let lines: Vec<NewLine> = (0..1 + rng.below(6))
                    .map(|i| {
                        let q = 1 + rng.below(12) as i64;
                        let unit = (1 + rng.below(500) as i64) * scale / 10
                            + rng.below(scale as u64) as i64;
                        let subtotal = unit * q;
                        NewLine {
                            external_id: None,
                            sku: format!("S{i}"),
                            name: String::new(),
                            quantity: q,
                            unit_price: unit,
                            subtotal,
                            discount: rng.below(subtotal as u64 / 3 + 1) as i64,
                            tax: rng.below(subtotal as u64 / 5 + 1) as i64,
                            requires_shipping: true,
                        }
                    })
                    .collect();
                let shipping = vec![ShippingLine {
                    method: "standard".into(),
                    title: "Standard".into(),
                    price: rng.below(20 * scale as u64) as i64,
                    discount: 0,
                    tax: rng.below(3 * scale as u64) as i64,
                }];
                let taxes_included = rng.below(4) == 0;
                let o = OrderAmounts::from_order(&lines, &shipping, taxes_included);
                assert_eq!(
                    o.total(),
                    Totals::compute(&lines, &shipping, taxes_included).total,
                    "{code} case {case}"
                );
                // Release the units in random fulfillment orders until all are out.
                let mut left: BTreeMap<i64, i64> =
                    o.lines.iter().map(|l| (l.line_no, l.ordered)).collect();
                let mut before: BTreeMap<i64, i64> = BTreeMap::new();
                let mut captured = 0i64;
                let mut first = true;
                while left.values().any(|&n| n > 0) {
                    let mut units = BTreeMap::new();
                    for (&line, n) in left.iter_mut() {
                        if *n > 0 && rng.below(2) == 0 {
                            let k = 1 + rng.below(*n as u64) as i64;
                            *n -= k;
                            units.insert(line, k);
                        }
                    }
                    if units.is_empty() {
                        continue;
                    }
                    let ch = charge(&o, &before, &units, first);
                    assert!(ch.amount >= 0, "{code} case {case}");
                    // Each line's part is within one minor unit of its proportional share.
                    for p in &ch.lines {
                        let l = o.lines.iter().find(|l| l.line_no == p.line_no).unwrap();
                        let exact = l.net as f64 * p.units as f64 / l.ordered as f64;
                        assert!(
                            (p.net as f64 - exact).abs() < 1.0 + 1e-9,
                            "{code} case {case}: {p:?} vs {exact}"
                        );
                    }
                    for (k, v) in &units {
                        *before.entry(*k).or_default() += v;
                    }
                    captured += ch.amount;
                    first = false;
                }
                assert_eq!(
                    captured,
                    o.total(),
                    "{code} case {case}: captures must add up to the total"
                );
                // Refunding everything returns exactly what was captured.
                let all: BTreeMap<i64, i64> =
                    o.lines.iter().map(|l| (l.line_no, l.ordered)).collect();
                assert_eq!(
                    refund_amount(&o, &BTreeMap::new(), &all, true).amount,
                    o.total()
                );
            }
        }
    }
}
