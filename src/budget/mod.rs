//! Budgets (DESIGN §8): `[[budget]]` tables of the config file, their calendar windows in the billing time
//! zone, what is spent in each window, and the admission of a call against `block` budgets.
//!
//! - This module: the budgets as configured ([`Budget`], parsed and validated once at startup) and which
//!   calls they cover. Pure.
//! - [`limits`]: a call's worst-case cost from the model's limits and the request. Pure.
//! - [`tracker`]: each budget's current window in memory — spent in the ledger (as of the last refresh), this
//!   sidecar's calls not yet in the ledger, reservations in flight — and the admission decision. No I/O: the
//!   refresh's numbers come from [`store`].
//! - [`store`]: the SQL (spent per window, which calls reached the ledger, threshold alerts).
//!
//! **Spent** in a window is the sum of the ledger (every sidecar on the database, refreshed every second),
//! this sidecar's finished calls that are not in the ledger yet (from the journal at startup, then as calls
//! finish), and the reservations of calls in flight. A call that reached the ledger is dropped from the second
//! term in the same snapshot that counted it in the first, so nothing is counted twice or missed.

pub mod coordinated;
pub mod gate;
pub mod limits;
pub mod refresher;
pub mod store;
pub mod tracker;

use rust_decimal::Decimal;
use serde::Deserialize;

/// A budget's calendar window, in the billing time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn granularity(self) -> crate::calendar::Granularity {
        use crate::calendar::Granularity;
        match self {
            Period::Hour => Granularity::Hour,
            Period::Day => Granularity::Day,
            Period::Month => Granularity::Month,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.granularity().as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Alerts at the thresholds; never refuses a call.
    Alert,
    /// Alerts, and refuses a call (429) that could take spent past the limit.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Block => "block",
        }
    }
}

/// Which calls a budget covers: those matching every field given (none given: every call).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
}

pub use crate::record::Attribution;

impl Scope {
    pub fn covers(&self, a: &Attribution<'_>) -> bool {
        let field = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        field(&self.project, a.project)
            && field(&self.model, Some(a.model))
            && field(&self.key_fingerprint, a.key_fingerprint)
            && field(&self.end_user, a.end_user)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub name: String,
    pub period: Period,
    pub limit: Decimal,
    pub scope: Scope,
    pub action: Action,
    /// Fractions of the limit that raise an alert, ascending.
    pub thresholds: Vec<Decimal>,
}

/// A `[[budget]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetTable {
    name: String,
    period: Period,
    limit_yuan: toml::Value,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    key_fingerprint: Option<String>,
    #[serde(default)]
    end_user: Option<String>,
    action: Action,
    #[serde(default)]
    thresholds: Option<Vec<toml::Value>>,
}

/// The default thresholds: 50 %, 80 % and 100 % of the limit.
pub fn default_thresholds() -> Vec<Decimal> {
    vec![Decimal::new(5, 1), Decimal::new(8, 1), Decimal::ONE]
}

/// The `budget` array of the config file (absent: no budgets). The error names the budget (by its name, or
/// its position when it has none) and what is wrong, in one line.
pub fn parse(value: Option<&toml::Value>) -> Result<Vec<Budget>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Some(tables) = value.as_array() else {
        return Err("`budget` must be an array of tables ([[budget]])".into());
    };
    if tables.len() > tracker::MAX_BUDGETS {
        return Err(format!(
            "{} budgets: at most {} can be configured",
            tables.len(),
            tracker::MAX_BUDGETS
        ));
    }
    let mut budgets: Vec<Budget> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let which = t.get("name").and_then(toml::Value::as_str).map_or_else(
            || format!("[[budget]] #{}", i + 1),
            |n| format!("budget {n:?}"),
        );
        let b = one(t).map_err(|e| format!("{which}: {e}"))?;
        if budgets.iter().any(|o| o.name == b.name) {
            return Err(format!("{which}: the name is used twice"));
        }
        budgets.push(b);
    }
    Ok(budgets)
}

fn one(t: &toml::Value) -> Result<Budget, String> {
    let table: BudgetTable = t
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| e.message().lines().next().unwrap_or("invalid").to_owned())?;
    if table.name.is_empty()
        || table.name.len() > 64
        || !table
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(
            "name must be 1 to 64 letters, digits, `_`, `.` or `-` (it is a metric label)".into(),
        );
    }
    let limit = decimal(&table.limit_yuan).map_err(|e| format!("limit_yuan {e}"))?;
    if limit <= Decimal::ZERO {
        return Err("limit_yuan must be greater than 0".into());
    }
    if let Some(k) = &table.key_fingerprint {
        if k.len() != 12
            || !k
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(
                "key_fingerprint must be 12 lowercase hex digits (as in the ledger)".into(),
            );
        }
    }
    let mut thresholds = match &table.thresholds {
        None => default_thresholds(),
        Some(list) => list
            .iter()
            .map(|v| decimal(v).map_err(|e| format!("thresholds {e}")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if thresholds
        .iter()
        .any(|t| *t <= Decimal::ZERO || *t > Decimal::TEN)
    {
        return Err("thresholds must be fractions of the limit above 0 (1.0 = the limit)".into());
    }
    thresholds.sort();
    thresholds.dedup();
    Ok(Budget {
        name: table.name,
        period: table.period,
        limit,
        scope: Scope {
            project: table.project,
            model: table.model,
            key_fingerprint: table.key_fingerprint,
            end_user: table.end_user,
        },
        action: table.action,
        thresholds,
    })
}

/// An exact decimal from a TOML string (`"12.50"`), integer or float (read from its shortest text).
fn decimal(v: &toml::Value) -> Result<Decimal, String> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        _ => return Err("must be a number or a decimal string".into()),
    };
    text.trim()
        .parse::<Decimal>()
        .map_err(|_| format!("{text:?} is not a decimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(text: &str) -> Result<Vec<Budget>, String> {
        let v: toml::Table = toml::from_str(text).unwrap();
        parse(v.get("budget"))
    }

    #[test]
    fn a_budget_table_is_read_exactly() {
        let b = budgets(
            r#"
            [[budget]]
            name = "alpha-daily"
            period = "day"
            limit_yuan = "12.345"
            project = "alpha"
            action = "block"
            [[budget]]
            name = "all"
            period = "month"
            limit_yuan = 100
            action = "alert"
            thresholds = [1.0, 0.9, "0.25"]
            "#,
        )
        .unwrap();
        assert_eq!(b[0].limit, "12.345".parse::<Decimal>().unwrap());
        assert_eq!(b[0].thresholds, default_thresholds());
        assert_eq!(b[0].scope.project.as_deref(), Some("alpha"));
        assert_eq!(
            b[1].thresholds,
            vec![
                "0.25".parse::<Decimal>().unwrap(),
                "0.9".parse().unwrap(),
                Decimal::ONE
            ]
        );
        assert_eq!((b[1].period, b[1].action), (Period::Month, Action::Alert));
    }

    #[test]
    fn a_bad_budget_is_named_in_one_line() {
        let cases = [
            (
                r#"name = "x"
period = "week"
limit_yuan = 1
action = "block""#,
                "budget \"x\": unknown variant `week`",
            ),
            (
                r#"name = "x"
period = "day"
limit_yuan = "-1"
action = "block""#,
                "budget \"x\": limit_yuan must be greater than 0",
            ),
            (
                r#"period = "day"
limit_yuan = 1
action = "block""#,
                "[[budget]] #1: missing field `name`",
            ),
            (
                r#"name = "x y"
period = "day"
limit_yuan = 1
action = "block""#,
                "budget \"x y\": name must be",
            ),
            (
                r#"name = "x"
period = "day"
limit_yuan = 1
action = "block"
key_fingerprint = "sk-abc""#,
                "budget \"x\": key_fingerprint must be",
            ),
            (
                r#"name = "x"
period = "day"
limit_yuan = 1
action = "stop""#,
                "budget \"x\": unknown variant `stop`",
            ),
            (
                r#"name = "x"
period = "day"
limit_yuan = 1
action = "block"
team = "a""#,
                "budget \"x\": unknown field `team`",
            ),
        ];
        for (table, want) in cases {
            let e = budgets(&format!("[[budget]]\n{table}")).unwrap_err();
            assert!(e.starts_with(want) && !e.contains('\n'), "{e}");
        }
        let e = budgets(
            "[[budget]]\nname = \"x\"\nperiod = \"day\"\nlimit_yuan = 1\naction = \"alert\"\n\
             [[budget]]\nname = \"x\"\nperiod = \"hour\"\nlimit_yuan = 1\naction = \"alert\"\n",
        )
        .unwrap_err();
        assert_eq!(e, "budget \"x\": the name is used twice");
    }

    #[test]
    fn a_scope_covers_calls_matching_every_field_given() {
        let scope = Scope {
            project: Some("alpha".into()),
            model: Some("deepseek-r1".into()),
            ..Scope::default()
        };
        let call = |project, model| Attribution {
            project,
            model,
            key_fingerprint: Some("0123456789ab"),
            end_user: None,
        };
        assert!(scope.covers(&call(Some("alpha"), "deepseek-r1")));
        assert!(!scope.covers(&call(Some("beta"), "deepseek-r1")));
        assert!(!scope.covers(&call(None, "deepseek-r1")));
        assert!(!scope.covers(&call(Some("alpha"), "deepseek-v3")));
        assert!(Scope::default().covers(&call(None, "anything")));
    }
}
