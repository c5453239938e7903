//! Every `*.hip` kernel of the workspace compiles for NVIDIA (NVRTC, sm_90a) and AMD (hipcc,
//! gfx90a) with no GPU. Where a compiler is not installed the test says so and skips that
//! target, unless MXSERVE_REQUIRE_KERNEL_COMPILERS=1 (set in CI), which makes it a failure.

use std::path::Path;

use runtime_rocm::{Defines, Error, KernelSource, Target, Toolchain, check, check_tree};

const REQUIRE_ENV: &str = "MXSERVE_REQUIRE_KERNEL_COMPILERS";

/// The targets whose compilers are present; panics on a missing one when CI requires them.
fn available_targets(toolchain: &Toolchain) -> Vec<Target> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let mut targets = Vec::new();
    for target in [Target::h100(), Target::gfx90a()] {
        match toolchain.missing(&target) {
            None => targets.push(target),
            Some(err) if required => {
                panic!("{REQUIRE_ENV}=1 but the compiler for {target} is missing: {err}")
            }
            Some(err) => eprintln!(
                "skipped: compiling for {target}: {err} (run .ci/install-kernel-compilers and source \
                 target/kernel-compilers/env.sh)"
            ),
        }
    }
    targets
}

#[test]
fn every_workspace_kernel_compiles_for_both_vendors() {
    let toolchain = Toolchain::from_env();
    let targets = available_targets(&toolchain);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let results = check_tree(root, &targets, &toolchain).unwrap();
    let files: std::collections::BTreeSet<_> = results.iter().map(|r| r.file.clone()).collect();
    if !targets.is_empty() {
        assert!(
            files
                .iter()
                .any(|f| f.ends_with("runtime-rocm/kernels/reduce.hip")),
            "the walk must find the runtime's own kernels: {files:?}"
        );
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|e| format!("{} {} [{}]: {e}", r.file.display(), r.target, r.defines))
        })
        .collect();
    eprintln!("{} compilations over {} files", results.len(), files.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_kernel_fails_with_the_compiler_log() {
    let toolchain = Toolchain::from_env();
    let source = KernelSource::new(
        "broken.hip",
        "extern \"C\" __global__ void broken(float* y) {\n  y[0] = undeclared_name;\n}\n",
    );
    for target in available_targets(&toolchain) {
        match check(&source, &Defines::new(), &target, &toolchain) {
            Err(Error::Compile {
                source_name, log, ..
            }) => {
                assert_eq!(source_name, "broken.hip");
                assert!(
                    log.contains("undeclared_name"),
                    "{target}: log does not name the error:\n{log}"
                );
                assert!(
                    log.contains("broken.hip"),
                    "{target}: log does not point at the file:\n{log}"
                );
            }
            other => panic!("{target}: expected a compile error, got {other:?}"),
        }
    }
}

#[test]
fn defines_reach_the_compiler() {
    let toolchain = Toolchain::from_env();
    let source = KernelSource::new(
        "needs_define.hip",
        "#if !defined(TILE) || TILE != 96\n#error TILE must be 96\n#endif\n\
         extern \"C\" __global__ void k(float* y) { y[threadIdx.x] = TILE + WARP_SIZE; }\n",
    );
    for target in available_targets(&toolchain) {
        assert!(
            check(
                &source,
                &Defines::new().set("TILE", 96),
                &target,
                &toolchain
            )
            .is_ok(),
            "{target}"
        );
        let err = check(
            &source,
            &Defines::new().set("TILE", 64),
            &target,
            &toolchain,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("TILE must be 96"),
            "{target}: {err}"
        );
    }
}

#[test]
fn nvidia_checks_report_each_kernels_registers_and_spills() {
    let toolchain = Toolchain::from_env();
    // `squeezed` keeps 96 loaded values live under a 32-register cap (1024 threads, two
    // blocks per multiprocessor), so the assembler must spill; `roomy` needs a handful.
    let source = KernelSource::new(
        "pressure.hip",
        "extern \"C\" __global__ void roomy(float* y) { y[threadIdx.x] += 1.0f; }\n\
         extern \"C\" __global__ void __launch_bounds__(1024, 2) squeezed(const float* x, float* y) {\n\
           float v[96];\n\
           #pragma unroll\n\
           for (int i = 0; i < 96; ++i) v[i] = x[threadIdx.x + 1024 * i];\n\
           float s = 0.0f;\n\
           #pragma unroll\n\
           for (int i = 0; i < 96; ++i) s = s * v[95 - i] + v[i];\n\
           y[threadIdx.x] = s;\n\
         }\n",
    );
    for target in available_targets(&toolchain) {
        let output = check(&source, &Defines::new(), &target, &toolchain).unwrap();
        if !matches!(target, Target::Nvidia { .. }) {
            assert!(output.kernels.is_empty(), "{target}: {:?}", output.kernels);
            continue;
        }
        let find = |name: &str| {
            output
                .kernels
                .iter()
                .find(|k| k.kernel == name)
                .unwrap_or_else(|| panic!("{target}: no report for {name}: {:?}", output.kernels))
        };
        let (roomy, squeezed) = (find("roomy"), find("squeezed"));
        assert!(roomy.registers > 0 && roomy.registers < 32, "{roomy:?}");
        assert_eq!((roomy.spill_stores, roomy.spill_loads), (0, 0), "{roomy:?}");
        assert!(squeezed.registers <= 32, "{squeezed:?}");
        assert!(
            squeezed.spill_stores > 0 && squeezed.spill_loads > 0,
            "{squeezed:?}"
        );
    }
}
