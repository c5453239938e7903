# Sums ncu's gpu__time_duration per kernel name from an `ncu --csv --log-file F` run and prints a
# markdown table (used for the per-kernel profile in model-deepseek/PERF-NOTES.md).
import csv, collections, sys
lines = open(sys.argv[1]).read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
total = collections.defaultdict(float); count = collections.Counter()
scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}
for r in csv.DictReader(lines[start:]):
    if r["Metric Name"] != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0]
    total[name] += float(r["Metric Value"].replace(",", "")) * scale[r["Metric Unit"]]
    count[name] += 1
print("| kernel | launches | total µs | mean µs |")
print("|---|---:|---:|---:|")
for name, t in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"| {name} | {count[name]} | {t:.1f} | {t / count[name]:.1f} |")
print(f"| all | {sum(count.values())} | {sum(total.values()):.1f} | |")
