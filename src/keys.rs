//! `[[api_key]]` tables of the config file: what the operator knows about each upstream key, by its
//! fingerprint (the key itself is never needed):
//!
//! - `key_id` and `name`: the console's API-key ID and a human name, so rows, reports and the reconciliation
//!   with the platform's bill (whose Instance ID starts with the key ID) speak the platform's key ID;
//! - `project` (and `user_prefix`): attribution pinned to the key. A call made with a pinned key is
//!   attributed to the key's project whatever its `X-Meter-Project` says (the header is ignored), and its
//!   `X-Meter-User` is kept under the key's prefix. A client cannot step out of a project's budget by
//!   changing a header while it uses the project's key.

use serde::Deserialize;
use std::collections::HashMap;

/// One `[[api_key]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// `key_fingerprint` as in the ledger: the first 12 hex digits of SHA-256 of the key.
    pub fingerprint: String,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub user_prefix: Option<String>,
}

/// Every `[[api_key]]`, by fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    by_fingerprint: HashMap<String, ApiKey>,
}

/// Who a call is attributed to, after the key's pins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributed {
    pub project: Option<String>,
    pub end_user: Option<String>,
    /// The console's ID of the key (`[[api_key]]` `key_id`).
    pub key_id: Option<String>,
}

impl ApiKeys {
    pub fn get(&self, fingerprint: &str) -> Option<&ApiKey> {
        self.by_fingerprint.get(fingerprint)
    }

    /// The console's key ID of a fingerprint, if configured.
    pub fn key_id(&self, fingerprint: Option<&str>) -> Option<&str> {
        self.get(fingerprint?)?.key_id.as_deref()
    }

    /// A call's attribution: what the headers say, unless its key pins it.
    pub fn attribute(
        &self,
        fingerprint: Option<&str>,
        project_header: Option<String>,
        user_header: Option<String>,
    ) -> Attributed {
        let Some(key) = fingerprint.and_then(|f| self.get(f)) else {
            return Attributed {
                project: project_header,
                end_user: user_header,
                key_id: None,
            };
        };
        let project = key.project.clone().or(project_header);
        let end_user = match (&key.user_prefix, user_header) {
            (Some(prefix), Some(user)) if user.starts_with(prefix.as_str()) => Some(user),
            (Some(prefix), Some(user)) => Some(format!("{prefix}{user}")),
            (_, user) => user,
        };
        Attributed {
            project,
            end_user,
            key_id: key.key_id.clone(),
        }
    }
}

/// The `api_key` array of the config file (absent: none). The error names the table and what is wrong, in
/// one line.
pub fn parse(value: Option<&toml::Value>) -> Result<ApiKeys, String> {
    let Some(value) = value else {
        return Ok(ApiKeys::default());
    };
    let Some(tables) = value.as_array() else {
        return Err("`api_key` must be an array of tables ([[api_key]])".into());
    };
    let mut keys = ApiKeys::default();
    let mut ids = std::collections::HashSet::new();
    for (i, t) in tables.iter().enumerate() {
        let which = format!("[[api_key]] #{}", i + 1);
        let key: ApiKey = t.clone().try_into().map_err(|e: toml::de::Error| {
            format!(
                "{which}: {}",
                e.message().lines().next().unwrap_or("invalid")
            )
        })?;
        if key.fingerprint.len() != 12
            || !key
                .fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{which}: fingerprint must be 12 lowercase hex digits (the ledger's key_fingerprint)"
            ));
        }
        if let Some(id) = &key.key_id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            {
                return Err(format!(
                    "{which}: key_id must be the console's key ID (1 to 64 letters, digits, `_` or `-`)"
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(format!("{which}: key_id {id} is given twice"));
            }
        }
        for (field, v) in [("project", &key.project), ("user_prefix", &key.user_prefix)] {
            if v.as_deref().is_some_and(|v| v.is_empty() || v.len() > 256) {
                return Err(format!("{which}: {field} must be 1 to 256 characters"));
            }
        }
        if key.user_prefix.is_some() && key.project.is_none() {
            return Err(format!(
                "{which}: user_prefix pins users, and needs the key's project pinned too"
            ));
        }
        let fingerprint = key.fingerprint.clone();
        if keys.by_fingerprint.insert(fingerprint, key).is_some() {
            return Err(format!("{which}: fingerprint is given twice"));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Result<ApiKeys, String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        parse(table.get("api_key"))
    }

    #[test]
    fn a_pinned_key_ignores_the_project_header_and_keeps_users_under_its_prefix() {
        let k = keys(
            "[[api_key]]\nfingerprint = \"0123456789ab\"\nkey_id = \"1234567\"\nname = \"alpha prod\"\nproject = \"alpha\"\nuser_prefix = \"alpha:\"\n\
             [[api_key]]\nfingerprint = \"ba9876543210\"\nkey_id = \"7654321\"\n",
        )
        .unwrap();
        let a = k.attribute(
            Some("0123456789ab"),
            Some("beta".into()),
            Some("bob".into()),
        );
        assert_eq!(
            a,
            Attributed {
                project: Some("alpha".into()),
                end_user: Some("alpha:bob".into()),
                key_id: Some("1234567".into())
            }
        );
        let a = k.attribute(Some("0123456789ab"), None, Some("alpha:carol".into()));
        assert_eq!(a.end_user.as_deref(), Some("alpha:carol"));
        // Mapped, not pinned: the headers decide.
        let a = k.attribute(Some("ba9876543210"), Some("beta".into()), None);
        assert_eq!(
            (a.project.as_deref(), a.key_id.as_deref()),
            (Some("beta"), Some("7654321"))
        );
        // Unknown key: the headers decide, no key ID.
        let a = k.attribute(Some("ffffffffffff"), Some("beta".into()), None);
        assert_eq!(a.project.as_deref(), Some("beta"));
        assert_eq!(a.key_id, None);
    }

    #[test]
    fn a_bad_api_key_table_is_named_in_one_line() {
        for (text, says) in [
            ("[[api_key]]\nfingerprint = \"xyz\"\n", "fingerprint must be 12 lowercase hex"),
            ("[[api_key]]\nkey_id = \"1\"\n", "missing field `fingerprint`"),
            ("[[api_key]]\nfingerprint = \"0123456789ab\"\nkey_id = \"1;2\"\n", "key_id must be"),
            ("[[api_key]]\nfingerprint = \"0123456789ab\"\ncolour = \"red\"\n", "unknown field `colour`"),
            ("[[api_key]]\nfingerprint = \"0123456789ab\"\nuser_prefix = \"a:\"\n", "needs the key's project"),
            ("[[api_key]]\nfingerprint = \"0123456789ab\"\n[[api_key]]\nfingerprint = \"0123456789ab\"\n", "#2: fingerprint is given twice"),
            ("[[api_key]]\nfingerprint = \"0123456789ab\"\nkey_id = \"9\"\n[[api_key]]\nfingerprint = \"0123456789ac\"\nkey_id = \"9\"\n", "key_id 9 is given twice"),
            ("api_key = 3\n", "must be an array of tables"),
        ] {
            let err = keys(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
