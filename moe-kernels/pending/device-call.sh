#!/bin/bash
# Runs on the device machine from the repository root, with `target/ab` carried (staged by
# stage.sh): the whole stack's GPU tests, then every variant's gpu_model_ops, then decode ITL
# of base and the variants alternated, then ncu kernel traces, as long as LIMIT seconds allow
# (default 580: one call). Everything it prints goes to $OUT/all.tgz.
# Environment: ROUNDS (default 2), VARIANTS (default: all staged, base first), CONC
# (default 1,4,8,16), SKIP_TESTS=1 (a second call that only measures), TRACES (default on).
export MXSERVE_KERNEL_CACHE=/tmp/kc
A=target/ab
LIMIT=${LIMIT:-580}
VARIANTS=${VARIANTS:-base lmhead tc-split tc-absorb mla-empty-splits kv-append-blocks tc-from-1}
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $OUT/gpu.txt
el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/log.txt; }
left() { echo $(( LIMIT - ($(date +%s) - t0) )); }
run() { # run NAME SECONDS CMD...: only while SECONDS are left, capped at what is left
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then el "skip $name"; return; fi
  timeout "$(left)" "$@" > "$OUT/$name.txt" 2>&1; el "$name rc=$?"
}
finish() { cd "$OUT" && tar czf all.tgz ./*.txt && rm -f ./*.txt; }
trap finish EXIT
last=tc-from-1
if [ -z "${SKIP_TESTS:-}" ]; then
  for t in gpu_model_ops gpu_forward gpu_sampled gpu_synthetic gpu_backend server_gpu; do
    run "${last}_$t" 30 "$A/$last/$t"
  done
  for v in $VARIANTS; do
    [ -x "$A/$v/gpu_model_ops" ] && [ "$v" != "$last" ] && run "${v}_gpu_model_ops" 20 "$A/$v/gpu_model_ops"
  done
fi
for r in $(seq 1 "${ROUNDS:-2}"); do
  for v in $VARIANTS; do
    run "bd_${v}_$r" 45 "$A/$v/bench-decode" --concurrency "${CONC:-1,4,8,16}" --graphs on --steps 24
  done
done
if [ "${TRACES:-on}" = on ]; then
  ncu_run() { run "ncu_$1_c$2" 60 ncu --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --csv "$A/$1/bench-decode" --concurrency "$2" --steps 2 \
    --prompt 16 --layers 3 --graphs on; }
  ncu_run "$last" 4
  ncu_run "$last" 1
  ncu_run base 4
fi
