#!/usr/bin/env python3
"""Reference logits for a tiny mxserve checkpoint, computed by Hugging Face transformers.

Usage: hf_reference_logits.py CHECKPOINT_DIR OUT.safetensors --prompt-ids 1,2,3

The checkpoint is one written by `cargo xtask tiny-model` (DeepSeek-V3 or Kimi-K2.5 layout,
Quark MXFP4 weights). This script dequantizes every MXFP4 weight itself, from the OCP MX
rules (E2M1 codes, low nibble = even element, E8M0 scale 2^(s-127), 255 = NaN), builds
transformers' own `DeepseekV3ForCausalLM` from the checkpoint's (text) config, loads the
dequantized weights strictly (every parameter of the HF model filled, every tensor of the
checkpoint used or skipped by name), and runs the prompt in float64 on the CPU, so the
reference carries no rounding of its own worth speaking of. Activations are not quantized:
the Rust side must run in its unquantized-activation mode to compute the same function.

It writes `logits` (f64 [prompt_len, vocab]), `prompt_ids` (i64 [prompt_len]) and
`router_margin` (f64 [1]): the smallest gap, over every MoE layer and position, between the
last selected and the first unselected biased router score (and between the last kept and
first dropped group score). A margin far above float32 rounding means no near-tie can flip
an expert choice between this reference and an f32 implementation.
"""

import argparse
import json
import os
import re
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


def dequant_mxfp4(packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if packed.dtype != np.uint8 or scale.dtype != np.uint8:
        raise ValueError("MXFP4 tensors must be uint8")
    if (scale == 255).any():
        raise ValueError("NaN E8M0 scale")
    out_dim, half = packed.shape
    codes = np.empty((out_dim, half * 2), dtype=np.uint8)
    codes[:, 0::2] = packed & 0xF
    codes[:, 1::2] = packed >> 4
    vals = E2M1[codes]
    # ldexp keeps s = 0 (2^-127) exact, where a naive float32 bit trick would not.
    s = np.ldexp(1.0, scale.astype(np.int64) - 127)
    if scale.shape != (out_dim, half * 2 // 32):
        raise ValueError(f"scale shape {scale.shape} does not match weight {packed.shape}")
    return (vals.reshape(out_dim, -1, 32) * s[:, :, None]).reshape(out_dim, -1)


def read_checkpoint(path: str) -> dict:
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        for name, t in load_file(os.path.join(path, shard)).items():
            # numpy has no bf16: bytes stay uint8, floats widen to f64 (exact for bf16/f32).
            tensors[name] = t.numpy() if t.dtype == torch.uint8 else t.to(torch.float64).numpy()
    return tensors


def text_weights(raw: dict, cfg: dict) -> tuple:
    """Dequantized float64 tensors under DeepSeek-V3 names, plus the names skipped by rule."""
    n_layers = cfg["num_hidden_layers"]
    out, skipped = {}, []
    for name, t in raw.items():
        if name.endswith(".weight_scale"):
            continue
        if re.match(r"(vision_tower|mm_projector)\.", name):
            skipped.append(name)
            continue
        hf = name
        if hf.startswith("language_model.model."):
            hf = "model." + hf[len("language_model.model."):]
        elif hf.startswith("language_model.layers."):
            hf = "model." + hf[len("language_model."):]
        elif hf.startswith("language_model."):
            hf = hf[len("language_model."):]
        m = re.match(r"model\.layers\.(\d+)\.", hf)
        if m and int(m.group(1)) >= n_layers:  # the MTP layer: not part of the causal LM
            skipped.append(name)
            continue
        scale = raw.get(name + "_scale")
        if scale is not None:
            out[hf] = dequant_mxfp4(t, scale)
        else:
            out[hf] = t.astype(np.float64)
    return out, skipped


def hf_config(cfg: dict):
    from transformers import DeepseekV3Config

    cfg = {k: v for k, v in cfg.items() if k not in ("quantization_config", "architectures",
                                                     "auto_map", "torch_dtype", "dtype")}
    rope = cfg.get("rope_scaling")
    conf = DeepseekV3Config(**cfg)
    conf.rope_interleave = True
    if rope is not None and hasattr(conf, "rope_parameters"):
        params = dict(rope)
        params["rope_type"] = params.pop("type", params.get("rope_type", "yarn"))
        params["rope_theta"] = cfg.get("rope_theta", 10000.0)
        conf.rope_parameters = params
    conf._attn_implementation = "eager"
    # The per-expert loop; the grouped-GEMM path has no float64 kernel.
    conf._experts_implementation = "eager"
    return conf


def fill(model, weights: dict) -> None:
    state = model.state_dict()
    new = {}
    used = set()
    for key, param in state.items():
        if key in weights:
            src = weights[key]
            used.add(key)
        elif key.endswith("mlp.experts.gate_up_proj"):
            base = key[: -len("gate_up_proj")]
            n = param.shape[0]
            gates = [weights[f"{base}{e}.gate_proj.weight"] for e in range(n)]
            ups = [weights[f"{base}{e}.up_proj.weight"] for e in range(n)]
            src = np.stack([np.concatenate([g, u], axis=0) for g, u in zip(gates, ups)])
            used.update(f"{base}{e}.{p}_proj.weight" for e in range(n) for p in ("gate", "up"))
        elif key.endswith("mlp.experts.down_proj"):
            base = key[: -len("down_proj")]
            n = param.shape[0]
            src = np.stack([weights[f"{base}{e}.down_proj.weight"] for e in range(n)])
            used.update(f"{base}{e}.down_proj.weight" for e in range(n))
        else:
            raise KeyError(f"no checkpoint tensor for HF parameter {key} {tuple(param.shape)}")
        src = torch.from_numpy(np.ascontiguousarray(src))
        if tuple(src.shape) != tuple(param.shape):
            if src.dim() == 3 and tuple(src.transpose(1, 2).shape) == tuple(param.shape):
                src = src.transpose(1, 2)
            else:
                raise ValueError(f"{key}: checkpoint {tuple(src.shape)} vs HF {tuple(param.shape)}")
        new[key] = src.to(torch.float64)
    unused = sorted(set(weights) - used)
    if unused:
        raise KeyError(f"checkpoint tensors the HF model has no place for: {unused[:5]}")
    model.load_state_dict(new, strict=True)


def router_margin(model, conf, ids: torch.Tensor) -> float:
    """Smallest routing decision margin over every MoE layer and position."""
    margins = []

    def hook(module, inputs, output):
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).to(torch.float64)
        gate = module.gate
        scores = torch.sigmoid(x @ gate.weight.to(torch.float64).T)
        biased = scores + gate.e_score_correction_bias.to(torch.float64)
        n_group, topk_group, top_k = conf.n_group, conf.topk_group, conf.num_experts_per_tok
        grouped = biased.view(x.shape[0], n_group, -1)
        gscore = grouped.topk(2, dim=-1)[0].sum(-1)
        if topk_group < n_group:
            g = gscore.sort(dim=-1, descending=True)[0]
            margins.append((g[:, topk_group - 1] - g[:, topk_group]).min().item())
        keep = gscore.topk(topk_group, dim=-1)[1]
        mask = torch.zeros_like(gscore).scatter_(1, keep, 1.0).bool()
        masked = grouped.masked_fill(~mask[:, :, None], float("-inf")).reshape(x.shape[0], -1)
        s = masked.sort(dim=-1, descending=True)[0]
        margins.append((s[:, top_k - 1] - s[:, top_k]).min().item())

    handles = [layer.mlp.register_forward_hook(hook) for layer in model.model.layers
               if hasattr(layer.mlp, "gate")]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return min(margins)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--prompt-ids", required=True)
    args = ap.parse_args()

    with open(os.path.join(args.checkpoint, "config.json")) as f:
        cfg = json.load(f)
    text = cfg.get("text_config", cfg)
    if text.get("architectures", ["DeepseekV3ForCausalLM"])[0] != "DeepseekV3ForCausalLM":
        raise ValueError(f"not a DeepSeek-V3 text model: {text.get('architectures')}")

    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(0)
    conf = hf_config(text)
    model = DeepseekV3ForCausalLM(conf).to(torch.float64).eval()
    weights, skipped = text_weights(read_checkpoint(args.checkpoint), text)
    fill(model, weights)
    ids = torch.tensor([[int(t) for t in args.prompt_ids.split(",")]], dtype=torch.long)
    with torch.no_grad():
        logits = model(ids).logits[0].numpy().astype(np.float64)
    margin = router_margin(model, conf, ids)
    save_file({"logits": logits, "prompt_ids": ids[0].numpy().astype(np.int64),
               "router_margin": np.array([margin], dtype=np.float64)}, args.out)
    print(f"{args.checkpoint}: logits {logits.shape}, |max| {np.abs(logits).max():.4f}, "
          f"std {logits.std():.4f}, router margin {margin:.3e}, skipped {len(skipped)} tensors; "
          f"rope {getattr(conf, 'rope_parameters', getattr(conf, 'rope_scaling', None))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
