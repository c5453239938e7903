//! Rewriting checkpoint names into the names a model uses.
//!
//! A multimodal wrapper stores its language model under `language_model.` (Kimi-K2.5 has both
//! `language_model.model.layers.N` and `language_model.layers.N`); the model wants
//! `model.layers.N`. The rules are data, applied in order, each to the previous rule's output.

use serde::Serialize;

use crate::error::QuarkError;

/// One rewrite rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NameRule {
    /// Replace a leading `from` with `to` (once). An empty `from` prepends `to`.
    Prefix {
        /// What the name must start with.
        from: String,
        /// Its replacement.
        to: String,
    },
    /// Replace every occurrence of `from` with `to` (Python's `str.replace`).
    Substring {
        /// What to replace; must not be empty.
        from: String,
        /// Its replacement.
        to: String,
    },
    /// Replace a trailing `from` with `to` (once). An empty `from` appends `to`.
    Suffix {
        /// What the name must end with.
        from: String,
        /// Its replacement.
        to: String,
    },
}

impl NameRule {
    /// A [`NameRule::Prefix`] rule.
    pub fn prefix(from: &str, to: &str) -> Self {
        Self::Prefix {
            from: from.to_owned(),
            to: to.to_owned(),
        }
    }

    /// A [`NameRule::Substring`] rule.
    pub fn substring(from: &str, to: &str) -> Self {
        Self::Substring {
            from: from.to_owned(),
            to: to.to_owned(),
        }
    }

    /// A [`NameRule::Suffix`] rule.
    pub fn suffix(from: &str, to: &str) -> Self {
        Self::Suffix {
            from: from.to_owned(),
            to: to.to_owned(),
        }
    }

    fn apply(&self, name: String) -> String {
        match self {
            Self::Prefix { from, to } => match name.strip_prefix(from.as_str()) {
                Some(rest) => format!("{to}{rest}"),
                None => name,
            },
            Self::Substring { from, to } => name.replace(from.as_str(), to),
            Self::Suffix { from, to } => match name.strip_suffix(from.as_str()) {
                Some(rest) => format!("{rest}{to}"),
                None => name,
            },
        }
    }
}

/// An ordered list of [`NameRule`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NameMapper {
    rules: Vec<NameRule>,
}

impl NameMapper {
    /// A mapper applying `rules` in order; an empty substring pattern is an error.
    pub fn new(rules: Vec<NameRule>) -> Result<Self, QuarkError> {
        if let Some(index) = rules
            .iter()
            .position(|r| matches!(r, NameRule::Substring { from, .. } if from.is_empty()))
        {
            return Err(QuarkError::EmptySubstringRule { index });
        }
        Ok(Self { rules })
    }

    /// The mapper that leaves every name as it is.
    pub fn identity() -> Self {
        Self::default()
    }

    /// Rewrites one name.
    pub fn map(&self, name: &str) -> String {
        self.rules
            .iter()
            .fold(name.to_owned(), |name, rule| rule.apply(name))
    }
}
