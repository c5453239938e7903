// Dense linear layer on tensor cores (HIP dialect; NVIDIA sm_80+ only): out[m][n] = x[m][k] ·
// w[n][k]^T with bf16 weights and f32 activations and outputs, for calls with many tokens
// (batched decode, prefill), where the CUDA-core kernel of model_ops.hip rereads every weight
// once per 8 tokens.
//
// Precision: each f32 activation is split into bf16 hi = bf16(x) and lo = bf16(x - hi), and the
// layer runs as w·hi + w·lo on `mma.m16n8k16.bf16` with f32 accumulation. The weights are
// exact in bf16, every product is exact in f32, and hi + lo carries 16 significant bits of x
// (relative error <= 2^-17), so the result matches the f32 kernel to about f32 rounding of the
// sums rather than to bf16's 3 digits.
//
// Tiles: a block computes LTC_BM = 128 output features x LTC_BN tokens (16 or 64), K in stages
// of 32 streamed through a LTC_PIPE-stage cp.async pipeline (weights and activations as they
// lie in memory). Eight warps as 4 (features) x 2 (tokens), each 32 features x LTC_BN / 2
// tokens = 2 x LTC_BN / 16 mma tiles; weight fragments through ldmatrix, activation fragments
// read as f32 pairs and split on the fly. The narrow tile serves calls of a few tokens, where
// the wide one would spend its instructions on padding.
// Features past n and tokens past m are read as zeros and not stored; k must be a multiple of 32.
// check-defines: LTC_PIPE=3
// check-defines: LTC_BN=16
// Not a dependent-launch source (see runtime-rocm's KernelSource): launched that way, decode
// at 16 and 64 sequences (where these kernels run) was 2-3 % slower on the H100, and no faster
// at 1 or 4 (model-deepseek PERF-NOTES d11).

#if defined(__HIP_PLATFORM_NVIDIA__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

typedef unsigned int u32;
typedef unsigned short u16;

#define LTC_BM 128
#ifndef LTC_BN
#define LTC_BN 64
#endif
#if LTC_BN != 16 && LTC_BN != 64
#error "LTC_BN must be 16 or 64"
#endif
#define LTC_NI (LTC_BN / 16)  // mma tiles of 8 tokens per warp
#define LTC_BK 32
#define LTC_THREADS 256
#ifndef LTC_PIPE
#define LTC_PIPE 4
#endif
#define LTC_W_PITCH (LTC_BK * 2 + 16)   // bytes per weight row in shared memory: conflict-free ldmatrix
#define LTC_X_PITCH (LTC_BK * 4 + 32)   // bytes per activation row: conflict-free 8-byte reads
#define LTC_STAGE_BYTES (LTC_BM * LTC_W_PITCH + LTC_BN * LTC_X_PITCH)
#define LTC_W_VECS (LTC_BM * LTC_BK * 2 / 16)  // 16-byte copies of weights per stage
#define LTC_X_VECS (LTC_BN * LTC_BK * 4 / 16)  // of activations
#if (LTC_W_VECS % LTC_THREADS) != 0
#error "the weight tile copies must divide evenly over the block"
#endif

__device__ __forceinline__ u32 ltc_smem(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ltc_cp16(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

// Two floats -> (hi, lo) bf16 pairs, element 0 in the low half: hi = bf16(x), lo = bf16(x - hi).
__device__ __forceinline__ void split_bf16x2(float2 v, u32& hi, u32& lo) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(hi) : "f"(v.y), "f"(v.x));
    float h0 = __uint_as_float(hi << 16), h1 = __uint_as_float(hi & 0xffff0000u);
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(lo) : "f"(v.y - h1), "f"(v.x - h0));
}

__device__ __forceinline__ void mma_bf16(const u32* a, u32 b0, u32 b1, float* c) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

extern "C" __global__ void __launch_bounds__(LTC_THREADS, 2)
ops_linear_bf16_tc(const float* __restrict__ x, const u16* __restrict__ w, int m, int k, int n,
                   float* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char ltc_smem_buf[];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp % 4, wn = warp / 4, g = lane / 4, tig = lane % 4;
    const int n0 = blockIdx.x * LTC_BM, m0 = blockIdx.y * LTC_BN;
    const int stages = k / LTC_BK;

    auto issue = [&](int s) {
        if (s < stages) {
            unsigned char* base = ltc_smem_buf + (s % LTC_PIPE) * LTC_STAGE_BYTES;
#pragma unroll
            for (int i = 0; i < LTC_W_VECS / LTC_THREADS; ++i) {
                int v = tid + i * LTC_THREADS, r = v / 4, c = v % 4;
                int row = n0 + r;
                const u16* src = w + (size_t)min(row, n - 1) * k + s * LTC_BK + c * 8;
                ltc_cp16(ltc_smem(base + r * LTC_W_PITCH + c * 16), src, row < n);
            }
#pragma unroll
            for (int v = tid; v < LTC_X_VECS; v += LTC_THREADS) {
                int q = v / 8, c = v % 8;
                int tok = m0 + q;
                const float* src = x + (size_t)min(tok, m - 1) * k + s * LTC_BK + c * 4;
                ltc_cp16(ltc_smem(base + LTC_BM * LTC_W_PITCH + q * LTC_X_PITCH + c * 16), src, tok < m);
            }
        }
        asm volatile("cp.async.commit_group;");  // empty groups past the end keep the counts uniform
    };

    float acc[2][LTC_NI][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < LTC_NI; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.0f;

#pragma unroll
    for (int s = 0; s < LTC_PIPE - 1; ++s) issue(s);
    for (int s = 0; s < stages; ++s) {
        asm volatile("cp.async.wait_group %0;" ::"n"(LTC_PIPE - 2));
        __syncthreads();  // stage s landed for everyone; stage s-1's buffer is free again
        issue(s + LTC_PIPE - 1);
        const unsigned char* ws = ltc_smem_buf + (s % LTC_PIPE) * LTC_STAGE_BYTES;
        const unsigned char* xs = ws + LTC_BM * LTC_W_PITCH;
#pragma unroll
        for (int kk = 0; kk < LTC_BK; kk += 16) {
            u32 a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                // Matrices: rows 0-7 / 8-15 of the 16-row tile, k 0-7 / 8-15.
                int r = wm * 32 + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                int kb = (kk + (lane / 16) * 8) * 2;
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                             : "=r"(a[mi][0]), "=r"(a[mi][1]), "=r"(a[mi][2]), "=r"(a[mi][3])
                             : "r"(ltc_smem(ws + r * LTC_W_PITCH + kb)));
            }
#pragma unroll
            for (int ni = 0; ni < LTC_NI; ++ni) {
                // B fragment: token g of the tile, k = 2*tig, 2*tig+1 (b0) and +8 (b1).
                const float* row =
                    (const float*)(xs + (wn * (LTC_BN / 2) + ni * 8 + g) * LTC_X_PITCH) + kk + 2 * tig;
                u32 b0h, b0l, b1h, b1l;
                split_bf16x2(*(const float2*)row, b0h, b0l);
                split_bf16x2(*(const float2*)(row + 8), b1h, b1l);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    mma_bf16(a[mi], b0h, b1h, acc[mi][ni]);
                    mma_bf16(a[mi], b0l, b1l, acc[mi][ni]);
                }
            }
        }
    }
    asm volatile("cp.async.wait_group 0;");

#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < LTC_NI; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                int row = n0 + wm * 32 + mi * 16 + g + (c >> 1) * 8;
                int tok = m0 + wn * (LTC_BN / 2) + ni * 8 + 2 * tig + (c & 1);
                if (row < n && tok < m) out[(size_t)tok * n + row] = acc[mi][ni][c];
            }
}

#endif
