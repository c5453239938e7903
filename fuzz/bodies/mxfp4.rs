//! The MXFP4 codec on arbitrary bytes: unpack and dequantize packed weights with arbitrary
//! (and arbitrarily mis-sized) scale and output buffers; quantize arbitrary f32 values.
//!
//! Checked against an independent f64 computation of `E2M1[code] · 2^(scale − 127)`: a NaN
//! scale byte (255) must be an error, a length mismatch must be an error, and everything else
//! must decode exactly. Quantizing finite values must succeed, and quantize → dequantize must
//! equal `fake_quantize`.

use half::bf16;
use quant_quark::mxfp4::{self, BLOCK, CodecError, E2M1, E8M0_NAN, ScaleRule};

/// `E2M1[code] · 2^(scale − 127)` in f64 (exact), rounded once to f32.
fn reference(code: u8, scale: u8) -> f32 {
    (f64::from(E2M1[usize::from(code)]) * 2f64.powi(i32::from(scale) - 127)) as f32
}

fn decode(data: &[u8]) {
    // Layout: [blocks][scale-count skew][scales…][packed…]; the skew makes some calls lie.
    let [blocks, skew, rest @ ..] = data else {
        return;
    };
    let blocks = usize::from(*blocks % 16);
    let n_scales = (blocks + usize::from(*skew % 3))
        .saturating_sub(1)
        .min(rest.len());
    let n_scales = if skew & 0x80 == 0 {
        blocks.min(rest.len())
    } else {
        n_scales
    };
    let (scales, packed) = rest.split_at(n_scales);
    let elements = blocks * BLOCK;
    let mut out = vec![0f32; elements];
    let result = mxfp4::dequantize_f32(packed, scales, &mut out);
    let mut out_bf16 = vec![bf16::ZERO; elements];
    let result_bf16 = mxfp4::dequantize_bf16(packed, scales, &mut out_bf16);
    assert_eq!(
        result, result_bf16,
        "f32 and bf16 paths disagree on the error"
    );
    let lengths_ok = packed.len() == elements / 2 && scales.len() == blocks;
    match result {
        Err(CodecError::NanScale { index }) => {
            assert!(lengths_ok, "NaN reported before a length mismatch");
            assert_eq!(scales[index], E8M0_NAN, "NanScale names a non-NaN byte");
        }
        Err(CodecError::Length { .. }) => assert!(!lengths_ok, "a Length error for good lengths"),
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(()) => {
            assert!(lengths_ok, "accepted mis-sized buffers");
            assert!(!scales.contains(&E8M0_NAN), "decoded through a NaN scale");
            let mut codes = vec![0u8; elements];
            mxfp4::unpack(packed, &mut codes).expect("sizes were accepted above");
            for (i, &code) in codes.iter().enumerate() {
                assert!(code < 16);
                let want = reference(code, scales[i / BLOCK]);
                assert_eq!(out[i].to_bits(), want.to_bits(), "element {i}");
                assert_eq!(
                    out_bf16[i].to_f32().to_bits(),
                    want.to_bits(),
                    "bf16 element {i}"
                );
            }
        }
    }
}

fn encode(data: &[u8]) {
    let rule = if data.first().is_some_and(|b| b & 1 == 1) {
        ScaleRule::Even
    } else {
        ScaleRule::Ocp
    };
    let values: Vec<f32> = data
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")))
        .collect();
    let len = values.len() / BLOCK * BLOCK;
    let values = &values[..len];
    let mut fake = values.to_vec();
    let fake_result = mxfp4::fake_quantize(&mut fake, rule);
    let mut packed = vec![0u8; len / 2];
    let mut scales = vec![0u8; len / BLOCK];
    let result = mxfp4::quantize(values, rule, &mut packed, &mut scales);
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => {
            assert!(matches!(result, Err(CodecError::NonFinite { index: i, .. }) if i == index));
            assert!(fake_result.is_err());
        }
        None => {
            result.expect("finite values quantize");
            fake_result.expect("finite values fake-quantize");
            let mut decoded = vec![0f32; len];
            mxfp4::dequantize_f32(&packed, &scales, &mut decoded)
                .expect("quantize never writes a NaN scale");
            for (i, (d, f)) in decoded.iter().zip(&fake).enumerate() {
                assert_eq!(
                    d.to_bits(),
                    f.to_bits(),
                    "element {i}: quantize→dequantize ≠ fake_quantize"
                );
            }
        }
    }
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    match data.split_first() {
        Some((&0, rest)) => encode(rest),
        Some((_, rest)) => decode(rest),
        None => {}
    }
}
