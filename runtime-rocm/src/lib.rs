//! Devices (CPU, HIP on AMD, HIP-on-CUDA on NVIDIA), memory, streams, events and run-time
//! kernel compilation with an on-disk cache. All FFI of the project lives here.
