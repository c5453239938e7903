//! Parsing of device strings: `auto`, `cpu`, `rocm:N`, `cuda:N`.

use std::fmt;
use std::str::FromStr;

/// Which device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The best device present: the first AMD GPU, else the first NVIDIA GPU, else the CPU.
    Auto,
    /// The CPU (reference implementations).
    Cpu,
    /// AMD GPU number `N` as HIP counts them.
    Rocm(usize),
    /// NVIDIA GPU number `N` as CUDA counts them.
    Cuda(usize),
}

/// A device string that is not one of `auto`, `cpu`, `rocm:N`, `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device {input:?}: {reason} (expected auto, cpu, rocm:N or cuda:N)")]
pub struct SpecError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for DeviceSpec {
    type Err = SpecError;

    fn from_str(input: &str) -> Result<Self, SpecError> {
        let error = |reason: &str| SpecError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = input.trim();
        match trimmed {
            "auto" => return Ok(DeviceSpec::Auto),
            "cpu" => return Ok(DeviceSpec::Cpu),
            "" => return Err(error("empty device string")),
            _ => {}
        }
        let Some((kind, index)) = trimmed.split_once(':') else {
            return Err(error("unknown device kind"));
        };
        let index: usize = index
            .parse()
            .map_err(|_| error("the device index must be a non-negative integer"))?;
        match kind {
            "rocm" => Ok(DeviceSpec::Rocm(index)),
            "cuda" => Ok(DeviceSpec::Cuda(index)),
            "cpu" => Err(error("the CPU takes no index")),
            _ => Err(error("unknown device kind")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Rocm(i) => write!(f, "rocm:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_device_strings() {
        let cases: &[(&str, Result<DeviceSpec, &str>)] = &[
            ("auto", Ok(DeviceSpec::Auto)),
            ("cpu", Ok(DeviceSpec::Cpu)),
            (" cuda:0 ", Ok(DeviceSpec::Cuda(0))),
            ("rocm:7", Ok(DeviceSpec::Rocm(7))),
            ("", Err("empty device string")),
            ("gpu", Err("unknown device kind")),
            ("metal:0", Err("unknown device kind")),
            (
                "cuda:",
                Err("the device index must be a non-negative integer"),
            ),
            (
                "cuda:-1",
                Err("the device index must be a non-negative integer"),
            ),
            (
                "rocm:x",
                Err("the device index must be a non-negative integer"),
            ),
            ("cpu:0", Err("the CPU takes no index")),
        ];
        for (input, expected) in cases {
            let got = input.parse::<DeviceSpec>().map_err(|e| e.reason);
            assert_eq!(got, expected.map_err(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            DeviceSpec::Auto,
            DeviceSpec::Cpu,
            DeviceSpec::Rocm(3),
            DeviceSpec::Cuda(12),
        ] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>(), Ok(spec));
        }
    }
}
