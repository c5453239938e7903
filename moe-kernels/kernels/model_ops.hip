// Dense model ops for the DeepSeek-V3 forward pass on the GPU (HIP dialect): embedding / row
// gather, RMSNorm, f32 / bf16 / MXFP4 linear layers (each weight byte read once per tile of
// LIN_TOKS tokens), dynamic MXFP4 fake quantization of activations, the latent-cache append (norm,
// quantization and rotary embedding of the new rows, and of the queries' rope parts), absorbed MLA
// attention, SwiGLU and residual adds. Everything is f32 except the bf16 hand-over to the MoE
// kernels.
//
// Defines (set by the launcher; part of the compile-cache key):
//   WARP_SIZE     threads per wave, from the runtime; never assumed
//   OPS_THREADS   threads per block of the block-wide kernels (a multiple of WARP_SIZE)
//   LIN_ROWS      output rows per wave of the linear kernels
//   LIN_TOKS      tokens per weight read of the linear kernels
//   LIN_SHORT_LANES lanes per row group of the one-token short-row batched kernels
//   MLA_HEADS     heads of one attention block (they share each key row it reads)
//   MLA_KEYS      keys per shared-memory tile of the attention kernel
//   MLA_COLS      latent columns per thread of the attention kernel (kv_lora <= OPS_THREADS*MLA_COLS)
// check-defines: OPS_THREADS=128
// check-defines: LIN_ROWS=2 LIN_TOKS=16 LIN_SHORT_LANES=8
// check-defines: MLA_HEADS=4 MLA_KEYS=16 MLA_COLS=8
// dependent-launch

#ifndef OPS_THREADS
#define OPS_THREADS 256
#endif
#if (OPS_THREADS % WARP_SIZE) != 0
#error "OPS_THREADS must be a multiple of WARP_SIZE"
#endif
#define OPS_WAVES (OPS_THREADS / WARP_SIZE)
#ifndef LIN_ROWS
#define LIN_ROWS 4
#endif
#ifndef LIN_TOKS
#define LIN_TOKS 8
#endif
#ifndef LIN_SHORT_LANES
#define LIN_SHORT_LANES 16
#endif
#ifndef MLA_HEADS
#define MLA_HEADS 8
#endif
#ifndef MLA_KEYS
#define MLA_KEYS 8
#endif
#ifndef MLA_COLS
#define MLA_COLS 4
#endif
#define MX_BLOCK 32

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float wave_sum(float v) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor(v, o);
    return v;
}

__device__ __forceinline__ float wave_max(float v) {
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor(v, o));
    return v;
}

// Sum (or max) over the whole block; every thread gets the result. `scratch` holds OPS_WAVES.
__device__ __forceinline__ float block_reduce(float v, float* scratch, bool is_max) {
    int lane = threadIdx.x % WARP_SIZE, wave = threadIdx.x / WARP_SIZE;
    v = is_max ? wave_max(v) : wave_sum(v);
    __syncthreads();
    if (lane == 0) scratch[wave] = v;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < OPS_WAVES; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
    return r;
}

// E8M0 code -> 2^(code-127); code 0 is the float32 denormal 2^-127.
__device__ __forceinline__ float e8m0_value(u32 code) {
    return __uint_as_float(code ? code << 23 : 0x00400000u);
}

// E2M1 code (4 bits) -> value.
__device__ __forceinline__ float e2m1_value(u32 c) {
    return __uint_as_float(((c & 8u) << 28) | ((c & 7u) << 22)) * 0x1p126f;
}

// 2^n for -149 <= n <= 127, exactly.
__device__ __forceinline__ float pow2i(int n) {
    return n >= -126 ? __uint_as_float((u32)(n + 127) << 23) : __uint_as_float(1u << (n + 149));
}

// OCP MX shared exponent floor(log2 amax) - 2; with `even`, amax's mantissa is first rounded
// to one bit ([1.75, 2) goes up). Clamped to the E8M0 range; zero gets the smallest scale.
__device__ __forceinline__ int shared_exponent(float amax, int even) {
    if (!(amax > 0.0f)) return -127;
    u32 bits = __float_as_uint(amax);
    int biased = (int)(bits >> 23);
    u32 mant = bits & 0x7fffffu;
    int lg;
    if (biased == 0) {
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

// Nearest E2M1 value (half to even, saturating at 6) of an already scaled value.
__device__ __forceinline__ float e2m1_round(float v) {
    float a = fabsf(v);
    float q = a <= 0.25f ? 0.0f
            : a < 0.75f  ? 0.5f
            : a <= 1.25f ? 1.0f
            : a < 1.75f  ? 1.5f
            : a <= 2.5f  ? 2.0f
            : a < 3.5f   ? 3.0f
            : a <= 5.0f  ? 4.0f
                         : 6.0f;
    return copysignf(q, v);
}

// out[r] = table[ids[r]] for rows of `cols` values (embedding lookup, row selection).
extern "C" __global__ void ops_gather_rows(const float* __restrict__ table, const int* __restrict__ ids,
                                           int rows, int cols, float* __restrict__ out) {
    mx_wait_prior_kernels();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    int r = (int)(i / cols), c = (int)(i % cols);
    out[i] = table[(size_t)ids[r] * cols + c];
}

// As ops_gather_rows from a bf16 table (a bf16 embedding), widened exactly to f32.
extern "C" __global__ void ops_gather_rows_bf16(const u16* __restrict__ table, const int* __restrict__ ids,
                                                int rows, int cols, float* __restrict__ out) {
    mx_wait_prior_kernels();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * cols) return;
    int r = (int)(i / cols), c = (int)(i % cols);
    out[i] = __uint_as_float((u32)table[(size_t)ids[r] * cols + c] << 16);
}

// RMSNorm of `rows` rows of `d` values read at x[r*x_stride ..], written at out[r*out_stride ..]:
// out = w * (x * 1/sqrt(mean(x^2) + eps)). With `add` set, the residual add comes first: x +=
// delta (rows of d values, contiguous) is written back and normalised (one launch, not two);
// without it `delta` is not read.
// One block per row. A decode step normalises one row at a time, so the kernel is latency
// bound, and its inputs often come from DRAM (the residual stream was written before the last
// MoE streamed its weights through L2). Where d and both strides are multiples of 4 and a row
// fits NORM_VECS 16-byte pieces a thread, the row, delta and the norm weight are all loaded at
// once into registers, so the kernel waits for one round trip before its reduction and none
// after it (loading the weight only after the reduction cost a second one). Other rows take a
// loop that rereads x after the reduction.
#define NORM_VECS 8
#define NORM_UNROLL 8

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

__device__ __forceinline__ float sum_squares4(float4 v, float ss) {
    return fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, ss))));
}

__device__ __forceinline__ float4 scale4(float4 g, float4 v, float inv) {
    return make_float4(g.x * (v.x * inv), g.y * (v.y * inv), g.z * (v.z * inv), g.w * (v.w * inv));
}

extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_rmsnorm(float* __restrict__ x, int x_stride, int add, const float* __restrict__ delta,
            const float* __restrict__ w, int d, float eps, float* __restrict__ out, int out_stride) {
    mx_wait_prior_kernels();
    __shared__ float scratch[OPS_WAVES];
    float* xr = x + (size_t)blockIdx.x * x_stride;
    const float* dr = add ? delta + (size_t)blockIdx.x * d : nullptr;
    float* orow = out + (size_t)blockIdx.x * out_stride;
    const bool quads = ((d | x_stride | out_stride) & 3) == 0;
    const int n4 = quads ? d / 4 : 0;  // elements before 4 * n4 go in quads, the rest one by one
    float4* x4 = (float4*)xr;
    const float4* w4 = (const float4*)w;
    float ss = 0.0f;
    if (quads && n4 <= NORM_VECS * OPS_THREADS) {
        float4 v[NORM_VECS], g[NORM_VECS];
#pragma unroll
        for (int u = 0; u < NORM_VECS; ++u) {
            int i = threadIdx.x + u * OPS_THREADS;
            if (i < n4) {
                v[u] = x4[i];
                g[u] = w4[i];
                if (dr) v[u] = add4(v[u], ((const float4*)dr)[i]);
            }
        }
#pragma unroll
        for (int u = 0; u < NORM_VECS; ++u) {
            int i = threadIdx.x + u * OPS_THREADS;
            if (i < n4) {
                if (dr) x4[i] = v[u];
                ss = sum_squares4(v[u], ss);
            }
        }
        ss = block_reduce(ss, scratch, false);
        float inv = 1.0f / sqrtf(ss / (float)d + eps);
#pragma unroll
        for (int u = 0; u < NORM_VECS; ++u) {
            int i = threadIdx.x + u * OPS_THREADS;
            if (i < n4) ((float4*)orow)[i] = scale4(g[u], v[u], inv);
        }
        return;
    }
#pragma unroll NORM_UNROLL
    for (int i = threadIdx.x; i < n4; i += OPS_THREADS) {
        float4 v = x4[i];
        if (dr) {
            v = add4(v, ((const float4*)dr)[i]);
            x4[i] = v;
        }
        ss = sum_squares4(v, ss);
    }
    for (int i = 4 * n4 + threadIdx.x; i < d; i += OPS_THREADS) {
        float v = xr[i];
        if (dr) xr[i] = v = v + dr[i];
        ss = fmaf(v, v, ss);
    }
    ss = block_reduce(ss, scratch, false);
    float inv = 1.0f / sqrtf(ss / (float)d + eps);
    // Each thread rereads only the elements it wrote itself.
#pragma unroll NORM_UNROLL
    for (int i = threadIdx.x; i < n4; i += OPS_THREADS) ((float4*)orow)[i] = scale4(w4[i], x4[i], inv);
    for (int i = 4 * n4 + threadIdx.x; i < d; i += OPS_THREADS) orow[i] = w[i] * (xr[i] * inv);
}

// ---------------------------------------------------------------------------------------------
// Linear layers: out[m][n] = x[m][k] . w[n][k] with f32 activations and accumulation, for a
// weight stored as f32, bf16 or MXFP4. Decode is bandwidth bound, so each weight byte is read
// once per tile of LIN_TOKS tokens (all of a decode batch up to LIN_TOKS): a wave owns LIN_ROWS
// output rows, loads 16 bytes of each row per lane and step, decodes them once into registers
// and applies them to every token of the tile. Larger batches take grid.y token tiles (each
// tile rereads the weight). When a layer has few rows, the waves of a block split k instead
// (`ksplit` waves per row group, summed in a fixed order through shared memory), so small
// projections still fill the device.
// ---------------------------------------------------------------------------------------------

// bf16 weights: a chunk is 8 elements (16 bytes); bf16 -> f32 is exact (bits << 16).
struct Bf16Rows {
    const u16* w;
    int k;
    typedef uint4 Reg;
    enum { CHUNK = 8 };
    __device__ __forceinline__ Reg load(int row, int c) const {
        return *(const uint4*)(w + (size_t)row * k + (size_t)c * CHUNK);
    }
    __device__ __forceinline__ void decode(const Reg& r, int q, float* o) const {
        (void)q;
        u32 words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            o[2 * i] = __uint_as_float(words[i] << 16);
            o[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
        }
    }
    __device__ __forceinline__ float scalar(int row, int e) const {
        return __uint_as_float((u32)w[(size_t)row * k + e] << 16);
    }
};

// f32 weights (a checkpoint tensor that is not bf16): a chunk is 8 elements (2 x 16 bytes).
struct F32Rows {
    const float* w;
    int k;
    struct Reg {
        float4 a, b;
    };
    enum { CHUNK = 8 };
    __device__ __forceinline__ Reg load(int row, int c) const {
        const float4* p = (const float4*)(w + (size_t)row * k + (size_t)c * CHUNK);
        Reg r;
        r.a = p[0];
        r.b = p[1];
        return r;
    }
    __device__ __forceinline__ void decode(const Reg& r, int q, float* o) const {
        (void)q;
        o[0] = r.a.x; o[1] = r.a.y; o[2] = r.a.z; o[3] = r.a.w;
        o[4] = r.b.x; o[5] = r.b.y; o[6] = r.b.z; o[7] = r.b.w;
    }
    __device__ __forceinline__ float scalar(int row, int e) const { return w[(size_t)row * k + e]; }
};

// MXFP4 weights: `packed` [n][k/2] (low nibble = even element), `scales` [n][k/32] E8M0. A
// chunk is one MX block: 16 bytes of codes and its scale, decoded 8 elements at a time.
struct Mxfp4Rows {
    const u8* packed;
    const u8* scales;
    int k;
    struct Reg {
        uint4 p;
        float s;
    };
    enum { CHUNK = MX_BLOCK };
    __device__ __forceinline__ Reg load(int row, int c) const {
        Reg r;
        r.p = *(const uint4*)(packed + (size_t)row * (k / 2) + (size_t)c * (MX_BLOCK / 2));
        r.s = e8m0_value(scales[(size_t)row * (k / MX_BLOCK) + c]);
        return r;
    }
    __device__ __forceinline__ void decode(const Reg& r, int q, float* o) const {
        u32 word = q == 0 ? r.p.x : q == 1 ? r.p.y : q == 2 ? r.p.z : r.p.w;
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = e2m1_value((word >> (4 * i)) & 15u) * r.s;
    }
    __device__ __forceinline__ float scalar(int row, int e) const {
        u32 byte = packed[(size_t)row * (k / 2) + e / 2];
        u32 code = (e & 1) ? (byte >> 4) : (byte & 15u);
        return e2m1_value(code) * e8m0_value(scales[(size_t)row * (k / MX_BLOCK) + e / MX_BLOCK]);
    }
};

// One block: OPS_THREADS / LANES / ksplit row groups of LIN_ROWS rows, each group's k range
// split over `ksplit` units of LANES lanes (a whole wave, except in the short-row kernels
// below); token tile blockIdx.y of TOKS tokens. Token t's input row is x[t*x_stride ..] and
// its output row out[t*out_stride ..]. The vector path needs k to be a multiple of the chunk,
// x_stride a multiple of 4 and x 16-byte aligned (weight and activation rows then start 16-byte
// aligned; a batched call's per-batch offset may break the last); otherwise every element goes
// through the scalar loop.
template <typename W, int TOKS = LIN_TOKS, int LANES = WARP_SIZE>
__device__ __forceinline__ void linear_tile(const W& wt, const float* __restrict__ x, int x_stride,
                                            int m, int k, int n, int ksplit, float* __restrict__ out,
                                            int out_stride) {
    static_assert(WARP_SIZE % LANES == 0, "a unit is a part of one wave");
    constexpr int UNITS = OPS_THREADS / LANES;
    __shared__ float red[UNITS][LIN_ROWS][TOKS];
    int lane = threadIdx.x % LANES, unit = threadIdx.x / LANES;
    int groups = UNITS / ksplit;
    int g = unit / ksplit, p = unit % ksplit;
    int row0 = (blockIdx.x * groups + g) * LIN_ROWS;
    int t0 = blockIdx.y * TOKS;
    int nt = min(TOKS, m - t0);
    // Rows past n repeat the last row (in bounds) and are never written.
    int rows[LIN_ROWS];
#pragma unroll
    for (int r = 0; r < LIN_ROWS; ++r) rows[r] = min(row0 + r, n - 1);
    float acc[LIN_ROWS][TOKS];
#pragma unroll
    for (int r = 0; r < LIN_ROWS; ++r)
#pragma unroll
        for (int tt = 0; tt < TOKS; ++tt) acc[r][tt] = 0.0f;
    const float* xt = x + (size_t)t0 * x_stride;
    bool aligned = x_stride % 4 == 0 && ((size_t)x & 15) == 0;
    int chunks = (k % W::CHUNK == 0 && aligned) ? k / W::CHUNK : 0;
    int stride = ksplit * LANES, first = p * LANES + lane;
    for (int c = first; c < chunks; c += stride) {
        typename W::Reg reg[LIN_ROWS];
#pragma unroll
        for (int r = 0; r < LIN_ROWS; ++r) reg[r] = wt.load(rows[r], c);
#pragma unroll
        for (int q = 0; q < W::CHUNK / 8; ++q) {
            float w[LIN_ROWS][8];
#pragma unroll
            for (int r = 0; r < LIN_ROWS; ++r) wt.decode(reg[r], q, w[r]);
            size_t e = (size_t)c * W::CHUNK + q * 8;
#pragma unroll
            for (int tt = 0; tt < TOKS; ++tt) {
                if (tt < nt) {
                    const float4* xv = (const float4*)(xt + (size_t)tt * x_stride + e);
                    float4 a = xv[0], b = xv[1];
                    float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                    for (int r = 0; r < LIN_ROWS; ++r)
#pragma unroll
                        for (int i = 0; i < 8; ++i) acc[r][tt] = fmaf(xs[i], w[r][i], acc[r][tt]);
                }
            }
        }
    }
    for (int e = chunks * W::CHUNK + first; e < k; e += stride) {
#pragma unroll
        for (int r = 0; r < LIN_ROWS; ++r) {
            float wv = wt.scalar(rows[r], e);
#pragma unroll
            for (int tt = 0; tt < TOKS; ++tt)
                if (tt < nt) acc[r][tt] = fmaf(xt[(size_t)tt * x_stride + e], wv, acc[r][tt]);
        }
    }
    // nt is uniform over the block, so every lane of a wave takes part in each shuffle; the
    // butterfly stays inside each unit of LANES lanes.
#pragma unroll
    for (int r = 0; r < LIN_ROWS; ++r)
#pragma unroll
        for (int tt = 0; tt < TOKS; ++tt) {
            if (tt < nt) {
                float v = acc[r][tt];
#pragma unroll
                for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor(v, o);
                if (lane == 0) red[unit][r][tt] = v;
            }
        }
    __syncthreads();
    for (int i = threadIdx.x; i < groups * LIN_ROWS * TOKS; i += OPS_THREADS) {
        int tt = i % TOKS, r = (i / TOKS) % LIN_ROWS, gg = i / (TOKS * LIN_ROWS);
        int row = (blockIdx.x * groups + gg) * LIN_ROWS + r;
        if (tt >= nt || row >= n) continue;
        float s = 0.0f;
        for (int q = 0; q < ksplit; ++q) s += red[gg * ksplit + q][r][tt];
        out[(size_t)(t0 + tt) * out_stride + row] = s;
    }
}

extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_f32(const float* __restrict__ x, const float* __restrict__ w, int m, int k, int n,
               int ksplit, float* __restrict__ out) {
    mx_wait_prior_kernels();
    F32Rows wt = {w, k};
    linear_tile(wt, x, k, m, k, n, ksplit, out, n);
}

extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_bf16(const float* __restrict__ x, const u16* __restrict__ w, int m, int k, int n,
                int ksplit, float* __restrict__ out) {
    mx_wait_prior_kernels();
    Bf16Rows wt = {w, k};
    linear_tile(wt, x, k, m, k, n, ksplit, out, n);
}

// Batched linear layers (the per-head absorptions of MLA attention): batch b = blockIdx.z
// multiplies weight b (rows b*n .. b*n+n-1 of a stacked [batches*n][k] weight) by the rows
// x[t*x_stride + b*x_batch ..] and writes out[t*out_stride + b*out_batch ..]. Each weight
// byte is read once per token tile, as in the plain linear kernels.
extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_batched_f32(const float* __restrict__ x, int x_stride, int x_batch,
                       const float* __restrict__ w, int m, int k, int n, int ksplit,
                       float* __restrict__ out, int out_stride, int out_batch) {
    mx_wait_prior_kernels();
    size_t b = blockIdx.z;
    F32Rows wt = {w + b * n * k, k};
    linear_tile(wt, x + b * x_batch, x_stride, m, k, n, ksplit, out + b * out_batch, out_stride);
}

extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_batched_bf16(const float* __restrict__ x, int x_stride, int x_batch,
                        const u16* __restrict__ w, int m, int k, int n, int ksplit,
                        float* __restrict__ out, int out_stride, int out_batch) {
    mx_wait_prior_kernels();
    size_t b = blockIdx.z;
    Bf16Rows wt = {w + b * n * k, k};
    linear_tile(wt, x + b * x_batch, x_stride, m, k, n, ksplit, out + b * out_batch, out_stride);
}

// The batched layers for one token and rows of at most LIN_SHORT_LANES 16-byte chunks (the
// q absorption's k = 128 is 16 bf16 chunks): units of LIN_SHORT_LANES lanes, so no lane of a
// wave idles, and one token's accumulators (the 8-token tile's register count kept fewer
// blocks in flight). Compile-time lane counts: a runtime one slowed every linear layer (d10).
extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_batched_f32_short(const float* __restrict__ x, int x_stride, int x_batch,
                             const float* __restrict__ w, int m, int k, int n,
                             float* __restrict__ out, int out_stride, int out_batch) {
    mx_wait_prior_kernels();
    size_t b = blockIdx.z;
    F32Rows wt = {w + b * n * k, k};
    linear_tile<F32Rows, 1, LIN_SHORT_LANES>(wt, x + b * x_batch, x_stride, m, k, n, 1,
                                             out + b * out_batch, out_stride);
}

extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_batched_bf16_short(const float* __restrict__ x, int x_stride, int x_batch,
                              const u16* __restrict__ w, int m, int k, int n,
                              float* __restrict__ out, int out_stride, int out_batch) {
    mx_wait_prior_kernels();
    size_t b = blockIdx.z;
    Bf16Rows wt = {w + b * n * k, k};
    linear_tile<Bf16Rows, 1, LIN_SHORT_LANES>(wt, x + b * x_batch, x_stride, m, k, n, 1,
                                              out + b * out_batch, out_stride);
}

extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_linear_mxfp4(const float* __restrict__ x, const u8* __restrict__ packed,
                 const u8* __restrict__ scales, int m, int k, int n, int ksplit,
                 float* __restrict__ out) {
    mx_wait_prior_kernels();
    Mxfp4Rows wt = {packed, scales, k};
    linear_tile(wt, x, k, m, k, n, ksplit, out, n);
}

// Dynamic MXFP4 fake quantization of `n_blocks` blocks of 32 values: quantize with the shared
// exponent rule (`even` = Quark's "even" mode, else plain OCP) and decode back. A block holding
// NaN or infinity becomes all NaN. One thread per block.
extern "C" __global__ void ops_fake_quantize(const float* __restrict__ x, int n_blocks, int even,
                                             float* __restrict__ out) {
    mx_wait_prior_kernels();
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const float* v = x + (size_t)b * MX_BLOCK;
    float* o = out + (size_t)b * MX_BLOCK;
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < MX_BLOCK; ++i) {
        finite = finite && isfinite(v[i]);
        amax = fmaxf(amax, fabsf(v[i]));
    }
    if (!finite) {
        for (int i = 0; i < MX_BLOCK; ++i) o[i] = __uint_as_float(0x7fc00000u);
        return;
    }
    int e = shared_exponent(amax, even);
    float inv = pow2i(-e), scale = e8m0_value((u32)(e + 127));
    for (int i = 0; i < MX_BLOCK; ++i) o[i] = e2m1_round(v[i] * inv) * scale;
}

// The fake quantization of ops_fake_quantize for values held one per lane: each aligned group
// of MX_BLOCK lanes is one MX block (the caller keeps whole groups in step, padding lanes past
// the row with zeros); every lane gets its own value back, quantized.
__device__ __forceinline__ float mx_fake_quantize_lane(float v, int even) {
    float amax = fabsf(v);
    int finite = isfinite(v) ? 1 : 0;
    for (int o = MX_BLOCK / 2; o > 0; o >>= 1) {
        amax = fmaxf(amax, __shfl_xor(amax, o));
        finite &= __shfl_xor(finite, o);
    }
    if (!finite) return __uint_as_float(0x7fc00000u);
    int e = shared_exponent(amax, even);
    return e2m1_round(v * pow2i(-e)) * e8m0_value((u32)(e + 127));
}

// Interleaved (GPT-J) rotary embedding of the pair (v[0], v[1]) by angle (c, s).
__device__ __forceinline__ void rotate_pair(float* v, float c, float s) {
    float a = v[0], b = v[1];
    v[0] = a * c - b * s;
    v[1] = b * c + a * s;
}

// A step's new cache rows and its queries' rope parts, one block per token: token t's kv_a_proj
// output src[t*stride + offset ..] (kv_lora latent values, then rope) gives the latent,
// RMSNorm-ed by w and, with quant (1: floor scale rule, 2: even), fake-quantized as kv_b_proj's
// input, and the rope key rotated by cos/sin[t] (interleaved pairs); both go to cache row rows[t]
// (the host maps each position through its sequence's block table). The rope part of each of
// the token's `heads` query heads (q[(t*heads + h)*q_head + nope ..]) is rotated in place by the
// same angles. The arithmetic is ops_rmsnorm's, ops_fake_quantize's and the rotation's, in one
// launch instead of five.
extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_kv_append(const float* __restrict__ src, int stride, int offset, const float* __restrict__ w,
              int kv_lora, int rope, float eps, int quant, const float* __restrict__ cos_t,
              const float* __restrict__ sin_t, const int* __restrict__ rows,
              float* __restrict__ cache_latent, float* __restrict__ cache_rope,
              float* __restrict__ q, int heads, int q_head, int nope) {
    mx_wait_prior_kernels();
    __shared__ float scratch[OPS_WAVES];
    const int t = blockIdx.x, half = rope / 2;
    const float* x = src + (size_t)t * stride + offset;
    const size_t row = (size_t)rows[t];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < kv_lora; i += OPS_THREADS) ss = fmaf(x[i], x[i], ss);
    ss = block_reduce(ss, scratch, false);
    float inv = 1.0f / sqrtf(ss / (float)kv_lora + eps);
    // Whole blocks of threads step together, so every MX group of lanes is complete.
    for (int base = 0; base < kv_lora; base += OPS_THREADS) {
        int i = base + threadIdx.x;
        float v = i < kv_lora ? w[i] * (x[i] * inv) : 0.0f;
        if (quant) v = mx_fake_quantize_lane(v, quant == 2);
        if (i < kv_lora) cache_latent[row * kv_lora + i] = v;
    }
    for (int p = threadIdx.x; p < half; p += OPS_THREADS) {
        float c = cos_t[(size_t)t * half + p], s = sin_t[(size_t)t * half + p];
        float v[2] = {x[kv_lora + 2 * p], x[kv_lora + 2 * p + 1]};
        rotate_pair(v, c, s);
        cache_rope[row * rope + 2 * p] = v[0];
        cache_rope[row * rope + 2 * p + 1] = v[1];
    }
    float* qt = q + (size_t)t * heads * q_head + nope;
    for (int i = threadIdx.x; i < heads * half; i += OPS_THREADS) {
        int h = i / half, p = i % half;
        rotate_pair(qt + (size_t)h * q_head + 2 * p, cos_t[(size_t)t * half + p],
                    sin_t[(size_t)t * half + p]);
    }
}

// Absorbed MLA attention (see moe_kernels::reference::mla_attention) over a paged latent cache,
// flash-decoding style. The launcher first absorbs each query into the latent space
// (lat[t][h] = W_UK[h]^T q_nope[t][h], a batched linear layer), then runs ops_mla_split over
// blocks of (up to MLA_HEADS heads of one token, one key range), then, when the keys were split
// over several blocks, ops_mla_combine, and finally the batched W_UV output absorption.
//
// Token t attends to keys 0..=pos[t] of its sequence, whose block table is
// tables[table_off[t] ..]: key j lives in cache row
// tables[table_off[t] + (j >> block_shift)] * 2^block_shift + (j & (2^block_shift - 1)).
__device__ __forceinline__ size_t paged_row(const int* __restrict__ table, int j, int block_shift) {
    int mask = (1 << block_shift) - 1;
    return ((size_t)table[j >> block_shift] << block_shift) + (size_t)(j & mask);
}

// Copies the latent and rope rows of keys k0 .. k0+nk-1 into k_s [nk][lat] and kpe_s [nk][rope]
// (in units of V: float4 where both widths are multiples of 4, else float). Each thread issues
// MLA_LOADS loads before it stores any, so a tile costs two dependent round trips (block table,
// then cache rows), not two per key.
#define MLA_LOADS 8
template <typename V>
__device__ __forceinline__ void stage_keys(const float* __restrict__ cache_latent,
                                           const float* __restrict__ cache_rope,
                                           const int* __restrict__ table, int k0, int nk,
                                           int block_shift, int lat, int rope, V* k_s, V* kpe_s) {
    const V* latent = (const V*)cache_latent;
    const V* rope_rows = (const V*)cache_rope;
    const int per_key = lat + rope, total = nk * per_key;
    for (int base = 0; base < total; base += OPS_THREADS * MLA_LOADS) {
        V v[MLA_LOADS];
#pragma unroll
        for (int j = 0; j < MLA_LOADS; ++j) {
            int i = base + j * OPS_THREADS + threadIdx.x;
            if (i < total) {
                int kk = i / per_key, c = i % per_key;
                size_t row = paged_row(table, k0 + kk, block_shift);
                v[j] = c < lat ? latent[row * lat + c] : rope_rows[row * rope + (c - lat)];
            }
        }
#pragma unroll
        for (int j = 0; j < MLA_LOADS; ++j) {
            int i = base + j * OPS_THREADS + threadIdx.x;
            if (i < total) {
                int kk = i / per_key, c = i % per_key;
                if (c < lat) k_s[kk * lat + c] = v[j];
                else kpe_s[kk * rope + (c - lat)] = v[j];
            }
        }
    }
}

// One block per (group of `group` <= MLA_HEADS heads, key split, token): blockIdx.x = g +
// groups*(s + splits*t), the group fastest, so the groups reading the same keys run side by side and
// share them through L2. Split s of a token with `keys` keys takes keys [s*per, s*per + per)
// with per = ceil(keys / splits) rounded up to a whole tile; the bounds come from pos on the
// device, so the grid depends only on (tokens, splits). The block walks its keys a tile of
// MLA_KEYS at a time: it stages the tile's latent and rope rows in shared memory (each key
// row read once for all its heads), takes every (head, key) score as a wave-wide dot
// product, updates each head's running max and sum (online softmax) and the latent
// accumulators (registers: thread i owns columns i, i + OPS_THREADS, ...).
//
// lat [t][heads][kv_lora]: the absorbed queries on input. With splits == 1 the block writes
// its heads' normalized latent context over their queries (it read them first, and no other
// block reads them); otherwise it writes partials[((t*heads + h)*splits + s)*(kv_lora + 2)]:
// the unnormalized accumulator, then the running max and sum (an empty split: -inf, 0).
// Dynamic shared memory: (MLA_HEADS + MLA_KEYS) * (kv_lora + rope) floats.
extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_mla_split(const float* __restrict__ q, float* lat, const float* __restrict__ cache_latent,
              const float* __restrict__ cache_rope, const int* __restrict__ tables,
              const int* __restrict__ table_off, const int* __restrict__ pos, int block_shift,
              int heads, int group, int nope, int rope, int kv_lora, float scale, int splits,
              float* __restrict__ partials) {
    mx_wait_prior_kernels();
    extern __shared__ float smem[];
    float* q_s = smem;                        // [MLA_HEADS][kv_lora]
    float* k_s = q_s + MLA_HEADS * kv_lora;   // [MLA_KEYS][kv_lora]
    float* qpe_s = k_s + MLA_KEYS * kv_lora;  // [MLA_HEADS][rope]
    float* kpe_s = qpe_s + MLA_HEADS * rope;  // [MLA_KEYS][rope]
    __shared__ float p_s[MLA_HEADS][MLA_KEYS];
    __shared__ float m_s[MLA_HEADS], l_s[MLA_HEADS], corr_s[MLA_HEADS];
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, wave = tid / WARP_SIZE;
    const int groups = (heads + group - 1) / group;
    const int g = blockIdx.x % groups;
    const int s = (blockIdx.x / groups) % splits;
    const int t = blockIdx.x / groups / splits;
    const int h0 = g * group;
    const int gh = min(group, heads - h0);
    const int keys = pos[t] + 1;
    int per = (keys + splits - 1) / splits;
    per = (per + MLA_KEYS - 1) / MLA_KEYS * MLA_KEYS;
    // s * per <= keys - 1 + splits * MLA_KEYS: in range for any key count the launcher allows.
    const int begin = min(s * per, keys), end = min(begin + per, keys);
    const int* table = tables + table_off[t];

    float* lat_g = lat + ((size_t)t * heads + h0) * kv_lora;
    for (int i = tid; i < gh * kv_lora; i += OPS_THREADS) q_s[i] = lat_g[i];
    for (int h = 0; h < gh; ++h)
        for (int c = tid; c < rope; c += OPS_THREADS)
            qpe_s[h * rope + c] = q[((size_t)t * heads + h0 + h) * (nope + rope) + nope + c];
    if (tid < MLA_HEADS) {
        m_s[tid] = -__uint_as_float(0x7f800000u);
        l_s[tid] = 0.0f;
    }
    float acc[MLA_HEADS][MLA_COLS];
#pragma unroll
    for (int h = 0; h < MLA_HEADS; ++h)
#pragma unroll
        for (int j = 0; j < MLA_COLS; ++j) acc[h][j] = 0.0f;
    __syncthreads();

    const bool quads = kv_lora % 4 == 0 && rope % 4 == 0;
    for (int k0 = begin; k0 < end; k0 += MLA_KEYS) {
        const int nk = min(MLA_KEYS, end - k0);
        if (quads) {
            stage_keys<float4>(cache_latent, cache_rope, table, k0, nk, block_shift, kv_lora / 4,
                               rope / 4, (float4*)k_s, (float4*)kpe_s);
        } else {
            stage_keys<float>(cache_latent, cache_rope, table, k0, nk, block_shift, kv_lora, rope,
                              k_s, kpe_s);
        }
        __syncthreads();
        // One wave per (head, key) score; the branch is uniform over the wave.
        for (int i = wave; i < gh * MLA_KEYS; i += OPS_WAVES) {
            int h = i / MLA_KEYS, kk = i % MLA_KEYS;
            if (kk < nk) {
                float a = 0.0f;
                const float* qh = q_s + h * kv_lora;
                const float* kr = k_s + kk * kv_lora;
                for (int c = lane; c < kv_lora; c += WARP_SIZE) a = fmaf(qh[c], kr[c], a);
                for (int c = lane; c < rope; c += WARP_SIZE)
                    a = fmaf(qpe_s[h * rope + c], kpe_s[kk * rope + c], a);
                a = wave_sum(a);
                if (lane == 0) p_s[h][kk] = a * scale;
            }
        }
        __syncthreads();
        // Online softmax, one thread per head: p becomes exp(score - new max) (0 past nk), the
        // running sum and the accumulators are rescaled by exp(old max - new max).
        if (tid < gh) {
            float mo = m_s[tid], mn = mo;
            for (int kk = 0; kk < nk; ++kk) mn = fmaxf(mn, p_s[tid][kk]);
            float corr = expf(mo - mn), sum = 0.0f;
            for (int kk = 0; kk < MLA_KEYS; ++kk) {
                float e = kk < nk ? expf(p_s[tid][kk] - mn) : 0.0f;
                p_s[tid][kk] = e;
                sum += e;
            }
            l_s[tid] = l_s[tid] * corr + sum;
            m_s[tid] = mn;
            corr_s[tid] = corr;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < MLA_COLS; ++j) {
            int c = tid + j * OPS_THREADS;
            if (c < kv_lora) {
#pragma unroll
                for (int h = 0; h < MLA_HEADS; ++h)
                    if (h < gh) acc[h][j] *= corr_s[h];
                // Rows past nk hold an earlier tile's keys (or nothing): skipped, not 0 * x.
                for (int kk = 0; kk < nk; ++kk) {
                    float v = k_s[kk * kv_lora + c];
#pragma unroll
                    for (int h = 0; h < MLA_HEADS; ++h)
                        if (h < gh) acc[h][j] = fmaf(p_s[h][kk], v, acc[h][j]);
                }
            }
        }
        // The next tile overwrites k_s and p_s.
        __syncthreads();
    }

#pragma unroll
    for (int j = 0; j < MLA_COLS; ++j) {
        int c = tid + j * OPS_THREADS;
        if (c >= kv_lora) continue;
#pragma unroll
        for (int h = 0; h < MLA_HEADS; ++h) {
            if (h >= gh) continue;
            if (splits == 1) {
                lat_g[(size_t)h * kv_lora + c] = acc[h][j] / l_s[h];
            } else {
                size_t r = (((size_t)t * heads + h0 + h) * splits + s) * (size_t)(kv_lora + 2);
                partials[r + c] = acc[h][j];
            }
        }
    }
    if (splits > 1 && tid < gh) {
        size_t r = (((size_t)t * heads + h0 + tid) * splits + s) * (size_t)(kv_lora + 2);
        partials[r + kv_lora] = m_s[tid];
        partials[r + kv_lora + 1] = l_s[tid];
    }
}

// Merges the key splits of ops_mla_split: one block per (head, token), blockIdx.x = h +
// heads*t. Split s weighs exp(m_s - M) (M the largest running max of the non-empty splits);
// the normalized latent context goes to lat[t][h]. `splits` <= OPS_THREADS. Every split
// wrote its whole row (an empty one a zero accumulator), so 0-weighted terms add 0.
extern "C" __global__ void __launch_bounds__(OPS_THREADS)
ops_mla_combine(const float* __restrict__ partials, int heads, int kv_lora, int splits,
                float* __restrict__ lat) {
    mx_wait_prior_kernels();
    __shared__ float w_s[OPS_THREADS];
    __shared__ float scratch[OPS_WAVES];
    const int h = blockIdx.x % heads, t = blockIdx.x / heads;
    const size_t row0 = ((size_t)t * heads + h) * splits * (size_t)(kv_lora + 2);
    const int tid = threadIdx.x;
    float m = -__uint_as_float(0x7f800000u), l = 0.0f;
    if (tid < splits) {
        m = partials[row0 + (size_t)tid * (kv_lora + 2) + kv_lora];
        l = partials[row0 + (size_t)tid * (kv_lora + 2) + kv_lora + 1];
    }
    // An empty split (l == 0) takes no part; every token has at least one key.
    float mx = block_reduce(l > 0.0f ? m : -__uint_as_float(0x7f800000u), scratch, true);
    float w = (tid < splits && l > 0.0f) ? expf(m - mx) : 0.0f;
    float sum = block_reduce(w * l, scratch, false);
    if (tid < splits) w_s[tid] = w;
    __syncthreads();
    // The splits' loads are independent: unrolled, they are in flight together.
    for (int c = tid; c < kv_lora; c += OPS_THREADS) {
        float a = 0.0f;
#pragma unroll 8
        for (int sp = 0; sp < splits; ++sp)
            a = fmaf(w_s[sp], partials[row0 + (size_t)sp * (kv_lora + 2) + c], a);
        lat[((size_t)t * heads + h) * kv_lora + c] = a / sum;
    }
}

// out = silu(gate) * up, silu(g) = g / (1 + e^-g).
extern "C" __global__ void ops_silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                        int n, float* __restrict__ out) {
    mx_wait_prior_kernels();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

// x += d.
extern "C" __global__ void ops_add(float* __restrict__ x, const float* __restrict__ d, int n) {
    mx_wait_prior_kernels();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += d[i];
}
