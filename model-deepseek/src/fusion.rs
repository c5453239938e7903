//! The shared-expert fusion policy: whether each MoE layer may run its shared expert(s) as
//! extra slots of the routed-expert kernel, and why.
//!
//! Fusion turns `rsf · Σ wᵢ·Eᵢ(x) + S(x)` into `rsf · (Σ wᵢ·Eᵢ(x) + (1/rsf)·S(x))`: the shared
//! MLP becomes expert slot `n_routed_experts` (and following) with router weight `1/rsf`. That is
//! the same computation only when the weights are renormalised (`norm_topk_prob`), `rsf` is
//! known, and the shared expert has exactly the routed experts' format (dtype, group size, scale
//! format, activation quantization) — otherwise the fused kernel would read it wrongly, which is
//! how SGLang crashed on one checkpoint and served garbage from another. A shared MLP of
//! `n_shared × moe_intermediate` is separable along its intermediate dimension, so it becomes
//! `n_shared` slots, provided no quantization group straddles a slot boundary.
//!
//! This module is pure policy: it sees facts about the config and the formats the quantization
//! config gives each layer, never tensors.

use serde::Serialize;

/// Routed-expert counts whose fused path has been validated end to end (DeepSeek-V3/R1 and
/// Kimi-K2/K2.5); `auto` fuses nothing else.
pub const VALIDATED_EXPERT_COUNTS: [usize; 2] = [256, 384];

/// How the user asked fusion to be decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMode {
    /// Fuse where the numerical checks pass and the expert count is a validated one.
    #[default]
    Auto,
    /// Fuse wherever the numerical checks pass; a failed check is a load error.
    On,
    /// Never fuse.
    Off,
}

impl std::str::FromStr for FusionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("fusion mode {other:?} is not one of auto, on, off")),
        }
    }
}

impl std::fmt::Display for FusionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// Whether something is fused, and the human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FusionDecision {
    /// True when the shared expert(s) run as extra routed-expert slots.
    pub fused: bool,
    /// Why, in words a user can act on.
    pub reason: String,
}

/// The decision for one MoE layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerFusion {
    /// Decoder layer index.
    pub layer: usize,
    /// The decision.
    #[serde(flatten)]
    pub decision: FusionDecision,
}

/// The fusion decisions of one model instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FusionPlan {
    /// The mode the decisions were made under.
    pub mode: FusionMode,
    /// A summary over all MoE layers.
    pub model: FusionDecision,
    /// One decision per MoE layer, in layer order.
    pub layers: Vec<LayerFusion>,
    /// Expert slots each fused layer appends after the routed ones (`n_shared_experts`).
    pub shared_slots: usize,
    /// Router weight of each shared slot (`1/routed_scaling_factor`), with `rsf` applied once
    /// after the MoE; `None` when no layer is fused.
    pub shared_slot_weight: Option<f64>,
}

impl FusionPlan {
    /// Whether `layer` runs its shared expert(s) fused; false for dense layers.
    pub fn is_fused(&self, layer: usize) -> bool {
        self.layers
            .iter()
            .any(|l| l.layer == layer && l.decision.fused)
    }
}

/// Facts about the model's MoE that the policy needs.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeFacts {
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Shared experts per MoE layer (their MLP is `n_shared × moe_intermediate` wide).
    pub n_shared_experts: usize,
    /// Intermediate size of one expert.
    pub moe_intermediate_size: usize,
    /// Whether the routed weights are renormalised over the chosen experts.
    pub norm_topk_prob: bool,
    /// The routed scaling factor, if the config has one.
    pub routed_scaling_factor: Option<f64>,
}

/// What the quantization config says about one MoE layer's expert formats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerFormats {
    /// Decoder layer index.
    pub layer: usize,
    /// The routed experts' format, in words (e.g. "MXFP4 W4A4 (fp4 group 32, e8m0)").
    pub routed: String,
    /// `Ok` when the shared expert's format equals the routed experts'; else why not.
    pub compatible: Result<(), String>,
    /// Quantization group size along the shared MLP's intermediate dimension (the input of its
    /// `down_proj`), if it is quantized; slots must not split a group.
    pub intermediate_group: Option<usize>,
}

/// A check that failed while fusion was forced on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FusionError(pub String);

/// Decides fusion for every MoE layer.
///
/// Under [`FusionMode::On`] a failed numerical check is an error; under `Auto` it is an off
/// decision with its reason; under `Off` nothing is fused.
pub fn decide(
    mode: FusionMode,
    facts: &MoeFacts,
    layers: &[LayerFormats],
) -> Result<FusionPlan, FusionError> {
    let decisions = layers
        .iter()
        .map(|l| {
            decide_layer(mode, facts, l).map(|decision| LayerFusion {
                layer: l.layer,
                decision,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fused = decisions.iter().filter(|l| l.decision.fused).count();
    let model = summarize(&decisions, fused);
    Ok(FusionPlan {
        mode,
        model,
        shared_slots: facts.n_shared_experts,
        shared_slot_weight: (fused > 0)
            .then(|| facts.routed_scaling_factor.map(|rsf| 1.0 / rsf))
            .flatten(),
        layers: decisions,
    })
}

fn summarize(layers: &[LayerFusion], fused: usize) -> FusionDecision {
    let total = layers.len();
    if total == 0 {
        return FusionDecision {
            fused: false,
            reason: "the model has no MoE layers".to_owned(),
        };
    }
    let first = &layers[0].decision.reason;
    let uniform = layers.iter().all(|l| &l.decision.reason == first);
    let reason = if uniform {
        let scope = if fused == total { "all" } else { "none of the" };
        format!("{scope} {total} MoE layers fused: {first}")
    } else {
        // Per-layer reasons are in `layers`; the summary names the first unfused layer only,
        // so a 61-layer model's summary stays one line.
        let mut off = layers.iter().filter(|l| !l.decision.fused);
        match off.next() {
            Some(first) => {
                let more = off.count();
                let rest = if more > 0 {
                    format!(" (and {more} more unfused layer(s))")
                } else {
                    String::new()
                };
                format!(
                    "{fused} of {total} MoE layers fused; layer {} unfused: {}{rest}",
                    first.layer, first.decision.reason
                )
            }
            // Every layer fused, for reasons that differ (e.g. per-layer formats).
            None => format!(
                "all {total} MoE layers fused (reasons differ per layer); layer {}: {first}",
                layers[0].layer
            ),
        }
    };
    FusionDecision {
        fused: fused > 0,
        reason,
    }
}

fn decide_layer(
    mode: FusionMode,
    facts: &MoeFacts,
    formats: &LayerFormats,
) -> Result<FusionDecision, FusionError> {
    let off = |reason: String| FusionDecision {
        fused: false,
        reason,
    };
    if mode == FusionMode::Off {
        return Ok(off("fusion disabled (--fusion off)".to_owned()));
    }
    if let Err(why) = numerical_checks(facts, formats) {
        return match mode {
            FusionMode::On => Err(FusionError(format!("layer {}: {why}", formats.layer))),
            _ => Ok(off(why)),
        };
    }
    let n = facts.n_routed_experts;
    let validated = VALIDATED_EXPERT_COUNTS.contains(&n);
    if mode == FusionMode::Auto && !validated {
        return Ok(off(format!(
            "{n} routed experts is not a validated count ({}); --fusion on fuses it anyway",
            VALIDATED_EXPERT_COUNTS.map(|c| c.to_string()).join(", ")
        )));
    }
    let rsf = facts.routed_scaling_factor.unwrap_or(f64::NAN);
    let slots = facts.n_shared_experts;
    let slot_text = if slots == 1 {
        format!("slot {n}")
    } else {
        format!("slots {n}..{}", n + slots)
    };
    let count_text = if validated {
        format!("{n} routed experts is a validated count")
    } else {
        format!("{n} routed experts (not a validated count; forced by --fusion on)")
    };
    Ok(FusionDecision {
        fused: true,
        reason: format!(
            "{slots} shared expert(s) in the routed experts' format ({}) as {slot_text} with \
             weight 1/{rsf}; norm_topk_prob = true; {count_text}",
            formats.routed
        ),
    })
}

/// The checks without which fused and unfused are different computations.
fn numerical_checks(facts: &MoeFacts, formats: &LayerFormats) -> Result<(), String> {
    if facts.n_shared_experts == 0 {
        return Err("the model has no shared experts".to_owned());
    }
    if !facts.norm_topk_prob {
        return Err(
            "norm_topk_prob = false: without renormalisation the shared slot's weight is not a \
             constant 1/rsf"
                .to_owned(),
        );
    }
    match facts.routed_scaling_factor {
        None => return Err("routed_scaling_factor is missing from the config".to_owned()),
        Some(rsf) if !(rsf.is_finite() && rsf > 0.0) => {
            return Err(format!(
                "routed_scaling_factor {rsf} is not a positive finite number"
            ));
        }
        Some(_) => {}
    }
    if let Err(why) = &formats.compatible {
        return Err(format!(
            "the shared expert's format differs from the routed experts' ({}): {why}",
            formats.routed
        ));
    }
    if let Some(group) = formats.intermediate_group
        && facts.n_shared_experts > 1
        && !facts.moe_intermediate_size.is_multiple_of(group)
    {
        return Err(format!(
            "splitting the {}-wide shared MLP into {} slots of {} would cut its quantization \
             groups of {group}",
            facts.n_shared_experts * facts.moe_intermediate_size,
            facts.n_shared_experts,
            facts.moe_intermediate_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n_routed: usize, n_shared: usize, inter: usize) -> MoeFacts {
        MoeFacts {
            n_routed_experts: n_routed,
            n_shared_experts: n_shared,
            moe_intermediate_size: inter,
            norm_topk_prob: true,
            routed_scaling_factor: Some(2.5),
        }
    }

    fn formats(layer: usize, compatible: Result<(), String>) -> LayerFormats {
        LayerFormats {
            layer,
            routed: "MXFP4".to_owned(),
            compatible,
            intermediate_group: Some(32),
        }
    }

    #[test]
    fn a_mismatch_in_one_layer_turns_only_that_layer_off() {
        let layers = [
            formats(3, Ok(())),
            formats(4, Err("bf16".to_owned())),
            formats(5, Ok(())),
        ];
        let plan = decide(FusionMode::Auto, &facts(256, 1, 64), &layers).unwrap();
        let fused: Vec<bool> = plan.layers.iter().map(|l| l.decision.fused).collect();
        assert_eq!(fused, [true, false, true]);
        assert!(plan.is_fused(3) && !plan.is_fused(4) && !plan.is_fused(0));
        assert!(plan.model.fused);
        assert_eq!(
            plan.model.reason,
            "2 of 3 MoE layers fused; layer 4 unfused: the shared expert's format differs from \
             the routed experts' (MXFP4): bf16"
        );
        assert_eq!(plan.shared_slot_weight, Some(0.4));
        let err = decide(FusionMode::On, &facts(256, 1, 64), &layers).unwrap_err();
        assert!(err.0.starts_with("layer 4:"), "{err}");
    }

    #[test]
    fn all_fused_for_different_reasons_is_summarised_without_panicking() {
        let mut weight_only = formats(2, Ok(()));
        weight_only.routed = "MXFP4 weight-only".to_owned();
        let plan = decide(
            FusionMode::Auto,
            &facts(384, 1, 64),
            &[formats(1, Ok(())), weight_only],
        )
        .unwrap();
        assert!(plan.model.fused);
        assert!(
            plan.model
                .reason
                .starts_with("all 2 MoE layers fused (reasons differ")
        );
    }

    #[test]
    fn slots_must_not_cut_quantization_groups() {
        // Two slots of 48 would split the shared MLP's 96-wide down_proj input at column 48,
        // inside the second group of 32.
        let layers = [formats(1, Ok(()))];
        let err = decide(FusionMode::On, &facts(256, 2, 48), &layers).unwrap_err();
        assert!(err.0.contains("quantization groups of 32"), "{err}");
        assert!(
            decide(FusionMode::On, &facts(256, 2, 64), &layers)
                .unwrap()
                .model
                .fused
        );
        // One slot needs no cut.
        assert!(
            decide(FusionMode::On, &facts(256, 1, 48), &layers)
                .unwrap()
                .model
                .fused
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [FusionMode::Auto, FusionMode::On, FusionMode::Off] {
            assert_eq!(mode.to_string().parse::<FusionMode>(), Ok(mode));
        }
        assert!(
            "yes"
                .parse::<FusionMode>()
                .unwrap_err()
                .contains("auto, on, off")
        );
    }
}
