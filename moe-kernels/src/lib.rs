//! Every op the model needs: HIP kernel sources, typed launchers, and the CPU reference of
//! each op (the oracle the GPU kernels are checked against).

pub mod gpu;
pub mod reference;
