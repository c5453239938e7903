// Token sampling on the device (HIP dialect), one block per row of logits: greedy argmax, or
// one draw from the tempered softmax restricted to top-k and top-p with a uniform number the
// host drew. The definition is moe_kernels::reference::sampling's; see its module doc.
//
// Candidates are ordered by a 64-bit key: the logit's bits mapped so that unsigned order is
// the float total order (high 32 bits), then the complemented index (low 32 bits), so equal
// logits come in index order and every key is distinct. Top-k and the weighted cuts (top-p,
// the draw) are radix selects over that key, 8 bits a level from the top, each level one pass
// over the row with a shared-memory histogram of the candidates that share the prefix found
// so far; a level whose chosen bin holds exactly what is needed ends the select early. No
// sort, no workspace. Weights are exp() in f64 of an f32 argument, exactly as the reference;
// sums are f64 (in another order than the reference's, and with shared atomics, so a draw
// within f64 rounding of a prefix sum may pick the neighbouring token).
//
// Per-row request: SAMPLE_REQ doubles (mode, 1/temperature, top_k, top_p, u); mode 0 skips
// the pick (the row is still checked for non-finite values), 1 is greedy, 2 samples.
// Per-row result: two ints, the token (-1 when no logit is a number or the row was skipped)
// and 1 when the row holds a NaN or an infinity.
//
// Defines (set by the launcher; part of the compile-cache key):
//   WARP_SIZE        threads per wave, from the runtime; never assumed
//   SAMPLE_THREADS   threads per block (a multiple of WARP_SIZE)
// check-defines: SAMPLE_THREADS=256

#ifndef SAMPLE_THREADS
#define SAMPLE_THREADS 512
#endif
#if (SAMPLE_THREADS % WARP_SIZE) != 0
#error "SAMPLE_THREADS must be a multiple of WARP_SIZE"
#endif
#define SAMPLE_REQ 5
#define RADIX_BINS 256

typedef unsigned int u32;
typedef unsigned long long u64;

// Order key: larger = earlier candidate. Never 0 for a non-NaN logit.
__device__ __forceinline__ u64 order_key(float v, int i) {
    u32 b = __float_as_uint(v);
    u32 k = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)k << 32) | (u64)(0xffffffffu - (u32)i);
}

__device__ __forceinline__ int key_index(u64 key) { return (int)(0xffffffffu - (u32)key); }

__device__ __forceinline__ bool is_nan(float v) { return v != v; }

// A candidate's unnormalized probability: the f32 argument, then exp in f64.
__device__ __forceinline__ double sample_weight(float v, float max, float inv_t) {
    return v == max ? 1.0 : exp((double)((v - max) * inv_t));
}

struct Histogram {
    double weight[RADIX_BINS];
    u32 count[RADIX_BINS];
    u64 largest[RADIX_BINS];  // the bin's largest key: its only key when count is 1
};

// What thread 0 decided at one level, for every thread.
struct Decision {
    int bin;
    u32 remaining;  // count select: how many of the bin are still needed
    double before;  // weighted select: weight of the candidates before the bin
    int single;     // the bin holds one key (`largest`)
    int done;       // the select is over
};

// Histogram of the candidates (non-NaN, key >= floor) whose key matches `prefix` on `mask`,
// by the 8 bits at `shift`; weights only when `weighted`.
__device__ void histogram(const float* row, int n, u64 floor, u64 prefix, u64 mask, int shift,
                          bool weighted, float max, float inv_t, Histogram* h) {
    __syncthreads();
    for (int b = threadIdx.x; b < RADIX_BINS; b += SAMPLE_THREADS) {
        h->weight[b] = 0.0;
        h->count[b] = 0u;
        h->largest[b] = 0ull;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
        float v = row[i];
        if (is_nan(v)) continue;
        u64 key = order_key(v, i);
        if (key < floor || (key & mask) != prefix) continue;
        int b = (int)((key >> shift) & 0xffu);
        atomicAdd(&h->count[b], 1u);
        atomicMax(&h->largest[b], key);
        if (weighted) atomicAdd(&h->weight[b], sample_weight(v, max, inv_t));
    }
    __syncthreads();
}

// The k-th key (1-based) in candidate order among all non-NaN logits (k < their count), or a
// smaller value with the same set of keys at or above it.
__device__ u64 select_kth(const float* row, int n, u32 k, Histogram* h, Decision* d) {
    u64 prefix = 0ull, mask = 0ull;
    u32 remaining = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        histogram(row, n, 0ull, prefix, mask, shift, false, 0.0f, 0.0f, h);
        if (threadIdx.x == 0) {
            int b = RADIX_BINS - 1;
            for (; b > 0; --b) {
                if (h->count[b] >= remaining) break;
                remaining -= h->count[b];
            }
            d->bin = b;
            d->remaining = remaining;
            d->done = h->count[b] == remaining;
        }
        __syncthreads();
        prefix |= (u64)d->bin << shift;
        mask |= 0xffull << shift;
        remaining = d->remaining;
        if (d->done) break;
    }
    return prefix;
}

// The first candidate (key >= floor) whose inclusive weight sum exceeds `target` (reaches it,
// with `inclusive`), or the last candidate when none does; `before` gets the weight of the
// candidates ahead of it. `top` is the first level's histogram, shared between selects.
__device__ u64 select_weighted(const float* row, int n, u64 floor, float max, float inv_t,
                               double target, bool inclusive, const Histogram* top,
                               Histogram* h, Decision* d, double* before) {
    u64 prefix = 0ull, mask = 0ull;
    double base = 0.0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        const Histogram* level = top;
        if (shift != 56) {
            histogram(row, n, floor, prefix, mask, shift, true, max, inv_t, h);
            level = h;
        }
        __syncthreads();  // everyone has read the previous decision
        if (threadIdx.x == 0) {
            int chosen = -1, last = -1;
            double last_base = base;
            for (int b = RADIX_BINS - 1; b >= 0; --b) {
                if (level->count[b] == 0u) continue;
                double s = base + level->weight[b];
                if (s > target || (inclusive && s >= target)) {
                    chosen = b;
                    break;
                }
                last = b;
                last_base = base;
                base = s;
            }
            if (chosen < 0) {
                // Rounding left the target beyond the sum: the last candidate.
                chosen = last;
                base = last_base;
            }
            d->bin = chosen;
            d->before = base;
            d->single = level->count[chosen] == 1u;
        }
        __syncthreads();
        int bin = d->bin;
        base = d->before;
        if (d->single) {
            *before = base;
            return level->largest[bin];
        }
        prefix |= (u64)bin << shift;
        mask |= 0xffull << shift;
        __syncthreads();
    }
    *before = base;
    return prefix;
}

extern "C" __global__ void sample_rows(const float* logits, int vocab, const double* requests,
                                       int* results) {
    __shared__ Histogram top, scratch;
    __shared__ Decision decision;
    __shared__ u64 best_greedy, best_key;
    __shared__ u32 valid, bad;
    __shared__ double total;

    const float* row = logits + (size_t)blockIdx.x * vocab;
    const double* req = requests + (size_t)blockIdx.x * SAMPLE_REQ;
    int* out = results + (size_t)blockIdx.x * 2;
    int mode = (int)req[0];

    if (threadIdx.x == 0) {
        best_greedy = 0ull;
        best_key = 0ull;
        valid = 0u;
        bad = 0u;
    }
    __syncthreads();
    // Pass 1: the non-finite flag, the greedy pick (-0 counts as +0), the first candidate.
    u64 my_greedy = 0ull, my_key = 0ull;
    u32 my_valid = 0u, my_bad = 0u;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        float v = row[i];
        if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) my_bad = 1u;
        if (is_nan(v)) continue;
        ++my_valid;
        u64 g = order_key(v == 0.0f ? 0.0f : v, i);
        u64 k = order_key(v, i);
        my_greedy = g > my_greedy ? g : my_greedy;
        my_key = k > my_key ? k : my_key;
    }
    atomicMax(&best_greedy, my_greedy);
    atomicMax(&best_key, my_key);
    atomicAdd(&valid, my_valid);
    if (my_bad) atomicOr(&bad, 1u);
    __syncthreads();

    int token = -1;
    if (mode == 1) {
        if (best_greedy != 0ull) token = key_index(best_greedy);
    } else if (mode == 2 && valid > 0u) {
        float inv_t = (float)req[1];
        u32 top_k = (u32)req[2];
        float top_p = (float)req[3];
        double u = req[4];
        float max = row[key_index(best_key)];
        u64 floor = 0ull;
        if (top_k > 0u && top_k < valid) floor = select_kth(row, vocab, top_k, &scratch, &decision);
        histogram(row, vocab, floor, 0ull, 0ull, 56, true, max, inv_t, &top);
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (int b = RADIX_BINS - 1; b >= 0; --b) s += top.weight[b];
            total = s;
        }
        __syncthreads();
        double kept_total = total;
        u64 last_kept = 0ull;
        if (top_p < 1.0f) {
            double before;
            last_kept = select_weighted(row, vocab, floor, max, inv_t, (double)top_p * total, true,
                                        &top, &scratch, &decision, &before);
            kept_total = before + sample_weight(row[key_index(last_kept)], max, inv_t);
        }
        double before;
        u64 pick = select_weighted(row, vocab, floor, max, inv_t, u * kept_total, false, &top,
                                   &scratch, &decision, &before);
        if (pick < last_kept) pick = last_kept;
        token = key_index(pick);
    }
    if (threadIdx.x == 0) {
        out[0] = token;
        out[1] = (int)bad;
    }
}
