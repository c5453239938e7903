//! The SwiGLU MLP (dense layers, routed experts, shared experts).

use super::linear::{ActivationMode, Linear, linear};

/// A SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    /// `gate_proj` `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// `up_proj` `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// `down_proj` `[hidden, intermediate]`.
    pub down_proj: Linear,
}

impl MlpWeights {
    /// The intermediate width.
    pub fn intermediate_size(&self) -> usize {
        self.gate_proj.out_features()
    }

    /// The hidden (input and output) width.
    pub fn hidden_size(&self) -> usize {
        self.gate_proj.in_features()
    }
}

/// `out = silu(gate) · up` elementwise, `silu(g) = g / (1 + e^-g)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul: gate and up differ in length"
    );
    assert_eq!(gate.len(), out.len(), "silu_mul: out differs in length");
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Apply the MLP to `m` rows of `x` (`[m, hidden]`), writing `out` (`[m, hidden]`). Each
/// projection quantizes its own input when it is a W4A4 layer and `mode` allows it.
pub fn mlp(x: &[f32], m: usize, w: &MlpWeights, mode: ActivationMode, out: &mut [f32]) {
    let inter = w.intermediate_size();
    let mut gate = vec![0f32; m * inter];
    let mut up = vec![0f32; m * inter];
    linear(x, m, &w.gate_proj, mode, &mut gate);
    linear(x, m, &w.up_proj, mode, &mut up);
    let mut act = vec![0f32; m * inter];
    silu_mul(&gate, &up, &mut act);
    linear(&act, m, &w.down_proj, mode, out);
}
