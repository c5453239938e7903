#!/bin/bash
# Runs on the device machine from the repository root, with `target/ab` carried (staged by
# stage.sh): the whole stack's GPU tests, then every variant's gpu_model_ops, then decode ITL
# of base and the variants alternated, with ncu kernel traces, as long as LIMIT seconds allow
# (default 580: one call; one bench-decode run takes ≈ 30 s). Everything it prints goes to
# $OUT/all.tgz.
# Environment: ROUNDS (default 2), VARIANTS (default: all staged, base first), CONC
# (default 1,4,8,16), SKIP_TESTS=1 (a second call that only measures), TRACES (default on).
export MXSERVE_KERNEL_CACHE=/tmp/kc
A=target/ab
LIMIT=${LIMIT:-580}
VARIANTS=${VARIANTS:-base tc-split tc-absorb mla-empty-splits kv-append-blocks tc-from-1 moe-prefetch lmhead}
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $OUT/gpu.txt
el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/log.txt; }
left() { echo $(( LIMIT - ($(date +%s) - t0) )); }
run() { # run NAME SECONDS CMD...: only while SECONDS are left, capped at what is left
  local name=$1 need=$2 rc; shift 2
  if [ "$(left)" -lt "$need" ]; then el "skip $name"; return 1; fi
  timeout "$(left)" "$@" > "$OUT/$name.txt" 2>&1; rc=$?
  el "$name rc=$rc"; return $rc
}
finish() { cd "$OUT" && tar czf all.tgz ./*.txt && rm -f ./*.txt; }
trap finish EXIT
last=moe-prefetch
if [ -z "${SKIP_TESTS:-}" ]; then
  run "${last}_gpu_model_ops" 30 "$A/$last/gpu_model_ops"; ops=$?
  for t in gpu_moe gpu_forward gpu_sampled gpu_synthetic gpu_backend server_gpu; do
    run "${last}_$t" 30 "$A/$last/$t"
  done
  # The other variants' kernels are the whole stack's, less some patches: their ops tests
  # only where the whole stack's fail, to find the patch that broke them (lmhead always: it
  # is not in the stack).
  for v in $VARIANTS; do
    [ "$v" = "$last" ] || [ ! -x "$A/$v/gpu_model_ops" ] && continue
    [ "$ops" = 0 ] && [ "$v" != lmhead ] && continue
    run "${v}_gpu_model_ops" 20 "$A/$v/gpu_model_ops"
  done
fi
bd() { run "bd_$1_$2" 45 "$A/$1/bench-decode" --concurrency "${CONC:-1,4,8,16}" --graphs on --steps 24; }
ncu_run() { run "ncu_$1_c$2" 60 ncu --clock-control none --cache-control none \
  --metrics gpu__time_duration.sum --csv "$A/$1/bench-decode" --concurrency "$2" --steps 2 \
  --prompt 16 --layers 3 --graphs on; }
# The MoE layer alone: base against the L2 prefetch (the decode patches do not touch it).
mb() { run "mb_$1_$2" 30 "$A/$1/moe-bench" --path gemv --batches 1,4,8 --graph --breakdown \
  --anchor none --copies 2 --iters 20; }
# The first round, the whole stack's c=4 trace, the other rounds, the other traces: what
# matters most first, in case the time runs out.
mb base 1; mb "$last" 1
for v in $VARIANTS; do bd "$v" 1; done
[ "${TRACES:-on}" = on ] && ncu_run "$last" 4
for r in $(seq 2 "${ROUNDS:-2}"); do
  mb base "$r"; mb "$last" "$r"
  for v in $VARIANTS; do bd "$v" "$r"; done
done
if [ "${TRACES:-on}" = on ]; then
  ncu_run "$last" 1
  ncu_run base 4
fi
