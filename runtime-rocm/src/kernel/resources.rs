//! What the NVIDIA assembler reports about each kernel it builds (`ptxas -v`): registers per
//! thread, spilled bytes and static shared memory. `check-kernels --resources` prints it, so a
//! kernel's register pressure can be read on a machine without a GPU (a spill at the launch
//! bound's register cap slowed the MoE kernels more than once: moe-kernels/PERF-NOTES.md, v12).

/// One kernel's resources, as ptxas reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    /// The entry function's name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes stored to and loaded from local memory because registers ran out.
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Static shared memory per block (dynamic shared memory is not in it).
    pub shared_bytes: u32,
}

/// Reads every entry function's report out of a compiler log; anything else in the log is
/// ignored. Lines look like
/// `ptxas info    : Compiling entry function 'k' for 'sm_90a'`,
/// `    0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads` and
/// `ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]`.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or_default().to_owned();
            out.push(KernelResources {
                kernel,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                shared_bytes: 0,
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        for field in line.split([',', ':']) {
            let words: Vec<&str> = field.split_whitespace().collect();
            let number = || words.first().and_then(|w| w.parse::<u32>().ok());
            match words.as_slice() {
                ["Used", n, "registers"] => current.registers = n.parse().unwrap_or(0),
                [_, "bytes", "spill", "stores"] => current.spill_stores = number().unwrap_or(0),
                [_, "bytes", "spill", "loads"] => current.spill_loads = number().unwrap_or(0),
                [_, "bytes", "smem"] => current.shared_bytes = number().unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_entry_functions_report() {
        let log = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'first' for 'sm_90a'
ptxas info    : Function properties for first
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'second' for 'sm_90a'
ptxas info    : Function properties for second
    72 bytes stack frame, 68 bytes spill stores, 80 bytes spill loads
ptxas info    : Used 128 registers, used 0 barriers, 400 bytes cmem[0]
";
        assert_eq!(
            parse_ptxas_log(log),
            vec![
                KernelResources {
                    kernel: "first".into(),
                    registers: 40,
                    spill_stores: 0,
                    spill_loads: 0,
                    shared_bytes: 1024,
                },
                KernelResources {
                    kernel: "second".into(),
                    registers: 128,
                    spill_stores: 68,
                    spill_loads: 80,
                    shared_bytes: 0,
                },
            ]
        );
        assert!(parse_ptxas_log("warning: nothing to see").is_empty());
    }
}
