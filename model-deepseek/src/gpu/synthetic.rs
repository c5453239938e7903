//! A model with a real checkpoint's layer dimensions whose weights are generated directly in
//! device memory from a seed, for the decode benchmark: Kimi-K2.5's 61 layers are ~600 GB as
//! a checkpoint, and even the few layers one GPU holds (~60 GB) cannot be written to and read
//! from the device machine's disk in a benchmark's time. The formats are those of the Quark
//! MXFP4 Kimi-K2.5 checkpoint: routed and shared experts MXFP4 W4A4 (`even` scale rule, the
//! shared expert stacked as one more slot), attention, dense MLP, router, embedding and
//! `lm_head` bf16 (`kv_b_proj` too, split into the attention's per-head `W_UKᵀ` and `W_UV`),
//! norms and the correction bias f32.
//!
//! Values are drawn so activations stay O(1) through the layers: dense weights normal with
//! variance `1/in`, MXFP4 experts random E2M1 codes with the one E8M0 scale that gives
//! variance ≈ `1/in`, router weights that spread tokens over experts as a trained router
//! does (each token's top-k is an independent draw), a correction bias of N(0, 1e-3).
//!
//! Also here: the bytes one decode step must read ([`decode_step_bytes`]), the floor the
//! benchmark compares inter-token latency against.

use super::GpuModelError;
use super::model::{GpuModel, GpuOptions};
use super::plan::{KvBudget, MemoryPlan, PlanError, kv_bytes_per_token};
use super::weights::{
    AttentionInput, DeviceAttention, DeviceFfn, DeviceLayer, DeviceMlp, DeviceMoe, DeviceWeights,
};
use crate::config::{ConfigError, ModelConfig, parse_config};
use crate::model::ForwardOptions;
use half::bf16;
use moe_kernels::gpu::model_ops::{DeviceLinear, MlaWeights};
use moe_kernels::gpu::{self, MoeShape, SharedExpertMode, Synthetic};
use moe_kernels::reference::{ActivationQuant, ScaleRule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_rocm::{Device, DeviceBuffer, Stream};

/// Decoder layers of Kimi-K2.5 (`text_config.num_hidden_layers`).
pub const KIMI_K25_LAYERS: usize = 61;

/// Kimi-K2.5's language-model config (its `text_config`, DESIGN §4) with `layers` decoder
/// layers instead of 61, through the same parser and validation as a checkpoint's.
pub fn kimi_k25_config(layers: usize) -> Result<ModelConfig, ConfigError> {
    let text = serde_json::json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "kimi_k2",
        "bos_token_id": 163584,
        "eos_token_id": [163585, 163586],
        "first_k_dense_replace": 1,
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "kv_lora_rank": 512,
        "max_position_embeddings": 262144,
        "moe_intermediate_size": 2048,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": 384,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": 64,
        "num_experts_per_tok": 8,
        "num_hidden_layers": layers,
        "num_key_value_heads": 64,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "rope_type": "yarn", "beta_fast": 1.0, "beta_slow": 1.0, "factor": 64.0,
            "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096
        },
        "rope_theta": 50000.0,
        "routed_scaling_factor": 2.827,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": false,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "v_head_dim": 128,
        "vocab_size": 163840
    });
    Ok(parse_config(&text.to_string())?.model)
}

/// The MoE expert shape of `c`, the shared expert stacked as slots.
fn moe_shape(c: &ModelConfig) -> MoeShape {
    MoeShape {
        hidden: c.hidden_size,
        inter: c.moe_intermediate_size,
        n_routed: c.n_routed_experts,
        n_shared: c.n_shared_experts,
    }
}

/// bf16 bytes of a `[out, in]` matrix.
fn bf16_matrix(out: usize, input: usize) -> u64 {
    (out * input * 2) as u64
}

/// Weight bytes of one layer's attention (bf16 projections and `kv_b_proj`, f32 norms).
fn attention_bytes(c: &ModelConfig) -> u64 {
    let h = c.hidden_size;
    let q_out = c.num_attention_heads * c.qk_head_dim();
    let query = match c.q_lora_rank {
        Some(r) => bf16_matrix(r, h) + (r * 4) as u64 + bf16_matrix(q_out, r),
        None => bf16_matrix(q_out, h),
    };
    let kv_b = c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank * 2;
    query
        + bf16_matrix(c.kv_lora_rank + c.qk_rope_head_dim, h)
        + (c.kv_lora_rank * 4) as u64
        + kv_b as u64
        + bf16_matrix(h, c.num_attention_heads * c.v_head_dim)
}

/// Bytes the synthetic weights of `c` take on the device, exactly as
/// [`GpuModel::synthetic`] allocates them.
pub fn synthetic_weight_bytes(c: &ModelConfig) -> u64 {
    let h = c.hidden_size;
    let shape = moe_shape(c);
    let mut total = bf16_matrix(c.vocab_size, h) + (h * 4) as u64;
    if !c.tie_word_embeddings {
        total += bf16_matrix(c.vocab_size, h);
    }
    for i in 0..c.num_hidden_layers {
        total += (2 * h * 4) as u64 + attention_bytes(c);
        total += if c.is_moe_layer(i) {
            bf16_matrix(c.n_routed_experts, h)
                + (c.n_routed_experts * 4) as u64
                + (shape.slots() * shape.bytes_per_expert()) as u64
        } else {
            3 * bf16_matrix(c.intermediate_size, h)
        };
    }
    total
}

/// The memory plan of [`GpuModel::synthetic`] for `c`.
pub fn synthetic_plan(
    c: &ModelConfig,
    kv: KvBudget,
    max_batch_tokens: usize,
) -> Result<MemoryPlan, PlanError> {
    let slots = (c.n_routed_experts > 0).then(|| moe_shape(c).slots());
    MemoryPlan::from_parts(c, synthetic_weight_bytes(c), slots, kv, max_batch_tokens)
}

/// The most layers (at most 61, at least 2: the dense layer and one MoE layer) of Kimi-K2.5
/// whose synthetic model, KV budget and workspace fit in `available` bytes; the plan of the
/// smallest model when not even that fits.
pub fn kimi_k25_layers_that_fit(
    available: u64,
    device: &str,
    kv: KvBudget,
    max_batch_tokens: usize,
) -> Result<(ModelConfig, MemoryPlan), GpuModelError> {
    let plan_for = |layers: usize| -> Result<(ModelConfig, MemoryPlan), GpuModelError> {
        let c = kimi_k25_config(layers).map_err(|e| GpuModelError::Unsupported(e.to_string()))?;
        let plan = synthetic_plan(&c, kv, max_batch_tokens)?;
        Ok((c, plan))
    };
    let mut best = None;
    for layers in 2..=KIMI_K25_LAYERS {
        let (c, plan) = plan_for(layers)?;
        if plan.total() > available {
            break;
        }
        best = Some((c, plan));
    }
    match best {
        Some(fit) => Ok(fit),
        None => {
            let (_, plan) = plan_for(2)?;
            plan.check_fits(device, available)?;
            unreachable!("a plan that does not fit is refused by check_fits")
        }
    }
}

/// Expected number of distinct experts `tokens` tokens route to when each picks `top_k` of
/// `n` experts uniformly at random: `n·(1 − (1 − k/n)^tokens)`.
pub fn expected_experts_touched(n: usize, top_k: usize, tokens: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    n as f64 * (1.0 - (1.0 - top_k as f64 / n as f64).powi(tokens as i32))
}

/// The bytes one decode step of `tokens` sequences must move at the least, by kind, for the
/// synthetic model's formats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepBytes {
    /// Attention weights and norms of every layer, the dense layers' MLPs.
    pub dense: f64,
    /// Routers and correction biases.
    pub routers: f64,
    /// The distinct experts the batch routes to (expected count) plus the shared expert.
    pub experts: f64,
    /// KV cache rows read (every cached token of every sequence, every layer) and written.
    pub kv_cache: f64,
    /// Embedding rows gathered, the final norm and `lm_head`.
    pub embed_and_head: f64,
}

impl StepBytes {
    /// All bytes.
    pub fn total(&self) -> f64 {
        self.dense + self.routers + self.experts + self.kv_cache + self.embed_and_head
    }
}

/// What one decode step of `tokens` sequences holding `cached_tokens` tokens in all (before
/// the step) must read and write, for the synthetic model of `c`: every dense weight once,
/// each router once, the expected distinct routed experts ([`expected_experts_touched`])
/// plus the shared experts once per MoE layer, each sequence's whole cached latent and rope
/// key per layer, plus the new rows, the embedding rows, the final norm and `lm_head`.
pub fn decode_step_bytes(c: &ModelConfig, tokens: usize, cached_tokens: usize) -> StepBytes {
    let h = c.hidden_size;
    let shape = moe_shape(c);
    let mut bytes = StepBytes {
        dense: 0.0,
        routers: 0.0,
        experts: 0.0,
        kv_cache: (kv_bytes_per_token(c) * (cached_tokens + tokens)) as f64,
        embed_and_head: (tokens * h * 2 + h * 4) as f64 + bf16_matrix(c.vocab_size, h) as f64,
    };
    let touched = expected_experts_touched(c.n_routed_experts, c.num_experts_per_tok, tokens)
        + c.n_shared_experts as f64;
    for i in 0..c.num_hidden_layers {
        bytes.dense += ((2 * h * 4) as u64 + attention_bytes(c)) as f64;
        if c.is_moe_layer(i) {
            bytes.routers +=
                (bf16_matrix(c.n_routed_experts, h) + (c.n_routed_experts * 4) as u64) as f64;
            bytes.experts += touched * shape.bytes_per_expert() as f64;
        } else {
            bytes.dense += (3 * bf16_matrix(c.intermediate_size, h)) as f64;
        }
    }
    bytes
}

/// Generates tensors on the device, each from its own seed.
struct Filler<'a> {
    device: &'a Device,
    stream: &'a Stream,
    synth: Synthetic,
    seed: u32,
    host: ChaCha8Rng,
}

impl Filler<'_> {
    fn next_seed(&mut self) -> u32 {
        self.seed = self.seed.wrapping_add(1);
        self.seed
    }

    /// A bf16 `[out, in]` weight, normal with variance `1/in` (times `gain²`).
    fn bf16(&mut self, out: usize, input: usize, gain: f32) -> Result<DeviceLinear, GpuModelError> {
        let mut weight: DeviceBuffer<bf16> = self.device.alloc_uninit(out * input)?;
        let seed = self.next_seed();
        self.synth
            .normal_bf16(self.stream, &mut weight, seed, gain / (input as f32).sqrt())?;
        Ok(DeviceLinear::Bf16 { weight, out, input })
    }

    fn f32(&mut self, n: usize, scale: f32) -> Result<DeviceBuffer<f32>, GpuModelError> {
        let mut b: DeviceBuffer<f32> = self.device.alloc_uninit(n)?;
        let seed = self.next_seed();
        self.synth.normal_f32(self.stream, &mut b, seed, scale)?;
        Ok(b)
    }

    /// An RMSNorm gain near 1 (small: drawn on the host).
    fn norm(&mut self, n: usize) -> Result<DeviceBuffer<f32>, GpuModelError> {
        let v: Vec<f32> = (0..n)
            .map(|_| 1.0 + self.host.random_range(-0.2f32..0.2))
            .collect();
        Ok(self.device.upload(&v)?)
    }

    fn mlp(&mut self, hidden: usize, inter: usize) -> Result<DeviceMlp, GpuModelError> {
        Ok(DeviceMlp {
            gate: self.bf16(inter, hidden, 1.0)?,
            up: self.bf16(inter, hidden, 1.0)?,
            down: self.bf16(hidden, inter, 1.0)?,
        })
    }

    /// Random E2M1 codes; every block's scale is the E8M0 code whose square times the mean
    /// square of a uniform E2M1 code (8.5625) is closest to `1/in`.
    fn experts(&mut self, shape: MoeShape) -> Result<gpu::MoeWeights, GpuModelError> {
        let bytes = |n: usize| self.device.alloc_uninit::<u8>(n);
        let mut w = gpu::MoeWeights::new(
            shape,
            bytes(shape.w13_len())?,
            bytes(shape.s13_len())?,
            bytes(shape.w2_len())?,
            bytes(shape.s2_len())?,
        )?;
        let scale = |input: usize| {
            let e = (-0.5 * (8.5625 * input as f64).log2()).round() as i32;
            (127 + e).clamp(1, 254) as u8
        };
        let (up_scale, down_scale) = (scale(shape.hidden), scale(shape.inter));
        let seeds = [
            self.next_seed(),
            self.next_seed(),
            self.next_seed(),
            self.next_seed(),
        ];
        let [w13, s13, w2, s2] = w.buffers_mut();
        self.synth.bytes(self.stream, w13, seeds[0], 0, 255)?;
        self.synth
            .bytes(self.stream, s13, seeds[1], up_scale, up_scale)?;
        self.synth.bytes(self.stream, w2, seeds[2], 0, 255)?;
        self.synth
            .bytes(self.stream, s2, seeds[3], down_scale, down_scale)?;
        Ok(w)
    }

    fn attention(&mut self, c: &ModelConfig) -> Result<DeviceAttention, GpuModelError> {
        let h = c.hidden_size;
        let heads = c.num_attention_heads;
        let q_out = heads * c.qk_head_dim();
        let kv_width = c.kv_lora_rank + c.qk_rope_head_dim;
        // Both projections of the hidden state are bf16, so they stack as a checkpoint's do.
        let input = match c.q_lora_rank {
            Some(r) => AttentionInput::StackedLora {
                qkv_a: self.bf16(r + kv_width, h, 1.0)?,
                q_norm: self.norm(r)?,
                q_b: self.bf16(q_out, r, 1.0)?,
            },
            None => AttentionInput::Direct {
                q: self.bf16(q_out, h, 1.0)?,
                kv_a: self.bf16(kv_width, h, 1.0)?,
            },
        };
        Ok(DeviceAttention {
            input,
            kv_a_norm: self.norm(c.kv_lora_rank)?,
            // kv_b_proj's values have variance 1/kv_lora (its input width) in both halves.
            kv_b: MlaWeights {
                uk_t: self.bf16(
                    heads * c.kv_lora_rank,
                    c.qk_nope_head_dim,
                    (c.qk_nope_head_dim as f32 / c.kv_lora_rank as f32).sqrt(),
                )?,
                uv: self.bf16(heads * c.v_head_dim, c.kv_lora_rank, 1.0)?,
            },
            kv_b_input: ActivationQuant::None,
            o_proj: self.bf16(h, c.num_attention_heads * c.v_head_dim, 1.0)?,
        })
    }

    fn weights(&mut self, c: &ModelConfig) -> Result<DeviceWeights, GpuModelError> {
        let h = c.hidden_size;
        let embed = {
            let mut weight: DeviceBuffer<bf16> = self.device.alloc_uninit(c.vocab_size * h)?;
            let seed = self.next_seed();
            self.synth
                .normal_bf16(self.stream, &mut weight, seed, 1.0)?;
            DeviceLinear::Bf16 {
                weight,
                out: c.vocab_size,
                input: h,
            }
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let attention = self.attention(c)?;
            let ffn = if c.is_moe_layer(i) {
                DeviceFfn::Moe(Box::new(DeviceMoe {
                    router: self.bf16(c.n_routed_experts, h, 1.0)?,
                    bias: self.f32(c.n_routed_experts, 1e-3)?,
                    experts: self.experts(moe_shape(c))?,
                    params: c.routing_params(c.n_shared_experts),
                    act: ActivationQuant::Mxfp4(ScaleRule::Even),
                    mode: SharedExpertMode::Fused,
                    shared_mlp: None,
                }))
            } else {
                DeviceFfn::Dense(Box::new(self.mlp(h, c.intermediate_size)?))
            };
            layers.push(DeviceLayer {
                input_norm: self.norm(h)?,
                attention,
                post_norm: self.norm(h)?,
                ffn,
            });
        }
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(self.bf16(c.vocab_size, h, 1.0)?),
        };
        Ok(DeviceWeights {
            embed,
            layers,
            norm: self.norm(h)?,
            lm_head,
        })
    }
}

impl GpuModel {
    /// A model of `config`'s shapes in the synthetic formats (see the module doc), its
    /// weights generated on `device` from `seed`; the shared expert starts fused (see
    /// [`GpuModel::set_shared_expert_fusion`]). Refused before anything is allocated when the
    /// plan does not fit the device's free memory.
    pub fn synthetic(
        device: &Device,
        config: &ModelConfig,
        seed: u32,
        options: GpuOptions,
    ) -> Result<Self, GpuModelError> {
        if device.is_cpu() {
            return Err(GpuModelError::NotAGpu);
        }
        let plan = synthetic_plan(config, options.kv, options.max_batch_tokens)?;
        let (free, _) = device.memory_info()?;
        plan.check_fits(&device.id().to_string(), free)?;
        let stream = device.create_stream()?;
        let mut filler = Filler {
            device,
            stream: &stream,
            synth: Synthetic::compile(device)?,
            seed: seed.wrapping_mul(0x9e37_79b9),
            host: ChaCha8Rng::seed_from_u64(u64::from(seed)),
        };
        let weights = filler.weights(config)?;
        stream.synchronize()?;
        Self::assemble(
            device,
            config.clone(),
            ForwardOptions::default(),
            options,
            plan,
            weights,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_kimi_k25s_text_config() {
        let fixture = include_str!("../../tests/fixtures/kimi_k25_mxfp4.json");
        let real = parse_config(fixture).unwrap().model;
        assert_eq!(kimi_k25_config(KIMI_K25_LAYERS).unwrap(), real);
        for layers in [2, 7, 8] {
            let c = kimi_k25_config(layers).unwrap();
            assert_eq!(c.num_hidden_layers, layers);
            assert!(!c.is_moe_layer(0) && c.is_moe_layer(1));
        }
        // Validation still applies: zero layers is refused naming the field.
        let err = kimi_k25_config(0).unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers"), "{err}");
    }

    #[test]
    fn weight_bytes_add_up_from_the_published_shapes() {
        let c = kimi_k25_config(3).unwrap();
        // DESIGN §7: 3·7168·2048·4.25/8 bytes per MXFP4 expert.
        let expert = 3.0 * 7168.0 * 2048.0 * 4.25 / 8.0;
        let attention = 2.0
            * (7168.0 * 1536.0
                + 1536.0 * 64.0 * 192.0
                + 7168.0 * 576.0
                + 64.0 * 256.0 * 512.0
                + 64.0 * 128.0 * 7168.0)
            + 4.0 * (1536.0 + 512.0);
        let norms = 2.0 * 7168.0 * 4.0;
        let dense_mlp = 2.0 * 3.0 * 7168.0 * 18432.0;
        let moe = 2.0 * 384.0 * 7168.0 + 4.0 * 384.0 + 385.0 * expert;
        let embed_head = 2.0 * 2.0 * 163840.0 * 7168.0 + 4.0 * 7168.0;
        let want = embed_head + 3.0 * (attention + norms) + dense_mlp + 2.0 * moe;
        assert_eq!(synthetic_weight_bytes(&c) as f64, want);
        // One MoE layer is about 9.2 GB, nearly all experts.
        let per_layer =
            synthetic_weight_bytes(&kimi_k25_config(4).unwrap()) - synthetic_weight_bytes(&c);
        assert!((9.0e9..9.4e9).contains(&(per_layer as f64)), "{per_layer}");
    }

    #[test]
    fn the_layer_count_is_the_largest_that_fits() {
        let kv = KvBudget::for_tokens(64 * 64);
        let plan = |layers| synthetic_plan(&kimi_k25_config(layers).unwrap(), kv, 256).unwrap();
        for layers in [2, 5, 8] {
            // Exactly enough for `layers`, and one byte less than enough for one more.
            for available in [plan(layers).total(), plan(layers + 1).total() - 1] {
                let (c, p) = kimi_k25_layers_that_fit(available, "cuda:0", kv, 256).unwrap();
                assert_eq!(c.num_hidden_layers, layers, "{available} B");
                assert_eq!(p, plan(layers));
            }
        }
        // 79 GiB free (an H100 80GB) holds 9 layers: the dense one and 8 MoE layers.
        let (c, _) = kimi_k25_layers_that_fit(79 << 30, "cuda:0", kv, 256).unwrap();
        assert_eq!(c.num_hidden_layers, 9);
        // Too little for two layers is refused with the numbers.
        let err = kimi_k25_layers_that_fit(plan(2).total() - 1, "cuda:0", kv, 256).unwrap_err();
        assert!(
            matches!(err, GpuModelError::Plan(PlanError::DoesNotFit { .. })),
            "{err}"
        );
    }

    #[test]
    fn expected_experts_touched_follows_sampling_without_replacement_per_token() {
        assert!((expected_experts_touched(384, 8, 1) - 8.0).abs() < 1e-9);
        // DESIGN / PERF-NOTES: 59.5 at 8 tokens, 188 at 32, 358 at 128.
        for (tokens, want) in [(8, 59.5), (32, 188.0), (128, 358.0)] {
            let got = expected_experts_touched(384, 8, tokens);
            assert!((got - want).abs() < 0.6, "{tokens}: {got}");
        }
        // A Monte-Carlo estimate of the same expectation agrees.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let trials = 2000;
        let mut sum = 0usize;
        for _ in 0..trials {
            let mut hit = [false; 384];
            for _ in 0..16 {
                let mut picked = Vec::new();
                while picked.len() < 8 {
                    let e = rng.random_range(0..384);
                    if !picked.contains(&e) {
                        picked.push(e);
                    }
                }
                for e in picked {
                    hit[e] = true;
                }
            }
            sum += hit.iter().filter(|h| **h).count();
        }
        let mc = sum as f64 / trials as f64;
        let formula = expected_experts_touched(384, 8, 16);
        assert!((mc - formula).abs() < 0.5, "{mc} vs {formula}");
    }

    #[test]
    fn the_step_floor_counts_each_kind_once() {
        let c = kimi_k25_config(8).unwrap();
        let expert = 3.0 * 7168.0 * 2048.0 * 4.25 / 8.0;
        let one = decode_step_bytes(&c, 1, 100);
        // Batch 1: 8 routed + 1 shared expert per MoE layer, 7 MoE layers.
        assert!((one.experts - 7.0 * 9.0 * expert).abs() < 1.0);
        // KV: 101 rows of (512 + 64) f32 per layer.
        assert_eq!(one.kv_cache, (8 * 101 * 576 * 4) as f64);
        // The step reads less than the whole model and more than its dense part.
        let all = synthetic_weight_bytes(&c) as f64;
        assert!(one.total() < all && one.total() > one.dense);
        // More tokens touch more experts; dense bytes do not grow with the batch.
        let many = decode_step_bytes(&c, 64, 6400);
        assert_eq!(many.dense, one.dense);
        assert_eq!(many.routers, one.routers);
        assert!(many.experts > 5.0 * one.experts);
        assert!(many.total() < all);
    }
}
