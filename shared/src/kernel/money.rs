//! Money: integer minor units with an ISO 4217 currency and its exponent.
//!
//! Amounts cross the wire as decimal strings ("199.00", "1000", "12.345") and are
//! parsed exactly: no floating point anywhere. A string with more decimals than
//! the currency allows is rejected unless the extra digits are zeros.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 currency code known to Waybill, with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// ISO 4217 active codes and their minor units (ISO 4217 amendment list; funds
/// codes and precious metals excluded).
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

impl Currency {
    /// Looks up an ISO 4217 code (case-insensitive).
    pub fn from_code(code: &str) -> Option<Currency> {
        let upper = code.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|(c, e)| Currency {
                code: c,
                exponent: *e,
            })
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point (JPY 0, EUR 2, KWD 3).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Parses a decimal amount exactly into minor units.
    pub fn parse_amount(&self, s: &str) -> Result<i64, String> {
        parse_decimal(s, self.exponent)
    }

    /// Formats minor units as a decimal string with the currency's exponent.
    pub fn format_amount(&self, minor: i64) -> String {
        format_decimal(minor, self.exponent)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::from_code(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown currency '{s}'")))
    }
}

/// Parses "-12.340" with `exponent` decimals into minor units, exactly.
pub fn parse_decimal(s: &str, exponent: u8) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty amount".into());
    }
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(format!("'{s}' is not a decimal amount"));
    }
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("'{s}' is not a decimal amount"));
    }
    let exp = exponent as usize;
    if frac.len() > exp && frac[exp..].chars().any(|c| c != '0') {
        return Err(format!("'{s}' has more than {exp} decimal places"));
    }
    let mut minor: i64 = 0;
    let frac_digits: String = frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(exp)
        .collect();
    for c in int.chars().chain(frac_digits.chars()) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(c as i64 - '0' as i64))
            .ok_or_else(|| format!("'{s}' is too large"))?;
    }
    Ok(if neg { -minor } else { minor })
}

pub fn format_decimal(minor: i64, exponent: u8) -> String {
    let neg = minor < 0;
    let abs = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{}{}", if neg { "-" } else { "" }, abs);
    }
    let p = 10u64.pow(exponent as u32);
    format!(
        "{}{}.{:0width$}",
        if neg { "-" } else { "" },
        abs / p,
        abs % p,
        width = exponent as usize
    )
}

/// An amount in a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    pub fn zero(currency: Currency) -> Money {
        Money { minor: 0, currency }
    }

    pub fn to_decimal(&self) -> String {
        self.currency.format_amount(self.minor)
    }
}

impl Serialize for Money {
    /// `{"amount": "12.34", "minor": 1234, "currency": "EUR"}`
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Money", 3)?;
        st.serialize_field("amount", &self.to_decimal())?;
        st.serialize_field("minor", &self.minor)?;
        st.serialize_field("currency", self.currency.code())?;
        st.end()
    }
}

/// Splits `total` over `weights` in proportion, by the largest-remainder rule:
/// the parts add up to `total` exactly, and ties go to the earlier weight.
pub fn allocate(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i128 = weights.iter().map(|w| *w as i128).sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if sum == 0 {
        let mut out = vec![0; weights.len()];
        out[0] = total;
        return out;
    }
    let mut parts: Vec<i64> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    let mut assigned: i128 = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = total as i128 * *w as i128;
        let q = exact.div_euclid(sum);
        let r = exact.rem_euclid(sum);
        parts.push(q as i64);
        assigned += q;
        rems.push((r, i));
    }
    let mut left = total as i128 - assigned;
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut k = 0;
    while left > 0 {
        parts[rems[k % rems.len()].1] += 1;
        left -= 1;
        k += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::from_code(c).unwrap()
    }

    #[test]
    fn exponents() {
        assert_eq!(cur("jpy").exponent(), 0);
        assert_eq!(cur("EUR").exponent(), 2);
        assert_eq!(cur("KWD").exponent(), 3);
        assert!(Currency::from_code("XYZ").is_none());
        assert!(Currency::from_code("").is_none());
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(cur("EUR").parse_amount("199.00"), Ok(19900));
        assert_eq!(cur("EUR").parse_amount("0.1"), Ok(10));
        assert_eq!(cur("EUR").parse_amount("12"), Ok(1200));
        assert_eq!(cur("EUR").parse_amount(".5"), Ok(50));
        assert_eq!(cur("EUR").parse_amount("-3.07"), Ok(-307));
        assert_eq!(cur("EUR").parse_amount("1.230"), Ok(123));
        assert_eq!(cur("JPY").parse_amount("1500"), Ok(1500));
        assert_eq!(cur("JPY").parse_amount("1500.00"), Ok(1500));
        assert_eq!(cur("KWD").parse_amount("1.234"), Ok(1234));
        assert!(cur("EUR").parse_amount("1.234").is_err());
        assert!(cur("JPY").parse_amount("1.5").is_err());
        assert!(cur("EUR").parse_amount("1,00").is_err());
        assert!(cur("EUR").parse_amount("abc").is_err());
        assert!(cur("EUR").parse_amount("").is_err());
        assert!(cur("EUR").parse_amount(".").is_err());
        assert!(cur("EUR").parse_amount("1e5").is_err());
        assert!(cur("EUR").parse_amount("99999999999999999999").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(cur("EUR").format_amount(19900), "199.00");
        assert_eq!(cur("EUR").format_amount(-5), "-0.05");
        assert_eq!(cur("JPY").format_amount(1500), "1500");
        assert_eq!(cur("KWD").format_amount(1234), "1.234");
        for s in ["0.00", "12.34", "-7.01", "1000000.99"] {
            assert_eq!(
                cur("USD").format_amount(cur("USD").parse_amount(s).unwrap()),
                s
            );
        }
    }

    #[test]
    fn allocation_sums_exactly_and_is_proportional() {
        assert_eq!(allocate(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(allocate(10, &[3000, 1000]), vec![8, 2]);
        assert_eq!(allocate(0, &[1, 2]), vec![0, 0]);
        assert_eq!(allocate(7, &[0, 0]), vec![7, 0]);
        // Exhaustive small cases: always sums to total, each part within 1 of its exact share.
        for total in 0..60i64 {
            for w in [[1i64, 2, 3], [5, 5, 1], [0, 3, 9], [7, 0, 0]] {
                let parts = allocate(total, &w);
                assert_eq!(parts.iter().sum::<i64>(), total);
                let sum: i64 = w.iter().sum();
                for (p, wi) in parts.iter().zip(w) {
                    let exact = total as f64 * wi as f64 / sum as f64;
                    assert!((*p as f64 - exact).abs() < 1.0, "{total} {w:?} {parts:?}");
                }
            }
        }
    }
}
