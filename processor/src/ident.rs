//! The one validating, dialect-quoting identifier type. Every table and column name that comes from a contract
//! passes through here before it can reach SQL; values never do (they are always bound).

use std::fmt;

/// A validated SQL identifier: ASCII letter or underscore, then letters, digits, underscores; at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a valid identifier (letters, digits and '_', starting with a letter or '_', at most 63 characters)")]
pub struct IdentError(pub String);

impl Ident {
    pub fn new(s: &str) -> Result<Self, IdentError> {
        let mut chars = s.chars();
        let ok_first = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok_first && ok_rest && s.len() <= 63 {
            Ok(Ident(s.to_owned()))
        } else {
            Err(IdentError(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `"name"` — SQLite and PostgreSQL. Validation already excludes quotes, so no escaping is needed.
    pub fn ansi(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// `[name]` — SQL Server.
    pub fn bracket(&self) -> String {
        format!("[{}]", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_injection_and_accepts_plain_names() {
        assert!(Ident::new("app_base").is_ok());
        assert!(Ident::new("_x9").is_ok());
        for bad in [
            "",
            "9a",
            "a-b",
            "a\"b",
            "a;drop table x",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad}");
        }
        let i = Ident::new("t1").expect("valid");
        assert_eq!(i.ansi(), "\"t1\"");
        assert_eq!(i.bracket(), "[t1]");
    }
}
