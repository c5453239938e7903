//! The device-generated synthetic model (`gpu::synthetic`, what `bench-decode` runs) on the
//! first GPU present (skipped, with a message, where there is none): its plan counts exactly
//! the weight bytes it allocates, its logits are finite, and the shared expert fused or run
//! as a separate pass gives the same logits (the same computation in another order).

mod common;

use common::rel_l2;
use model_deepseek::gpu::synthetic::synthetic_plan;
use model_deepseek::gpu::{GpuModel, GpuOptions, KvBudget};
use model_deepseek::{SeqId, SequenceChunk, parse_config};
use runtime_rocm::first_gpu;

#[test]
fn synthetic_model_plans_its_bytes_and_fuses_to_the_same_logits() {
    let Some(device) = first_gpu("synthetic_model_plans_its_bytes_and_fuses_to_the_same_logits")
    else {
        return;
    };
    let config = parse_config(
        &serde_json::json!({
            "architectures": ["DeepseekV3ForCausalLM"],
            "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,
            "moe_intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "q_lora_rank": 96, "kv_lora_rank": 64,
            "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
            "n_routed_experts": 384, "n_shared_experts": 1, "num_experts_per_tok": 8,
            "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.827,
            "first_k_dense_replace": 1, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": false
        })
        .to_string(),
    )
    .unwrap()
    .model;
    let options = GpuOptions {
        // One 64-token block for each of the four sequences the test may hold.
        kv: KvBudget { blocks: 4 },
        max_batch_tokens: 64,
        graphs: true,
    };
    let mut model = GpuModel::synthetic(&device, &config, 11, options).unwrap();
    let plan = synthetic_plan(&config, options.kv, options.max_batch_tokens).unwrap();
    assert_eq!(model.plan(), plan);
    assert_eq!(model.weight_bytes_allocated(), plan.weights);

    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[999, 7], &[42; 9]];
    let mut logits = Vec::new();
    for fused in [true, false] {
        assert_eq!(model.set_shared_expert_fusion(fused), 2);
        let mut cache = model.new_cache().unwrap();
        let chunks: Vec<SequenceChunk<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| SequenceChunk {
                seq: SeqId(i as u64),
                tokens: p,
            })
            .collect();
        let mut out = model.forward(&chunks, &mut cache).unwrap();
        // One decode step on top.
        let next: Vec<[u32; 1]> = (0..3).map(|i| [10 + i]).collect();
        let step: Vec<SequenceChunk<'_>> = next
            .iter()
            .enumerate()
            .map(|(i, t)| SequenceChunk {
                seq: SeqId(i as u64),
                tokens: t,
            })
            .collect();
        out.extend(model.forward(&step, &mut cache).unwrap());
        logits.push(out);
    }
    for (a, b) in logits[0].iter().zip(&logits[1]) {
        assert!(a.iter().all(|v| v.is_finite()));
        let err = rel_l2(a, b);
        println!("fused vs separate: rel L2 {err:.2e}");
        assert!(
            err < 5e-3,
            "fused vs separate logits differ: rel L2 {err:.2e}"
        );
        // The logits are not degenerate.
        let spread =
            a.iter().cloned().fold(f32::MIN, f32::max) - a.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 1e-3);
    }
}
