// Fills and conversions through the prelude's portable bf16 helpers.

// out[i] = bf16(value) for i < n.
extern "C" __global__ void fill_bf16(unsigned short* out, float value, unsigned int n) {
    const unsigned short bits = mx_float_to_bf16(value);
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        out[i] = bits;
    }
}

// out[i] = bf16(scale * float(in[i])): a round trip through both conversions.
extern "C" __global__ void scale_bf16(unsigned short* out, const unsigned short* in, float scale, unsigned int n) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        out[i] = mx_float_to_bf16(scale * mx_bf16_to_float(in[i]));
    }
}
