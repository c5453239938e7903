//! Random weights for a tiny checkpoint, quantized where its Quark config says, written as
//! safetensors (one file for DeepSeek-V3, shards plus an index for Kimi-K2.5).

use std::collections::BTreeMap;
use std::path::Path;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype as StDtype, tensor::TensorView};
use serde_json::{Value, json};

use crate::config::parse_config;
use crate::loader::catalog::{self, Role, WeightSpec};
use crate::loader::names::Prefix;
use crate::loader::quant::{LinearFormat, QuantPlan};

use super::{TinyError, TinyLayout, TinySpec, config, io_err};

/// One tensor to write.
struct Tensor {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Uniform values with standard deviation `std` around `mean`.
fn uniform(rng: &mut ChaCha8Rng, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let half_width = std * 3f32.sqrt();
    (0..n)
        .map(|_| mean + rng.random_range(-half_width..half_width))
        .collect()
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect()
}

/// Values for one weight: unit-sized activations through every layer. Output projections get
/// half the gain so the residual stream grows slowly; `lm_head` twice the gain so the logits
/// spread over a few units (peaked enough to be meaningful, far from saturating).
fn values(rng: &mut ChaCha8Rng, spec: &WeightSpec) -> Vec<f32> {
    let n = spec.shape.iter().product();
    let fan_in = *spec.shape.last().expect("specs have rank ≥ 1") as f32;
    match spec.role {
        Role::Embedding => uniform(rng, n, 0.0, 1.0),
        Role::Norm => uniform(rng, n, 1.0, 0.05),
        Role::Router => uniform(rng, n, 0.0, 1.0 / fan_in.sqrt()),
        Role::RouterBias => uniform(rng, n, 0.0, 0.01),
        Role::Linear => {
            let gain = if spec.name.ends_with("lm_head") || spec.name.ends_with("shared_head.head")
            {
                2.0
            } else if spec.name.ends_with("o_proj") || spec.name.ends_with("down_proj") {
                0.5
            } else {
                1.0
            };
            uniform(rng, n, 0.0, gain / fan_in.sqrt())
        }
    }
}

fn tensors_for(
    rng: &mut ChaCha8Rng,
    spec: &WeightSpec,
    name: &str,
    format: LinearFormat,
) -> Result<Vec<Tensor>, TinyError> {
    let v = values(rng, spec);
    let shape = spec.shape.clone();
    Ok(match (spec.role, format) {
        (Role::Linear, LinearFormat::Mxfp4 { .. }) => {
            let (rows, cols) = (shape[0], shape[1]);
            let mut packed = vec![0u8; rows * cols / 2];
            let mut scales = vec![0u8; rows * cols / 32];
            // Quark exports compute weight scales with its "even" rule.
            quant_quark::mxfp4::quantize(
                &v,
                quant_quark::ScaleRule::Even,
                &mut packed,
                &mut scales,
            )
            .map_err(|e| TinyError::Spec(format!("{name}: {e}")))?;
            vec![
                Tensor {
                    name: format!("{name}.weight"),
                    dtype: StDtype::U8,
                    shape: vec![rows, cols / 2],
                    data: packed,
                },
                Tensor {
                    name: format!("{name}.weight_scale"),
                    dtype: StDtype::U8,
                    shape: vec![rows, cols / 32],
                    data: scales,
                },
            ]
        }
        (Role::Linear, LinearFormat::Bf16) => vec![Tensor {
            name: format!("{name}.weight"),
            dtype: StDtype::BF16,
            shape,
            data: bf16_bytes(&v),
        }],
        // DeepSeek-V3 checkpoints keep the correction bias in f32.
        (Role::RouterBias, _) => vec![Tensor {
            name: name.to_owned(),
            dtype: StDtype::F32,
            shape,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }],
        (Role::Embedding | Role::Norm | Role::Router, _) => vec![Tensor {
            name: name.to_owned(),
            dtype: StDtype::BF16,
            shape,
            data: bf16_bytes(&v),
        }],
    })
}

/// Generates and writes every weight of the catalog for the config just written.
pub(super) fn write_weights(dir: &Path, spec: &TinySpec, config: &Value) -> Result<(), TinyError> {
    let parsed = parse_config(&config.to_string())
        .map_err(|e| TinyError::Spec(format!("generated config does not parse: {e}")))?;
    let model = &parsed.model;
    if model.n_routed_experts % model.n_group != 0 {
        return Err(TinyError::Spec(format!(
            "{} experts do not split into {} groups",
            model.n_routed_experts, model.n_group
        )));
    }
    let prefix = match spec.layout {
        TinyLayout::DeepseekV3 => Prefix::DeepseekV3,
        TinyLayout::KimiK25 => Prefix::KimiNested,
        TinyLayout::KimiK25Flat => Prefix::KimiFlat,
    };
    let quant = QuantPlan::new(parsed.quantization.as_ref(), prefix)
        .map_err(|e| TinyError::Spec(format!("generated quantization config: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    // Shard by layer group: globals and the vision tower first, then one shard per layer.
    let mut shards: Vec<Vec<Tensor>> = Vec::new();
    let mut emit = |specs: Vec<WeightSpec>, shards: &mut Vec<Vec<Tensor>>| {
        let mut shard = Vec::new();
        for w in &specs {
            let name = prefix.checkpoint_name(&w.name);
            let format = match w.role {
                Role::Linear => quant
                    .linear_format(&w.name)
                    .map_err(|e| TinyError::Spec(e.to_string()))?,
                _ => LinearFormat::Bf16,
            };
            shard.extend(tensors_for(&mut rng, w, &name, format)?);
        }
        shards.push(shard);
        Ok::<(), TinyError>(())
    };
    emit(catalog::globals(model), &mut shards)?;
    let total_layers = model.num_hidden_layers + model.num_nextn_predict_layers;
    for layer in 0..total_layers {
        emit(catalog::layer(model, layer), &mut shards)?;
    }
    if spec.layout != TinyLayout::DeepseekV3 {
        let mut vision_rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5649_5349_4f4e);
        shards[0].extend(config::vision_tensors().into_iter().map(|(name, shape)| {
            let n = shape.iter().product();
            Tensor {
                name: name.to_owned(),
                dtype: StDtype::BF16,
                shape,
                data: bf16_bytes(&uniform(&mut vision_rng, n, 0.0, 0.05)),
            }
        }));
    }
    if spec.layout == TinyLayout::DeepseekV3 {
        let all: Vec<Tensor> = shards.into_iter().flatten().collect();
        write_file(&dir.join("model.safetensors"), &all)
    } else {
        write_sharded(dir, &shards)
    }
}

fn write_file(path: &Path, tensors: &[Tensor]) -> Result<(), TinyError> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| TinyError::Spec(format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| TinyError::Spec(format!("{}: {e}", path.display())))
}

fn write_sharded(dir: &Path, shards: &[Vec<Tensor>]) -> Result<(), TinyError> {
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        write_file(&dir.join(&file), shard)?;
        for t in shard {
            total += t.data.len();
            weight_map.insert(t.name.clone(), file.clone());
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join(crate::loader::checkpoint::INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).expect("a JSON value always serializes");
    std::fs::write(&path, text).map_err(io_err(&path))
}
