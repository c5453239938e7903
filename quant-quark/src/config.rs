//! Parsing Quark's `quantization_config` into typed values.
//!
//! The JSON is walked by hand rather than derived so that every error names the exact field,
//! e.g. `layer_quant_config["*.q_a_proj"].weight.dtype`, and so that object order (which decides
//! the first matching `layer_quant_config` pattern, as in Python's dicts) is kept. Keys we do not
//! know are kept in `extra` maps, never rejected: Quark adds fields between releases.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::QuarkError;
use crate::exclude::ExcludeList;

/// A parsed `quantization_config` with `quant_method: "quark"`.
#[derive(Debug, Clone, Serialize)]
pub struct QuarkConfig {
    /// `quant_mode`, e.g. `"eager_mode"`; informational.
    pub quant_mode: Option<String>,
    /// The spec of every layer not matched by a pattern or a module type; `None` when absent or
    /// null, in which case such layers are not quantized.
    pub global_quant_config: Option<LayerSpec>,
    /// `fnmatch` pattern → spec, in file order; the first matching pattern wins.
    pub layer_quant_config: Vec<(String, LayerSpec)>,
    /// Module type name (e.g. `"Linear"`) → spec, in file order.
    pub layer_type_quant_config: Vec<(String, LayerSpec)>,
    /// Pattern → spec for the KV cache, in file order.
    pub kv_cache_quant_config: Vec<(String, LayerSpec)>,
    /// Layers left unquantized (`exclude`), regexes already compiled.
    pub exclude: ExcludeList,
    /// The `export` section, which every Quark export writes.
    pub export: ExportConfig,
    /// Top-level keys not modelled above (`quant_method` excepted), kept verbatim.
    pub extra: Map<String, Value>,
}

/// The `export` section of a Quark config.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportConfig {
    /// Names of `layer_quant_config` entries whose outputs form the quantized KV cache; empty
    /// when the KV cache is not quantized.
    pub kv_cache_group: Vec<String>,
    /// How packed integer formats were laid out (`"reorder"`, `"order"`); unused by MXFP4.
    pub pack_method: Option<String>,
    /// Keys not modelled above, kept verbatim.
    pub extra: Map<String, Value>,
}

/// A per-layer quantization spec: one quantizer list per tensor role.
///
/// Quark writes one quantizer as an object and a chain of them (double quantization) as a list;
/// both become a list here, and an absent or null role is an empty list.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerSpec {
    /// How the weight is stored.
    pub weight: Vec<QuantizerSpec>,
    /// How the layer's input activations are quantized.
    pub input_tensors: Vec<QuantizerSpec>,
    /// How the layer's outputs are quantized.
    pub output_tensors: Vec<QuantizerSpec>,
    /// How the bias is stored.
    pub bias: Vec<QuantizerSpec>,
    /// Keys not modelled above, kept verbatim.
    pub extra: Map<String, Value>,
}

/// One quantizer of a spec (Quark's `QuantizationSpec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QuantizerSpec {
    /// Element type: `"fp4"`, `"fp8_e4m3"`, `"int4"`, ….
    pub dtype: String,
    /// `"per_group"`, `"per_tensor"` or `"per_channel"`.
    pub qscheme: Option<String>,
    /// Elements sharing one scale, for `per_group`.
    pub group_size: Option<u32>,
    /// The axis scales run along (`-1`: groups along the last, input, dimension).
    pub ch_axis: Option<i64>,
    /// Scale encoding, e.g. `"e8m0"`.
    pub scale_format: Option<String>,
    /// Shared-exponent rule for MX formats: `"even"`, `"floor"`, `"ceil"`.
    pub scale_calculation_mode: Option<String>,
    /// Element rounding, e.g. `"half_even"`.
    pub round_method: Option<String>,
    /// `true` when scales are computed at run time (no stored scale tensor).
    pub is_dynamic: Option<bool>,
    /// Symmetric (no zero point) quantization.
    pub symmetric: Option<bool>,
    /// Scale storage type, e.g. `"float"`.
    pub scale_type: Option<String>,
    /// The calibration observer Quark used; informational.
    pub observer_cls: Option<String>,
    /// Element type of older MX specs (`dtype: "mx"`).
    pub mx_element_dtype: Option<String>,
    /// Keys not modelled above, kept verbatim.
    pub extra: Map<String, Value>,
}

impl QuarkConfig {
    /// Parses the text of a `quantization_config` object.
    pub fn from_json_str(text: &str) -> Result<Self, QuarkError> {
        let value: Value = serde_json::from_str(text).map_err(QuarkError::Json)?;
        Self::from_value(&value)
    }

    /// Parses an already-decoded `quantization_config` object (e.g. taken from `config.json`).
    pub fn from_value(value: &Value) -> Result<Self, QuarkError> {
        let root = Path::root();
        let object = as_object(value, &root)?;
        let method_path = root.key("quant_method");
        match object.get("quant_method") {
            Some(Value::String(method)) if method == "quark" => {}
            Some(Value::String(method)) => {
                return Err(QuarkError::NotQuark {
                    found: method.clone(),
                });
            }
            Some(other) => return Err(wrong_type(&method_path, "a string", other)),
            None => {
                return Err(QuarkError::MissingField {
                    path: method_path.0,
                });
            }
        }
        let export_path = root.key("export");
        let export = match object.get("export") {
            Some(v) if !v.is_null() => parse_export(v, &export_path)?,
            _ => {
                return Err(QuarkError::MissingField {
                    path: export_path.0,
                });
            }
        };
        let global_path = root.key("global_quant_config");
        let global_quant_config = match object.get("global_quant_config") {
            Some(v) if !v.is_null() => Some(parse_layer_spec(v, &global_path)?),
            _ => None,
        };
        let exclude_path = root.key("exclude");
        let exclude_entries = match object.get("exclude") {
            Some(v) if !v.is_null() => string_list(v, &exclude_path)?,
            _ => Vec::new(),
        };
        let exclude = ExcludeList::parse(&exclude_entries)?;

        const KNOWN: [&str; 8] = [
            "quant_method",
            "quant_mode",
            "global_quant_config",
            "layer_quant_config",
            "layer_type_quant_config",
            "kv_cache_quant_config",
            "exclude",
            "export",
        ];
        Ok(Self {
            quant_mode: optional_string(object, "quant_mode", &root)?,
            global_quant_config,
            layer_quant_config: spec_map(object, "layer_quant_config", &root)?,
            layer_type_quant_config: spec_map(object, "layer_type_quant_config", &root)?,
            kv_cache_quant_config: spec_map(object, "kv_cache_quant_config", &root)?,
            exclude,
            export,
            extra: extra_keys(object, &KNOWN),
        })
    }
}

/// A JSON path for error messages, e.g. `layer_quant_config["*.q_a_proj"].weight.dtype`.
#[derive(Debug, Clone)]
pub(crate) struct Path(String);

impl Path {
    fn root() -> Self {
        Self(String::new())
    }

    /// A field of an object.
    fn key(&self, key: &str) -> Self {
        if self.0.is_empty() {
            Self(key.to_owned())
        } else {
            Self(format!("{}.{key}", self.0))
        }
    }

    /// An entry of a map keyed by pattern or type name.
    fn entry(&self, key: &str) -> Self {
        Self(format!("{}[{key:?}]", self.0))
    }

    /// An element of a list.
    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The path as text; the root is `quantization_config`.
    pub(crate) fn as_str(&self) -> &str {
        if self.0.is_empty() {
            "quantization_config"
        } else {
            &self.0
        }
    }
}

fn wrong_type(path: &Path, expected: &'static str, found: &Value) -> QuarkError {
    let found = match found {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    };
    QuarkError::WrongType {
        path: path.as_str().to_owned(),
        expected,
        found,
    }
}

fn as_object<'a>(value: &'a Value, path: &Path) -> Result<&'a Map<String, Value>, QuarkError> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(path, "an object", value))
}

fn extra_keys(object: &Map<String, Value>, known: &[&str]) -> Map<String, Value> {
    object
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A field that may be absent or null, else must be a string.
fn optional_string(
    object: &Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<String>, QuarkError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(&path.key(key), "a string", other)),
    }
}

fn optional_bool(
    object: &Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<bool>, QuarkError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(&path.key(key), "a boolean", other)),
    }
}

fn optional_int(
    object: &Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<i64>, QuarkError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong_type(&path.key(key), "an integer", v)),
    }
}

fn string_list(value: &Value, path: &Path) -> Result<Vec<String>, QuarkError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(path, "a list of strings", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(wrong_type(&path.index(i), "a string", other)),
        })
        .collect()
}

fn parse_export(value: &Value, path: &Path) -> Result<ExportConfig, QuarkError> {
    let object = as_object(value, path)?;
    let kv_cache_group = match object.get("kv_cache_group") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => string_list(v, &path.key("kv_cache_group"))?,
    };
    Ok(ExportConfig {
        kv_cache_group,
        pack_method: optional_string(object, "pack_method", path)?,
        extra: extra_keys(object, &["kv_cache_group", "pack_method"]),
    })
}

/// An object of name → spec, kept in file order; absent or null is empty.
fn spec_map(
    object: &Map<String, Value>,
    key: &str,
    root: &Path,
) -> Result<Vec<(String, LayerSpec)>, QuarkError> {
    let path = root.key(key);
    match object.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => as_object(v, &path)?
            .iter()
            .map(|(name, spec)| Ok((name.clone(), parse_layer_spec(spec, &path.entry(name))?)))
            .collect(),
    }
}

fn parse_layer_spec(value: &Value, path: &Path) -> Result<LayerSpec, QuarkError> {
    let object = as_object(value, path)?;
    let role = |key: &str| -> Result<Vec<QuantizerSpec>, QuarkError> {
        let role_path = path.key(key);
        match object.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_quantizer(item, &role_path.index(i)))
                .collect(),
            Some(item) => Ok(vec![parse_quantizer(item, &role_path)?]),
        }
    };
    Ok(LayerSpec {
        weight: role("weight")?,
        input_tensors: role("input_tensors")?,
        output_tensors: role("output_tensors")?,
        bias: role("bias")?,
        extra: extra_keys(
            object,
            &["weight", "input_tensors", "output_tensors", "bias"],
        ),
    })
}

fn parse_quantizer(value: &Value, path: &Path) -> Result<QuantizerSpec, QuarkError> {
    let object = as_object(value, path)?;
    let dtype =
        optional_string(object, "dtype", path)?.ok_or_else(|| QuarkError::MissingField {
            path: path.key("dtype").as_str().to_owned(),
        })?;
    let group_size = optional_int(object, "group_size", path)?
        .map(|g| {
            u32::try_from(g).map_err(|_| QuarkError::WrongType {
                path: path.key("group_size").as_str().to_owned(),
                expected: "a non-negative integer",
                found: format!("number {g}"),
            })
        })
        .transpose()?;
    const KNOWN: [&str; 12] = [
        "dtype",
        "qscheme",
        "group_size",
        "ch_axis",
        "scale_format",
        "scale_calculation_mode",
        "round_method",
        "is_dynamic",
        "symmetric",
        "scale_type",
        "observer_cls",
        "mx_element_dtype",
    ];
    Ok(QuantizerSpec {
        dtype,
        qscheme: optional_string(object, "qscheme", path)?,
        group_size,
        ch_axis: optional_int(object, "ch_axis", path)?,
        scale_format: optional_string(object, "scale_format", path)?,
        scale_calculation_mode: optional_string(object, "scale_calculation_mode", path)?,
        round_method: optional_string(object, "round_method", path)?,
        is_dynamic: optional_bool(object, "is_dynamic", path)?,
        symmetric: optional_bool(object, "symmetric", path)?,
        scale_type: optional_string(object, "scale_type", path)?,
        observer_cls: optional_string(object, "observer_cls", path)?,
        mx_element_dtype: optional_string(object, "mx_element_dtype", path)?,
        extra: extra_keys(object, &KNOWN),
    })
}
