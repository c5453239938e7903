//! Parsing and validating one safetensors header against the file it came from.
//!
//! The format: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping tensor
//! names to `{dtype, shape, data_offsets: [start, end]}` (offsets relative to the byte buffer
//! after the header), an optional `__metadata__` object of strings, then the byte buffer.
//! Nothing in a header is trusted: every offset, shape and size is checked before a tensor's
//! bytes can be reached, so a lying header is an error and never an out-of-bounds read.

use std::ops::Range;
use std::path::Path;

use serde_json::Value;

use super::error::HeaderError;

/// Largest header we accept. Real headers of 600 GB checkpoints are a few MB per shard; a larger
/// length is a corrupt or hostile file, not something to allocate for.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Largest rank we accept for a tensor; the model's tensors have rank 1 or 2.
const MAX_RANK: usize = 8;

/// Element types a safetensors header may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer; Quark stores packed MXFP4 weights and E8M0 scales this way.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// FP8 E5M2.
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    /// FP8 E4M3.
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    /// E8M0 scale byte.
    #[serde(rename = "F8_E8M0")]
    F8E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE double precision.
    F64,
}

impl Dtype {
    /// Parses the header's spelling of a dtype.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "F8_E5M2" => Self::F8E5M2,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E8M0" => Self::F8E8M0,
            "I16" => Self::I16,
            "U16" => Self::U16,
            "F16" => Self::F16,
            "BF16" => Self::Bf16,
            "I32" => Self::I32,
            "U32" => Self::U32,
            "F32" => Self::F32,
            "I64" => Self::I64,
            "U64" => Self::U64,
            "F64" => Self::F64,
            _ => return None,
        })
    }

    /// The header's spelling of this dtype.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::F8E5M2 => "F8_E5M2",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E8M0 => "F8_E8M0",
            Self::I16 => "I16",
            Self::U16 => "U16",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::I32 => "I32",
            Self::U32 => "U32",
            Self::F32 => "F32",
            Self::I64 => "I64",
            Self::U64 => "U64",
            Self::F64 => "F64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E5M2 | Self::F8E4M3 | Self::F8E8M0 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::Bf16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor as a validated header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderEntry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// Byte range inside the whole file (header included), already checked to lie in it.
    pub range: Range<usize>,
}

/// Parses and validates the header of a file of `file_len` bytes whose first bytes are `bytes`
/// (at least the header; usually the whole memory map). Entries come back sorted by offset.
pub fn parse(path: &Path, bytes: &[u8], file_len: usize) -> Result<Vec<HeaderEntry>, HeaderError> {
    let err = |problem: String| HeaderError {
        file: path.to_path_buf(),
        problem,
    };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(err(format!(
            "file is {file_len} bytes, shorter than the 8-byte header length"
        )));
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("slice of 8 bytes"));
    if header_len > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    // Bounded by MAX_HEADER_BYTES above, so the cast cannot truncate.
    let header_end = 8 + header_len as usize;
    if header_end > file_len || header_end > bytes.len() {
        return Err(err(format!(
            "header length {header_len} runs past the end of the {file_len}-byte file (truncated?)"
        )));
    }
    let json: Value = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
    let Value::Object(map) = json else {
        return Err(err("header is not a JSON object".to_owned()));
    };
    let data_len = file_len - header_end;
    let mut entries = Vec::with_capacity(map.len());
    for (name, value) in &map {
        if name == "__metadata__" {
            check_metadata(value).map_err(&err)?;
            continue;
        }
        let (dtype, shape, offsets) =
            parse_entry(value).map_err(|p| err(format!("tensor {name}: {p}")))?;
        let (start, end) = offsets;
        if start > end {
            return Err(err(format!(
                "tensor {name}: data_offsets [{start}, {end}] end before they start"
            )));
        }
        if end > data_len {
            return Err(err(format!(
                "tensor {name}: data_offsets [{start}, {end}] run past the end of the \
                 {data_len}-byte data buffer (truncated file?)"
            )));
        }
        let elements = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()));
        let Some(expected_bytes) = elements else {
            return Err(err(format!(
                "tensor {name}: shape {shape:?} of {dtype} overflows the address space"
            )));
        };
        if expected_bytes != end - start {
            return Err(err(format!(
                "tensor {name}: shape {shape:?} of {dtype} needs {expected_bytes} bytes but \
                 data_offsets [{start}, {end}] hold {}",
                end - start
            )));
        }
        entries.push(HeaderEntry {
            name: name.clone(),
            dtype,
            shape,
            range: header_end + start..header_end + end,
        });
    }
    entries.sort_by_key(|e| (e.range.start, e.range.end));
    // The format requires the tensors to tile the data buffer exactly: an overlap means two
    // tensors share bytes (a lying header), a gap or tail means bytes nobody accounts for.
    let mut cursor = header_end;
    for e in &entries {
        if e.range.start < cursor {
            let other = entries
                .iter()
                .find(|o| {
                    o.name != e.name && o.range.start < e.range.end && e.range.start < o.range.end
                })
                .map_or("an earlier tensor", |o| o.name.as_str());
            return Err(err(format!(
                "tensor {} overlaps {other} in the data buffer",
                e.name
            )));
        }
        if e.range.start > cursor {
            return Err(err(format!(
                "{} unaccounted bytes in the data buffer before tensor {}",
                e.range.start - cursor,
                e.name
            )));
        }
        cursor = e.range.end;
    }
    if cursor != file_len {
        return Err(err(format!(
            "{} bytes after the last tensor are not described by the header",
            file_len - cursor
        )));
    }
    Ok(entries)
}

fn check_metadata(value: &Value) -> Result<(), String> {
    match value {
        Value::Object(m) if m.values().all(Value::is_string) => Ok(()),
        _ => Err("__metadata__ must be an object of strings".to_owned()),
    }
}

type ParsedEntry = (Dtype, Vec<usize>, (usize, usize));

fn parse_entry(value: &Value) -> Result<ParsedEntry, String> {
    let obj = value.as_object().ok_or("entry is not a JSON object")?;
    let dtype_str = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("missing or non-string dtype")?;
    let dtype = Dtype::parse(dtype_str).ok_or_else(|| format!("unsupported dtype {dtype_str}"))?;
    let shape_v = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("missing or non-array shape")?;
    if shape_v.len() > MAX_RANK {
        return Err(format!(
            "rank {} exceeds the supported {MAX_RANK}",
            shape_v.len()
        ));
    }
    let shape = shape_v
        .iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| format!("shape dimension {d} is not a non-negative integer"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or("missing or non-array data_offsets")?;
    let offset = |i: usize| {
        offsets
            .get(i)
            .and_then(Value::as_u64)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| "data_offsets must be two non-negative integers".to_owned())
    };
    if offsets.len() != 2 {
        return Err("data_offsets must be two non-negative integers".to_owned());
    }
    Ok((dtype, shape, (offset(0)?, offset(1)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn check(header: &str, data_len: usize) -> Result<Vec<HeaderEntry>, String> {
        let bytes = file(header, &vec![0u8; data_len]);
        parse(Path::new("x.safetensors"), &bytes, bytes.len()).map_err(|e| e.problem)
    }

    #[test]
    fn accepts_well_formed_headers_and_orders_by_offset() {
        let h = r#"{"__metadata__":{"format":"pt"},
            "b":{"dtype":"BF16","shape":[2,3],"data_offsets":[4,16]},
            "a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let entries = check(h, 16).unwrap();
        let base = 8 + h.len();
        assert_eq!(entries[0].name, "a");
        assert_eq!(entries[0].range, base..base + 4);
        assert_eq!(entries[1].shape, vec![2, 3]);
        assert_eq!(entries[1].dtype, Dtype::Bf16);
    }

    #[test]
    fn rejects_lying_headers_with_the_problem_named() {
        let cases: &[(&str, usize, &str)] = &[
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "run past the end",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "needs 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "end before",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
                    "b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                6,
                "overlaps a",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
                6,
                "2 bytes after",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#,
                4,
                "unaccounted",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#,
                1,
                "unsupported dtype F4",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                1,
                "non-negative",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#,
                1,
                "two non-negative",
            ),
            (r#"{"a":{"dtype":"U8","shape":[1]}}"#, 1, "data_offsets"),
            (r#"{"__metadata__":{"k":1}}"#, 0, "object of strings"),
            (r#"[1,2]"#, 0, "not a JSON object"),
            (r#"{"a":"#, 0, "not valid JSON"),
        ];
        for (header, data_len, needle) in cases {
            let e = check(header, *data_len).unwrap_err();
            assert!(e.contains(needle), "{header}: got {e:?}, wanted {needle:?}");
        }
    }

    #[test]
    fn rejects_truncated_and_absurd_lengths() {
        let p = Path::new("x");
        let e = parse(p, &[1, 2, 3], 3).unwrap_err();
        assert!(e.problem.contains("shorter than the 8-byte"), "{e}");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let e = parse(p, &bytes, bytes.len()).unwrap_err();
        assert!(e.problem.contains("runs past the end"), "{e}");
        let bytes = u64::MAX.to_le_bytes();
        let e = parse(p, &bytes, 8).unwrap_err();
        assert!(e.problem.contains("exceeds"), "{e}");
    }
}
