//! `mxserve inspect` and `mxserve generate` as a user runs them: exit codes, JSON report, and
//! the `--logits-out` file's tensors checked against each other and against the ids printed.

use std::path::Path;
use std::process::{Command, Output};

use model_deepseek::loader::{Dtype, header};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};

fn mxserve(args: &[&str]) -> Output {
    let exe = option_env!("CARGO_BIN_EXE_mxserve")
        .or(option_env!("CARGO_BIN_EXE_server"))
        .expect("the mxserve binary is built for integration tests");
    Command::new(exe).args(args).output().unwrap()
}

fn tiny(shared: SharedExperts) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        layout: TinyLayout::KimiK25,
        shared_experts: shared,
        n_routed_experts: 384,
        seed: 8,
        ..TinySpec::default()
    };
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    dir
}

#[test]
fn inspect_exit_codes_and_json() {
    let good = tiny(SharedExperts::Bf16);
    let dir = good.path().to_str().unwrap();
    let out = mxserve(&["inspect", dir]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("none: the checkpoint can be served"),
        "{text}"
    );
    assert!(
        text.contains("vision_tower.* (Kimi-K2.5 vision path; text only)"),
        "{text}"
    );

    let out = mxserve(&["inspect", dir, "--json", "--fusion", "off"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["servable"], true);
    assert_eq!(report["fusion"]["mode"], "off");
    assert_eq!(report["shape"]["n_routed_experts"], 384);

    // A bf16 shared expert cannot be fused: forcing it is a refusal, not a crash.
    let out = mxserve(&["inspect", dir, "--fusion", "on"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("shared_experts"), "{err}");

    // One corrupt scale byte makes the checkpoint unservable, and says where.
    let shard = good.path().join("model-00003-of-00004.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let entry = header::parse(&shard, &bytes, bytes.len())
        .unwrap()
        .into_iter()
        .find(|e| e.name.ends_with("experts.9.gate_proj.weight_scale"))
        .unwrap();
    bytes[entry.range.start] = 255;
    std::fs::write(&shard, bytes).unwrap();
    let out = mxserve(&["inspect", dir, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["servable"], false);
    assert_eq!(report["problems"][0]["name"], entry.name.as_str());
}

fn tensor(path: &Path, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let e = header::parse(path, &bytes, bytes.len())
        .unwrap()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap();
    (e.dtype, e.shape, bytes[e.range].to_vec())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn generate_writes_consistent_logits() {
    let ckpt = tiny(SharedExperts::Quantized);
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("logits.safetensors");
    let args = [
        "generate",
        ckpt.path().to_str().unwrap(),
        "--prompt-ids",
        "296,72,101,108",
        "--max-tokens",
        "5",
        "--greedy",
        "--logits-out",
        file.to_str().unwrap(),
    ];
    let out = mxserve(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let (dtype, shape, prompt) = tensor(&file, "prompt_logits");
    assert_eq!((dtype, shape.as_slice()), (Dtype::F32, &[4, 384][..]));
    let (dtype, shape, generated) = tensor(&file, "generated_logits");
    assert_eq!((dtype, shape.as_slice()), (Dtype::F32, &[5, 384][..]));
    let (dtype, shape, ids) = tensor(&file, "generated_ids");
    assert_eq!((dtype, shape.as_slice()), (Dtype::I64, &[5][..]));
    let ids: Vec<i64> = ids
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ids, printed);
    let (prompt, generated) = (f32s(&prompt), f32s(&generated));
    // The first id is chosen from the prompt's last position.
    assert_eq!(&generated[..384], &prompt[3 * 384..]);
    for (row, id) in generated.chunks_exact(384).zip(&ids) {
        let best = row
            .iter()
            .enumerate()
            .fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
        assert_eq!(best as i64, *id);
    }
    // Same command, same output; a sampled run is reproducible from its seed.
    assert_eq!(mxserve(&args).stdout, printed_bytes(&printed));
    let sampled = |seed: &str| {
        let mut a = args[..6].to_vec();
        a.extend(["--seed", seed, "--temperature", "1.5"]);
        mxserve(&a).stdout
    };
    assert_eq!(sampled("3"), sampled("3"));
}

fn printed_bytes(ids: &[i64]) -> Vec<u8> {
    let text: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("{}\n", text.join(",")).into_bytes()
}
