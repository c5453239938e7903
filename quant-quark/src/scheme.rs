//! Recognising a spec as one of the schemes the model implements.
//!
//! Recognised: MXFP4 weights (fp4, per_group 32, e8m0, static) with dynamic MXFP4 activations
//! (W4A4) or unquantized activations (weight-only), and FP8 E4M3 W8A8 with per-tensor or
//! per-channel weight scales. Everything else is an error naming what is unsupported; nothing
//! falls back to a neighbouring scheme.

use serde::Serialize;

use crate::config::{LayerSpec, QuantizerSpec};
use crate::mxfp4::{BLOCK, ScaleRule};

/// How one linear layer's weights are stored and its inputs quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum LayerScheme {
    /// bf16 / f32 weights, unquantized activations.
    Unquantized,
    /// MXFP4 weights: `weight` uint8 `[out, in/2]` and `weight_scale` uint8 E8M0 `[out, in/32]`.
    Mxfp4 {
        /// `Some(rule)`: activations are fake-quantized to MXFP4 per 32 at run time with that
        /// scale rule (W4A4); `None`: activations stay unquantized (weight-only).
        activations: Option<ScaleRule>,
    },
    /// FP8 E4M3 weights with f32 `weight_scale`, FP8 activations (W8A8).
    Fp8 {
        /// Granularity of `weight_scale`.
        weight: Fp8Weight,
        /// How activations are scaled.
        activations: Fp8Activations,
    },
}

/// Granularity of an FP8 weight scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Fp8Weight {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output channel.
    PerChannel,
}

/// How FP8 activations are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Fp8Activations {
    /// One calibrated scale stored as `input_scale`.
    StaticPerTensor,
    /// One scale computed per call over the whole input.
    DynamicPerTensor,
    /// One scale computed per token (row) at run time.
    DynamicPerToken,
}

/// Why a spec is not a recognised scheme: a sentence for [`crate::QuarkError::UnsupportedScheme`].
pub(crate) type Unsupported = String;

/// The scheme a spec describes.
pub(crate) fn recognise(spec: &LayerSpec) -> Result<LayerScheme, Unsupported> {
    if !spec.output_tensors.is_empty() {
        return Err("output_tensors quantization is not supported".into());
    }
    if !spec.bias.is_empty() {
        return Err("bias quantization is not supported".into());
    }
    let weight = match spec.weight.as_slice() {
        [] if spec.input_tensors.is_empty() => return Ok(LayerScheme::Unquantized),
        [] => return Err("input_tensors quantized without weight quantization".into()),
        [weight] => weight,
        chain => {
            return Err(format!(
                "weight has a chain of {} quantizers; only one is supported",
                chain.len()
            ));
        }
    };
    let input = match spec.input_tensors.as_slice() {
        [] => None,
        [input] => Some(input),
        chain => {
            return Err(format!(
                "input_tensors has a chain of {} quantizers; only one is supported",
                chain.len()
            ));
        }
    };
    match weight.dtype.as_str() {
        "fp4" => {
            check_mx_block(weight, "weight")?;
            if weight.is_dynamic == Some(true) {
                return Err("weight.is_dynamic is true; MXFP4 weights must be stored".into());
            }
            let activations = input.map(mxfp4_activations).transpose()?;
            Ok(LayerScheme::Mxfp4 { activations })
        }
        "fp8_e4m3" => {
            let weight_scales = match (weight.qscheme.as_deref(), weight.ch_axis) {
                (Some("per_tensor"), _) => Fp8Weight::PerTensor,
                (Some("per_channel"), Some(0)) => Fp8Weight::PerChannel,
                (Some("per_channel"), axis) => {
                    return Err(format!(
                        "weight.ch_axis is {axis:?}; per-channel FP8 weights need ch_axis 0"
                    ));
                }
                (other, _) => {
                    return Err(format!(
                        "weight.qscheme {other:?} is not supported for fp8_e4m3"
                    ));
                }
            };
            if weight.is_dynamic == Some(true) {
                return Err("weight.is_dynamic is true; FP8 weights must be stored".into());
            }
            let Some(input) = input else {
                return Err("fp8_e4m3 weights without input_tensors (weight-only FP8)".into());
            };
            Ok(LayerScheme::Fp8 {
                weight: weight_scales,
                activations: fp8_activations(input)?,
            })
        }
        other => Err(format!("weight.dtype {other:?} is not supported")),
    }
}

/// Checks the MX block structure of a quantizer: fp4, per_group of 32 along the input
/// dimension, E8M0 scales.
fn check_mx_block(q: &QuantizerSpec, role: &str) -> Result<(), Unsupported> {
    if q.qscheme.as_deref() != Some("per_group") {
        return Err(format!(
            "{role}.qscheme is {:?}, MXFP4 needs \"per_group\"",
            q.qscheme
        ));
    }
    if q.group_size != Some(BLOCK as u32) {
        return Err(format!(
            "{role}.group_size is {:?}, MXFP4 needs {BLOCK}",
            q.group_size
        ));
    }
    if q.scale_format.as_deref() != Some("e8m0") {
        return Err(format!(
            "{role}.scale_format is {:?}, MXFP4 needs \"e8m0\"",
            q.scale_format
        ));
    }
    // Groups run along the last (input) dimension; ch_axis 1 is the same axis of a 2-D weight.
    if !matches!(q.ch_axis, None | Some(-1) | Some(1)) {
        return Err(format!(
            "{role}.ch_axis is {:?}; MXFP4 groups must run along the input dimension",
            q.ch_axis
        ));
    }
    Ok(())
}

/// The scale rule of dynamic MXFP4 activations. Every field that changes the run-time
/// arithmetic must be spelled out: guessing a default would silently shift the logits.
fn mxfp4_activations(input: &QuantizerSpec) -> Result<ScaleRule, Unsupported> {
    if input.dtype != "fp4" {
        return Err(format!(
            "input_tensors.dtype {:?} with fp4 weights is not supported",
            input.dtype
        ));
    }
    check_mx_block(input, "input_tensors")?;
    if input.is_dynamic != Some(true) {
        return Err(format!(
            "input_tensors.is_dynamic is {:?}; MXFP4 activations must be dynamic (there is no input_scale)",
            input.is_dynamic
        ));
    }
    if input.round_method.as_deref() != Some("half_even") {
        return Err(format!(
            "input_tensors.round_method is {:?}; only \"half_even\" is supported",
            input.round_method
        ));
    }
    match input.scale_calculation_mode.as_deref() {
        Some("even") => Ok(ScaleRule::Even),
        Some("floor") => Ok(ScaleRule::Ocp),
        other => Err(format!(
            "input_tensors.scale_calculation_mode is {other:?}; supported: \"even\", \"floor\""
        )),
    }
}

fn fp8_activations(input: &QuantizerSpec) -> Result<Fp8Activations, Unsupported> {
    if input.dtype != "fp8_e4m3" {
        return Err(format!(
            "input_tensors.dtype {:?} with fp8_e4m3 weights is not supported",
            input.dtype
        ));
    }
    match (input.qscheme.as_deref(), input.is_dynamic) {
        (Some("per_tensor"), Some(false)) => Ok(Fp8Activations::StaticPerTensor),
        (Some("per_tensor"), Some(true)) => Ok(Fp8Activations::DynamicPerTensor),
        (Some("per_channel"), Some(true)) => Ok(Fp8Activations::DynamicPerToken),
        (qscheme, is_dynamic) => Err(format!(
            "input_tensors qscheme {qscheme:?} with is_dynamic {is_dynamic:?} is not supported for fp8_e4m3"
        )),
    }
}
