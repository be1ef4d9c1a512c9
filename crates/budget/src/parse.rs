//! Budgets named in text (the admin API's paths, the CLI's arguments):
//! `global`, `key:NAME`, `provider:NAME`, `model:NAME`; `daily`, `weekly`,
//! `monthly`, `lifetime` (or `none`). Display writes the same forms.

use std::str::FromStr;

use crate::{Period, Scope};

/// A scope or period that is not one of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a budget {what}: expected {expected}")]
pub struct ParseError {
    given: String,
    what: &'static str,
    expected: &'static str,
}

impl FromStr for Scope {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Scope, ParseError> {
        let name = |n: &str| (!n.is_empty()).then(|| n.to_owned());
        let scope = match s.split_once(':') {
            None if s == "global" => Some(Scope::Global),
            Some(("key", n)) => name(n).map(Scope::Key),
            Some(("provider", n)) => name(n).map(Scope::Provider),
            Some(("model", n)) => name(n).map(Scope::Model),
            _ => None,
        };
        scope.ok_or_else(|| ParseError {
            given: s.to_owned(),
            what: "scope",
            expected: "global, key:NAME, provider:NAME or model:NAME",
        })
    }
}

impl FromStr for Period {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Period, ParseError> {
        match s {
            "daily" => Ok(Period::Daily),
            "weekly" => Ok(Period::Weekly),
            "monthly" => Ok(Period::Monthly),
            "lifetime" | "none" => Ok(Period::None),
            _ => {
                Err(ParseError { given: s.to_owned(), what: "period", expected: "daily, weekly, monthly or lifetime" })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_periods_read_back_what_they_display() {
        for scope in [Scope::Global, Scope::Key("a".into()), Scope::Provider("p:x".into()), Scope::Model("m".into())] {
            assert_eq!(scope.to_string().parse::<Scope>(), Ok(scope));
        }
        for period in [Period::Daily, Period::Weekly, Period::Monthly, Period::None] {
            assert_eq!(period.to_string().parse::<Period>(), Ok(period));
        }
        assert_eq!("none".parse::<Period>(), Ok(Period::None));
        for bad in ["", "team:x", "key:", "Global", "global:x"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "hourly".parse::<Period>().unwrap_err().to_string(),
            "\"hourly\" is not a budget period: expected daily, weekly, monthly or lifetime"
        );
    }
}
