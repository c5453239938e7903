//! The model's weights on the device, uploaded in the formats the checkpoint stores them
//! (dense f32, MXFP4 packed codes and scales), and the MoE experts stacked for
//! `moe_kernels::gpu`.

use super::GpuModelError;
use crate::config::ModelConfig;
use crate::weights::{
    ActivationQuant, FeedForward, Linear, MlpWeights, ModelWeights, MoeWeights, QueryWeights,
};
use moe_kernels::gpu::model_ops::{DeviceLinear, MlaWeights};
use moe_kernels::gpu::{self, MoeShape, SharedExpertMode};
use moe_kernels::reference::{ActivationMode, RoutingParams};
use runtime_rocm::{Device, DeviceBuffer};

/// A SwiGLU MLP on the device.
#[derive(Debug)]
pub(crate) struct DeviceMlp {
    pub gate: DeviceLinear,
    pub up: DeviceLinear,
    pub down: DeviceLinear,
}

impl DeviceMlp {
    fn upload(device: &Device, w: &MlpWeights) -> Result<Self, GpuModelError> {
        Ok(Self {
            gate: DeviceLinear::upload(device, &w.gate_proj)?,
            up: DeviceLinear::upload(device, &w.up_proj)?,
            down: DeviceLinear::upload(device, &w.down_proj)?,
        })
    }

    pub fn intermediate(&self) -> usize {
        self.gate.out_features()
    }

    fn device_bytes(&self) -> u64 {
        [&self.gate, &self.up, &self.down]
            .iter()
            .map(|l| l.device_bytes() as u64)
            .sum()
    }
}

fn vector_bytes<T: bytemuck::Pod>(b: &DeviceBuffer<T>) -> u64 {
    (b.len() * size_of::<T>()) as u64
}

/// The linear layers that read a layer's normed hidden state: the query's first projection and
/// `kv_a_proj_with_mqa` (whose output is the `kv_lora` latent values, then the rope key).
#[derive(Debug)]
pub(crate) enum AttentionInput {
    /// A low-rank query whose `q_a_proj` is stacked over `kv_a_proj_with_mqa` in one weight
    /// `[q_lora + kv_lora + rope, hidden]` (one launch reads the input once for both; SGLang's
    /// `fused_qkv_a_proj_with_mqa`), then `q_a_layernorm` and `q_b_proj`.
    StackedLora {
        qkv_a: DeviceLinear,
        q_norm: DeviceBuffer<f32>,
        q_b: DeviceLinear,
    },
    /// A low-rank query whose `q_a_proj` is stored unlike `kv_a_proj_with_mqa` (so the two
    /// cannot share a launch).
    Lora {
        q_a: DeviceLinear,
        q_norm: DeviceBuffer<f32>,
        q_b: DeviceLinear,
        kv_a: DeviceLinear,
    },
    /// A full-rank `q_proj` (no `q_lora_rank`).
    Direct { q: DeviceLinear, kv_a: DeviceLinear },
}

impl AttentionInput {
    fn device_bytes(&self) -> u64 {
        let linear = |l: &DeviceLinear| l.device_bytes() as u64;
        match self {
            AttentionInput::StackedLora { qkv_a, q_norm, q_b } => {
                linear(qkv_a) + vector_bytes(q_norm) + linear(q_b)
            }
            AttentionInput::Lora {
                q_a,
                q_norm,
                q_b,
                kv_a,
            } => linear(q_a) + vector_bytes(q_norm) + linear(q_b) + linear(kv_a),
            AttentionInput::Direct { q, kv_a } => linear(q) + linear(kv_a),
        }
    }
}

/// One layer's attention weights on the device.
#[derive(Debug)]
pub(crate) struct DeviceAttention {
    pub input: AttentionInput,
    pub kv_a_norm: DeviceBuffer<f32>,
    /// `kv_b_proj` split into the absorbed attention's per-head `W_UKᵀ` and `W_UV`.
    pub kv_b: MlaWeights,
    /// How `kv_b_proj` quantizes its input: applied to the latent before it is cached.
    pub kv_b_input: ActivationQuant,
    pub o_proj: DeviceLinear,
}

/// One MoE block on the device.
#[derive(Debug)]
pub(crate) struct DeviceMoe {
    /// `mlp.gate` as a dense f32 linear layer.
    pub router: DeviceLinear,
    pub bias: DeviceBuffer<f32>,
    /// Routed experts, then the shared expert's slots when it has the routed format.
    pub experts: gpu::MoeWeights,
    pub params: RoutingParams,
    /// The experts' activation spec under the model's activation mode.
    pub act: ActivationQuant,
    pub mode: SharedExpertMode,
    /// A shared expert whose format differs from the routed experts', run as its own MLP.
    pub shared_mlp: Option<DeviceMlp>,
}

/// One layer's feed-forward block on the device.
#[derive(Debug)]
pub(crate) enum DeviceFfn {
    Dense(Box<DeviceMlp>),
    Moe(Box<DeviceMoe>),
}

/// One decoder layer on the device.
#[derive(Debug)]
pub(crate) struct DeviceLayer {
    pub input_norm: DeviceBuffer<f32>,
    pub attention: DeviceAttention,
    pub post_norm: DeviceBuffer<f32>,
    pub ffn: DeviceFfn,
}

/// Every weight the GPU forward pass reads.
#[derive(Debug)]
pub(crate) struct DeviceWeights {
    /// `embed_tokens` (also the output head when embeddings are tied).
    pub embed: DeviceLinear,
    pub layers: Vec<DeviceLayer>,
    pub norm: DeviceBuffer<f32>,
    pub lm_head: Option<DeviceLinear>,
}

impl DeviceWeights {
    /// Bytes of every buffer held.
    pub fn device_bytes(&self) -> u64 {
        let linear = |l: &DeviceLinear| l.device_bytes() as u64;
        let mut total = linear(&self.embed) + vector_bytes(&self.norm);
        total += self.lm_head.as_ref().map_or(0, linear);
        for layer in &self.layers {
            let a = &layer.attention;
            total += vector_bytes(&layer.input_norm) + vector_bytes(&layer.post_norm);
            total += a.input.device_bytes();
            total += vector_bytes(&a.kv_a_norm) + a.kv_b.device_bytes() as u64;
            total += linear(&a.o_proj);
            total += match &layer.ffn {
                DeviceFfn::Dense(m) => m.device_bytes(),
                DeviceFfn::Moe(m) => {
                    let shape = m.experts.shape();
                    linear(&m.router)
                        + vector_bytes(&m.bias)
                        + (shape.slots() * shape.bytes_per_expert()) as u64
                        + m.shared_mlp.as_ref().map_or(0, DeviceMlp::device_bytes)
                }
            };
        }
        total
    }

    pub fn upload(
        device: &Device,
        c: &ModelConfig,
        w: &ModelWeights,
        mode: ActivationMode,
    ) -> Result<Self, GpuModelError> {
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let a = &layer.attention;
                let input = match &a.query {
                    QueryWeights::Lora {
                        q_a_proj,
                        q_a_layernorm,
                        q_b_proj,
                    } => {
                        let (q_norm, q_b) = (
                            device.upload(q_a_layernorm)?,
                            DeviceLinear::upload(device, q_b_proj)?,
                        );
                        let kv_a = &a.kv_a_proj_with_mqa;
                        match DeviceLinear::upload_stacked(device, &[q_a_proj, kv_a])? {
                            Some(qkv_a) => AttentionInput::StackedLora { qkv_a, q_norm, q_b },
                            None => AttentionInput::Lora {
                                q_a: DeviceLinear::upload(device, q_a_proj)?,
                                q_norm,
                                q_b,
                                kv_a: DeviceLinear::upload(device, kv_a)?,
                            },
                        }
                    }
                    QueryWeights::Direct { q_proj } => AttentionInput::Direct {
                        q: DeviceLinear::upload(device, q_proj)?,
                        kv_a: DeviceLinear::upload(device, &a.kv_a_proj_with_mqa)?,
                    },
                };
                let kv_b_input = match (&a.kv_b_proj, mode) {
                    (Linear::Mxfp4 { activations, .. }, ActivationMode::Quantized) => *activations,
                    _ => ActivationQuant::None,
                };
                let attention = DeviceAttention {
                    input,
                    kv_a_norm: device.upload(&a.kv_a_layernorm)?,
                    kv_b: MlaWeights::upload(device, &a.kv_b_proj, &c.mla_dims())?,
                    kv_b_input,
                    o_proj: DeviceLinear::upload(device, &a.o_proj)?,
                };
                let ffn = match &layer.feed_forward {
                    FeedForward::Dense(m) => {
                        DeviceFfn::Dense(Box::new(DeviceMlp::upload(device, m)?))
                    }
                    FeedForward::Moe(m) => {
                        DeviceFfn::Moe(Box::new(upload_moe(device, c, m, mode, i)?))
                    }
                };
                Ok(DeviceLayer {
                    input_norm: device.upload(&layer.input_layernorm)?,
                    attention,
                    post_norm: device.upload(&layer.post_attention_layernorm)?,
                    ffn,
                })
            })
            .collect::<Result<_, GpuModelError>>()?;
        Ok(Self {
            embed: DeviceLinear::upload(device, &Linear::Dense(w.embed_tokens.clone()))?,
            layers,
            norm: device.upload(&w.norm)?,
            lm_head: w
                .lm_head
                .as_ref()
                .map(|h| DeviceLinear::upload(device, h))
                .transpose()?,
        })
    }
}

/// The common activation spec of MXFP4 experts, or why they cannot be stacked.
fn expert_format(experts: &[MlpWeights], layer: usize) -> Result<ActivationQuant, GpuModelError> {
    let mut format = None;
    for (e, expert) in experts.iter().enumerate() {
        for (name, l) in [
            ("gate_proj", &expert.gate_proj),
            ("up_proj", &expert.up_proj),
            ("down_proj", &expert.down_proj),
        ] {
            let act = match l {
                Linear::Mxfp4 { activations, .. } => *activations,
                Linear::Dense(_) => {
                    return Err(GpuModelError::Unsupported(format!(
                        "layers.{layer}.mlp expert slot {e} {name} is dense; the GPU MoE kernels \
                         take MXFP4 experts only"
                    )));
                }
            };
            if *format.get_or_insert(act) != act {
                return Err(GpuModelError::Unsupported(format!(
                    "layers.{layer}.mlp expert slot {e} {name}: activation spec {act:?} differs \
                     from the other experts'"
                )));
            }
        }
    }
    format.ok_or_else(|| GpuModelError::Unsupported(format!("layers.{layer}.mlp has no experts")))
}

fn mxfp4_parts(l: &Linear) -> (&[u8], &[u8]) {
    match l {
        Linear::Mxfp4 { weight, .. } => (weight.packed(), weight.scales()),
        Linear::Dense(_) => unreachable!("expert_format checked every expert is MXFP4"),
    }
}

fn upload_moe(
    device: &Device,
    c: &ModelConfig,
    w: &MoeWeights,
    mode: ActivationMode,
    layer: usize,
) -> Result<DeviceMoe, GpuModelError> {
    let routed_format = expert_format(&w.experts[..c.n_routed_experts], layer)?;
    // The shared expert joins the stacked weights when it has the routed experts' format
    // (fused: as routed slots; unfused: as a second pass over those slots); otherwise it runs
    // as a separate MLP in its own format.
    let (experts, n_shared, shared_mode, shared_mlp) = if w.fused_shared_slots > 0 {
        expert_format(&w.experts, layer)?;
        (
            w.experts.clone(),
            w.fused_shared_slots,
            SharedExpertMode::Fused,
            None,
        )
    } else {
        match &w.shared {
            None => (w.experts.clone(), 0, SharedExpertMode::Fused, None),
            Some(shared) => {
                let split = w.clone().into_fused()?;
                match expert_format(&split.experts, layer) {
                    Ok(f) if f == routed_format => (
                        split.experts,
                        split.fused_shared_slots,
                        SharedExpertMode::Separate,
                        None,
                    ),
                    _ => (
                        w.experts.clone(),
                        0,
                        SharedExpertMode::Fused,
                        Some(DeviceMlp::upload(device, shared)?),
                    ),
                }
            }
        }
    };
    let shape = MoeShape {
        hidden: c.hidden_size,
        inter: c.moe_intermediate_size,
        n_routed: c.n_routed_experts,
        n_shared,
    };
    let (mut w13, mut s13, mut w2, mut s2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in &experts {
        for l in [&e.gate_proj, &e.up_proj] {
            let (p, s) = mxfp4_parts(l);
            w13.extend_from_slice(p);
            s13.extend_from_slice(s);
        }
        let (p, s) = mxfp4_parts(&e.down_proj);
        w2.extend_from_slice(p);
        s2.extend_from_slice(s);
    }
    let stacked = gpu::MoeWeights::new(
        shape,
        device.upload(&w13)?,
        device.upload(&s13)?,
        device.upload(&w2)?,
        device.upload(&s2)?,
    )?;
    let act = match mode {
        ActivationMode::Quantized => routed_format,
        ActivationMode::Unquantized => ActivationQuant::None,
    };
    Ok(DeviceMoe {
        router: DeviceLinear::upload(device, &Linear::Dense(w.router.clone()))?,
        bias: device.upload(&w.correction_bias)?,
        experts: stacked,
        params: c.routing_params(match shared_mode {
            SharedExpertMode::Fused => n_shared,
            SharedExpertMode::Separate => 0,
        }),
        act,
        mode: shared_mode,
        shared_mlp,
    })
}
