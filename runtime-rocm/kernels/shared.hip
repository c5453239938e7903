// Dynamic shared memory: each block reverses its chunk of `chunk` floats through shared
// memory sized at launch (the launch's shared_mem_bytes must be chunk * 4).
extern "C" __global__ void reverse_chunks_f32(float* out, const float* in, unsigned int chunk) {
    extern __shared__ float tile[];
    const float* src = in + (size_t)blockIdx.x * chunk;
    for (unsigned int i = threadIdx.x; i < chunk; i += blockDim.x) {
        tile[i] = src[i];
    }
    __syncthreads();
    float* dst = out + (size_t)blockIdx.x * chunk;
    for (unsigned int i = threadIdx.x; i < chunk; i += blockDim.x) {
        dst[i] = tile[chunk - 1 - i];
    }
}
