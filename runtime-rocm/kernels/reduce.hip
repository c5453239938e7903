// Wave-size-agnostic reductions: butterfly shuffles over WARP_SIZE lanes, then one wave
// combines the per-wave results. Blocks must be a multiple of WARP_SIZE threads and at most
// WARP_SIZE * WARP_SIZE.
// check-defines: BLOCK_SIZE=1024

#ifndef BLOCK_SIZE
#define BLOCK_SIZE 256
#endif

#if BLOCK_SIZE % WARP_SIZE != 0 || BLOCK_SIZE > WARP_SIZE * WARP_SIZE
#error "BLOCK_SIZE must be a multiple of WARP_SIZE and at most WARP_SIZE * WARP_SIZE"
#endif

static __device__ __forceinline__ float wave_sum(float value) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        value += __shfl_xor(value, offset);
    }
    return value;
}

// partial[blockIdx.x] = sum of the elements this block visits (grid-stride).
extern "C" __global__ void __launch_bounds__(BLOCK_SIZE)
sum_f32(const float* x, unsigned int n, float* partial) {
    __shared__ float per_wave[BLOCK_SIZE / WARP_SIZE];
    float acc = 0.0f;
    for (unsigned int i = blockIdx.x * BLOCK_SIZE + threadIdx.x; i < n; i += gridDim.x * BLOCK_SIZE) {
        acc += x[i];
    }
    acc = wave_sum(acc);
    const unsigned int lane = threadIdx.x % WARP_SIZE;
    const unsigned int wave = threadIdx.x / WARP_SIZE;
    if (lane == 0) {
        per_wave[wave] = acc;
    }
    __syncthreads();
    if (wave == 0) {
        acc = lane < BLOCK_SIZE / WARP_SIZE ? per_wave[lane] : 0.0f;
        acc = wave_sum(acc);
        if (lane == 0) {
            partial[blockIdx.x] = acc;
        }
    }
}

// *count += number of i < n with x[i] > 0, one ballot per wave.
extern "C" __global__ void __launch_bounds__(BLOCK_SIZE)
count_positive_f32(const float* x, unsigned int n, unsigned int* count) {
    const unsigned int i = blockIdx.x * BLOCK_SIZE + threadIdx.x;
    const bool positive = i < n && x[i] > 0.0f;
    const unsigned long long mask = __ballot(positive);
    if (__lane_id() == 0) {
        atomicAdd(count, (unsigned int)__popcll(mask));
    }
}
