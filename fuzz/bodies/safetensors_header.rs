//! Arbitrary bytes as a safetensors file → the loader's header validation.
//!
//! Every input must give entries or a `HeaderError`. Accepted entries must describe the file
//! honestly: in bounds, sorted, tiling the data buffer exactly, each range exactly the bytes its
//! shape and dtype need.

use std::path::Path;

use model_deepseek::loader::header;

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(entries) = header::parse(Path::new("fuzz.safetensors"), data, data.len()) else {
        return;
    };
    let header_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes were read"));
    let mut cursor = 8 + usize::try_from(header_len).expect("accepted header lengths are small");
    for e in &entries {
        assert_eq!(e.range.start, cursor, "{} leaves a gap or overlaps", e.name);
        let elements: usize = e.shape.iter().product();
        assert_eq!(
            e.range.len(),
            elements * e.dtype.size(),
            "{} has the wrong size",
            e.name
        );
        assert!(e.range.end <= data.len(), "{} is out of bounds", e.name);
        cursor = e.range.end;
    }
    assert_eq!(
        cursor,
        data.len(),
        "accepted a file with undescribed trailing bytes"
    );
}
