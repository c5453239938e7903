#!/bin/bash
# Builds main and the pending variants (cumulative, in the order of the table in README.md) in
# one scratch worktree, and stages their stripped executables under target/ab/NAME of the
# repository (carry `target/ab` to the device machine; run `device-call.sh` there).
# Usage: moe-kernels/pending/stage.sh            (from the repository root, clean worktree)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
pending=moe-kernels/pending
wt=${WORKTREE:-/tmp/mxserve-ab}
export CARGO_TARGET_DIR="$root/target/ab-build"
rm -rf target/ab && mkdir -p target/ab
git worktree remove --force "$wt" 2>/dev/null || true
git worktree add -q --detach "$wt" HEAD
cp $pending/device-call.sh target/ab/

# stage NAME CARGO-ARGS...: builds in the worktree as it is now, copies and strips executables.
stage() {
  local name=$1; shift
  mkdir -p "target/ab/$name"
  for args in "$@"; do
    (cd "$wt" && cargo $args --release --message-format=json 2>>"$root/target/ab-$name.log") |
      python3 -c '
import json, os, shutil, sys
dest = sys.argv[1]
for line in sys.stdin:
    try:
        j = json.loads(line)
    except ValueError:
        continue
    exe = j.get("executable") if j.get("reason") == "compiler-artifact" else None
    # What the command asked for: test binaries from `test`, programs from `build` (not the
    # programs `cargo test` builds beside its tests).
    is_bin = j.get("target", {}).get("kind") == ["bin"]
    if not exe or is_bin != (sys.argv[2] == "build"):
        continue
    name = os.path.basename(exe)
    if not is_bin:
        name = name.rsplit("-", 1)[0]
    shutil.copy(exe, os.path.join(dest, name))
    os.system("strip " + os.path.join(dest, name))
    print("staged", os.path.join(dest, name))
' "target/ab/$name" "${args%% *}"
  done
}
bench="build -p model-deepseek --bin bench-decode"
ops="test -p moe-kernels --test gpu_model_ops --no-run"
moe="build -p moe-kernels --bin moe-bench"
stage base "$bench" "$moe"
(cd "$wt" && git apply "$root/$pending/lmhead-tc.patch")
stage lmhead "$bench" "$ops"
(cd "$wt" && git checkout -q . )
for v in tc-split tc-absorb mla-empty-splits kv-append-blocks tc-from-1; do
  (cd "$wt" && git apply "$root/$pending/$v.patch")
  stage "$v" "$bench" "$ops"
done
# The MoE's variant last (it touches only moe.hip), so it is the whole stack: every test.
(cd "$wt" && git apply "$root/$pending/moe-prefetch.patch")
stage moe-prefetch "$bench" "$moe" "test -p moe-kernels --test gpu_model_ops --test gpu_moe --no-run" \
  "test -p model-deepseek --test gpu_forward --test gpu_sampled --test gpu_synthetic --no-run" \
  "test -p server --test gpu_backend --no-run" "test -p tests --test server_gpu --no-run"
rm -f target/ab-*.log
git worktree remove --force "$wt"
du -sh target/ab
