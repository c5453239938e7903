//! The kernel-source convention shared by every crate with kernels, and compile-time defines.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// One `.hip` file: kernels declared `extern "C" __global__`, no `#include`s (the runtime's
/// prelude supplies the device API), and every define given a default with `#ifndef` so the
/// file compiles with no defines at all. Lines `// check-defines: NAME=VALUE ...` list extra
/// define sets that `cargo xtask check-kernels` also compiles.
///
/// Embed with [`kernel_source!`](crate::kernel_source):
/// `const AXPY: KernelSource<'static> = runtime_rocm::kernel_source!("../kernels/axpy.hip");`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource<'a> {
    /// File name, used in logs, errors and compiler messages.
    pub name: &'a str,
    /// The HIP-dialect source text.
    pub code: &'a str,
}

/// Embeds a `.hip` file (path relative to the calling file) as a [`KernelSource`].
#[macro_export]
macro_rules! kernel_source {
    ($path:literal) => {
        $crate::KernelSource {
            name: $path,
            code: include_str!($path),
        }
    };
}

const CHECK_DEFINES: &str = "// check-defines:";

impl<'a> KernelSource<'a> {
    /// A source from a name and text (for sources read at run time).
    pub const fn new(name: &'a str, code: &'a str) -> Self {
        KernelSource { name, code }
    }

    /// The define sets a compile check should cover: no defines, plus one set per
    /// `// check-defines:` line.
    pub fn check_configurations(&self) -> Result<Vec<Defines>> {
        let mut sets = vec![Defines::new()];
        for line in self.code.lines() {
            let Some(rest) = line.trim().strip_prefix(CHECK_DEFINES) else {
                continue;
            };
            let mut defines = Defines::new();
            for pair in rest.split_whitespace() {
                let (name, value) = pair.split_once('=').unwrap_or((pair, "1"));
                defines = defines.set(name, value);
            }
            defines.validate()?;
            sets.push(defines);
        }
        Ok(sets)
    }
}

/// Preprocessor defines for one compilation (shape constants, feature switches), kept sorted
/// so the same set always gives the same cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Defines(BTreeMap<String, String>);

/// Defined by the runtime itself; a caller may not override it.
pub const RESERVED_DEFINES: &[&str] = &["WARP_SIZE"];

impl Defines {
    /// No defines.
    pub fn new() -> Self {
        Defines::default()
    }

    /// Adds (or replaces) `name=value`. Validity is checked when compiling.
    pub fn set(mut self, name: impl Into<String>, value: impl fmt::Display) -> Self {
        self.0.insert(name.into(), value.to_string());
        self
    }

    /// The defines in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Checks every name is a C identifier not reserved by the runtime, and every value fits
    /// on one command-line argument.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in self.iter() {
            let invalid = |reason: &str| Error::InvalidDefine {
                name: name.to_owned(),
                value: value.to_owned(),
                reason: reason.to_owned(),
            };
            let mut chars = name.chars();
            let starts_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !starts_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid("the name must be a C identifier"));
            }
            if RESERVED_DEFINES.contains(&name) {
                return Err(invalid("the runtime defines this name itself"));
            }
            if value.chars().any(|c| c.is_control()) {
                return Err(invalid("the value must not contain control characters"));
            }
        }
        Ok(())
    }

    /// Compiler arguments `-DNAME=VALUE`.
    pub(crate) fn to_args(&self) -> Vec<String> {
        self.iter().map(|(k, v)| format!("-D{k}={v}")).collect()
    }
}

impl fmt::Display for Defines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_are_validated() {
        let cases = [
            (Defines::new().set("TILE_N", 64).set("_X", "1.5f"), true),
            (Defines::new().set("9LIVES", 1), false),
            (Defines::new().set("A-B", 1), false),
            (Defines::new().set("", 1), false),
            (Defines::new().set("WARP_SIZE", 32), false),
            (Defines::new().set("N", "1\n#include <x>"), false),
        ];
        for (defines, valid) in cases {
            assert_eq!(defines.validate().is_ok(), valid, "{defines}");
        }
    }

    #[test]
    fn check_configurations_reads_marker_lines() {
        let code = "// check-defines: TILE=128 FAST\nkernel\n  // check-defines: TILE=32\n";
        let sets = KernelSource::new("k.hip", code)
            .check_configurations()
            .unwrap();
        assert_eq!(
            sets,
            vec![
                Defines::new(),
                Defines::new().set("TILE", 128).set("FAST", 1),
                Defines::new().set("TILE", 32),
            ]
        );
        let bad = KernelSource::new("k.hip", "// check-defines: 1X=2\n");
        assert!(matches!(
            bad.check_configurations(),
            Err(Error::InvalidDefine { .. })
        ));
    }
}
