"""PyTorch anchor for moe-bench: one Kimi-K2.5 MoE layer with torch._grouped_mm in bf16.

384 routed + 1 shared expert, top-8 (noaux_tc with one group), hidden 7168, intermediate 2048,
bf16 weights (34 GB). Routing is redrawn every iteration; the shared expert is either fused as a
385th expert slot (weight 1/rsf, rsf applied after the sum) or run as a separate MLP. Each
iteration is timed with CUDA events; the median is printed as one line per (batch, mode):

    ANCHOR batch=<B> mode=<fused|separate> median_ms=<t> iters=<n>

moe-bench runs this script and parses those lines into its table.
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

H, I, E, S, K = 7168, 2048, 384, 1, 8
RSF = 2.827


def route(logits, bias, shared):
    scores = torch.sigmoid(logits)
    _, ids = torch.topk(scores + bias, K, dim=-1)
    w = scores.gather(1, ids)
    w = w / (w.sum(-1, keepdim=True) + 1e-20)
    if shared:
        t = logits.shape[0]
        ids = torch.cat([ids, torch.full((t, S), E, dtype=ids.dtype, device=ids.device)], 1)
        w = torch.cat([w, torch.full((t, S), 1.0 / RSF, dtype=w.dtype, device=w.device)], 1)
    return ids, w


def grouped_experts(x, ids, w, w13, w2):
    t, slots = ids.shape
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w13.shape[0])
    offs = torch.cumsum(counts, 0).to(torch.int32)
    tok = order // slots
    h = torch._grouped_mm(x[tok], w13.transpose(1, 2), offs=offs)
    g, u = h.chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(g) * u, w2.transpose(1, 2), offs=offs)
    out = torch.zeros(t, H, dtype=torch.float32, device=x.device)
    out.index_add_(0, tok, y.float() * w.flatten()[order, None])
    return out


def layer(x, logits, bias, w13, w2, fused):
    if fused:
        ids, w = route(logits, bias, True)
        return (grouped_experts(x, ids, w, w13, w2) * RSF).to(torch.bfloat16)
    ids, w = route(logits, bias, False)
    out = grouped_experts(x, ids, w, w13[:E], w2[:E]) * RSF
    gs, us = (x @ w13[E].T).chunk(2, dim=-1)
    out += (F.silu(gs) * us) @ w2[E].T
    return out.to(torch.bfloat16)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,8,32,128,512,2048,16384")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    dev = "cuda"
    torch.manual_seed(0)
    w13 = torch.randn(E + S, 2 * I, H, dtype=torch.bfloat16, device=dev) * 0.02
    w2 = torch.randn(E + S, H, I, dtype=torch.bfloat16, device=dev) * 0.02
    bias = 0.1 * torch.randn(E, device=dev)
    for b in [int(v) for v in args.batches.split(",")]:
        iters = args.iters if b <= 512 else max(5, args.iters // 4)
        x = torch.randn(b, H, dtype=torch.bfloat16, device=dev)
        logit_sets = [torch.randn(b, E, device=dev) for _ in range(8)]
        times = {True: [], False: []}
        for i in range(args.warmup + iters):
            for fused in (True, False):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                layer(x, logit_sets[i % len(logit_sets)], bias, w13, w2, fused)
                end.record()
                end.synchronize()
                if i >= args.warmup:
                    times[fused].append(start.elapsed_time(end))
        for fused in (True, False):
            mode = "fused" if fused else "separate"
            print(f"ANCHOR batch={b} mode={mode} median_ms={statistics.median(times[fused]):.4f} iters={iters}", flush=True)


if __name__ == "__main__":
    main()
