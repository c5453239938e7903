//! Turning accounted checkpoint tensors into the forward pass's weights: floats widened to f32,
//! MXFP4 kept packed, shared experts cut into expert slots when fused.

use std::collections::HashMap;
use std::ops::Range;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::fusion::FusionPlan;
use crate::weights::{
    ActivationQuant, AttentionWeights, FeedForward, LayerWeights, Linear, Matrix, MlpWeights,
    ModelWeights, MoeWeights, Mxfp4Matrix, QueryWeights,
};

use super::Progress;
use super::catalog::Role;
use super::checkpoint::Checkpoint;
use super::error::LoadError;
use super::header::Dtype;
use super::ledger::Expected;
use super::quant::LinearFormat;

/// A linear weight read from the checkpoint, before it becomes a [`Linear`].
enum Raw {
    Dense(Vec<f32>),
    Mxfp4 {
        packed: Vec<u8>,
        scales: Vec<u8>,
        input: Option<quant_quark::ScaleRule>,
    },
}

struct RawLinear {
    rows: usize,
    cols: usize,
    raw: Raw,
}

impl RawLinear {
    /// The sub-matrix `rows × cols`; MXFP4 column ranges must be whole groups of 32.
    fn slice(&self, rows: Range<usize>, cols: Range<usize>) -> Self {
        let (r, c) = (rows.len(), cols.len());
        let take = |data: &[u8], per_row: usize, unit: usize| -> Vec<u8> {
            rows.clone()
                .flat_map(|row| {
                    let base = row * per_row;
                    data[base + cols.start / unit..base + cols.end / unit]
                        .iter()
                        .copied()
                })
                .collect()
        };
        let raw = match &self.raw {
            Raw::Dense(v) => Raw::Dense(
                rows.clone()
                    .flat_map(|row| {
                        v[row * self.cols + cols.start..row * self.cols + cols.end]
                            .iter()
                            .copied()
                    })
                    .collect(),
            ),
            Raw::Mxfp4 {
                packed,
                scales,
                input,
            } => Raw::Mxfp4 {
                packed: take(packed, self.cols / 2, 2),
                scales: take(scales, self.cols / 32, 32),
                input: *input,
            },
        };
        Self {
            rows: r,
            cols: c,
            raw,
        }
    }

    fn into_linear(self, name: &str) -> Result<Linear, LoadError> {
        match self.raw {
            Raw::Dense(v) => Ok(Linear::Dense(matrix(name, self.rows, self.cols, v)?)),
            Raw::Mxfp4 {
                packed,
                scales,
                input,
            } => {
                let weight = Mxfp4Matrix::new(self.rows, self.cols, packed, scales)
                    .map_err(|e| LoadError::Quantization(format!("{name}: {e}")))?;
                // The checkpoint's input spec; whether the forward pass honours it is a
                // forward option (`--activations`), not a property of the weights.
                let activations = input.map_or(ActivationQuant::None, ActivationQuant::Mxfp4);
                Ok(Linear::Mxfp4 {
                    weight,
                    activations,
                })
            }
        }
    }
}

fn matrix(name: &str, rows: usize, cols: usize, v: Vec<f32>) -> Result<Matrix, LoadError> {
    Matrix::new(rows, cols, v).ok_or_else(|| {
        LoadError::Config(format!(
            "{name}: values do not fill a [{rows}, {cols}] matrix"
        ))
    })
}

/// Widens a float tensor's little-endian bytes to f32.
fn floats(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, LoadError> {
    Ok(match dtype {
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => {
            return Err(LoadError::Tensors {
                problems: vec![super::TensorProblem::Mismatch {
                    name: name.to_owned(),
                    found: other.to_string(),
                    expected: "a float dtype".to_owned(),
                }],
            });
        }
    })
}

/// Builds [`ModelWeights`] from a checkpoint the ledger found no problem in.
pub(super) struct Builder<'a> {
    ckpt: &'a Checkpoint,
    by_canonical: HashMap<&'a str, &'a Expected>,
    config: &'a ModelConfig,
    fusion: &'a FusionPlan,
}

impl<'a> Builder<'a> {
    pub(super) fn new(
        ckpt: &'a Checkpoint,
        expected: &'a [Expected],
        config: &'a ModelConfig,
        fusion: &'a FusionPlan,
    ) -> Self {
        Self {
            ckpt,
            by_canonical: expected.iter().map(|e| (e.canonical.as_str(), e)).collect(),
            config,
            fusion,
        }
    }

    fn expected(&self, canonical: &str) -> Result<&'a Expected, LoadError> {
        self.by_canonical.get(canonical).copied().ok_or_else(|| {
            LoadError::Config(format!("internal: {canonical} is not in the load plan"))
        })
    }

    fn tensor(&self, name: &str) -> Result<(Dtype, &'a [u8]), LoadError> {
        let info = self
            .ckpt
            .tensors()
            .get(name)
            .ok_or_else(|| LoadError::Tensors {
                problems: vec![super::TensorProblem::Missing {
                    name: name.to_owned(),
                    expected: "a tensor the ledger had found".to_owned(),
                }],
            })?;
        Ok((info.dtype, self.ckpt.bytes(info)))
    }

    fn vector(&self, canonical: &str) -> Result<Vec<f32>, LoadError> {
        let e = self.expected(canonical)?;
        let (dtype, bytes) = self.tensor(&e.name)?;
        floats(&e.name, dtype, bytes)
    }

    fn matrix(&self, canonical: &str) -> Result<Matrix, LoadError> {
        let e = self.expected(canonical)?;
        let (dtype, bytes) = self.tensor(&e.name)?;
        matrix(
            &e.name,
            e.shape[0],
            e.shape[1],
            floats(&e.name, dtype, bytes)?,
        )
    }

    fn raw(&self, canonical: &str) -> Result<(RawLinear, &'a Expected), LoadError> {
        let e = self.expected(canonical)?;
        debug_assert_eq!(e.role, Role::Linear);
        let (rows, cols) = (e.shape[0], e.shape[1]);
        let (dtype, weight) = self.tensor(&format!("{}.weight", e.name))?;
        let raw = match e.format {
            LinearFormat::Bf16 => Raw::Dense(floats(&e.name, dtype, weight)?),
            LinearFormat::Mxfp4 { input } => {
                let (_, scales) = self.tensor(&format!("{}.weight_scale", e.name))?;
                Raw::Mxfp4 {
                    packed: weight.to_vec(),
                    scales: scales.to_vec(),
                    input,
                }
            }
        };
        Ok((RawLinear { rows, cols, raw }, e))
    }

    fn linear(&self, canonical: &str) -> Result<Linear, LoadError> {
        let (raw, e) = self.raw(canonical)?;
        raw.into_linear(&e.name)
    }

    fn mlp(&self, prefix: &str) -> Result<MlpWeights, LoadError> {
        Ok(MlpWeights {
            gate_proj: self.linear(&format!("{prefix}gate_proj"))?,
            up_proj: self.linear(&format!("{prefix}up_proj"))?,
            down_proj: self.linear(&format!("{prefix}down_proj"))?,
        })
    }

    /// The shared MLP cut into `n` expert slots along its intermediate dimension.
    fn shared_slots(&self, prefix: &str, n: usize) -> Result<Vec<MlpWeights>, LoadError> {
        let inter = self.config.moe_intermediate_size;
        let h = self.config.hidden_size;
        let (gate, ge) = self.raw(&format!("{prefix}gate_proj"))?;
        let (up, ue) = self.raw(&format!("{prefix}up_proj"))?;
        let (down, de) = self.raw(&format!("{prefix}down_proj"))?;
        (0..n)
            .map(|j| {
                let part = j * inter..(j + 1) * inter;
                Ok(MlpWeights {
                    gate_proj: gate.slice(part.clone(), 0..h).into_linear(&ge.name)?,
                    up_proj: up.slice(part.clone(), 0..h).into_linear(&ue.name)?,
                    down_proj: down.slice(0..h, part).into_linear(&de.name)?,
                })
            })
            .collect()
    }

    fn attention(&self, p: &str) -> Result<AttentionWeights, LoadError> {
        let a = format!("{p}self_attn.");
        let query = match self.config.q_lora_rank {
            Some(_) => QueryWeights::Lora {
                q_a_proj: self.linear(&format!("{a}q_a_proj"))?,
                q_a_layernorm: self.vector(&format!("{a}q_a_layernorm.weight"))?,
                q_b_proj: self.linear(&format!("{a}q_b_proj"))?,
            },
            None => QueryWeights::Direct {
                q_proj: self.linear(&format!("{a}q_proj"))?,
            },
        };
        Ok(AttentionWeights {
            query,
            kv_a_proj_with_mqa: self.linear(&format!("{a}kv_a_proj_with_mqa"))?,
            kv_a_layernorm: self.vector(&format!("{a}kv_a_layernorm.weight"))?,
            kv_b_proj: self.linear(&format!("{a}kv_b_proj"))?,
            o_proj: self.linear(&format!("{a}o_proj"))?,
        })
    }

    fn layer(&self, i: usize) -> Result<LayerWeights, LoadError> {
        let c = self.config;
        let p = format!("model.layers.{i}.");
        let m = format!("{p}mlp.");
        let feed_forward = if c.is_moe_layer(i) {
            // Experts are independent copies out of the memory map: read them in parallel.
            let mut experts = (0..c.n_routed_experts)
                .into_par_iter()
                .map(|x| self.mlp(&format!("{m}experts.{x}.")))
                .collect::<Result<Vec<_>, _>>()?;
            let shared_prefix = format!("{m}shared_experts.");
            let (shared, fused_shared_slots) = if c.n_shared_experts == 0 {
                (None, 0)
            } else if self.fusion.is_fused(i) {
                experts.extend(self.shared_slots(&shared_prefix, c.n_shared_experts)?);
                (None, c.n_shared_experts)
            } else {
                (Some(self.mlp(&shared_prefix)?), 0)
            };
            FeedForward::Moe(MoeWeights {
                router: self.matrix(&format!("{m}gate.weight"))?,
                correction_bias: self.vector(&format!("{m}gate.e_score_correction_bias"))?,
                experts,
                shared,
                fused_shared_slots,
            })
        } else {
            FeedForward::Dense(self.mlp(&m)?)
        };
        Ok(LayerWeights {
            input_layernorm: self.vector(&format!("{p}input_layernorm.weight"))?,
            attention: self.attention(&p)?,
            post_attention_layernorm: self
                .vector(&format!("{p}post_attention_layernorm.weight"))?,
            feed_forward,
        })
    }

    /// Every weight, reporting progress once per layer.
    pub(super) fn build(
        &self,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ModelWeights, LoadError> {
        let c = self.config;
        let total = c.num_hidden_layers + 1;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let layer = self.layer(i);
                progress(Progress { done: i + 1, total });
                layer
            })
            .collect::<Result<Vec<_>, _>>()?;
        let weights = ModelWeights {
            embed_tokens: self.matrix("model.embed_tokens.weight")?,
            layers,
            norm: self.vector("model.norm.weight")?,
            lm_head: if c.tie_word_embeddings {
                None
            } else {
                Some(self.linear("lm_head")?)
            },
        };
        progress(Progress { done: total, total });
        weights.validate(c).map_err(|e| {
            LoadError::Config(format!("loaded weights disagree with the config: {e}"))
        })?;
        Ok(weights)
    }
}
