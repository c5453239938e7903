// Token sampling on the device (HIP dialect): greedy argmax, or one draw from the tempered
// softmax restricted to top-k and top-p with a uniform number the host drew, per row of
// logits. The definition is moe_kernels::reference::sampling's; see its module doc.
// Two launches: sample_scan makes the first pass over every row, SCAN_SPAN logits a block (the
// greedy key, the candidates' range and number, the non-finite flag); sample_rows, one block a
// row, merges those parts and makes the selects. (The first pass in the row's own block took
// ~56 µs an H100 row, all of a greedy pick: issue-bound on one multiprocessor.)
//
// Candidates are ordered by a 64-bit key: the logit's bits mapped so that unsigned order is
// the float total order (high 32 bits), then the complemented index (low 32 bits), so equal
// logits come in index order and every key is distinct. Top-k and the weighted cuts (top-p,
// the draw) are selects over that key: an interval of keys known to hold the answer is cut
// into SELECT_BINS equal bins, one pass counts (and weighs) the candidates of each bin, and
// the bin holding the answer becomes the next interval, until that bin holds one candidate
// (or, for top-k, exactly the candidates still needed). No sort, no workspace.
//
// Why it is built this way (the first version took 1-3 ms a sampled row on an H100, this one
// 0.6-1.3 ms: model-deepseek/PERF-NOTES.md, d1 and s2):
// - Every pass keeps SAMPLE_LOADS loads per thread in flight: one block reads the whole row
//   from L2 per pass, and with one load at a time that read is latency-bound.
// - Bin totals live in registers (a predicated add into each of the SELECT_BINS bins), then a
//   reduce-scatter over the wave and a sum over the waves: no shared-memory atomics, which
//   serialize (and f64 ones retry) when most of a row falls in a few bins.
// - Once the interval holds at most LIST_CAP candidates, the next pass copies them to shared
//   memory and later levels read that list instead of the row.
// Weights are exp() in f64 of an f32 argument, exactly as the reference; sums are f64 (in
// another order than the reference's, and for the shared list one that can change between
// runs, so a draw within f64 rounding of a prefix sum may pick the neighbouring token).
//
// Per-row request: SAMPLE_REQ doubles (mode, 1/temperature, top_k, top_p, u); mode 0 skips
// the pick (the row is still checked for non-finite values), 1 is greedy, 2 samples.
// Per-row result: two ints, the token (-1 when no logit is a number or the row was skipped)
// and 1 when the row holds a NaN or an infinity.
//
// Defines (set by the launcher; part of the compile-cache key):
//   WARP_SIZE        threads per wave, from the runtime; never assumed
//   SAMPLE_THREADS   threads per block (a multiple of WARP_SIZE)
//   SCAN_SPAN        logits per block of sample_scan
//   SCAN_WORDS       u64 words of one sample_scan result (must be 4)
// check-defines: SAMPLE_THREADS=256
// dependent-launch

#ifndef SAMPLE_THREADS
#define SAMPLE_THREADS 512
#endif
#if (SAMPLE_THREADS % WARP_SIZE) != 0
#error "SAMPLE_THREADS must be a multiple of WARP_SIZE"
#endif
#define SAMPLE_REQ 5
#define SAMPLE_WAVES (SAMPLE_THREADS / WARP_SIZE)
#define SAMPLE_LOADS 8
#define SELECT_BITS 4
#define SELECT_BINS (1 << SELECT_BITS)
#define LIST_CAP 2048
// Logits per block of sample_scan (set by the launcher, which sizes the scan workspace from
// it; one pass of SAMPLE_LOADS loads a thread by default), and the u64 words of one of its
// results (set by the launcher too, so the two sides cannot disagree unnoticed).
#ifndef SCAN_SPAN
#define SCAN_SPAN (SAMPLE_THREADS * SAMPLE_LOADS)
#endif
#ifndef SCAN_WORDS
#define SCAN_WORDS 4
#endif
#if SCAN_WORDS != 4
#error "a sample_scan result is 4 words: greedy key, first key, last key, valid | bad << 32"
#endif
#if WARP_SIZE < SELECT_BINS
#error "the bin reduce-scatter needs at least SELECT_BINS lanes"
#endif

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

// Calls f(v, i) for every logit i in [begin, end) of the row, SAMPLE_LOADS loads of each
// thread in flight. The indices are unsigned so that a stride past the end of a vocabulary
// near 2^31 cannot overflow.
template <typename F>
__device__ __forceinline__ void for_each_logit(const float* row, u32 begin, u32 end, F f) {
    for (u32 base = begin + threadIdx.x; base < end; base += SAMPLE_THREADS * SAMPLE_LOADS) {
        float v[SAMPLE_LOADS];
#pragma unroll
        for (int u = 0; u < SAMPLE_LOADS; ++u) {
            u32 i = base + u * SAMPLE_THREADS;
            v[u] = i < end ? row[i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SAMPLE_LOADS; ++u) {
            u32 i = base + u * SAMPLE_THREADS;
            if (i < end) f(v[u], (int)i);
        }
    }
}

// The first pass over a row, done by `sample_scan` over SCAN_SPAN logits a block: the
// non-finite flag, the greedy pick (-0 counts as +0), the first and last candidates (NaN is
// none), their number.
struct Scan {
    u64 greedy, first, last;
    u32 valid, bad;
};

__device__ __forceinline__ u64 max_u64(u64 a, u64 b) { return a > b ? a : b; }
__device__ __forceinline__ u64 min_u64(u64 a, u64 b) { return a < b ? a : b; }

__device__ __forceinline__ Scan empty_scan() {
    Scan s = {0ull, 0ull, ~0ull, 0u, 0u};
    return s;
}

__device__ __forceinline__ Scan merge_scans(Scan a, Scan b) {
    Scan s = {max_u64(a.greedy, b.greedy), max_u64(a.first, b.first), min_u64(a.last, b.last),
              a.valid + b.valid, a.bad | b.bad};
    return s;
}

// The block's merge of every thread's `s`, in every thread; `waves` holds SAMPLE_WAVES.
__device__ __forceinline__ Scan block_scan(Scan s, Scan* waves) {
    for (int off = WARP_SIZE / 2; off > 0; off >>= 1) {
        Scan o = {__shfl_xor(s.greedy, off), __shfl_xor(s.first, off), __shfl_xor(s.last, off),
                  __shfl_xor(s.valid, off), __shfl_xor(s.bad, off)};
        s = merge_scans(s, o);
    }
    if (threadIdx.x % WARP_SIZE == 0) waves[threadIdx.x / WARP_SIZE] = s;
    __syncthreads();
    s = waves[0];
    for (int v = 1; v < SAMPLE_WAVES; ++v) s = merge_scans(s, waves[v]);
    return s;
}

// Keys [lo, hi] (both held by candidates or bounds of a bin), cut into bins of 2^shift keys:
// bin (key - lo) >> shift, below SELECT_BINS.
struct Interval {
    u64 lo, hi;
    int shift;
};

__device__ __forceinline__ Interval make_interval(u64 lo, u64 hi) {
    u64 span = hi - lo;
    int bits = span == 0ull ? 0 : 64 - __clzll((long long)span);
    Interval iv = {lo, hi, bits > SELECT_BITS ? bits - SELECT_BITS : 0};
    return iv;
}

// The keys of bin b of iv.
__device__ __forceinline__ Interval bin_interval(Interval iv, int b) {
    u64 lo = iv.lo + ((u64)b << iv.shift);
    u64 width = (1ull << iv.shift) - 1ull;  // the last bin may be cut short by iv.hi
    return make_interval(lo, iv.hi - lo <= width ? iv.hi : lo + width);
}

// One thread's share of a pass: candidates and their weights per bin.
struct Partial {
    u32 count[SELECT_BINS];
    double weight[SELECT_BINS];
};

// The block's totals of a pass.
struct Bins {
    u32 count[SELECT_BINS];
    double weight[SELECT_BINS];
};

// What thread 0 decided at one level, for every thread.
struct Decision {
    Interval next;   // the chosen bin
    u32 count;       // its candidates
    u32 remaining;   // count select: how many of them are still needed
    double before;   // weighted select: the weight of the candidates ahead of it
};

struct Shared {
    Bins top;   // level 0 of the weighted selects, shared by top-p and the draw
    Bins bins;  // the current level
    u32 wave_count[SAMPLE_WAVES][SELECT_BINS];
    double wave_weight[SAMPLE_WAVES][SELECT_BINS];
    float list_value[LIST_CAP];
    int list_index[LIST_CAP];
    u32 list_len;
    Decision decision;
    u64 found;
    Scan wave_scan[SAMPLE_WAVES];
    double total;
};

// Calls f(v, i) for every entry of the shared list (`from_list`) or every logit of the row.
template <typename F>
__device__ __forceinline__ void for_each_source(const float* row, int n, bool from_list,
                                                const Shared* sh, F f) {
    if (from_list) {
        for (u32 s = threadIdx.x; s < sh->list_len; s += SAMPLE_THREADS)
            f(sh->list_value[s], sh->list_index[s]);
    } else {
        for_each_logit(row, 0u, (u32)n, f);
    }
}

__device__ __forceinline__ void add_to_bin(Partial& p, int b, double w, bool weighted) {
#pragma unroll
    for (int j = 0; j < SELECT_BINS; ++j) {
        bool hit = b == j;
        p.count[j] += hit ? 1u : 0u;
        if (weighted) p.weight[j] += hit ? w : 0.0;
    }
}

// One reduce-scatter step: the lane keeps HALF of the bins it holds (the upper ones where
// its `off` bit is set) and adds the partner's values of them. A template so that every
// index is a constant: a runtime index would put the Partial in local memory.
template <int HALF>
__device__ __forceinline__ void scatter_step(Partial& p, bool weighted, int lane, int off,
                                             int& bin) {
    bool upper = (lane & off) != 0;
#pragma unroll
    for (int j = 0; j < HALF; ++j) {
        u32 c_send = upper ? p.count[j] : p.count[j + HALF];
        u32 c_keep = upper ? p.count[j + HALF] : p.count[j];
        p.count[j] = c_keep + __shfl_xor(c_send, off);
        if (weighted) {
            double w_send = upper ? p.weight[j] : p.weight[j + HALF];
            double w_keep = upper ? p.weight[j + HALF] : p.weight[j];
            p.weight[j] = w_keep + __shfl_xor(w_send, off);
        }
    }
    if (upper) bin += HALF;
}

// Sums every thread's Partial into `out`. Over a wave it is a reduce-scatter: each step
// hands half of the bins still held to the partner lane, so a lane ends with one bin's total
// after SELECT_BINS - 1 exchanges per value instead of SELECT_BITS x SELECT_BINS.
__device__ void reduce_bins(Partial& p, bool weighted, Shared* sh, Bins* out) {
#if SELECT_BINS != 16
#error "reduce_bins takes four scatter steps"
#endif
    int lane = threadIdx.x % WARP_SIZE, wave = threadIdx.x / WARP_SIZE;
    int bin = 0;
    scatter_step<8>(p, weighted, lane, WARP_SIZE / 2, bin);
    scatter_step<4>(p, weighted, lane, WARP_SIZE / 4, bin);
    scatter_step<2>(p, weighted, lane, WARP_SIZE / 8, bin);
    scatter_step<1>(p, weighted, lane, WARP_SIZE / 16, bin);
    // Lanes that differ only below WARP_SIZE / SELECT_BINS hold the same bin.
    for (int off = WARP_SIZE / SELECT_BINS / 2; off > 0; off >>= 1) {
        p.count[0] += __shfl_xor(p.count[0], off);
        if (weighted) p.weight[0] += __shfl_xor(p.weight[0], off);
    }
    if (lane % (WARP_SIZE / SELECT_BINS) == 0) {
        sh->wave_count[wave][bin] = p.count[0];
        sh->wave_weight[wave][bin] = weighted ? p.weight[0] : 0.0;
    }
    __syncthreads();
    if (threadIdx.x < SELECT_BINS) {
        u32 c = 0u;
        double w = 0.0;
        for (int v = 0; v < SAMPLE_WAVES; ++v) {
            c += sh->wave_count[v][threadIdx.x];
            w += sh->wave_weight[v][threadIdx.x];
        }
        out->count[threadIdx.x] = c;
        out->weight[threadIdx.x] = w;
    }
    __syncthreads();
}

// One level: the candidates (non-NaN, key in iv) of the row, or of the shared list when
// `from_list`, counted (and weighed) per bin of iv into `out`. With `gather` they are also
// copied to the shared list (the caller made sure they fit and reset its length).
__device__ void level_pass(const float* row, int n, bool from_list, bool gather, Interval iv,
                           bool weighted, float max, float inv_t, Shared* sh, Bins* out) {
    Partial p;
#pragma unroll
    for (int j = 0; j < SELECT_BINS; ++j) {
        p.count[j] = 0u;
        p.weight[j] = 0.0;
    }
    auto visit = [&](float v, int i) {
        if (is_nan(v)) return;
        u64 key = order_key(v, i);
        if (key < iv.lo || key > iv.hi) return;
        add_to_bin(p, (int)((key - iv.lo) >> iv.shift),
                   weighted ? sample_weight(v, max, inv_t) : 0.0, weighted);
        if (gather) {
            u32 slot = atomicAdd(&sh->list_len, 1u);
            sh->list_value[slot] = v;
            sh->list_index[slot] = i;
        }
    };
    for_each_source(row, n, from_list, sh, visit);
    reduce_bins(p, weighted, sh, out);
}

// The key of the only candidate in iv.
__device__ u64 find_single(const float* row, int n, bool from_list, Interval iv, Shared* sh) {
    auto visit = [&](float v, int i) {
        if (is_nan(v)) return;
        u64 key = order_key(v, i);
        if (key >= iv.lo && key <= iv.hi) sh->found = key;
    };
    for_each_source(row, n, from_list, sh, visit);
    __syncthreads();
    u64 key = sh->found;
    __syncthreads();
    return key;
}

// Narrows iv, whose bins `level` holds, to the answer. Weighted: the first candidate whose
// inclusive weight sum exceeds `target` (reaches it, with `inclusive`), or the last candidate
// when none does, with `before` the weight of the candidates ahead of it. Count (not
// `weighted`): the `k`-th key (1-based) in candidate order, or a smaller value with the same
// set of keys at or above it.
__device__ u64 select_key(const float* row, int n, Interval iv, const Bins* level, bool weighted,
                          double target, bool inclusive, u32 k, float max, float inv_t,
                          Shared* sh, double* before) {
    bool from_list = false;
    double base = 0.0;
    u32 remaining = k;
    for (;;) {
        if (threadIdx.x == 0) {
            int chosen = -1, last = -1;
            double last_base = base;
            for (int b = SELECT_BINS - 1; b >= 0; --b) {
                u32 c = level->count[b];
                if (c == 0u) continue;
                if (!weighted) {
                    if (c >= remaining) {
                        chosen = b;
                        break;
                    }
                    remaining -= c;
                    continue;
                }
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
            Decision d = {bin_interval(iv, chosen), level->count[chosen], remaining, base};
            sh->decision = d;
            if (!from_list && d.count <= LIST_CAP) sh->list_len = 0u;
        }
        __syncthreads();
        Decision d = sh->decision;
        __syncthreads();
        if (!weighted && d.count == d.remaining) return d.next.lo;
        if (weighted && d.count == 1u) {
            *before = d.before;
            return find_single(row, n, from_list, d.next, sh);
        }
        base = d.before;
        remaining = d.remaining;
        iv = d.next;
        bool gather = !from_list && d.count <= LIST_CAP;
        level_pass(row, n, from_list, gather, iv, weighted, max, inv_t, sh, &sh->bins);
        from_list = from_list || gather;
        level = &sh->bins;
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_scan(const float* logits, int vocab, u64* scans) {
    mx_wait_prior_kernels();
    __shared__ Scan waves[SAMPLE_WAVES];
    // Row blockIdx.x (grid.x holds more rows than grid.y could), part blockIdx.y.
    const float* row = logits + (size_t)blockIdx.x * vocab;
    const u32 begin = blockIdx.y * SCAN_SPAN, end = min((u32)vocab, begin + SCAN_SPAN);
    Scan s = empty_scan();
    for_each_logit(row, begin, end, [&](float v, int i) {
        if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) s.bad = 1u;
        if (is_nan(v)) return;
        ++s.valid;
        u64 k = order_key(v, i);
        s.greedy = max_u64(s.greedy, order_key(v == 0.0f ? 0.0f : v, i));
        s.first = max_u64(s.first, k);
        s.last = min_u64(s.last, k);
    });
    s = block_scan(s, waves);
    if (threadIdx.x == 0) {
        u64* out = scans + ((size_t)blockIdx.x * gridDim.y + blockIdx.y) * SCAN_WORDS;
        out[0] = s.greedy;
        out[1] = s.first;
        out[2] = s.last;
        out[3] = ((u64)s.bad << 32) | s.valid;
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows(const float* logits, int vocab, const double* requests, const u64* scans, int scan_parts,
            int* results) {
    mx_wait_prior_kernels();
    __shared__ Shared sh;

    const float* row = logits + (size_t)blockIdx.x * vocab;
    const double* req = requests + (size_t)blockIdx.x * SAMPLE_REQ;
    int* out = results + (size_t)blockIdx.x * 2;
    int mode = (int)req[0];

    // Pass 1 is sample_scan's: merge its parts of the row.
    Scan scan = empty_scan();
    for (int p = threadIdx.x; p < scan_parts; p += SAMPLE_THREADS) {
        const u64* part = scans + ((size_t)blockIdx.x * scan_parts + p) * SCAN_WORDS;
        Scan s = {part[0], part[1], part[2], (u32)part[3], (u32)(part[3] >> 32)};
        scan = merge_scans(scan, s);
    }
    scan = block_scan(scan, sh.wave_scan);
    const u64 greedy = scan.greedy, first = scan.first, last = scan.last;
    const u32 valid = scan.valid, bad = scan.bad;

    int token = -1;
    if (mode == 1) {
        if (greedy != 0ull) token = key_index(greedy);
    } else if (mode == 2 && valid > 0u) {
        float inv_t = (float)req[1];
        u32 top_k = (u32)req[2];
        float top_p = (float)req[3];
        double u = req[4];
        float max = row[key_index(first)];
        double unused;
        u64 floor = last;
        if (top_k > 0u && top_k < valid) {
            Interval all = make_interval(last, first);
            level_pass(row, vocab, false, false, all, false, 0.0f, 0.0f, &sh, &sh.bins);
            floor = select_key(row, vocab, all, &sh.bins, false, 0.0, false, top_k, 0.0f, 0.0f,
                               &sh, &unused);
        }
        Interval kept = make_interval(floor, first);
        level_pass(row, vocab, false, false, kept, true, max, inv_t, &sh, &sh.top);
        if (threadIdx.x == 0) {
            double s = 0.0;
            for (int b = SELECT_BINS - 1; b >= 0; --b) s += sh.top.weight[b];
            sh.total = s;
        }
        __syncthreads();
        double total = sh.total;
        double kept_total = total;
        u64 last_kept = 0ull;
        if (top_p < 1.0f) {
            double before;
            last_kept = select_key(row, vocab, kept, &sh.top, true, (double)top_p * total, true, 0u,
                                   max, inv_t, &sh, &before);
            kept_total = before + sample_weight(row[key_index(last_kept)], max, inv_t);
        }
        double before;
        u64 pick = select_key(row, vocab, kept, &sh.top, true, u * kept_total, false, 0u, max,
                              inv_t, &sh, &before);
        if (pick < last_kept) pick = last_kept;
        token = key_index(pick);
    }
    if (threadIdx.x == 0) {
        out[0] = token;
        out[1] = (int)bad;
    }
}
