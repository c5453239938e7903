// Synthetic data generated on the device from a seed: benchmark weights and activations that
// would take far longer to generate on the host and copy over. Counter-based (a hash of the
// element index and the seed), so the same seed gives the same data on every device.
// dependent-launch

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1], from the top 24 bits.
__device__ __forceinline__ float unit(u32 bits) { return ((bits >> 8) + 1) * (1.0f / 16777216.0f); }

// A standard normal value for element i (Box-Muller on two hashed uniforms).
__device__ __forceinline__ float normal(u64 i, u32 seed) {
    u64 r = mix64(i * 0x2545f4914f6cdd1dull ^ ((u64)seed << 32));
    float u1 = unit((u32)r), u2 = unit((u32)(r >> 32));
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

// out[i] = lo + (hash(i) mod span): random E2M1 code bytes (lo 0, span 256) or E8M0 scales
// in a chosen range.
extern "C" __global__ void synth_bytes(u8* __restrict__ out, u64 n, u32 seed, u32 lo, u32 span) {
    mx_wait_prior_kernels();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = (u8)(lo + (u32)(mix64(i ^ ((u64)seed << 40)) % span));
}

extern "C" __global__ void synth_normal_f32(float* __restrict__ out, u64 n, u32 seed, float scale) {
    mx_wait_prior_kernels();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = scale * normal(i, seed);
}

extern "C" __global__ void synth_normal_bf16(u16* __restrict__ out, u64 n, u32 seed, float scale) {
    mx_wait_prior_kernels();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = mx_float_to_bf16(scale * normal(i, seed));
}
