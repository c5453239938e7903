//! The MLA attention block of one layer: projections, rotary embedding, cache append, and
//! absorbed attention over the latent cache (see `moe_kernels::reference::mla_attention`).

use crate::config::ModelConfig;
use crate::kv_cache::KvCache;
use crate::model::{Batch, apply};
use crate::weights::{ActivationQuant, AttentionWeights, Linear, QueryWeights};
use moe_kernels::reference::{
    ActivationMode, MlaDims, Rope, fake_quantize_rows, mla_attention, rmsnorm,
};

/// Per-layer attention state prepared once at model build.
#[derive(Debug)]
pub(crate) struct LayerAttention {
    /// Decoder layer index (the cache is per layer).
    layer: usize,
    rope: Rope,
    dims: MlaDims,
    softmax_scale: f32,
    eps: f32,
    mode: ActivationMode,
    /// `kv_b_proj` as f32 (dequantized when MXFP4), read by the absorbed attention.
    kv_b: Vec<f32>,
    /// How `kv_b_proj` quantizes its input: applied to the latent before it is cached, so
    /// the cache holds exactly what `kv_b_proj` would multiply.
    kv_b_input: ActivationQuant,
}

impl LayerAttention {
    pub(crate) fn new(
        c: &ModelConfig,
        layer: usize,
        rope: Rope,
        w: &AttentionWeights,
        mode: ActivationMode,
    ) -> Self {
        let kv_b_input = match (&w.kv_b_proj, mode) {
            (Linear::Mxfp4 { activations, .. }, ActivationMode::Quantized) => *activations,
            _ => ActivationQuant::None,
        };
        Self {
            layer,
            rope,
            dims: c.mla_dims(),
            softmax_scale: c.softmax_scale(),
            eps: c.rms_norm_eps,
            mode,
            kv_b: w.kv_b_proj.to_dense().data,
            kv_b_input,
        }
    }

    /// Attention output (`[tokens, hidden]`, after `o_proj`) of the normed hidden states
    /// `x` (`[tokens, hidden]`); appends each token's latent and rope key to `cache`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        batch: &Batch<'_>,
        cache: &mut KvCache,
        w: &AttentionWeights,
        out: &mut [f32],
    ) {
        let d = &self.dims;
        let (layer, rope) = (self.layer, &self.rope);
        let t = batch.positions.len();
        let q_head = d.qk_nope + d.qk_rope;
        let mut q = self.query(x, t, w);
        let kv_a = apply(&w.kv_a_proj_with_mqa, x, t, self.mode);
        let kv_a_width = d.kv_lora + d.qk_rope;

        let mut latent = vec![0f32; t * d.kv_lora];
        let mut rope_key = vec![0f32; t * d.qk_rope];
        for (i, row) in kv_a.chunks_exact(kv_a_width).enumerate() {
            let (c, k_pe) = row.split_at(d.kv_lora);
            rmsnorm(
                c,
                &w.kv_a_layernorm,
                self.eps,
                &mut latent[i * d.kv_lora..(i + 1) * d.kv_lora],
            );
            rope_key[i * d.qk_rope..(i + 1) * d.qk_rope].copy_from_slice(k_pe);
        }
        if let ActivationQuant::Mxfp4(rule) = self.kv_b_input {
            latent = fake_quantize_rows(&latent, d.kv_lora, rule);
        }
        for (i, &pos) in batch.positions.iter().enumerate() {
            rope.rotate(
                &mut rope_key[i * d.qk_rope..(i + 1) * d.qk_rope],
                pos,
                1,
                d.qk_rope,
                0,
            );
            rope.rotate(
                &mut q[i * d.heads * q_head..(i + 1) * d.heads * q_head],
                pos,
                d.heads,
                q_head,
                d.qk_nope,
            );
        }

        let mut attn = vec![0f32; t * d.heads * d.v];
        for (chunk, &start) in batch.chunks.iter().zip(&batch.chunk_starts) {
            let n = chunk.tokens.len();
            cache.append(
                chunk.seq,
                layer,
                &latent[start * d.kv_lora..(start + n) * d.kv_lora],
                &rope_key[start * d.qk_rope..(start + n) * d.qk_rope],
            );
            mla_attention(
                &q[start * d.heads * q_head..(start + n) * d.heads * q_head],
                &batch.positions[start..start + n],
                &cache.layer(chunk.seq, layer),
                &self.kv_b,
                d,
                self.softmax_scale,
                &mut attn[start * d.heads * d.v..(start + n) * d.heads * d.v],
            );
        }
        let o = apply(&w.o_proj, &attn, t, self.mode);
        out.copy_from_slice(&o);
    }

    /// Queries `[tokens, heads, qk_nope + qk_rope]` (rope part not yet rotated).
    fn query(&self, x: &[f32], t: usize, w: &AttentionWeights) -> Vec<f32> {
        match &w.query {
            QueryWeights::Direct { q_proj } => apply(q_proj, x, t, self.mode),
            QueryWeights::Lora {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => {
                let q_a = apply(q_a_proj, x, t, self.mode);
                let mut normed = vec![0f32; q_a.len()];
                rmsnorm(&q_a, q_a_layernorm, self.eps, &mut normed);
                apply(q_b_proj, &normed, t, self.mode)
            }
        }
    }
}
