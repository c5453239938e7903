//! Quark's `exclude` list: layers left unquantized.
//!
//! An entry `re:<pattern>` is a regex matched at the start of the name (Python's `re.match`,
//! hence the leading `.*` in AMD's lists); any other entry must equal the name exactly — no
//! substring, no glob.

use regex::Regex;
use serde::{Serialize, Serializer};

use crate::error::QuarkError;
use crate::names::NameMapper;

/// The prefix under which multimodal wrappers keep their language model.
const WRAPPER_PREFIX: &str = "language_model.";

#[derive(Debug, Clone)]
enum Entry {
    Exact(String),
    Regex { text: String, regex: Regex },
}

impl Entry {
    fn text(&self) -> &str {
        match self {
            Entry::Exact(name) => name,
            Entry::Regex { text, .. } => text,
        }
    }
}

/// A compiled exclude list; serializes as the entries as written.
#[derive(Debug, Clone, Default)]
pub struct ExcludeList {
    entries: Vec<Entry>,
}

impl Serialize for ExcludeList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.entries())
    }
}

impl ExcludeList {
    /// Compiles the entries; a `re:` entry that is not a valid regex is an error naming it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, QuarkError> {
        let entries = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref();
                match entry.strip_prefix("re:") {
                    Some(pattern) => Regex::new(&format!("^(?:{pattern})"))
                        .map(|regex| Entry::Regex {
                            text: entry.to_owned(),
                            regex,
                        })
                        .map_err(|source| QuarkError::BadExcludeRegex {
                            entry: entry.to_owned(),
                            source,
                        }),
                    None => Ok(Entry::Exact(entry.to_owned())),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The entries as written, in order.
    pub fn entries(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(Entry::text)
    }

    /// The first entry that excludes `name`, if any.
    pub fn matching(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| match entry {
                Entry::Exact(exact) => exact == name,
                Entry::Regex { regex, .. } => regex.is_match(name),
            })
            .map(Entry::text)
    }

    /// The list as seen through `mapper`: every literal entry is mapped, and a mapped entry
    /// `language_model.X` is followed by `X`, so a wrapper's list also covers the bare language
    /// model's names. Duplicates are dropped, first occurrence kept. Regex entries are kept as
    /// written: rewriting a pattern's text is not a rewrite of what it matches.
    pub fn expanded(&self, mapper: &NameMapper) -> Self {
        let mut entries: Vec<Entry> = Vec::with_capacity(self.entries.len());
        let mut push = |entry: Entry| {
            if !entries.iter().any(|e| e.text() == entry.text()) {
                entries.push(entry);
            }
        };
        for entry in &self.entries {
            match entry {
                Entry::Exact(name) => {
                    let mapped = mapper.map(name);
                    let bare = mapped.strip_prefix(WRAPPER_PREFIX).map(str::to_owned);
                    push(Entry::Exact(mapped));
                    if let Some(bare) = bare {
                        push(Entry::Exact(bare));
                    }
                }
                regex => push(regex.clone()),
            }
        }
        Self { entries }
    }
}
