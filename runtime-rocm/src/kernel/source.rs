//! The kernel-source convention shared by every crate with kernels, and compile-time defines.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// One `.hip` file: kernels declared `extern "C" __global__`, no `#include`s (the runtime's
/// prelude supplies the device API), and every define given a default with `#ifndef` so the
/// file compiles with no defines at all. Lines `// check-defines: NAME=VALUE ...` list extra
/// define sets that `cargo xtask check-kernels` also compiles.
///
/// A file with the line `// dependent-launch` promises that every kernel's body begins with
/// `mx_wait_prior_kernels();` (the prelude's grid-dependency wait). Its launches may then
/// start while the kernel before them on the stream is still finishing (NVIDIA's
/// programmatic dependent launch, sm_90 and later): the wait holds each block until that
/// kernel has completed and its writes are visible, so only launch and block start-up overlap.
/// The promise is checked whenever the file is compiled.
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
const DEPENDENT_LAUNCH: &str = "// dependent-launch";
/// The statement a dependent-launch kernel must begin with.
pub const PRIOR_KERNELS_WAIT: &str = "mx_wait_prior_kernels();";

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

impl KernelSource<'_> {
    /// Whether the file declares `// dependent-launch`; an error naming the line of the first
    /// kernel whose body does not begin with [`PRIOR_KERNELS_WAIT`] when it does.
    pub fn dependent_launch(&self) -> Result<bool> {
        if !self
            .code
            .lines()
            .any(|line| line.trim() == DEPENDENT_LAUNCH)
        {
            return Ok(false);
        }
        let mut line_start = 0;
        for line in self.code.split_inclusive('\n') {
            let declared = line
                .find("__global__")
                .filter(|&at| !line[..at].contains("//"));
            if let Some(at) = declared {
                let after = &self.code[line_start + at..];
                // The body is the first brace after the declaration; a macro-defined kernel's
                // lines end in backslashes.
                let body = after.find('{').map(|brace| {
                    after[brace + 1..].trim_start_matches(|c: char| c.is_whitespace() || c == '\\')
                });
                if !body.is_some_and(|body| body.starts_with(PRIOR_KERNELS_WAIT)) {
                    let number = self.code[..line_start].lines().count() + 1;
                    return Err(Error::InvalidSource {
                        source_name: self.name.to_owned(),
                        reason: format!(
                            "the file declares {DEPENDENT_LAUNCH}, but the kernel declared on \
                             line {number} does not begin with {PRIOR_KERNELS_WAIT}"
                        ),
                    });
                }
            }
            line_start += line.len();
        }
        Ok(true)
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
    fn dependent_launch_needs_every_kernel_to_wait_first() {
        let good = "// dependent-launch\n// a __global__ in a comment\n\
                    extern \"C\" __global__ void a(int* x) {\n    mx_wait_prior_kernels();\n}\n\
                    #define K(T) extern \"C\" __global__ void k##T(int* x) { \\\n    \
                    mx_wait_prior_kernels(); \\\n}\n";
        assert_eq!(
            KernelSource::new("g.hip", good).dependent_launch().ok(),
            Some(true)
        );
        let plain = "extern \"C\" __global__ void a(int* x) { x[0] = 1; }\n";
        assert_eq!(
            KernelSource::new("p.hip", plain).dependent_launch().ok(),
            Some(false)
        );
        let bad = "// dependent-launch\nextern \"C\" __global__ void a(int* x) {\n    \
                   mx_wait_prior_kernels();\n}\n\nextern \"C\" __global__ void b(int* x) {\n    \
                   x[0] = 1;\n    mx_wait_prior_kernels();\n}\n";
        let err = KernelSource::new("b.hip", bad)
            .dependent_launch()
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidSource { .. }), "{message}");
        assert!(
            message.contains("b.hip") && message.contains("line 6"),
            "{message}"
        );
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
