//! Money: integer minor units plus an ISO 4217 currency code. Never a float; arithmetic is checked.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 code: three upper-case ASCII letters, validated on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be three upper-case letters (ISO 4217), got {0:?}")]
pub struct InvalidCurrency(pub String);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(code: &str) -> Result<Self, InvalidCurrency> {
        let bytes = code.as_bytes();
        match bytes {
            [a, b, c] if bytes.iter().all(u8::is_ascii_uppercase) => Ok(Currency([*a, *b, *c])),
            _ => Err(InvalidCurrency(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // The constructor only admits ASCII upper-case letters, so this is always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidCurrency;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in minor units (cents) of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_cents: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_cents: i64, currency: Currency) -> Self {
        Self {
            amount_cents,
            currency,
        }
    }

    /// `self * quantity`, or `None` on overflow.
    pub fn times(self, quantity: u32) -> Option<Money> {
        self.amount_cents
            .checked_mul(i64::from(quantity))
            .map(|amount_cents| Money::new(amount_cents, self.currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only three upper-case ASCII letters make a currency.
    #[test]
    fn currency_parsing_accepts_only_iso_shaped_codes() {
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Ok("EUR".into())
        );
        for bad in ["usd", "US", "USDX", "", "U$D", "ÉUR"] {
            assert!(Currency::parse(bad).is_err(), "{bad} accepted");
        }
    }

    /// Multiplying money never wraps around silently.
    #[test]
    fn multiplication_overflow_is_reported() {
        assert_eq!(
            Money::new(250, Currency::USD).times(4),
            Some(Money::new(1000, Currency::USD))
        );
        assert_eq!(Money::new(i64::MAX, Currency::USD).times(2), None);
    }
}
