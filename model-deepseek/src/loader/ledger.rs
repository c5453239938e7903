//! Strict accounting: every tensor the model needs is present with the right dtype and shape,
//! every tensor in the checkpoint is used or skipped by a named rule, and every MXFP4 scale is a
//! number. All problems are collected (not just the first) so `mxserve inspect` can list them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{Layout, ModelConfig};

use super::catalog::Role;
use super::checkpoint::{Checkpoint, TensorInfo};
use super::error::TensorProblem;
use super::header::Dtype;
use super::names::{Prefix, skip_rule};
use super::quant::LinearFormat;

/// Float dtypes an unquantized tensor may be stored in (widened to f32 at load).
pub const FLOAT_DTYPES: [Dtype; 3] = [Dtype::Bf16, Dtype::F16, Dtype::F32];

/// One weight the model needs, resolved to checkpoint names and a storage format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Canonical (DeepSeek-V3) name: module for linear layers, tensor otherwise.
    pub canonical: String,
    /// The checkpoint's spelling of `canonical`.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Storage format (`Bf16` for everything but quantized linear layers).
    pub format: LinearFormat,
}

impl Expected {
    /// The checkpoint tensors this weight is stored as, with allowed dtypes and shapes.
    pub fn tensors(&self) -> Vec<(String, &'static [Dtype], Vec<usize>)> {
        match (self.role, self.format) {
            (Role::Linear, LinearFormat::Mxfp4 { .. }) => {
                let (rows, cols) = (self.shape[0], self.shape[1]);
                vec![
                    (
                        format!("{}.weight", self.name),
                        &[Dtype::U8],
                        vec![rows, cols / 2],
                    ),
                    (
                        format!("{}.weight_scale", self.name),
                        &[Dtype::U8],
                        vec![rows, cols / 32],
                    ),
                ]
            }
            (Role::Linear, LinearFormat::Bf16) => vec![(
                format!("{}.weight", self.name),
                &FLOAT_DTYPES,
                self.shape.clone(),
            )],
            _ => vec![(self.name.clone(), &FLOAT_DTYPES, self.shape.clone())],
        }
    }
}

/// A checkpoint tensor the text model does not run, and the rule that says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The rule, e.g. `vision_tower.* (Kimi-K2.5 vision path; text only)`.
    pub rule: String,
    /// How many tensors it skipped.
    pub tensors: usize,
    /// Their total size in bytes.
    pub bytes: usize,
}

/// The outcome of accounting a checkpoint against the expected weights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// Tensors used by the model.
    pub used: usize,
    /// Skipped tensors, grouped by rule.
    pub skipped: Vec<Skipped>,
    /// Every problem found.
    pub problems: Vec<TensorProblem>,
}

fn describe(dtypes: &[Dtype], shape: &[usize]) -> String {
    let d: Vec<&str> = dtypes.iter().map(|d| d.as_str()).collect();
    format!("{} {shape:?}", d.join("|"))
}

/// Checks `ckpt` against `expected`; reads only the headers and the MXFP4 scale bytes.
pub fn account(
    ckpt: &Checkpoint,
    expected: &[Expected],
    config: &ModelConfig,
    layout: Layout,
    prefix: Prefix,
) -> Accounting {
    let tensors = ckpt.tensors();
    let mut out = Accounting::default();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for e in expected {
        for (name, dtypes, shape) in e.tensors() {
            let Some(info) = tensors.get(&name) else {
                out.problems
                    .push(missing(e, &name, dtypes, &shape, tensors));
                continue;
            };
            used.insert(tensors.get_key_value(&name).expect("just found").0);
            if !dtypes.contains(&info.dtype) || info.shape != shape {
                out.problems.push(mismatch(e, &name, info, dtypes, &shape));
                continue;
            }
            if name.ends_with(".weight_scale")
                && let Some(problem) = nan_scale(&name, ckpt.bytes(info), &shape)
            {
                out.problems.push(problem);
            }
        }
        if e.role != Role::Linear || e.format == LinearFormat::Bf16 {
            // A scale next to a weight the model reads as unquantized means the checkpoint is
            // quantized where the config (or the never-quantize rule) says it is not.
            let stem = e.name.strip_suffix(".weight").unwrap_or(&e.name);
            let scale = format!("{stem}.weight_scale");
            if let Some((key, info)) = tensors.get_key_value(&scale) {
                used.insert(key);
                out.problems.push(TensorProblem::Unexpected {
                    name: scale,
                    dtype: info.dtype.to_string(),
                    shape: info.shape.clone(),
                    expected: unquantized_reason(e),
                });
            }
        }
    }
    out.used = used.len();
    let mut skipped: BTreeMap<String, Skipped> = BTreeMap::new();
    for (name, info) in tensors {
        if used.contains(name.as_str()) {
            continue;
        }
        let canonical = prefix.canonical_name(name);
        if let Some(rule) = skip_rule(config, layout, canonical.as_deref(), name) {
            let entry = skipped.entry(rule.clone()).or_insert(Skipped {
                rule,
                tensors: 0,
                bytes: 0,
            });
            entry.tensors += 1;
            entry.bytes += ckpt.bytes(info).len();
            continue;
        }
        out.problems.push(TensorProblem::Unexpected {
            name: name.clone(),
            dtype: info.dtype.to_string(),
            shape: info.shape.clone(),
            expected: unexpected_reason(config, canonical.as_deref(), prefix),
        });
    }
    out.skipped = skipped.into_values().collect();
    out
}

fn unquantized_reason(e: &Expected) -> String {
    match e.role {
        Role::Linear => format!(
            "the quantization config leaves {} unquantized, so it has no scale",
            e.name
        ),
        _ => format!(
            "{} is never quantized (embeddings, norms and the router stay in high precision)",
            e.name
        ),
    }
}

fn missing(
    e: &Expected,
    name: &str,
    dtypes: &[Dtype],
    shape: &[usize],
    tensors: &BTreeMap<String, TensorInfo>,
) -> TensorProblem {
    let mut expected = describe(dtypes, shape);
    if e.role == Role::Linear && matches!(e.format, LinearFormat::Mxfp4 { .. }) {
        expected.push_str(" (MXFP4 per the quantization config)");
    }
    if name.ends_with(".weight_scale")
        && tensors
            .get(&format!("{}.weight", e.name))
            .is_some_and(|w| FLOAT_DTYPES.contains(&w.dtype))
    {
        expected.push_str("; the weight is stored unquantized, the config says MXFP4");
    }
    TensorProblem::Missing {
        name: name.to_owned(),
        expected,
    }
}

fn mismatch(
    e: &Expected,
    name: &str,
    info: &TensorInfo,
    dtypes: &[Dtype],
    shape: &[usize],
) -> TensorProblem {
    let mut expected = describe(dtypes, shape);
    if info.dtype == Dtype::U8 && !dtypes.contains(&Dtype::U8) {
        expected.push_str(&format!("; {}", unquantized_reason(e)));
    } else if e.format != LinearFormat::Bf16 && FLOAT_DTYPES.contains(&info.dtype) {
        expected.push_str("; the quantization config says MXFP4");
    }
    TensorProblem::Mismatch {
        name: name.to_owned(),
        found: describe(&[info.dtype], &info.shape),
        expected,
    }
}

fn nan_scale(name: &str, bytes: &[u8], shape: &[usize]) -> Option<TensorProblem> {
    let groups = shape[1].max(1);
    let index = bytes
        .iter()
        .position(|&b| b == quant_quark::mxfp4::E8M0_NAN)?;
    let count = bytes
        .iter()
        .filter(|&&b| b == quant_quark::mxfp4::E8M0_NAN)
        .count();
    Some(TensorProblem::BadValue {
        name: name.to_owned(),
        problem: format!(
            "{count} E8M0 scale byte(s) are 255 (NaN), the first at row {}, group {}",
            index / groups,
            index % groups
        ),
    })
}

fn unexpected_reason(c: &ModelConfig, canonical: Option<&str>, prefix: Prefix) -> String {
    let Some(canonical) = canonical else {
        return format!("outside the language model: no skip rule for it in the {prefix:?} layout");
    };
    if let Some(rest) = canonical.strip_prefix("model.layers.")
        && let Some(layer) = rest.split('.').next().and_then(|l| l.parse::<usize>().ok())
    {
        let last = c.num_hidden_layers + c.num_nextn_predict_layers;
        if layer >= last {
            return format!(
                "layer {layer} is beyond num_hidden_layers + num_nextn_predict_layers = {last}"
            );
        }
        if let Some(expert) = rest
            .split(".mlp.experts.")
            .nth(1)
            .and_then(|e| e.split('.').next())
            .and_then(|e| e.parse::<usize>().ok())
            && expert >= c.n_routed_experts
        {
            return format!(
                "expert {expert} is beyond n_routed_experts = {}",
                c.n_routed_experts
            );
        }
        if !c.is_moe_layer(layer) && rest.contains(".mlp.experts.") {
            return format!(
                "layer {layer} is a dense layer (first_k_dense_replace = {})",
                c.first_k_dense_replace
            );
        }
    }
    "no weight of the model described by config.json has this name".to_owned()
}
