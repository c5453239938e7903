// Mixture-of-experts expert GEMMs on tensor cores, W4A4 (HIP dialect; NVIDIA sm_89+ only).
//
// The prefill / large-batch counterpart of the GEMV kernels in moe.hip: same weights, same
// grouping (`moe_align`), same outputs (h in f32 for gate_up, unweighted y in f32 for down),
// so the launcher can pick either per call.
//
// Why FP8 tensor cores are exact here: an E2M1 weight doubled (0, ±1, ±2, ±3, ±4, ±6, ±8,
// ±12) and an activation quantized to doubled E2M1 are both exact in E4M3, and one MX block of
// 32 is exactly the k32 of `mma.m16n8k32.e4m3`: its 32 products are integers of at most 144,
// so the block's dot product (|sum| <= 4608) comes out exact in the f32 accumulator. The two
// E8M0 scales of the block (and the 1/4 of the doubling) are applied outside, to that exact
// block result: acc += (s_w * s_a / 4) * mma(block). The result equals the GEMV kernels' up
// to the order of the f32 accumulation over blocks.
//
// Two layouts of a block (TC_WARPS warps, K in stages of TC_BK = 128, i.e. four MX blocks;
// TC_PIPE stages of packed weights, activations and scales stream in through cp.async):
//
// - shared-tile (TC_DIRECT 0, wide tiles, eight warps): TC_BM = 128 weight rows x TC_BN = 64
//   pairs, warps as 4 (rows) x 2 (pairs), each 32 rows x 32 pairs = 2 x 4 mma tiles. Each
//   stage's weights are decoded E2M1 -> E4M3 once into a shared tile and reach the tensor
//   cores through ldmatrix, as do the activations: the decode is shared by the pair halves, at
//   the cost of a second barrier per stage and a shared-memory round trip.
// - direct (TC_DIRECT 1, narrow tiles of 8 or 16 pairs, where few pairs share each weight):
//   TC_BM = 32 * TC_WARPS rows, each warp 32 rows x all TC_BN pairs. A thread reads the packed
//   bytes of its own fragment straight from the raw stage and decodes them in registers: the mma A
//   fragment of row r holds 8 elements of each MX block per thread, k slots 4t..4t+3 and
//   16+4t..16+4t+3 (t = lane % 4), and those are fed elements 8t..8t+7 of the block, i.e. one
//   32-bit word of packed bytes. The activation fragment takes the same elements 8t..8t+7 (one
//   8-byte read), so both operands see the same permutation of k inside the block and the
//   block's dot product is unchanged. No decoded tile, no ldmatrix, one barrier per stage.
//
// gate_up gives each warp 16 gate rows and the 16 up rows of the same intermediate indices, so
// SiLU(gate) * up is formed in registers.
//
// Work list: the pairs of each active expert are cut into tiles of TC_BN; `tiles[a]` (from
// moe_align) is the first tile of the a-th active expert, `tiles[n_active]` the total. Grid:
// (row tiles, upper bound of the tiles); a block past the total exits at once. The last
// `n_tail` active experts can be left to a second launch in dense mode (see tile_of_block).
//
// Defines: MOE_HIDDEN, MOE_INTER as in moe.hip (multiples of 128 here; in the direct layout
// MOE_HIDDEN of 32 * TC_WARPS), TC_DIRECT (0 or 1), TC_BN (16, 32 or 64 shared-tile; 8 or 16
// direct), TC_WARPS (8 shared-tile; any direct), TC_MIN_BLOCKS (blocks per SM the register
// allocation must allow), TC_PIPE (stages in flight, >= 2); the launcher sizes shared memory
// from the same numbers.
// check-defines: MOE_HIDDEN=256 MOE_INTER=128
// check-defines: MOE_HIDDEN=256 MOE_INTER=128 TC_DIRECT=1 TC_BN=8
// check-defines: MOE_HIDDEN=512 MOE_INTER=512 TC_DIRECT=1 TC_BN=16 TC_WARPS=4 TC_MIN_BLOCKS=4
// Not a dependent-launch source (see runtime-rocm's KernelSource): launched that way, decode
// at 16 and 64 sequences (where these kernels run) was 2-3 % slower on the H100, and no faster
// at 1 or 4 (model-deepseek PERF-NOTES d11).

#ifndef MOE_HIDDEN
#define MOE_HIDDEN 7168
#endif
#ifndef MOE_INTER
#define MOE_INTER 2048
#endif
#ifndef TC_BN
#define TC_BN 64
#endif
#ifndef TC_DIRECT
#define TC_DIRECT 0
#endif

#if defined(__HIP_PLATFORM_NVIDIA__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890

#if (MOE_HIDDEN % 128) != 0 || (MOE_INTER % 128) != 0
#error "the tensor-core path needs MOE_HIDDEN and MOE_INTER to be multiples of 128"
#endif

typedef unsigned char u8;
typedef unsigned int u32;

#define TC_BK 128
#ifndef TC_WARPS
#define TC_WARPS 8
#endif
#define TC_THREADS (32 * TC_WARPS)
#define TC_KB (TC_BK / 32)          // MX blocks per stage
#define TC_X_VECS (TC_BN * TC_BK / 16)  // 16-byte activation vectors per stage
#ifndef TC_PIPE
#define TC_PIPE 4
#endif
#ifndef TC_MIN_BLOCKS
#define TC_MIN_BLOCKS 2
#endif

#if TC_DIRECT
#define TC_BM (32 * TC_WARPS)
#if (MOE_HIDDEN % TC_BM) != 0 || (MOE_INTER % (TC_BM / 2)) != 0
#error "the direct layout needs MOE_HIDDEN to be a multiple of 32 * TC_WARPS, MOE_INTER of 16 * TC_WARPS"
#endif
#if TC_BN != 8 && TC_BN != 16
#error "the direct layout takes TC_BN 8 or 16"
#endif
// A raw stage: packed weights [TC_BM][TC_WPITCH], E4M3 activations [TC_BN][TC_XPITCH], the E8M0
// codes of both (one 32-bit word of four codes per row and per pair). The pitches keep the
// fragment reads conflict-free: a warp's 32-bit weight reads (8 rows x 4 lanes) land on rows 20
// words apart, its 8-byte activation reads (4 pairs x 4 lanes per half warp) on rows 40 apart.
#define TC_WPITCH (TC_BK / 2 + 16)
#define TC_XPITCH (TC_BK + 32)
#define TC_X_OFF (TC_BM * TC_WPITCH)
#define TC_SW_OFF (TC_X_OFF + TC_BN * TC_XPITCH)
#define TC_SX_OFF (TC_SW_OFF + 4 * TC_BM)
#define TC_RAW_BYTES (TC_SX_OFF + 4 * TC_BN)
#define TC_SMEM_BYTES (TC_PIPE * TC_RAW_BYTES)
#define TC_NI (TC_BN / 8)           // mma tiles along the pairs per warp
// Where a warp's accumulators sit in the tile: its 32 rows, every pair.
#define TC_ROW_WARP(warp) (warp)
#define TC_PAIR_BASE(warp) 0
#else
#if TC_WARPS != 8
#error "the shared-tile layout takes eight warps"
#endif
#define TC_BM 128
#define TC_PITCH (TC_BK + 16)       // bytes per shared row: 16 B of padding keep ldmatrix conflict-free
#define TC_W_BYTES (TC_BM * TC_PITCH)
#define TC_X_BYTES (TC_BN * TC_PITCH)
// Stages of raw global data in flight (cp.async), and the bytes of one: packed weights,
// activations (at the ldmatrix pitch, read in place), E8M0 codes of both.
#define TC_RAW_BYTES (TC_BM * TC_BK / 2 + TC_X_BYTES + TC_KB * (TC_BM + TC_BN))
// Shared memory of a block: the decoded weight tile and both scale sets as floats ([MX block]
// [row], so a thread's two rows / two pairs are one or two loads), then the raw stages.
#define TC_SMEM_BYTES (TC_W_BYTES + 4 * TC_KB * (TC_BM + TC_BN) + TC_PIPE * TC_RAW_BYTES)
#define TC_W_VECS (TC_BM * TC_KB)   // 16-byte weight vectors (one MX block each) per stage
#if (TC_BN != 16 && TC_BN != 32 && TC_BN != 64) || TC_BN * TC_KB > TC_THREADS
#error "TC_BN must be 16, 32 or 64"
#endif
#define TC_WN (TC_BN / 2)           // pairs per warp
#define TC_NI (TC_WN / 8)           // mma tiles along the pairs per warp
// Where a warp's accumulators sit in the tile: 32 rows of four row groups, half the pairs.
#define TC_ROW_WARP(warp) ((warp) % 4)
#define TC_PAIR_BASE(warp) ((warp) / 4 * TC_WN)
#endif

__device__ __forceinline__ float e8m0_to_f32(u32 code) {
    return __uint_as_float(code ? code << 23 : 0x00400000u);
}

// Eight E2M1 codes (element n in nibble n) -> eight E4M3 bytes of twice each value, elements
// 0..3 in `lo`, 4..7 in `hi`: a byte-permute lookup of the magnitude (codes 0..7 ->
// 0, 1, 2, 3, 4, 6, 8, 12 in E4M3) and the sign bit from PRMT's sign-replicate mode.
__device__ __forceinline__ void e2m1x8_to_e4m3x8(u32 x, u32& lo, u32& hi) {
    const u32 mag_lo = 0x44403800u, mag_hi = 0x54504c48u;
    u32 s0 = x & 0x7777u, s1 = (x >> 16) & 0x7777u, x4 = x << 4;
    u32 p0, p1, m0, m1;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p0) : "r"(mag_lo), "r"(mag_hi), "r"(s0));
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p1) : "r"(mag_lo), "r"(mag_hi), "r"(s1));
    // Sign of element n is bit 4n+3 of x: bit 7 of byte n/2 of x (odd n) or of x<<4 (even n).
    asm("prmt.b32 %0, %1, %2, 0x9D8C;" : "=r"(m0) : "r"(x), "r"(x4));
    asm("prmt.b32 %0, %1, %2, 0xBFAE;" : "=r"(m1) : "r"(x), "r"(x4));
    lo = p0 | (m0 & 0x80808080u);
    hi = p1 | (m1 & 0x80808080u);
}

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x2(u32 addr, u32& r0, u32& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}

// d = a (16x32 E4M3, row) * b (32x8 E4M3, col), f32, from zero.
// Not volatile: a pure function of its registers, so the compiler may interleave it with
// other work.
__device__ __forceinline__ void mma_e4m3(const u32* a, u32 b0, u32 b1, float* d) {
    asm(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// The tile this block works on: expert, its pair range, and the first pair of the tile.
struct TcTile {
    int e, p0, p_end;
};

// The work of block y. List mode (dense_pairs == 0): the tile list over the active experts but
// the last n_tail. Dense mode: only the last n_tail active experts, each holding exactly
// dense_pairs pairs (the fused shared slots, which every token routes to), cut into tiles
// without a list — so one pass can give sparse routed experts narrow tiles and the dense shared
// slots wide ones.
__device__ __forceinline__ bool tile_of_block(const int* offsets, const int* active, const int* n_active,
                                              const int* tiles, int n_tail, int dense_pairs, TcTile& t) {
    const int n = n_active[0] - n_tail;
    const int y = blockIdx.y;
    if (dense_pairs > 0) {
        const int per_slot = (dense_pairs + TC_BN - 1) / TC_BN;
        if (y >= per_slot * n_tail) return false;
        t.e = active[n + y / per_slot];
        t.p0 = offsets[t.e] + (y % per_slot) * TC_BN;
    } else {
        if (n <= 0 || y >= tiles[n]) return false;
        int lo = 0, hi = n - 1;  // the last active expert whose first tile is <= y
        while (lo < hi) {
            int mid = (lo + hi + 1) >> 1;
            if (tiles[mid] <= y) lo = mid; else hi = mid - 1;
        }
        t.e = active[lo];
        t.p0 = offsets[t.e] + (y - tiles[lo]) * TC_BN;
    }
    t.p_end = offsets[t.e + 1];
    return true;
}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    // src-size 0 fills the 16 bytes with zeros (rows past the expert's pairs).
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async4(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

#if TC_DIRECT
// GEMM over one tile in the direct layout: acc[mi][ni][4] for the warp's 2 x TC_NI mma tiles
// (rows warp*32 + mi*16 + 0..15, pairs ni*8 + 0..7). `w_rows`, `x_rows` as below.
//
// Pipeline: TC_PIPE raw stages in flight through cp.async, one barrier per stage (the stage a
// thread is about to refill was last read before that barrier by every warp).
template <int K>
__device__ __forceinline__ void tc_gemm(const u8* __restrict__ w, const u8* __restrict__ ws, const int* w_rows,
                                        const u8* __restrict__ x, const u8* __restrict__ xs, const int* x_rows,
                                        u8* smem, float (&acc)[2][TC_NI][4]) {
    static_assert(TC_BM == TC_THREADS, "one thread copies each row's scale codes");
    constexpr int STAGES = K / TC_BK;
    constexpr int KC = K / 32;  // MX blocks per row
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, tig = lane % 4;

#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < TC_NI; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.0f;

    auto stage = [&](int b) { return smem + b * TC_RAW_BYTES; };
    auto issue = [&](int s) {
        if (s < STAGES) {
            u8* st = stage(s % TC_PIPE);
#pragma unroll
            for (int i = 0; i < TC_BM * TC_KB / TC_THREADS; ++i) {
                int v = tid + i * TC_THREADS, r = v / TC_KB, c = v % TC_KB;
                const u8* src = w + (size_t)w_rows[r] * (K / 2) + (size_t)(s * TC_KB + c) * 16;
                cp_async16(smem_addr(st + r * TC_WPITCH + c * 16), src, true);
            }
#pragma unroll
            for (int v = tid; v < TC_X_VECS; v += TC_THREADS) {
                int q = v / (TC_BK / 16), c = v % (TC_BK / 16), row = x_rows[q];
                const u8* src = x + (size_t)max(row, 0) * K + s * TC_BK + c * 16;
                cp_async16(smem_addr(st + TC_X_OFF + q * TC_XPITCH + c * 16), src, row >= 0);
            }
            cp_async4(smem_addr(st + TC_SW_OFF + tid * 4), ws + (size_t)w_rows[tid] * KC + s * TC_KB, true);
            if (tid < TC_BN) {
                int row = x_rows[tid];
                cp_async4(smem_addr(st + TC_SX_OFF + tid * 4), xs + (size_t)max(row, 0) * KC + s * TC_KB, row >= 0);
            }
        }
        cp_async_commit();  // an empty group past the last stage keeps the wait counts uniform
    };

    const int rw = warp * 32 + g;  // the thread's first row; the others are +8, +16, +24
#pragma unroll
    for (int s = 0; s < TC_PIPE - 1; ++s) issue(s);
    for (int s = 0; s < STAGES; ++s) {
        cp_async_wait<TC_PIPE - 2>();  // this thread's copies of stage s have landed
        __syncthreads();               // everyone's have; every warp is done with stage s-1
        issue(s + TC_PIPE - 1);        // into the buffer stage s-1 used
        const u8* st = stage(s % TC_PIPE);
        // Codes of the stage's four MX blocks: the thread's four rows, its two pairs per tile.
        u32 cw[2][2];
        uint2 cx[TC_NI];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) cw[mi][h] = *(const u32*)(st + TC_SW_OFF + (rw + mi * 16 + h * 8) * 4);
#pragma unroll
        for (int ni = 0; ni < TC_NI; ++ni) cx[ni] = *(const uint2*)(st + TC_SX_OFF + (ni * 8 + 2 * tig) * 4);
#pragma unroll
        for (int kb = 0; kb < TC_KB; ++kb) {
            // a[mi] = {row g k 0-15, row g+8 k 0-15, row g k 16-31, row g+8 k 16-31} of tile mi.
            u32 a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    u32 p = *(const u32*)(st + (rw + mi * 16 + h * 8) * TC_WPITCH + kb * 16 + tig * 4);
                    e2m1x8_to_e4m3x8(p, a[mi][h], a[mi][2 + h]);
                }
            float d[2][TC_NI][4];
#pragma unroll
            for (int ni = 0; ni < TC_NI; ++ni) {
                uint2 v = *(const uint2*)(st + TC_X_OFF + (ni * 8 + g) * TC_XPITCH + kb * 32 + tig * 8);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) mma_e4m3(a[mi], v.x, v.y, d[mi][ni]);
            }
            float sw[2][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) sw[mi][h] = e8m0_to_f32((cw[mi][h] >> (8 * kb)) & 0xffu);
#pragma unroll
            for (int ni = 0; ni < TC_NI; ++ni) {
                // The 1/4 undoes the doubling of both operands.
                float sx0 = e8m0_to_f32((cx[ni].x >> (8 * kb)) & 0xffu) * 0.25f;
                float sx1 = e8m0_to_f32((cx[ni].y >> (8 * kb)) & 0xffu) * 0.25f;
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    acc[mi][ni][0] = fmaf(d[mi][ni][0], sw[mi][0] * sx0, acc[mi][ni][0]);
                    acc[mi][ni][1] = fmaf(d[mi][ni][1], sw[mi][0] * sx1, acc[mi][ni][1]);
                    acc[mi][ni][2] = fmaf(d[mi][ni][2], sw[mi][1] * sx0, acc[mi][ni][2]);
                    acc[mi][ni][3] = fmaf(d[mi][ni][3], sw[mi][1] * sx1, acc[mi][ni][3]);
                }
            }
        }
    }
    cp_async_wait<0>();  // no copy may still target shared memory when the block moves on
}

#else
// GEMM over one tile: acc[mi][ni][4] for the warp's 2 x TC_NI mma tiles. `w_rows[r]` is the
// global weight row of tile row r; activation row q of the tile is `x_rows[q]` (-1: past the
// expert's pairs, read as zeros).
//
// Pipeline: TC_PIPE stages of raw global data (packed weights, E4M3 activations, both scale
// sets) in flight through cp.async; per stage, the packed weights are decoded once into a
// shared E4M3 tile (and the scales into floats), then the warps run their mma tiles on it and
// on the activations where they landed.
template <int K>
__device__ __forceinline__ void tc_gemm(const u8* __restrict__ w, const u8* __restrict__ ws, const int* w_rows,
                                        const u8* __restrict__ x, const u8* __restrict__ xs, const int* x_rows,
                                        u8* smem, float (&acc)[2][TC_NI][4]) {
    constexpr int STAGES = K / TC_BK;
    constexpr int KC = K / 32;  // MX blocks per row
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp % 4, wn = warp / 4;

#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < TC_NI; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.0f;

    u8* dec = smem;                                          // decoded weights [TC_BM][TC_PITCH]
    float* sws = (float*)(smem + TC_W_BYTES);                // [TC_KB][TC_BM]
    float* sxs = sws + TC_KB * TC_BM;                        // [TC_KB][TC_BN], 1/4 folded in
    u8* raw0 = (u8*)(sxs + TC_KB * TC_BN);                   // TC_PIPE raw stages
    auto raw_w = [&](int b) { return raw0 + b * TC_RAW_BYTES; };                      // [TC_BM][TC_BK/2]
    auto raw_x = [&](int b) { return raw_w(b) + TC_BM * TC_BK / 2; };                 // [TC_BN][TC_PITCH]
    auto raw_sw = [&](int b) { return raw_x(b) + TC_X_BYTES; };                        // [TC_BM][TC_KB]
    auto raw_sx = [&](int b) { return raw_sw(b) + TC_BM * TC_KB; };                    // [TC_BN][TC_KB]

    auto issue = [&](int s) {
        if (s < STAGES) {
            const int b = s % TC_PIPE;
#pragma unroll
            for (int i = 0; i < TC_W_VECS / TC_THREADS; ++i) {
                int v = tid + i * TC_THREADS, r = v / TC_KB, c = v % TC_KB;
                const u8* src = w + (size_t)w_rows[r] * (K / 2) + (size_t)(s * TC_KB + c) * 16;
                cp_async16(smem_addr(raw_w(b) + v * 16), src, true);
            }
#pragma unroll
            for (int v = tid; v < TC_X_VECS; v += TC_THREADS) {
                int q = v / (TC_BK / 16), c = v % (TC_BK / 16);
                int row = x_rows[q];
                const u8* src = x + (size_t)max(row, 0) * K + s * TC_BK + c * 16;
                cp_async16(smem_addr(raw_x(b) + q * TC_PITCH + c * 16), src, row >= 0);
            }
            if (tid < TC_BM) {
                cp_async4(smem_addr(raw_sw(b) + tid * TC_KB), ws + (size_t)w_rows[tid] * KC + s * TC_KB, true);
            } else if (tid < TC_BM + TC_BN) {
                int row = x_rows[tid - TC_BM];
                cp_async4(smem_addr(raw_sx(b) + (tid - TC_BM) * TC_KB), xs + (size_t)max(row, 0) * KC + s * TC_KB,
                          row >= 0);
            }
        }
        cp_async_commit();  // an empty group past the last stage keeps the wait counts uniform
    };

#pragma unroll
    for (int s = 0; s < TC_PIPE - 1; ++s) issue(s);
    for (int s = 0; s < STAGES; ++s) {
        const int b = s % TC_PIPE;
        cp_async_wait<TC_PIPE - 2>();  // this thread's copies of stage s have landed
        __syncthreads();               // everyone's have; the previous stage's compute is done
        issue(s + TC_PIPE - 1);        // into the buffer stage s-1 used
#pragma unroll
        for (int i = 0; i < TC_W_VECS / TC_THREADS; ++i) {
            int v = tid + i * TC_THREADS, r = v / TC_KB, c = v % TC_KB;
            uint4 p = *(const uint4*)(raw_w(b) + v * 16);
            uint4 lo, hi;
            e2m1x8_to_e4m3x8(p.x, lo.x, lo.y);
            e2m1x8_to_e4m3x8(p.y, lo.z, lo.w);
            e2m1x8_to_e4m3x8(p.z, hi.x, hi.y);
            e2m1x8_to_e4m3x8(p.w, hi.z, hi.w);
            uint4* dst = (uint4*)(dec + r * TC_PITCH + c * 32);
            dst[0] = lo;
            dst[1] = hi;
        }
        if (tid < TC_BM) {
            u32 codes = *(const u32*)(raw_sw(b) + tid * TC_KB);
#pragma unroll
            for (int c = 0; c < TC_KB; ++c) sws[c * TC_BM + tid] = e8m0_to_f32((codes >> (8 * c)) & 0xffu);
        } else if (tid < TC_BM + TC_BN) {
            int q = tid - TC_BM;
            u32 codes = *(const u32*)(raw_sx(b) + q * TC_KB);
            // The 1/4 undoes the doubling of both operands.
#pragma unroll
            for (int c = 0; c < TC_KB; ++c) sxs[c * TC_BN + q] = e8m0_to_f32((codes >> (8 * c)) & 0xffu) * 0.25f;
        }
        __syncthreads();
        const u8* xs_ = raw_x(b);
        // Two blocks at a time: fully unrolled, the fragments of all four are hoisted and spill
        // at the 128-register bound of two blocks per SM.
#pragma unroll 2
        for (int kb = 0; kb < TC_KB; ++kb) {
            u32 a[2][4], bf[TC_NI + 1][2];  // + 1: the x4 branch names bf[ni + 1] even where TC_NI is 1
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                // Matrices: rows 0-7 / 8-15 of the 16-row tile, k bytes 0-15 / 16-31.
                int r = wm * 32 + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                int k = kb * 32 + (lane / 16) * 16;
                ldmatrix_x4(smem_addr(dec + r * TC_PITCH + k), a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
            }
#pragma unroll
            for (int ni = 0; ni < TC_NI; ni += 2) {
                // Matrices: pairs 0-7 k 0-15, pairs 0-7 k 16-31, pairs 8-15 k 0-15, pairs 8-15 k 16-31
                // (the last two only when the warp has a second mma tile of pairs).
                int q = wn * TC_WN + ni * 8 + (lane % 8) + (TC_NI > 1 ? (lane / 16) * 8 : 0);
                int k = kb * 32 + ((lane / 8) % 2) * 16;
                if (TC_NI > 1)
                    ldmatrix_x4(smem_addr(xs_ + q * TC_PITCH + k), bf[ni][0], bf[ni][1], bf[ni + 1][0], bf[ni + 1][1]);
                else
                    ldmatrix_x2(smem_addr(xs_ + q * TC_PITCH + k), bf[ni][0], bf[ni][1]);
            }
            const int g = lane / 4, tig = lane % 4;
            float sw_r[2][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                sw_r[mi][0] = sws[kb * TC_BM + wm * 32 + mi * 16 + g];
                sw_r[mi][1] = sws[kb * TC_BM + wm * 32 + mi * 16 + g + 8];
            }
            // Every mma of the block first, then the scaling: the tensor-core latency is paid
            // once, not once per tile.
            float d[TC_NI][2][4];
#pragma unroll
            for (int ni = 0; ni < TC_NI; ++ni)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) mma_e4m3(a[mi], bf[ni][0], bf[ni][1], d[ni][mi]);
#pragma unroll
            for (int ni = 0; ni < TC_NI; ++ni) {
                float2 sx = *(const float2*)(sxs + kb * TC_BN + wn * TC_WN + ni * 8 + 2 * tig);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    acc[mi][ni][0] = fmaf(d[ni][mi][0], sw_r[mi][0] * sx.x, acc[mi][ni][0]);
                    acc[mi][ni][1] = fmaf(d[ni][mi][1], sw_r[mi][0] * sx.y, acc[mi][ni][1]);
                    acc[mi][ni][2] = fmaf(d[ni][mi][2], sw_r[mi][1] * sx.x, acc[mi][ni][2]);
                    acc[mi][ni][3] = fmaf(d[ni][mi][3], sw_r[mi][1] * sx.y, acc[mi][ni][3]);
                }
            }
        }
    }
    cp_async_wait<0>();  // no copy may still target shared memory when the block moves on
}
#endif

// Both kernels take the same arguments up to their output; gate_up then also the sorted pairs
// and the slots per token, to gather each pair's token row.
//
// gate_up: tile rows are, per group of 32 (one warp's rows: TC_ROW_WARP), the gate rows
// j0 + group*16 + 0..15 then the up rows of the same j, so mma tile 0 (gate) and tile 1 (up) of
// a warp hold matching elements.
// x: activations in E4M3 [tokens][MOE_HIDDEN] with E8M0 scales; h[pair position][MOE_INTER] f32.
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
moe_tc_gate_up(const u8* __restrict__ w13, const u8* __restrict__ s13, int expert_base, const u8* __restrict__ xq,
               const u8* __restrict__ xs, const int* __restrict__ offsets, const int* __restrict__ active,
               const int* __restrict__ n_active, const int* __restrict__ tiles, int n_tail, int dense_pairs,
               float* __restrict__ h, const int* __restrict__ sorted_pairs, int slots) {
    extern __shared__ __align__(16) u8 tc_smem[];
    __shared__ int w_rows[TC_BM], x_rows[TC_BN];
    TcTile t;
    if (!tile_of_block(offsets, active, n_active, tiles, n_tail, dense_pairs, t)) return;
    const int j0 = blockIdx.x * (TC_BM / 2);
    const size_t e = (size_t)(t.e + expert_base);
    for (int r = threadIdx.x; r < TC_BM; r += TC_THREADS) {
        int group = r / 32, half = (r % 32) / 16, j = j0 + group * 16 + r % 16;
        w_rows[r] = (int)((e * 2 + half) * MOE_INTER + j);
    }
    for (int q = threadIdx.x; q < TC_BN; q += TC_THREADS) {
        int p = t.p0 + q;
        x_rows[q] = p < t.p_end ? sorted_pairs[p] / slots : -1;
    }
    __syncthreads();
    float acc[2][TC_NI][4];
    tc_gemm<MOE_HIDDEN>(w13, s13, w_rows, xq, xs, x_rows, tc_smem, acc);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, tig = lane % 4;
#pragma unroll
    for (int ni = 0; ni < TC_NI; ++ni)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            int q = TC_PAIR_BASE(warp) + ni * 8 + 2 * tig + (c & 1);
            int j = j0 + TC_ROW_WARP(warp) * 16 + g + (c >> 1) * 8;
            int p = t.p0 + q;
            if (p < t.p_end) h[(size_t)p * MOE_INTER + j] = silu_mul(acc[0][ni][c], acc[1][ni][c]);
        }
}

// down: tile rows are the output rows n0 .. n0+TC_BM-1; x: h quantized to E4M3
// [pair position][MOE_INTER];
// y[pair position][MOE_HIDDEN] f32, unweighted (the combine applies the routing weights).
extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
moe_tc_down(const u8* __restrict__ w2, const u8* __restrict__ s2, int expert_base, const u8* __restrict__ hq,
            const u8* __restrict__ hs, const int* __restrict__ offsets, const int* __restrict__ active,
            const int* __restrict__ n_active, const int* __restrict__ tiles, int n_tail, int dense_pairs,
            float* __restrict__ y) {
    extern __shared__ __align__(16) u8 tc_smem[];
    __shared__ int w_rows[TC_BM], x_rows[TC_BN];
    TcTile t;
    if (!tile_of_block(offsets, active, n_active, tiles, n_tail, dense_pairs, t)) return;
    const int n0 = blockIdx.x * TC_BM;
    const size_t e = (size_t)(t.e + expert_base);
    for (int r = threadIdx.x; r < TC_BM; r += TC_THREADS) w_rows[r] = (int)(e * MOE_HIDDEN + n0 + r);
    for (int q = threadIdx.x; q < TC_BN; q += TC_THREADS) x_rows[q] = t.p0 + q < t.p_end ? t.p0 + q : -1;
    __syncthreads();
    float acc[2][TC_NI][4];
    tc_gemm<MOE_INTER>(w2, s2, w_rows, hq, hs, x_rows, tc_smem, acc);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, tig = lane % 4;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < TC_NI; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                int q = TC_PAIR_BASE(warp) + ni * 8 + 2 * tig + (c & 1);
                int n = n0 + TC_ROW_WARP(warp) * 32 + mi * 16 + g + (c >> 1) * 8;
                int p = t.p0 + q;
                if (p < t.p_end) y[(size_t)p * MOE_HIDDEN + n] = acc[mi][ni][c];
            }
}

#endif
