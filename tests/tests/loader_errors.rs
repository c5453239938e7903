//! The loader against broken checkpoints: each damage must come back as a typed error (or a
//! listed problem) naming the tensor or file, never a panic and never a silent load.

use std::path::Path;

use model_deepseek::loader::{self, LoadError, LoadOptions, TensorProblem, header};
use model_deepseek::tiny::{TinyLayout, TinySpec, write_tiny_checkpoint};
use serde_json::{Map, Value, json};

/// One tensor of a safetensors file, editable.
#[derive(Clone)]
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read(path: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap();
    header::parse(path, &bytes, bytes.len())
        .unwrap()
        .into_iter()
        .map(|e| Tensor {
            name: e.name,
            dtype: e.dtype.to_string(),
            shape: e.shape,
            data: bytes[e.range].to_vec(),
        })
        .collect()
}

/// Writes tensors contiguously with an honest header.
fn write(path: &Path, tensors: &[Tensor]) {
    let mut header = Map::new();
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    write_raw(path, &Value::Object(header).to_string(), tensors);
}

fn write_raw(path: &Path, header: &str, tensors: &[Tensor]) {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    std::fs::write(path, out).unwrap();
}

fn tiny(layout: TinyLayout) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        layout,
        seed: 2,
        ..TinySpec::default()
    };
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    dir
}

/// Applies `edit` to the single-file DeepSeek-layout checkpoint and returns the load error.
fn damaged(edit: impl FnOnce(&mut Vec<Tensor>)) -> LoadError {
    let dir = tiny(TinyLayout::DeepseekV3);
    let file = dir.path().join("model.safetensors");
    let mut tensors = read(&file);
    edit(&mut tensors);
    write(&file, &tensors);
    let err = loader::load(dir.path(), &LoadOptions::default()).unwrap_err();
    // `inspect` sees the same problems without failing, and calls the checkpoint unservable.
    if let LoadError::Tensors { problems } = &err {
        let report = loader::inspect(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(&report.problems, problems);
        assert!(!report.servable());
    }
    err
}

fn problems(err: LoadError) -> Vec<TensorProblem> {
    match err {
        LoadError::Tensors { problems } => problems,
        other => panic!("expected tensor problems, got {other}"),
    }
}

fn find<'a>(tensors: &'a mut [Tensor], name: &str) -> &'a mut Tensor {
    tensors.iter_mut().find(|t| t.name == name).unwrap()
}

#[test]
fn undamaged_checkpoint_loads() {
    let dir = tiny(TinyLayout::DeepseekV3);
    let loaded = loader::load(dir.path(), &LoadOptions::default()).unwrap();
    assert!(loaded.report.servable());
    assert_eq!(loaded.report.skipped.len(), 1, "the MTP layer, by its rule");
}

#[test]
fn missing_tensor_is_named_with_what_was_expected() {
    let name = "model.layers.1.mlp.experts.5.up_proj.weight_scale";
    let found = problems(damaged(|t| t.retain(|t| t.name != name)));
    assert_eq!(
        found,
        vec![TensorProblem::Missing {
            name: name.into(),
            expected: "U8 [32, 2] (MXFP4 per the quantization config)".into()
        }]
    );
}

#[test]
fn extra_tensors_are_named_with_shape_dtype_and_why() {
    let found = problems(damaged(|t| {
        let mut extra = t[0].clone();
        extra.name = "model.layers.1.mlp.experts.256.up_proj.weight".into();
        t.push(extra);
        let mut stray = t[0].clone();
        stray.name = "model.rotary_emb.inv_freq".into();
        t.push(stray);
    }));
    assert_eq!(found.len(), 2, "{found:?}");
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(
        text[0].contains("model.layers.1.mlp.experts.256.up_proj.weight"),
        "{text:?}"
    );
    assert!(
        text[0].contains("expert 256 is beyond n_routed_experts = 256"),
        "{text:?}"
    );
    assert!(text[1].contains("model.rotary_emb.inv_freq"), "{text:?}");
    assert!(text[1].contains("no weight of the model"), "{text:?}");
}

#[test]
fn wrong_shape_is_named() {
    let name = "model.layers.0.self_attn.kv_b_proj.weight";
    let found = problems(damaged(|t| find(t, name).shape = vec![64, 64]));
    assert_eq!(
        found,
        vec![TensorProblem::Mismatch {
            name: name.into(),
            found: "BF16 [64, 64]".into(),
            expected: "BF16|F16|F32 [128, 32]".into()
        }]
    );
}

#[test]
fn wrong_dtype_is_named() {
    let found = problems(damaged(|t| {
        find(t, "model.norm.weight").dtype = "I16".into()
    }));
    assert_eq!(
        found,
        vec![TensorProblem::Mismatch {
            name: "model.norm.weight".into(),
            found: "I16 [64]".into(),
            expected: "BF16|F16|F32 [64]".into()
        }]
    );
}

#[test]
fn quantized_router_embedding_or_mxfp4_layer_in_bf16_are_errors() {
    let found = problems(damaged(|t| {
        // The router stored as MXFP4, whatever the global spec says, is refused.
        let router = find(t, "model.layers.1.mlp.gate.weight");
        router.dtype = "U8".into();
        router.shape = vec![256, 128];
        let mut scale = router.clone();
        scale.name = "model.layers.1.mlp.gate.weight_scale".into();
        scale.shape = vec![256, 2];
        scale.data = vec![127; 512];
        t.push(scale);
        // An MXFP4 layer stored unquantized: its weight is BF16 and it has no scale.
        let q = find(t, "model.layers.2.self_attn.q_a_proj.weight");
        q.dtype = "BF16".into();
        q.shape = vec![32, 16];
        t.retain(|t| t.name != "model.layers.2.self_attn.q_a_proj.weight_scale");
    }));
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 4, "{text:#?}");
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("tensor model.layers.1.mlp.gate.weight is U8 [256, 128]"),
        "{text:#?}"
    );
    assert!(
        has("unexpected tensor model.layers.1.mlp.gate.weight_scale"),
        "{text:#?}"
    );
    assert!(has("never quantized"), "{text:#?}");
    assert!(
        has("model.layers.2.self_attn.q_a_proj.weight is BF16 [32, 16]"),
        "{text:#?}"
    );
    assert!(
        has("missing tensor model.layers.2.self_attn.q_a_proj.weight_scale"),
        "{text:#?}"
    );
}

#[test]
fn nan_scale_byte_is_named_with_its_position() {
    let name = "model.layers.2.mlp.experts.7.down_proj.weight_scale";
    let found = problems(damaged(|t| find(t, name).data[5] = 255));
    // down_proj scale is [64 rows, 1 group]: byte 5 is row 5, group 0.
    assert_eq!(
        found,
        vec![TensorProblem::BadValue {
            name: name.into(),
            problem: "1 E8M0 scale byte(s) are 255 (NaN), the first at row 5, group 0".into()
        }]
    );
}

fn header_error(edit: impl FnOnce(&Path)) -> String {
    let dir = tiny(TinyLayout::DeepseekV3);
    edit(&dir.path().join("model.safetensors"));
    match loader::load(dir.path(), &LoadOptions::default()).unwrap_err() {
        LoadError::Header(e) => {
            assert!(e.file.ends_with("model.safetensors"));
            e.problem
        }
        other => panic!("expected a header error, got {other}"),
    }
}

#[test]
fn truncated_file_is_a_header_error() {
    let problem = header_error(|file| {
        let bytes = std::fs::read(file).unwrap();
        std::fs::write(file, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(problem.contains("truncated file?"), "{problem}");
}

#[test]
fn file_cut_inside_its_header_is_a_header_error() {
    let problem = header_error(|file| {
        let bytes = std::fs::read(file).unwrap();
        std::fs::write(file, &bytes[..100]).unwrap();
    });
    assert!(problem.contains("runs past the end"), "{problem}");
}

#[test]
fn bad_header_json_is_a_header_error() {
    let problem = header_error(|file| write_raw(file, "{\"a\": [1, 2", &[]));
    assert!(problem.contains("not valid JSON"), "{problem}");
}

#[test]
fn offset_past_the_end_is_a_header_error() {
    let problem = header_error(|file| {
        let mut tensors = read(file);
        tensors.truncate(2);
        let (a, b) = (tensors[0].data.len(), tensors[1].data.len());
        let header = json!({
            &tensors[0].name: {"dtype": tensors[0].dtype, "shape": tensors[0].shape,
                               "data_offsets": [0, a]},
            &tensors[1].name: {"dtype": tensors[1].dtype, "shape": tensors[1].shape,
                               "data_offsets": [a + 1000, a + 1000 + b]},
        });
        write_raw(file, &header.to_string(), &tensors);
    });
    assert!(problem.contains("run past the end"), "{problem}");
}

#[test]
fn index_naming_a_missing_shard_is_an_index_error() {
    let dir = tiny(TinyLayout::KimiK25);
    std::fs::remove_file(dir.path().join("model-00003-of-00004.safetensors")).unwrap();
    match loader::load(dir.path(), &LoadOptions::default()).unwrap_err() {
        LoadError::Index { path, problem } => {
            assert!(path.ends_with("model.safetensors.index.json"));
            assert!(
                problem.contains("shard model-00003-of-00004.safetensors"),
                "{problem}"
            );
            assert!(problem.contains("does not exist"), "{problem}");
        }
        other => panic!("expected an index error, got {other}"),
    }
}

#[test]
fn index_disagreeing_with_its_shards_is_an_index_error() {
    let dir = tiny(TinyLayout::KimiK25);
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let name = "language_model.model.norm.weight";
    map.insert(name.into(), json!("model-00004-of-00004.safetensors"));
    std::fs::write(&index_path, index.to_string()).unwrap();
    match loader::load(dir.path(), &LoadOptions::default()).unwrap_err() {
        LoadError::Index { problem, .. } => {
            assert!(problem.contains(name), "{problem}");
            assert!(problem.contains("does not hold it"), "{problem}");
        }
        other => panic!("expected an index error, got {other}"),
    }
}

#[test]
fn no_weights_and_bad_config_are_typed_errors() {
    let dir = tiny(TinyLayout::DeepseekV3);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(matches!(
        loader::load(dir.path(), &LoadOptions::default()).unwrap_err(),
        LoadError::NoWeights { .. }
    ));
    let config = dir.path().join("config.json");
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["architectures"] = json!(["LlamaForCausalLM"]);
    std::fs::write(&config, value.to_string()).unwrap();
    match loader::load(dir.path(), &LoadOptions::default()).unwrap_err() {
        LoadError::Config(text) => assert!(text.contains("LlamaForCausalLM"), "{text}"),
        other => panic!("expected a config error, got {other}"),
    }
}
