//! Exact money: integer nano-dollars, never floats.

use std::{fmt, iter::Sum, ops::Add, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of US dollars, exact to the nano-dollar (10⁻⁹ $), in an `i64`
/// (so up to about ±9.2 billion dollars).
///
/// Sums of `Money` are exact integer sums: a ledger never drifts the way a
/// sum of floats does. Written and read as a decimal string of dollars
/// (`"0.25"`); a bare number in a file is read as dollars too, rounded to the
/// nano-dollar.
///
/// ```
/// use modelfleet_registry::Money;
///
/// let price: Money = "0.25".parse()?;
/// assert_eq!(price.nanos(), 250_000_000);
/// assert_eq!(price.to_string(), "0.25");
/// // 1,234 tokens at $0.25 per million tokens:
/// assert_eq!(price.per_million(1_234), Money::from_nanos(308_500));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

/// Nano-dollars in one dollar.
const NANOS_PER_DOLLAR: i64 = 1_000_000_000;

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(0);

    /// An amount in nano-dollars.
    #[must_use]
    pub const fn from_nanos(nanos: i64) -> Money {
        Money(nanos)
    }

    /// Whole dollars (saturating at the range's ends).
    #[must_use]
    pub const fn from_dollars(dollars: i64) -> Money {
        Money(dollars.saturating_mul(NANOS_PER_DOLLAR))
    }

    /// The amount in nano-dollars.
    #[must_use]
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// The amount in dollars, as a float: for display and scores only.
    #[must_use]
    pub fn as_dollars_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_DOLLAR as f64
    }

    /// Whether the amount is zero.
    #[must_use]
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The cost of `tokens` at `self` per million tokens, rounded half away
    /// from zero to the nano-dollar (exact whenever the price has at most
    /// three decimals of a dollar, which covers every published price we know).
    #[must_use]
    pub fn per_million(self, tokens: u64) -> Money {
        // Fast path in 64 bits (i128 division is a slow library call); the
        // product fits for any realistic price and token count.
        if let Ok(tokens) = i64::try_from(tokens)
            && let Some(femto) = self.0.checked_mul(tokens)
        {
            let (q, r) = (femto / 1_000_000, femto % 1_000_000);
            return Money(if r.abs() >= 500_000 { q + femto.signum() } else { q });
        }
        let femto = i128::from(self.0) * i128::from(tokens);
        let (q, r) = (femto / 1_000_000, femto % 1_000_000);
        let rounded = if r.abs() >= 500_000 { q + femto.signum() } else { q };
        Money(i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX }))
    }

    /// The sum of `price × tokens / 1,000,000` over `terms`, rounded once to
    /// the nano (half away from zero): a bill split into kinds of tokens is
    /// the exact sum of its parts, so it never exceeds the same tokens at
    /// the dearest of the rates (per-term rounding could, by a nano a term).
    #[must_use]
    pub fn per_million_sum(terms: &[(Money, u64)]) -> Money {
        // Fast path in 64 bits, as in `per_million`.
        let fast = terms.iter().try_fold(0i64, |acc, &(price, tokens)| {
            i64::try_from(tokens).ok().and_then(|t| price.0.checked_mul(t)).and_then(|f| acc.checked_add(f))
        });
        if let Some(femto) = fast {
            let (q, r) = (femto / 1_000_000, femto % 1_000_000);
            return Money(if r.abs() >= 500_000 { q + femto.signum() } else { q });
        }
        let femto: i128 = terms.iter().map(|&(price, tokens)| i128::from(price.0) * i128::from(tokens)).sum();
        let (q, r) = (femto / 1_000_000, femto % 1_000_000);
        let rounded = if r.abs() >= 500_000 { q + femto.signum() } else { q };
        Money(i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX }))
    }

    /// `self + other`, saturating instead of overflowing.
    #[must_use]
    pub const fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// `self - other`, saturating instead of overflowing.
    #[must_use]
    pub const fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// `self + other`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, other: Money) -> Option<Money> {
        match self.0.checked_add(other.0) {
            Some(n) => Some(Money(n)),
            None => None,
        }
    }

    /// Dollars as a float, rounded to the nearest nano-dollar; `None` when
    /// not finite or out of range.
    #[must_use]
    pub fn from_dollars_f64(dollars: f64) -> Option<Money> {
        let nanos = (dollars * NANOS_PER_DOLLAR as f64).round();
        // i64::MAX as f64 rounds up to 2^63, so compare strictly below it.
        if !(nanos.is_finite() && nanos >= i64::MIN as f64 && nanos < i64::MAX as f64) {
            return None;
        }
        #[allow(clippy::cast_possible_truncation)] // range checked just above
        Some(Money(nanos as i64))
    }
}

impl Add for Money {
    type Output = Money;

    /// Saturating: money never wraps around.
    fn add(self, other: Money) -> Money {
        self.saturating_add(other)
    }
}

impl Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

impl fmt::Display for Money {
    /// Dollars with as many decimals as needed (`0.25`, `3`, `-0.000000001`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = NANOS_PER_DOLLAR.unsigned_abs();
        let (whole, frac) = (abs / per, abs % per);
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{frac:09}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A text that is not an amount of dollars.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid amount {given:?}: {reason}")]
pub struct ParseMoneyError {
    given: String,
    reason: &'static str,
}

impl FromStr for Money {
    type Err = ParseMoneyError;

    /// Parses dollars written as a decimal (`"0.25"`, `"-3"`, `"1.5e-3"` is
    /// refused): at most nine decimals, exactly.
    fn from_str(s: &str) -> Result<Money, ParseMoneyError> {
        let err = |reason| ParseMoneyError { given: s.to_owned(), reason };
        let text = s.trim().strip_prefix('$').unwrap_or(s.trim());
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(err("no digits"));
        }
        if !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(err("only digits and one '.' are allowed"));
        }
        if frac.len() > 9 {
            return Err(err("more than nine decimals (finer than a nano-dollar)"));
        }
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| err("too large"))? };
        let frac_nanos: i64 =
            if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| err("too large"))? };
        let nanos = whole
            .checked_mul(NANOS_PER_DOLLAR)
            .and_then(|n| n.checked_add(frac_nanos))
            .ok_or_else(|| err("too large"))?;
        Ok(Money(if negative { -nanos } else { nanos }))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Money;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount of dollars, as a decimal string (\"0.25\") or a number")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                v.checked_mul(NANOS_PER_DOLLAR).map(Money).ok_or_else(|| E::custom("amount too large"))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v).map_err(|_| E::custom("amount too large")).and_then(|v| self.visit_i64(v))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Money, E> {
                Money::from_dollars_f64(v).ok_or_else(|| E::custom(format!("amount {v} is not a finite dollar amount")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parse_and_display() {
        let table = [
            ("0.25", 250_000_000, "0.25"),
            ("3", 3_000_000_000, "3"),
            ("$1.10", 1_100_000_000, "1.1"),
            (".5", 500_000_000, "0.5"),
            ("0.000000001", 1, "0.000000001"),
            ("-2.5", -2_500_000_000, "-2.5"),
            ("0", 0, "0"),
        ];
        for (text, nanos, shown) in table {
            let money: Money = text.parse().unwrap();
            assert_eq!(money.nanos(), nanos, "{text}");
            assert_eq!(money.to_string(), shown, "{text}");
        }
        for bad in ["", "-", ".", "1.2.3", "abc", "1e3", "0.0000000001", "99999999999999999999"] {
            assert!(bad.parse::<Money>().is_err(), "{bad:?} should not parse");
        }
        let err = "0.0000000001".parse::<Money>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid amount "0.0000000001": more than nine decimals (finer than a nano-dollar)"#
        );
    }

    #[test]
    fn per_million_rounds_to_the_nano() {
        let price: Money = "0.25".parse().unwrap();
        assert_eq!(price.per_million(1_000_000), price);
        assert_eq!(price.per_million(0), Money::ZERO);
        assert_eq!(price.per_million(1), Money::from_nanos(250));
        let odd = Money::from_nanos(37_500_000); // $0.0375 per Mtok
        assert_eq!(odd.per_million(1), Money::from_nanos(38), "37.5 rounds half away from zero");
        assert_eq!(Money::from_nanos(i64::MAX).per_million(u64::MAX), Money::from_nanos(i64::MAX), "saturates");
        assert_eq!(Money::from_nanos(-250).per_million(2_000), Money::from_nanos(-1), "-0.5 rounds away from zero");
    }

    #[test]
    fn serde_reads_strings_and_numbers() {
        #[derive(Deserialize, Serialize)]
        struct Price {
            p: Money,
        }
        let from_str: Price = serde_json::from_str(r#"{"p": "0.15"}"#).unwrap();
        let from_float: Price = serde_json::from_str(r#"{"p": 0.15}"#).unwrap();
        let from_int: Price = serde_json::from_str(r#"{"p": 2}"#).unwrap();
        assert_eq!(from_str.p.nanos(), 150_000_000);
        assert_eq!(from_float.p, from_str.p);
        assert_eq!(from_int.p, Money::from_dollars(2));
        assert_eq!(serde_json::to_string(&from_str).unwrap(), r#"{"p":"0.15"}"#);
        assert!(serde_json::from_str::<Price>(r#"{"p": "cheap"}"#).is_err());
        assert!(serde_json::from_str::<Price>(r#"{"p": 1e300}"#).is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(nanos in any::<i64>()) {
            let money = Money::from_nanos(nanos);
            prop_assert_eq!(money.to_string().parse::<Money>(), Ok(money));
        }

        #[test]
        fn the_fast_path_agrees_with_wide_arithmetic(nanos in any::<i64>(), tokens in any::<u64>()) {
            let wide = i128::from(nanos) * i128::from(tokens);
            let (q, r) = (wide / 1_000_000, wide % 1_000_000);
            let rounded = if r.abs() >= 500_000 { q + wide.signum() } else { q };
            let expect = i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX });
            prop_assert_eq!(Money::from_nanos(nanos).per_million(tokens).nanos(), expect);
        }

        #[test]
        fn sums_are_exact(costs in proptest::collection::vec(0..1_000_000_000i64, 0..2000)) {
            let total: Money = costs.iter().map(|&n| Money::from_nanos(n)).sum();
            prop_assert_eq!(total.nanos(), costs.iter().sum::<i64>());
        }
    }
}
