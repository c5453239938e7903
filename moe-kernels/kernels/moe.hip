// Mixture-of-experts layer for MXFP4 experts, decode / small-batch path (HIP dialect).
//
// One layer = route -> align -> (quantize activations) -> gate_up -> down -> combine.
// The shared expert is one more expert slot (fused variant) or a second pass over the same
// kernels with its own weights (unfused variant); the combine kernel sums either.
//
// Defines (set by the launcher; part of the compile-cache key):
//   WARP_SIZE   threads per wave, from the runtime (64 on CDNA, 32 on NVIDIA); never assumed
//   MOE_HIDDEN  hidden size H (multiple of 32); default: DeepSeek-V3 / Kimi-K2.5
//   MOE_INTER   expert intermediate size I (multiple of 32)
// check-defines: MOE_HIDDEN=256 MOE_INTER=128
// dependent-launch
//
// Weight layout per expert slot e (0 <= e < total slots):
//   w13 [e][2I][H/2]  bytes, two E2M1 codes each, low nibble = even element;
//                     rows 0..I-1 are gate_proj, rows I..2I-1 are up_proj
//   s13 [e][2I][H/32] E8M0 scales
//   w2  [e][H][I/2],  s2 [e][H][I/32]
// Activations quantized for W4A4 are kept as int8 holding twice the E2M1 value (-12..12), so
// that a 4-way int8 dot product is exact; their E8M0 scale is stored per 32 as usual.

#ifndef MOE_HIDDEN
#define MOE_HIDDEN 7168
#endif
#ifndef MOE_INTER
#define MOE_INTER 2048
#endif
#if (MOE_HIDDEN % 32) != 0 || (MOE_INTER % 32) != 0
#error "MOE_HIDDEN and MOE_INTER must be multiples of the MX block size 32"
#endif

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

#define MX_BLOCK 32
#define MOE_NEG_INF (-__uint_as_float(0x7f800000u))
#define MOE_POS_INF (__uint_as_float(0x7f800000u))
#define MOE_NAN (__uint_as_float(0x7fc00000u))
// Block shapes; the launcher sets them (it sizes the grids from the same numbers).
// Waves per block of the GEMV kernels; rows handled per wave in the down projection.
#ifndef MOE_WARPS
#define MOE_WARPS 8
#endif
#ifndef MOE_DOWN_ROWS
#define MOE_DOWN_ROWS 2
#endif
// Pairs whose activations meet one decoded weight fragment (and are staged in shared memory
// together). Larger tiles cost registers and shared memory, and with them waves in flight.
#define GATE_UP_TOKS_A4 3
#define GATE_UP_TOKS_A16 2
#define DOWN_TOKS_A4 8
#define DOWN_TOKS_A16 2
#define MOE_THREADS (MOE_WARPS * WARP_SIZE)
// 16-byte weight chunks (32 elements) per lane along one row.
#define H_CHUNKS (MOE_HIDDEN / MX_BLOCK)
#define I_CHUNKS (MOE_INTER / MX_BLOCK)
#define H_PER_LANE ((H_CHUNKS + WARP_SIZE - 1) / WARP_SIZE)
#define I_PER_LANE ((I_CHUNKS + WARP_SIZE - 1) / WARP_SIZE)

// ---------------------------------------------------------------------------------------------
// Scalar helpers

// E8M0 code -> 2^(code-127). Code 0 is the float32 denormal 2^-127; 255 (NaN) is rejected by
// the loader and never produced here.
__device__ __forceinline__ float e8m0_to_f32(u32 code) {
    return __uint_as_float(code ? code << 23 : 0x00400000u);
}

// 2^n for -149 <= n <= 127, exactly.
__device__ __forceinline__ float exp2i(int n) {
    return n >= -126 ? __uint_as_float((u32)(n + 127) << 23) : __uint_as_float(1u << (n + 149));
}

// Shared exponent of an MX block from its absolute maximum (OCP MX v1.0: floor(log2 amax) - 2;
// with `even`, amax's mantissa is first rounded to one bit, [1.75, 2) going up). Clamped to
// the E8M0 range; an all-zero block gets the smallest scale.
__device__ __forceinline__ int mx_shared_exp(float amax, int even) {
    if (!(amax > 0.0f)) return -127;
    u32 bits = __float_as_uint(amax);
    int biased = (int)(bits >> 23);
    u32 mant = bits & 0x7fffffu;
    int lg;
    if (biased == 0) {  // float32 denormal: normalise the mantissa
        int lead = 31 - __clz(mant);
        lg = lead - 149;
        mant = (mant << (23 - lead)) & 0x7fffffu;
    } else {
        lg = biased - 127;
    }
    if (even && mant >= 0x600000u) lg += 1;
    int s = lg - 2;
    return s < -127 ? -127 : (s > 127 ? 127 : s);
}

// Rounds an already scaled value to the E2M1 grid (half to even, saturating at 6) and returns
// twice the result (-12..12), exact as int8.
__device__ __forceinline__ int e2m1_round_x2(float v) {
    float a = fabsf(v);
    int q = a <= 0.25f ? 0
          : a < 0.75f  ? 1
          : a <= 1.25f ? 2
          : a < 1.75f  ? 3
          : a <= 2.5f  ? 4
          : a < 3.5f   ? 6
          : a <= 5.0f  ? 8
                       : 12;
    return v < 0.0f ? -q : q;
}

// ---------------------------------------------------------------------------------------------
// E2M1 decoding

// Eight E2M1 codes (element n in nibble n) -> eight int8 holding twice each value, elements
// 0..3 in `lo` and 4..7 in `hi` (byte n = element n), ready for a 4-way int8 dot product.
__device__ __forceinline__ void e2m1x8_to_i8x8(u32 x, int& lo, int& hi) {
#if defined(__HIP_PLATFORM_NVIDIA__)
    // Byte-permute lookups: magnitude tables for codes 0..7, then the byte-wise sign mask from
    // PRMT's sign-replicate mode (selector bit 3), then a bitwise select.
    const u32 pos_lo = 0x03020100u, pos_hi = 0x0c080604u;  // 0 1 2 3 | 4 6 8 12
    const u32 neg_lo = 0xfdfeff00u, neg_hi = 0xf4f8fafcu;  // negated
    u32 s0 = x & 0x7777u, s1 = (x >> 16) & 0x7777u, x4 = x << 4;
    u32 p0, n0, p1, n1, m0, m1;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p0) : "r"(pos_lo), "r"(pos_hi), "r"(s0));
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(n0) : "r"(neg_lo), "r"(neg_hi), "r"(s0));
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p1) : "r"(pos_lo), "r"(pos_hi), "r"(s1));
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(n1) : "r"(neg_lo), "r"(neg_hi), "r"(s1));
    // Sign of element n is bit 4n+3 of x: bit 7 of byte n/2 of x (odd n) or of x<<4 (even n).
    asm("prmt.b32 %0, %1, %2, 0x9D8C;" : "=r"(m0) : "r"(x), "r"(x4));
    asm("prmt.b32 %0, %1, %2, 0xBFAE;" : "=r"(m1) : "r"(x), "r"(x4));
    lo = (int)((p0 & ~m0) | (n0 & m0));
    hi = (int)((p1 & ~m1) | (n1 & m1));
#else
    const int mag[8] = {0, 1, 2, 3, 4, 6, 8, 12};
    u32 r[2] = {0u, 0u};
#pragma unroll
    for (int n = 0; n < 8; ++n) {
        u32 c = (x >> (4 * n)) & 0xfu;
        int v = (c & 8u) ? -mag[c & 7u] : mag[c & 7u];
        r[n >> 2] |= ((u32)v & 0xffu) << (8 * (n & 3));
    }
    lo = (int)r[0];
    hi = (int)r[1];
#endif
}

__device__ __forceinline__ int dot4_i8(int a, int b, int c) {
#if defined(__HIP_PLATFORM_NVIDIA__)
    return __dp4a(a, b, c);
#else
    return __builtin_amdgcn_sdot4(a, b, c, false);
#endif
}

// E2M1 code -> its value as float. The bit pattern sign|eem<<22 is value * 2^-126 (the
// subnormal code 1 becomes a float32 denormal); one multiply restores it exactly.
__device__ __forceinline__ float e2m1_to_f32(u32 x, int n) {
    u32 c = x >> (4 * n);
    return __uint_as_float(((c & 8u) << 28) | ((c & 7u) << 22)) * 0x1p126f;
}

// Dot product of 32 E2M1 weights (one 16-byte chunk) with 32 doubled-int8 activations, as a
// float (exact: |result| <= 32 * 12 * 12). Four independent chains of two dot4 steps keep the
// pipeline busy (one chain of eight serialises on the dot4 latency); the int -> float
// conversion goes through the 1.5 * 2^23 magic number (two full-rate ops, not a quarter-rate
// conversion).
__device__ __forceinline__ float dot_w4a4_chunk(const int* wq, const uint4& a0, const uint4& a1) {
    int d0 = dot4_i8(wq[0], (int)a0.x, 0);
    int d1 = dot4_i8(wq[1], (int)a0.y, 0);
    int d2 = dot4_i8(wq[2], (int)a0.z, 0);
    int d3 = dot4_i8(wq[3], (int)a0.w, 0);
    d0 = dot4_i8(wq[4], (int)a1.x, d0);
    d1 = dot4_i8(wq[5], (int)a1.y, d1);
    d2 = dot4_i8(wq[6], (int)a1.z, d2);
    d3 = dot4_i8(wq[7], (int)a1.w, d3);
    int d = (d0 + d1) + (d2 + d3);
    return __int_as_float(0x4b400000 + d) - 12582912.0f;
}

__device__ __forceinline__ void decode_chunk_i8(const uint4& w, int* wq) {
    e2m1x8_to_i8x8(w.x, wq[0], wq[1]);
    e2m1x8_to_i8x8(w.y, wq[2], wq[3]);
    e2m1x8_to_i8x8(w.z, wq[4], wq[5]);
    e2m1x8_to_i8x8(w.w, wq[6], wq[7]);
}

// Unscaled dot product of the 8 E2M1 weights in `w` with 8 bf16 activations.
__device__ __forceinline__ float dot_w4a16_word(u32 w, const uint4& a, float acc) {
    u32 as[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int n = 0; n < 8; ++n) {
        u32 pair = as[n >> 1];
        float a_f = __uint_as_float((n & 1) ? (pair & 0xffff0000u) : (pair << 16));
        acc = fmaf(e2m1_to_f32(w, n), a_f, acc);
    }
    return acc;
}

// Unscaled dot product of 32 E2M1 weights (one 16-byte chunk) with 32 bf16 activations.
__device__ __forceinline__ float dot_w4a16_chunk(const uint4& w, const u16* a) {
    const uint4* av = (const uint4*)a;
    float acc = 0.0f;
    acc = dot_w4a16_word(w.x, av[0], acc);
    acc = dot_w4a16_word(w.y, av[1], acc);
    acc = dot_w4a16_word(w.z, av[2], acc);
    acc = dot_w4a16_word(w.w, av[3], acc);
    return acc;
}

// Unscaled dot product of 32 E2M1 weights with 32 f32 activations.
__device__ __forceinline__ float dot_w4a32_chunk(const uint4& w, const float* a) {
    const float4* av = (const float4*)a;
    u32 ws[4] = {w.x, w.y, w.z, w.w};
    float acc = 0.0f;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
        float4 v = av[q];
        u32 word = ws[q >> 1];
        int base = (q & 1) * 4;
        acc = fmaf(e2m1_to_f32(word, base), v.x, acc);
        acc = fmaf(e2m1_to_f32(word, base + 1), v.y, acc);
        acc = fmaf(e2m1_to_f32(word, base + 2), v.z, acc);
        acc = fmaf(e2m1_to_f32(word, base + 3), v.w, acc);
    }
    return acc;
}

__device__ __forceinline__ float wave_sum(float v) {
#pragma unroll
    for (int off = WARP_SIZE / 2; off > 0; off >>= 1) v += __shfl_xor(v, off);
    return v;
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// ---------------------------------------------------------------------------------------------
// Routing: noaux_tc (sigmoid scores, correction bias for selection only, group-limited top-k,
// weights from the unbiased scores) with `shared_slots` fused shared slots appended.
//
// One block per token; dynamic shared memory: 2 * n_experts floats.
// Output rows have `top_k + shared_slots` slots: the routed experts in descending order of
// the biased score (ties to the lower index), then the shared slots n_experts + j with weight
// 1/rsf (rsf itself is applied once, by the combine). Routed weights are the unbiased scores,
// divided by their sum (+1e-20) when `norm_topk_prob`.

#ifndef ROUTE_THREADS
#define ROUTE_THREADS 256
#endif
#ifndef ROUTE_MAX_TOPK
#define ROUTE_MAX_TOPK 64
#endif
#ifndef ROUTE_MAX_GROUPS
#define ROUTE_MAX_GROUPS 64
#endif

__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

extern "C" __global__ void __launch_bounds__(ROUTE_THREADS)
moe_route_noaux_tc(const float* __restrict__ logits, const float* __restrict__ bias, int n_tokens,
                   int n_experts, int n_group, int topk_group, int top_k, int norm_topk_prob,
                   float routed_scaling_factor, int shared_slots,
                   int* __restrict__ topk_ids, float* __restrict__ topk_weights) {
    mx_wait_prior_kernels();
    extern __shared__ float route_smem[];
    float* score = route_smem;               // unbiased sigmoid scores
    // Biased scores (a NaN one as +inf, as the reference ranks it); -inf once its group is
    // dropped, NaN once taken (a NaN never wins argmax_merge, so no expert is taken twice and
    // every round has a winner).
    float* choice = route_smem + n_experts;
    __shared__ float red_v[2][ROUTE_THREADS / WARP_SIZE];
    __shared__ int red_i[2][ROUTE_THREADS / WARP_SIZE];
    __shared__ int chosen[ROUTE_MAX_TOPK];
    __shared__ float group_score[ROUTE_MAX_GROUPS];
    __shared__ int group_keep[ROUTE_MAX_GROUPS];

    const int t = blockIdx.x;
    if (t >= n_tokens) return;
    const float* row = logits + (size_t)t * n_experts;
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
        float s = 1.0f / (1.0f + expf(-row[e]));
        float c = s + bias[e];
        score[e] = s;
        choice[e] = c != c ? MOE_POS_INF : c;
    }
    __syncthreads();

    if (topk_group < n_group) {
        const int per_group = n_experts / n_group;
        for (int g = threadIdx.x; g < n_group; g += blockDim.x) {
            float a = MOE_NEG_INF, b = MOE_NEG_INF;  // the group's two largest biased scores
            for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
                float v = choice[e];
                if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
            }
            group_score[g] = a + b;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int g = 0; g < n_group; ++g) group_keep[g] = 0;
            for (int k = 0; k < topk_group; ++k) {
                int best = -1;
                for (int g = 0; g < n_group; ++g)
                    if (!group_keep[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
                group_keep[best] = 1;
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < n_experts; e += blockDim.x)
            if (!group_keep[e / per_group]) choice[e] = MOE_NEG_INF;
        __syncthreads();
    }

    // Top-k by rounds of a block-wide argmax. Each round needs one barrier: the waves' partial
    // maxima go to alternating halves of red_v / red_i, every wave merges them itself, and the
    // thread that owns the winner's entry of `choice` (e % blockDim.x) excludes it, so only that
    // thread ever reads the entry again.
    const int lane = threadIdx.x % WARP_SIZE, wave = threadIdx.x / WARP_SIZE;
    constexpr int N_WAVES = ROUTE_THREADS / WARP_SIZE;
    static_assert((N_WAVES & (N_WAVES - 1)) == 0, "the waves' merge pairs lanes by xor");
    for (int k = 0; k < top_k; ++k) {
        float v = MOE_NEG_INF;
        int i = 0x7fffffff;
        for (int e = threadIdx.x; e < n_experts; e += blockDim.x) argmax_merge(v, i, choice[e], e);
#pragma unroll
        for (int off = WARP_SIZE / 2; off > 0; off >>= 1)
            argmax_merge(v, i, __shfl_xor(v, off), __shfl_xor(i, off));
        const int half = k & 1;
        if (lane == 0) { red_v[half][wave] = v; red_i[half][wave] = i; }
        __syncthreads();
        v = lane < N_WAVES ? red_v[half][lane] : MOE_NEG_INF;
        i = lane < N_WAVES ? red_i[half][lane] : 0x7fffffff;
#pragma unroll
        for (int off = 1; off < N_WAVES; off <<= 1) argmax_merge(v, i, __shfl_xor(v, off), __shfl_xor(i, off));
        i = __shfl(i, 0);  // lanes past N_WAVES merged only the empty entries
        if (threadIdx.x == 0) chosen[k] = i;
        if (i % (int)blockDim.x == (int)threadIdx.x) choice[i] = MOE_NAN;
    }
    __syncthreads();  // chosen[] is complete

    // Lanes of the first wave write one slot each; the sum for the renormalisation is taken in
    // slot order, as the reference does.
    if (wave == 0) {
        const int slots = top_k + shared_slots;
        float sum = 0.0f;
        for (int k0 = 0; k0 < top_k; k0 += WARP_SIZE) {
            const int k = k0 + lane;
            const float s = k < top_k ? score[chosen[k]] : 0.0f;
            for (int q = 0; q < min(WARP_SIZE, top_k - k0); ++q) sum += __shfl(s, q);
        }
        const float denom = sum + 1e-20f;
        for (int k = lane; k < top_k; k += WARP_SIZE) {
            float s = score[chosen[k]];
            topk_ids[(size_t)t * slots + k] = chosen[k];
            topk_weights[(size_t)t * slots + k] = norm_topk_prob ? s / denom : s;
        }
        for (int j = lane; j < shared_slots; j += WARP_SIZE) {
            topk_ids[(size_t)t * slots + top_k + j] = n_experts + j;
            topk_weights[(size_t)t * slots + top_k + j] = 1.0f / routed_scaling_factor;
        }
    }
}

// Every token to every one of `n_slots` experts with weight 1: the routing of a separate
// (unfused) shared MLP, split into `n_slots` slots.
extern "C" __global__ void moe_route_all(int n_tokens, int n_slots, int* __restrict__ topk_ids,
                                         float* __restrict__ topk_weights) {
    mx_wait_prior_kernels();
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_tokens * n_slots) return;
    topk_ids[p] = p % n_slots;
    topk_weights[p] = 1.0f;
}

// ---------------------------------------------------------------------------------------------
// Align: group the (token, slot) pairs by expert.
//
// Single block; dynamic shared memory: 2 * n_experts ints.
//   offsets[n_experts + 1]  start of each expert's pairs in the sorted order
//   sorted_pairs[n_pairs]   flat pair index (token * slots + slot), grouped by expert
//   pair_pos[n_pairs]       inverse: the sorted position of each flat pair index
//   active[n_experts]       experts with at least one pair, ascending; n_active[0] = count
//   tiles[n_experts + 1]    first tile of `tile_pairs` pairs of each active expert (in the
//                           order of `active`), tiles[n_active] = total: the tensor-core
//                           kernels' work list (moe_tc.hip)
// The order inside one expert's group is unspecified; no consumer depends on it.

#ifndef ALIGN_THREADS
#define ALIGN_THREADS 1024
#endif

// Inclusive prefix sums of three counters across one wave.
__device__ __forceinline__ int3 wave_inclusive_scan(int3 v, int lane) {
#pragma unroll
    for (int off = 1; off < WARP_SIZE; off <<= 1) {
        int x = __shfl_up(v.x, off), y = __shfl_up(v.y, off), z = __shfl_up(v.z, off);
        if (lane >= off) { v.x += x; v.y += y; v.z += z; }
    }
    return v;
}

extern "C" __global__ void __launch_bounds__(ALIGN_THREADS)
moe_align(const int* __restrict__ topk_ids, int n_pairs, int n_experts, int tile_pairs, int* __restrict__ offsets,
          int* __restrict__ sorted_pairs, int* __restrict__ pair_pos, int* __restrict__ active,
          int* __restrict__ n_active, int* __restrict__ tiles) {
    mx_wait_prior_kernels();
    extern __shared__ int align_smem[];
    int* count = align_smem;
    int* cursor = align_smem + n_experts;
    // Per-thread totals of (pairs, active experts, tiles) over a contiguous run of experts,
    // scanned across the block: inside each wave by shuffles, then over the waves' totals by
    // the first wave (two barriers; a Hillis-Steele scan over the block took twenty).
    __shared__ int3 wave_prefix[ALIGN_THREADS / WARP_SIZE];
    __shared__ int3 block_total;
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) atomicAdd(&count[topk_ids[p]], 1);
    __syncthreads();
    const int per_thread = (n_experts + blockDim.x - 1) / blockDim.x;
    const int e0 = min(n_experts, (int)threadIdx.x * per_thread);
    const int e1 = min(n_experts, e0 + per_thread);
    int3 mine = make_int3(0, 0, 0);
    for (int e = e0; e < e1; ++e) {
        mine.x += count[e];
        mine.y += count[e] > 0;
        mine.z += (count[e] + tile_pairs - 1) / tile_pairs;
    }
    const int lane = threadIdx.x % WARP_SIZE, wave = threadIdx.x / WARP_SIZE;
    int3 incl = wave_inclusive_scan(mine, lane);
    if (lane == WARP_SIZE - 1) wave_prefix[wave] = incl;
    __syncthreads();
    if (wave == 0) {
        constexpr int WAVES = ALIGN_THREADS / WARP_SIZE;
        static_assert(WAVES <= WARP_SIZE, "one wave scans the waves' totals");
        int3 tot = lane < WAVES ? wave_prefix[lane] : make_int3(0, 0, 0);
        int3 scanned = wave_inclusive_scan(tot, lane);
        if (lane < WAVES) wave_prefix[lane] = make_int3(scanned.x - tot.x, scanned.y - tot.y, scanned.z - tot.z);
        if (lane == WAVES - 1) block_total = scanned;
    }
    __syncthreads();
    const int3 before = wave_prefix[wave];
    // Exclusive prefixes.
    int run = before.x + incl.x - mine.x, act = before.y + incl.y - mine.y, tile = before.z + incl.z - mine.z;
    for (int e = e0; e < e1; ++e) {
        offsets[e] = run;
        cursor[e] = run;
        if (count[e] > 0) {
            tiles[act] = tile;
            active[act++] = e;
        }
        run += count[e];
        tile += (count[e] + tile_pairs - 1) / tile_pairs;
    }
    if (threadIdx.x == 0) {
        offsets[n_experts] = block_total.x;
        n_active[0] = block_total.y;
        tiles[block_total.y] = block_total.z;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        int pos = atomicAdd(&cursor[topk_ids[p]], 1);
        sorted_pairs[pos] = p;
        pair_pos[p] = pos;
    }
}

// ---------------------------------------------------------------------------------------------
// Dynamic MXFP4 quantization of activations [rows][cols] (cols a multiple of 32): bf16 input
// (the layer input) or f32 input (the expert intermediate). QUANT_LANES consecutive lanes share
// one MX block, QUANT_PER_LANE elements each, and meet at the block's absolute maximum through
// shuffles: a decode step quantizes one row, and one thread per block walked a serial chain of
// 32 roundings. The arithmetic is the OCP rule's: mx_shared_exp, then e2m1_round_x2.

#define QUANT_PER_LANE 4
#define QUANT_LANES (MX_BLOCK / QUANT_PER_LANE)

__device__ __forceinline__ void load4(const u16* src, float* v) {
    uint2 w = *(const uint2*)src;
    v[0] = __uint_as_float(w.x << 16);
    v[1] = __uint_as_float(w.x & 0xffff0000u);
    v[2] = __uint_as_float(w.y << 16);
    v[3] = __uint_as_float(w.y & 0xffff0000u);
}

__device__ __forceinline__ void load4(const float* src, float* v) {
    float4 w = *(const float4*)src;
    v[0] = w.x; v[1] = w.y; v[2] = w.z; v[3] = w.w;
}

// A doubled E2M1 value (-12..12) as the E4M3 byte of the same value, for the tensor-core
// kernels (moe_tc.hip): 1.0 is exponent 7 with a zero mantissa, and every magnitude here has
// at most two significant bits.
__device__ __forceinline__ i8 x2_to_e4m3(int v) {
    int m = v < 0 ? -v : v;
    if (m == 0) return 0;
    int e = 31 - __clz(m);
    u32 b = ((u32)(e + 7) << 3) | (((u32)m << 3 >> e) & 7u);
    return (i8)(b | (v < 0 ? 0x80u : 0u));
}

template <typename T, bool E4M3>
__device__ __forceinline__ void quantize_rows(const T* __restrict__ x, size_t n_elems, int even,
                                              i8* __restrict__ xq, u8* __restrict__ xs) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * QUANT_PER_LANE;
    // n_elems is a multiple of MX_BLOCK, so the lanes of one MX block agree on `live` and every
    // lane of the shuffles below takes part.
    const bool live = i < n_elems;
    float v[QUANT_PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (live) load4(x + i, v);
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
    for (int off = QUANT_LANES / 2; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor(amax, off));
    if (!live) return;
    const int e = mx_shared_exp(amax, even);
    const float inv = exp2i(-e);
    u32 packed = 0;
#pragma unroll
    for (int k = 0; k < QUANT_PER_LANE; ++k) {
        int q = e2m1_round_x2(v[k] * inv);
        packed |= (u32)(u8)(E4M3 ? x2_to_e4m3(q) : (i8)q) << (8 * k);
    }
    *(u32*)(xq + i) = packed;
    if (threadIdx.x % QUANT_LANES == 0) xs[i / MX_BLOCK] = (u8)(e + 127);
}

extern "C" __global__ void moe_quantize_bf16(const u16* __restrict__ x, int rows, int cols, int even,
                                             i8* __restrict__ xq, u8* __restrict__ xs) {
    mx_wait_prior_kernels();
    quantize_rows<u16, false>(x, (size_t)rows * cols, even, xq, xs);
}

extern "C" __global__ void moe_quantize_f32(const float* __restrict__ x, int rows, int cols, int even,
                                            i8* __restrict__ xq, u8* __restrict__ xs) {
    mx_wait_prior_kernels();
    quantize_rows<float, false>(x, (size_t)rows * cols, even, xq, xs);
}

// The same quantization with the values written as E4M3 bytes (the tensor-core path's input).
extern "C" __global__ void moe_quantize_bf16_e4m3(const u16* __restrict__ x, int rows, int cols, int even,
                                                  i8* __restrict__ xq, u8* __restrict__ xs) {
    mx_wait_prior_kernels();
    quantize_rows<u16, true>(x, (size_t)rows * cols, even, xq, xs);
}

extern "C" __global__ void moe_quantize_f32_e4m3(const float* __restrict__ x, int rows, int cols, int even,
                                                 i8* __restrict__ xq, u8* __restrict__ xs) {
    mx_wait_prior_kernels();
    quantize_rows<float, true>(x, (size_t)rows * cols, even, xq, xs);
}

// ---------------------------------------------------------------------------------------------
// Expert GEMVs: persistent kernels over a work list. Item i of the list is row group
// i % groups of active expert i / groups. The grid is about the number of resident blocks;
// each worker walks the list with a stride of all the workers and issues the next item's weight
// loads before it works on the current one. (With one block per item, a block spent much of its
// life with nothing in flight: the expert lookup before its loads, the reduction and the stores
// after them.) down's workers are single waves with no block-wide barrier, reading their
// pairs' activations through L1: the waves of a block take neighbouring items, mostly of the
// same expert, so they share those lines. gate_up's are single waves too for a decode step of
// at most 8 tokens (moe_gate_up_w4a4_staged{1,2,4,8}, the batch's activations staged in shared
// memory once), and blocks otherwise: the gate and up halves of a tile meet in shared memory,
// and the pairs' activations are staged there. (As block tiles, v4–v11, a block's waves waited
// for each other at its barriers and left the issue slots idle; gate_up reading its
// activations from global memory spills at the register cap and was slower:
// moe-kernels/PERF-NOTES.md, v12.)
// `expert_base` is added to the expert index when addressing weights, so the unfused shared
// pass reads the shared slots of the same stacked weights.

struct WorkItem {
    bool live;       // the item is inside the list (uniform across the worker)
    int e;           // expert slot (before expert_base)
    int begin, end;  // its pairs in sorted order
    int group;       // row group within the expert
};

__device__ __forceinline__ WorkItem work_item(int i, int groups, int n_items, const int* offsets,
                                              const int* active) {
    WorkItem r;
    r.live = i < n_items;
    if (!r.live) return r;
    int y = i / groups;
    r.group = i - y * groups;
    r.e = active[y];
    r.begin = offsets[r.e];
    r.end = offsets[r.e + 1];
    return r;
}

// One lane's 16-byte chunks of a weight row and their raw E8M0 codes (converted where they are
// used, so that holding a prefetched row does not wait for its scales to arrive).
template <int N>
struct RowChunks {
    uint4 w[N];
    u32 s[N];
};

template <int N, int CHUNKS>
__device__ __forceinline__ void load_row_chunks(RowChunks<N>& rc, const u8* w_row, const u8* s_row, int lane) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        int c = lane + i * WARP_SIZE;
        if (c < CHUNKS) {
            rc.w[i] = ((const uint4*)w_row)[c];
            rc.s[i] = s_row[c];
        }
    }
}

// Hands the wave-wide sums of a pair tile out: pair p0 + q goes to lane (first + q) % WARP_SIZE
// (every lane holds every sum after the reduction), so the stores spread over the lanes.
template <int TOKS, typename Emit>
__device__ __forceinline__ void emit_sums(const float* acc, int n, int p0, int lane, int first, Emit emit) {
#pragma unroll
    for (int q = 0; q < TOKS; ++q) {
        if (q >= n) break;  // n is the same for the whole wave: the shuffles stay uniform
        float sum = wave_sum(acc[q]);
        if (lane == (first + q) % WARP_SIZE) emit(p0 + q, sum);
    }
}

// Gate+up with SiLU(gate) * up fused. A tile covers MOE_WARPS/2 intermediate rows j: the first
// half of the waves streams the gate rows, the second half the matching up rows (for W4A4 each
// lane keeps its 16-byte chunks of one row in registers, the next tile's row behind them).
// Pairs routed to the expert are taken TOKS at a time: their activation rows (x is
// [tokens][H]) are staged in shared memory (not again when the next tile has the same pairs),
// every wave dots its row with them, and the SiLU(gate) * up epilogue meets the two halves
// through shared memory. Output h[sorted position][I] in f32.
template <bool A4, bool X_F32>
__device__ __forceinline__ void gate_up_body(const u8* __restrict__ w13, const u8* __restrict__ s13,
                                             int expert_base, const void* __restrict__ act,
                                             const u8* __restrict__ act_scale, const int* __restrict__ offsets,
                                             const int* __restrict__ sorted_pairs, const int* __restrict__ active,
                                             const int* __restrict__ n_active, int slots, float* __restrict__ h) {
    // An f32 row is twice a bf16 row: one token per tile keeps it within static shared memory.
    constexpr int TOKS = A4 ? GATE_UP_TOKS_A4 : (X_F32 ? 1 : GATE_UP_TOKS_A16);
    constexpr int ROWS = MOE_WARPS / 2;
    constexpr int ROW_TILES = (MOE_INTER + ROWS - 1) / ROWS;
    constexpr int ROW_VECS = (A4 ? MOE_HIDDEN : (X_F32 ? 4 : 2) * MOE_HIDDEN) / 16;  // 16-byte vectors per token
    __shared__ uint4 stage[TOKS * ROW_VECS];
    __shared__ u8 stage_scale[A4 ? TOKS * H_CHUNKS : 1];
    __shared__ float partial[MOE_WARPS][TOKS];
    const int n_tiles = ROW_TILES * n_active[0];
    const int lane = threadIdx.x % WARP_SIZE, wave = threadIdx.x / WARP_SIZE;
    // Row of w13 for this wave in a tile (waves past the last row read row 0 of the half and
    // still meet every barrier).
    auto row_of = [&](const WorkItem& r, int& j) {
        j = r.group * ROWS + wave % ROWS;
        return ((size_t)(r.e + expert_base) * 2 + wave / ROWS) * MOE_INTER + (j < MOE_INTER ? j : 0);
    };

    // W4A4 keeps the whole row in registers; W4A16 spends them on the float decode instead
    // and loads each chunk where it is used.
    constexpr int PRE = A4 ? H_PER_LANE : 1;
    RowChunks<PRE> cur_w, next_w;
    WorkItem cur = work_item(blockIdx.x, ROW_TILES, n_tiles, offsets, active);
    if (!cur.live) return;
    int j;
    if (A4) {
        size_t row = row_of(cur, j);
        load_row_chunks<PRE, H_CHUNKS>(cur_w, w13 + row * (MOE_HIDDEN / 2), s13 + row * H_CHUNKS, lane);
    }
    int staged = -1;  // sorted position of the first pair in the stage
    for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        WorkItem next = work_item(t + gridDim.x, ROW_TILES, n_tiles, offsets, active);
        if (A4 && next.live) {
            int j_next;
            size_t row = row_of(next, j_next);
            load_row_chunks<PRE, H_CHUNKS>(next_w, w13 + row * (MOE_HIDDEN / 2), s13 + row * H_CHUNKS, lane);
        }
        const size_t row = row_of(cur, j);
        const bool valid = j < MOE_INTER;
        const u8* w_row = w13 + row * (MOE_HIDDEN / 2);
        const u8* s_row = s13 + row * H_CHUNKS;
        for (int p0 = cur.begin; p0 < cur.end; p0 += TOKS) {
            const int n = min(TOKS, cur.end - p0);
            __syncthreads();  // the previous tile's stage and partial sums are consumed
            if (p0 != staged) {
                for (int v = threadIdx.x; v < n * ROW_VECS; v += blockDim.x) {
                    int q = v / ROW_VECS;
                    size_t tok = (size_t)(sorted_pairs[p0 + q] / slots);
                    stage[v] = ((const uint4*)act)[tok * ROW_VECS + v % ROW_VECS];
                }
                if (A4) {
                    for (int v = threadIdx.x; v < n * H_CHUNKS; v += blockDim.x) {
                        size_t tok = (size_t)(sorted_pairs[p0 + v / H_CHUNKS] / slots);
                        stage_scale[v] = act_scale[tok * H_CHUNKS + v % H_CHUNKS];
                    }
                }
                staged = p0;
                __syncthreads();
            }
            float acc[TOKS];
#pragma unroll
            for (int q = 0; q < TOKS; ++q) acc[q] = 0.0f;
            if (valid) {
                // W4A16 keeps the chunk loop rolled: unrolled, the compiler hoists every chunk's
                // loads and spills. (A constant, not the macro: nvcc does not expand macros in
                // the pragma.)
                constexpr int UNROLL = A4 ? H_PER_LANE : 1;
#pragma unroll UNROLL
                for (int i = 0; i < H_PER_LANE; ++i) {
                    int c = lane + i * WARP_SIZE;
                    if (c >= H_CHUNKS) break;
                    if (A4) {
                        int wq[8];
                        decode_chunk_i8(cur_w.w[i], wq);
                        float sw = e8m0_to_f32(cur_w.s[i]);
#pragma unroll
                        for (int q = 0; q < TOKS; ++q) {
                            if (q >= n) break;
                            const uint4* a = (const uint4*)((const i8*)stage + q * MOE_HIDDEN + c * MX_BLOCK);
                            float sa = e8m0_to_f32(stage_scale[q * H_CHUNKS + c]) * 0.25f;
                            acc[q] = fmaf(dot_w4a4_chunk(wq, a[0], a[1]), sw * sa, acc[q]);
                        }
                    } else {
                        uint4 w4 = ((const uint4*)w_row)[c];
                        float sc = e8m0_to_f32(s_row[c]);
#pragma unroll
                        for (int q = 0; q < TOKS; ++q) {
                            if (q >= n) break;
                            if (X_F32) {
                                const float* a = (const float*)stage + q * MOE_HIDDEN + c * MX_BLOCK;
                                acc[q] = fmaf(dot_w4a32_chunk(w4, a), sc, acc[q]);
                            } else {
                                const u16* a = (const u16*)stage + q * MOE_HIDDEN + c * MX_BLOCK;
                                acc[q] = fmaf(dot_w4a16_chunk(w4, a), sc, acc[q]);
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int q = 0; q < TOKS; ++q) {
                if (q >= n) break;  // n is the same for the whole block: the shuffles stay uniform
                float sum = wave_sum(acc[q]);
                if (lane == 0) partial[wave][q] = sum;
            }
            __syncthreads();
            for (int v = threadIdx.x; v < n * ROWS; v += blockDim.x) {
                int jj = v % ROWS, q = v / ROWS, jr = cur.group * ROWS + jj;
                if (jr < MOE_INTER)
                    h[(size_t)(p0 + q) * MOE_INTER + jr] = silu_mul(partial[jj][q], partial[ROWS + jj][q]);
            }
        }
        cur = next;
        if (A4) cur_w = next_w;
    }
}

extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)
moe_gate_up_w4a4(const u8* __restrict__ w13, const u8* __restrict__ s13, int expert_base,
                 const i8* __restrict__ xq, const u8* __restrict__ xs, const int* __restrict__ offsets,
                 const int* __restrict__ sorted_pairs, const int* __restrict__ active,
                 const int* __restrict__ n_active, int slots, float* __restrict__ h) {
    mx_wait_prior_kernels();
    gate_up_body<true, false>(w13, s13, expert_base, xq, xs, offsets, sorted_pairs, active, n_active, slots, h);
}

// W4A4 gate_up for a decode step of at most T tokens (T = 1, 2, 4 or 8: instantiations below):
// every token's quantized row is staged in shared memory once, behind the kernel's only
// barrier, and then each wave works alone, as down does. An item is intermediate row j of one
// expert: the wave runs the gate row against all the expert's pairs (at most one per token, so
// at most T), then the up row, and writes SiLU(gate) * up; the up row's loads are in flight
// during the gate pass and the next item's gate row during the up pass. Dynamic shared memory:
// n_tokens rows of H bytes, then n_tokens * H_CHUNKS scale codes.
template <int T>
__device__ __forceinline__ float staged_row_dots(const RowChunks<H_PER_LANE>& rc, const uint4* stage,
                                                 const u8* stage_scale, const int* tok, int n, int lane) {
    float acc[T];
#pragma unroll
    for (int q = 0; q < T; ++q) acc[q] = 0.0f;
#pragma unroll
    for (int i = 0; i < H_PER_LANE; ++i) {
        int c = lane + i * WARP_SIZE;
        if (c >= H_CHUNKS) break;
        int wq[8];
        decode_chunk_i8(rc.w[i], wq);
        float sw = e8m0_to_f32(rc.s[i]) * 0.25f;
#pragma unroll
        for (int q = 0; q < T; ++q) {
            if (q >= n) break;
            const uint4* a = stage + tok[q] * (MOE_HIDDEN / 16) + 2 * c;
            float sa = e8m0_to_f32(stage_scale[tok[q] * H_CHUNKS + c]);
            acc[q] = fmaf(dot_w4a4_chunk(wq, a[0], a[1]), sw * sa, acc[q]);
        }
    }
    // Lane q keeps pair q's sum only: one register a row whatever T (holding all T sums in
    // every lane spilled at T = 8).
    float mine = 0.0f;
#pragma unroll
    for (int q = 0; q < T; ++q) {
        if (q >= n) break;  // uniform across the wave
        float sum = wave_sum(acc[q]);
        if (lane == q) mine = sum;
    }
    return mine;
}

template <int T>
__device__ __forceinline__ void gate_up_staged_body(const u8* __restrict__ w13, const u8* __restrict__ s13,
                                                    int expert_base, const i8* __restrict__ xq,
                                                    const u8* __restrict__ xs, int n_tokens,
                                                    const int* __restrict__ offsets,
                                                    const int* __restrict__ sorted_pairs,
                                                    const int* __restrict__ active,
                                                    const int* __restrict__ n_active, int slots,
                                                    float* __restrict__ h) {
    extern __shared__ uint4 stage[];
    u8* stage_scale = (u8*)(stage + (size_t)n_tokens * (MOE_HIDDEN / 16));
    const int lane = threadIdx.x % WARP_SIZE;
    const int first = blockIdx.x * MOE_WARPS + threadIdx.x / WARP_SIZE;
    const int stride = gridDim.x * MOE_WARPS;
    const int n_items = MOE_INTER * n_active[0];
    auto row_of = [&](const WorkItem& it, int half) {
        return ((size_t)(it.e + expert_base) * 2 + half) * MOE_INTER + it.group;
    };
    auto load = [&](RowChunks<H_PER_LANE>& rc, size_t row) {
        load_row_chunks<H_PER_LANE, H_CHUNKS>(rc, w13 + row * (MOE_HIDDEN / 2), s13 + row * H_CHUNKS, lane);
    };
    // The first gate row goes out before the staging, so the two overlap.
    WorkItem cur = work_item(first, MOE_INTER, n_items, offsets, active);
    RowChunks<H_PER_LANE> gate_w, up_w;
    if (cur.live) load(gate_w, row_of(cur, 0));
    for (int v = threadIdx.x; v < n_tokens * (MOE_HIDDEN / 16); v += blockDim.x) stage[v] = ((const uint4*)xq)[v];
    for (int v = threadIdx.x; v < n_tokens * H_CHUNKS; v += blockDim.x) stage_scale[v] = xs[v];
    __syncthreads();
    for (int i = first; i < n_items; i += stride) {
        load(up_w, row_of(cur, 1));
        const int n = min(T, cur.end - cur.begin);  // all of them (see above)
        int tok[T];
#pragma unroll
        for (int q = 0; q < T; ++q) tok[q] = sorted_pairs[cur.begin + min(q, n - 1)] / slots;
        const float gate = staged_row_dots<T>(gate_w, stage, stage_scale, tok, n, lane);
        WorkItem next = work_item(i + stride, MOE_INTER, n_items, offsets, active);
        if (next.live) load(gate_w, row_of(next, 0));
        const float up = staged_row_dots<T>(up_w, stage, stage_scale, tok, n, lane);
        if (lane < n) h[(size_t)(cur.begin + lane) * MOE_INTER + cur.group] = silu_mul(gate, up);
        cur = next;
    }
}

#define GATE_UP_STAGED(T)                                                                              \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2) moe_gate_up_w4a4_staged##T(           \
        const u8* __restrict__ w13, const u8* __restrict__ s13, int expert_base, const i8* __restrict__ xq, \
        const u8* __restrict__ xs, int n_tokens, const int* __restrict__ offsets,                      \
        const int* __restrict__ sorted_pairs, const int* __restrict__ active,                          \
        const int* __restrict__ n_active, int slots, float* __restrict__ h) {                          \
        mx_wait_prior_kernels();                                                                       \
        gate_up_staged_body<T>(w13, s13, expert_base, xq, xs, n_tokens, offsets, sorted_pairs, active,  \
                               n_active, slots, h);                                                    \
    }
GATE_UP_STAGED(1)
GATE_UP_STAGED(2)
GATE_UP_STAGED(4)
GATE_UP_STAGED(8)

extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)
moe_gate_up_w4a16(const u8* __restrict__ w13, const u8* __restrict__ s13, int expert_base,
                  const u16* __restrict__ x, const int* __restrict__ offsets,
                  const int* __restrict__ sorted_pairs, const int* __restrict__ active,
                  const int* __restrict__ n_active, int slots, float* __restrict__ h) {
    mx_wait_prior_kernels();
    gate_up_body<false, false>(w13, s13, expert_base, x, nullptr, offsets, sorted_pairs, active, n_active, slots, h);
}

// Weight-only from an f32 input: the activations stay f32 (what the f32 reference computes).
extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)
moe_gate_up_w4a16_f32(const u8* __restrict__ w13, const u8* __restrict__ s13, int expert_base,
                      const float* __restrict__ x, const int* __restrict__ offsets,
                      const int* __restrict__ sorted_pairs, const int* __restrict__ active,
                      const int* __restrict__ n_active, int slots, float* __restrict__ h) {
    mx_wait_prior_kernels();
    gate_up_body<false, true>(w13, s13, expert_base, x, nullptr, offsets, sorted_pairs, active, n_active, slots, h);
}

// Down projection. An item is MOE_DOWN_ROWS neighbouring output rows of one expert (in
// registers, the next item's rows behind them); the expert's pairs are contiguous in sorted
// order, and their activation rows (quantized hq, hs for W4A4, f32 h for W4A16; [pairs][I]) are
// read TOKS pairs at a time. Output y[sorted position][H] in f32, unweighted: the combine
// applies the routing weights.
template <bool A4>
__device__ __forceinline__ void down_body(const u8* __restrict__ w2, const u8* __restrict__ s2, int expert_base,
                                          const void* __restrict__ act, const u8* __restrict__ act_scale,
                                          const int* __restrict__ offsets, const int* __restrict__ active,
                                          const int* __restrict__ n_active, float* __restrict__ y) {
    constexpr int TOKS = A4 ? DOWN_TOKS_A4 : DOWN_TOKS_A16;
    constexpr int R = MOE_DOWN_ROWS;
    constexpr int GROUPS = (MOE_HIDDEN + R - 1) / R;
    const int lane = threadIdx.x % WARP_SIZE;
    const int first = blockIdx.x * MOE_WARPS + threadIdx.x / WARP_SIZE;
    const int stride = gridDim.x * MOE_WARPS;
    const int n_items = GROUPS * n_active[0];
    const size_t row_bytes = MOE_INTER / 2;

    RowChunks<I_PER_LANE> cur_w[R], next_w[R];
    // Rows past the last one (a partial last group) are clamped: computed, never stored.
    auto load_rows = [&](const WorkItem& it, RowChunks<I_PER_LANE>* rc) {
        const size_t e = (size_t)(it.e + expert_base);
#pragma unroll
        for (int k = 0; k < R; ++k) {
            size_t row = e * MOE_HIDDEN + min(it.group * R + k, MOE_HIDDEN - 1);
            load_row_chunks<I_PER_LANE, I_CHUNKS>(rc[k], w2 + row * row_bytes, s2 + row * I_CHUNKS, lane);
        }
    };
    WorkItem cur = work_item(first, GROUPS, n_items, offsets, active);
    if (!cur.live) return;
    load_rows(cur, cur_w);
    for (int i = first; i < n_items; i += stride) {
        WorkItem next = work_item(i + stride, GROUPS, n_items, offsets, active);
        if (next.live) load_rows(next, next_w);
        const int row0 = cur.group * R;
        for (int p0 = cur.begin; p0 < cur.end; p0 += TOKS) {
            const int n = min(TOKS, cur.end - p0);
            float acc[R][TOKS];
#pragma unroll
            for (int k = 0; k < R; ++k)
#pragma unroll
                for (int q = 0; q < TOKS; ++q) acc[k][q] = 0.0f;
#pragma unroll
            for (int i = 0; i < I_PER_LANE; ++i) {
                int c = lane + i * WARP_SIZE;
                if (c >= I_CHUNKS) break;
                float sw[R];
                int wq[R][8];
#pragma unroll
                for (int k = 0; k < R; ++k) {
                    sw[k] = e8m0_to_f32(cur_w[k].s[i]);
                    if (A4) {
                        sw[k] *= 0.25f;
                        decode_chunk_i8(cur_w[k].w[i], wq[k]);
                    }
                }
#pragma unroll
                for (int q = 0; q < TOKS; ++q) {
                    if (q >= n) break;
                    if (A4) {
                        const uint4* a = (const uint4*)((const i8*)act + (size_t)(p0 + q) * MOE_INTER + c * MX_BLOCK);
                        const uint4 a0 = a[0], a1 = a[1];
                        float sa = e8m0_to_f32(act_scale[(size_t)(p0 + q) * I_CHUNKS + c]);
#pragma unroll
                        for (int k = 0; k < R; ++k)
                            acc[k][q] = fmaf(dot_w4a4_chunk(wq[k], a0, a1), sw[k] * sa, acc[k][q]);
                    } else {
                        const float* a = (const float*)act + (size_t)(p0 + q) * MOE_INTER + c * MX_BLOCK;
#pragma unroll
                        for (int k = 0; k < R; ++k)
                            acc[k][q] = fmaf(dot_w4a32_chunk(cur_w[k].w[i], a), sw[k], acc[k][q]);
                    }
                }
            }
#pragma unroll
            for (int k = 0; k < R; ++k) {
                if (row0 + k >= MOE_HIDDEN) break;  // uniform across the wave
                emit_sums<TOKS>(acc[k], n, p0, lane, k * TOKS,
                                [&](int p, float v) { y[(size_t)p * MOE_HIDDEN + row0 + k] = v; });
            }
        }
        cur = next;
#pragma unroll
        for (int k = 0; k < R; ++k) cur_w[k] = next_w[k];
    }
}
extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)
moe_down_w4a4(const u8* __restrict__ w2, const u8* __restrict__ s2, int expert_base, const i8* __restrict__ hq,
              const u8* __restrict__ hs, const int* __restrict__ offsets, const int* __restrict__ active,
              const int* __restrict__ n_active, float* __restrict__ y) {
    mx_wait_prior_kernels();
    down_body<true>(w2, s2, expert_base, hq, hs, offsets, active, n_active, y);
}

extern "C" __global__ void __launch_bounds__(MOE_THREADS, 2)
moe_down_w4a16(const u8* __restrict__ w2, const u8* __restrict__ s2, int expert_base, const float* __restrict__ h,
               const int* __restrict__ offsets, const int* __restrict__ active, const int* __restrict__ n_active,
               float* __restrict__ y) {
    mx_wait_prior_kernels();
    down_body<false>(w2, s2, expert_base, h, nullptr, offsets, active, n_active, y);
}

// ---------------------------------------------------------------------------------------------
// Combine: out[t] = scale_a * sum_s w_a[t,s] * y_a[pos_a[t,s]] + sum_s w_b[t,s] * y_b[pos_b[t,s]],
// slots summed in order (so the result does not depend on the align order). Routing a is the
// routed experts with any fused shared slots, scale_a the routed scaling factor; routing b is
// the unfused shared MLP (n_slots_b = 0 when fused). Grid (tokens, column blocks), four columns
// per thread, so even one token spreads over many SMs; out in bf16 (rounded to nearest even) or f32.

__device__ __forceinline__ void store4(u16* out, float4 v) {
    uint2 o;
    o.x = (u32)mx_float_to_bf16(v.x) | ((u32)mx_float_to_bf16(v.y) << 16);
    o.y = (u32)mx_float_to_bf16(v.z) | ((u32)mx_float_to_bf16(v.w) << 16);
    *(uint2*)out = o;
}

__device__ __forceinline__ void store4(float* out, float4 v) { *(float4*)out = v; }

// Adds sum_s w[t,s] * y[pos[t,s]] (columns c..c+3) to acc, slots in order. The slots are taken
// COMBINE_SLOTS at a time with every position, weight and row loaded before the first add: a
// decode step combines one token, and slot by slot the kernel waited for two dependent loads
// per slot.
#define COMBINE_SLOTS 8
__device__ __forceinline__ void combine_slots(const float* __restrict__ y, const int* __restrict__ pos,
                                              const float* __restrict__ w, int n_slots, int t, int c,
                                              float4& acc) {
    for (int s0 = 0; s0 < n_slots; s0 += COMBINE_SLOTS) {
        float ws[COMBINE_SLOTS];
        float4 v[COMBINE_SLOTS];
#pragma unroll
        for (int k = 0; k < COMBINE_SLOTS; ++k) {
            int s = s0 + k;
            ws[k] = s < n_slots ? w[(size_t)t * n_slots + s] : 0.0f;
            v[k] = s < n_slots ? *(const float4*)(y + (size_t)pos[(size_t)t * n_slots + s] * MOE_HIDDEN + c)
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int k = 0; k < COMBINE_SLOTS; ++k) {
            if (s0 + k >= n_slots) break;
            acc.x = fmaf(ws[k], v[k].x, acc.x); acc.y = fmaf(ws[k], v[k].y, acc.y);
            acc.z = fmaf(ws[k], v[k].z, acc.z); acc.w = fmaf(ws[k], v[k].w, acc.w);
        }
    }
}

template <typename Out>
__device__ __forceinline__ void combine_body(const float* __restrict__ y_a, const int* __restrict__ pos_a,
                                             const float* __restrict__ w_a, int n_slots_a, float scale_a,
                                             const float* __restrict__ y_b, const int* __restrict__ pos_b,
                                             const float* __restrict__ w_b, int n_slots_b, Out* __restrict__ out) {
    const int t = blockIdx.x;
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * 4;
    if (c >= MOE_HIDDEN) return;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    combine_slots(y_a, pos_a, w_a, n_slots_a, t, c, acc);
    acc.x *= scale_a; acc.y *= scale_a; acc.z *= scale_a; acc.w *= scale_a;
    combine_slots(y_b, pos_b, w_b, n_slots_b, t, c, acc);
    store4(out + (size_t)t * MOE_HIDDEN + c, acc);
}

extern "C" __global__ void moe_combine_bf16(const float* __restrict__ y_a, const int* __restrict__ pos_a,
                                            const float* __restrict__ w_a, int n_slots_a, float scale_a,
                                            const float* __restrict__ y_b, const int* __restrict__ pos_b,
                                            const float* __restrict__ w_b, int n_slots_b, u16* __restrict__ out) {
    mx_wait_prior_kernels();
    combine_body(y_a, pos_a, w_a, n_slots_a, scale_a, y_b, pos_b, w_b, n_slots_b, out);
}

extern "C" __global__ void moe_combine_f32(const float* __restrict__ y_a, const int* __restrict__ pos_a,
                                           const float* __restrict__ w_a, int n_slots_a, float scale_a,
                                           const float* __restrict__ y_b, const int* __restrict__ pos_b,
                                           const float* __restrict__ w_b, int n_slots_b, float* __restrict__ out) {
    mx_wait_prior_kernels();
    combine_body(y_a, pos_a, w_a, n_slots_a, scale_a, y_b, pos_b, w_b, n_slots_b, out);
}
