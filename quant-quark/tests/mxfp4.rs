//! The MXFP4 codec against vectors worked out by hand from the OCP MX v1.0 rules and Quark's
//! "even" rule, and against a brute-force f64 reference on random blocks.

use half::bf16;
use proptest::prelude::*;
use quant_quark::mxfp4::{
    self, BLOCK, CodecError, E2M1, ScaleRule, dequantize_bf16, dequantize_f32, e8m0_to_f32,
    fake_quantize, pack, quantize, quantize_block, unpack,
};

/// Pads `head` with zeros to a block.
fn block(head: &[f32]) -> [f32; BLOCK] {
    let mut values = [0.0; BLOCK];
    values[..head.len()].copy_from_slice(head);
    values
}

/// Quantizes `head` (zero-padded to a block) under `rule` and checks the scale byte, the leading
/// packed bytes (the rest must be zero codes), and that decoding gives `decoded`.
fn check_block(head: &[f32], rule: ScaleRule, scale: u8, bytes: &[u8], decoded: &[f32]) {
    let values = block(head);
    let (packed, got_scale) = quantize_block(&values, rule).unwrap();
    assert_eq!(got_scale, scale, "scale byte of {head:?} under {rule:?}");
    assert_eq!(
        &packed[..bytes.len()],
        bytes,
        "packed bytes of {head:?} under {rule:?}"
    );
    assert!(
        packed[bytes.len()..].iter().all(|&b| b == 0),
        "padding of {head:?}"
    );
    let mut out = [f32::NAN; BLOCK];
    dequantize_f32(&packed, &[got_scale], &mut out).unwrap();
    for (i, (&got, &want)) in out.iter().zip(decoded).enumerate() {
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "element {i} of {head:?} under {rule:?}"
        );
    }
    assert!(out[decoded.len()..].iter().all(|&v| v == 0.0));
}

#[test]
fn golden_blocks() {
    use ScaleRule::{Even, Ocp};
    let tiny = |k: i32| 2f64.powi(k) as f32;
    // amax 4.0: exponent floor(log2 4) - 2 = 0 under both rules, 4.0 is code 6. The
    // floor(log2(amax / 6)) rule would pick 2^-1 and clip 8 to 6, decoding 3.0.
    check_block(&[4.0], Ocp, 127, &[0x06], &[4.0]);
    check_block(&[4.0], Even, 127, &[0x06], &[4.0]);
    // amax 5.0 = 1.25·4: exponent 0 under both rules; 5 lies halfway between 4 (code 6) and
    // 6 (code 7) and goes to the even code.
    check_block(&[5.0], Ocp, 127, &[0x06], &[4.0]);
    check_block(&[5.0], Even, 127, &[0x06], &[4.0]);
    // amax 7.0 = 1.75·4: OCP keeps exponent 0 and clamps 7 to 6; "even" rounds the mantissa up
    // to 8, exponent 1, and 7/2 = 3.5 is a tie between 3 (code 5) and 4 (code 6) → 4 · 2 = 8.
    check_block(&[7.0], Ocp, 127, &[0x07], &[6.0]);
    check_block(&[7.0], Even, 128, &[0x06], &[8.0]);
    // Every tie on the grid, at scale 1 (amax 6 = 1.5·4 keeps exponent 0 under both rules):
    // 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4, and −5→−4; low nibble first.
    let ties = [1.0, -0.5, 6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0];
    let tie_bytes = [0x92, 0x07, 0x22, 0x44, 0x66, 0x0e];
    let tie_decoded = [1.0, -0.5, 6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0];
    check_block(&ties, Ocp, 127, &tie_bytes, &tie_decoded);
    check_block(&ties, Even, 127, &tie_bytes, &tie_decoded);
    // Tiny block: amax 2^-125 gives exponent -127, byte 0, a denormal scale. 2^-125 = 4·2^-127
    // (code 6), 3·2^-127 (code 5), 2^-128 = 0.5·2^-127 (code 1), −2^-127 (code 10): all exact.
    let small = [tiny(-125), 3.0 * tiny(-127), tiny(-128), -tiny(-127)];
    check_block(&small, Ocp, 0, &[0x56, 0xa1], &small);
    check_block(&small, Even, 0, &[0x56, 0xa1], &small);
    // Below the smallest scale the exponent clamps at -127: 2^-130 / 2^-127 = 0.125 → 0.
    check_block(&[tiny(-130)], Ocp, 0, &[0x00], &[0.0]);
    // Largest f32: floor(log2) = 127 → exponent 125, and 7.99… clamps to 6.
    check_block(&[f32::MAX], Ocp, 252, &[0x07], &[6.0 * tiny(125)]);
    // All zeros: smallest scale, all codes 0.
    check_block(&[], Ocp, 0, &[], &[]);
    check_block(&[], Even, 0, &[], &[]);
}

#[test]
fn e8m0_decoding() {
    let cases: [(u8, f32); 6] = [
        (0, f32::from_bits(0x0040_0000)),
        (1, f32::MIN_POSITIVE),
        (126, 0.5),
        (127, 1.0),
        (128, 2.0),
        (254, 2f32.powi(127)),
    ];
    for (byte, want) in cases {
        let got = e8m0_to_f32(byte).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "byte {byte}");
        assert_eq!(
            f64::from(got),
            2f64.powi(i32::from(byte) - 127),
            "byte {byte}"
        );
    }
    assert_eq!(e8m0_to_f32(255), Err(CodecError::NanScale { index: 0 }));
}

#[test]
fn nibble_order_and_scale_255() {
    // 0x1f: low nibble 15 (−6) is element 0, high nibble 1 (0.5) is element 1; scale 2.
    let mut packed = [0u8; 16];
    packed[0] = 0x1f;
    let mut out = [0.0f32; BLOCK];
    dequantize_f32(&packed, &[128], &mut out).unwrap();
    assert_eq!(&out[..2], &[-12.0, 1.0]);
    let mut out16 = [bf16::ZERO; BLOCK];
    dequantize_bf16(&packed, &[128], &mut out16).unwrap();
    assert_eq!(out16[0].to_f32(), -12.0);
    assert_eq!(out16[1].to_f32(), 1.0);

    let two_blocks = [packed, packed].concat();
    let mut out = vec![0.0f32; 2 * BLOCK];
    let err = dequantize_f32(&two_blocks, &[127, 255], &mut out).unwrap_err();
    assert_eq!(err, CodecError::NanScale { index: 1 });
    let mut out16 = vec![bf16::ZERO; 2 * BLOCK];
    let err = dequantize_bf16(&two_blocks, &[255, 127], &mut out16).unwrap_err();
    assert_eq!(err, CodecError::NanScale { index: 0 });
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut values = vec![1.0f32; 2 * BLOCK];
    let mut packed = vec![0u8; BLOCK];
    let mut scales = vec![0u8; 2];
    for (index, bad) in [(0, f32::NAN), (33, f32::INFINITY), (63, f32::NEG_INFINITY)] {
        values[index] = bad;
        let err = quantize(&values, ScaleRule::Even, &mut packed, &mut scales).unwrap_err();
        assert!(
            matches!(err, CodecError::NonFinite { index: i, .. } if i == index),
            "{err}"
        );
        let err = fake_quantize(&mut values.clone(), ScaleRule::Ocp).unwrap_err();
        assert!(matches!(err, CodecError::NonFinite { index: i, .. } if i == index));
        values[index] = 1.0;
    }
    assert_eq!(
        quantize(
            &values[..40],
            ScaleRule::Ocp,
            &mut packed[..20],
            &mut scales[..1]
        ),
        Err(CodecError::NotBlockMultiple {
            what: "row",
            len: 40
        })
    );
    assert_eq!(
        quantize(&values, ScaleRule::Ocp, &mut packed[..16], &mut scales),
        Err(CodecError::Length {
            what: "packed",
            expected: 32,
            found: 16
        })
    );
    let mut out = vec![0.0f32; 2 * BLOCK];
    assert_eq!(
        dequantize_f32(&packed, &scales[..1], &mut out),
        Err(CodecError::Length {
            what: "scales",
            expected: 2,
            found: 1
        })
    );
    assert_eq!(
        pack(&[1, 16], &mut [0u8; 1]),
        Err(CodecError::CodeOutOfRange { index: 1, code: 16 })
    );
}

/// The E8M0 exponent by the rule's definition, computed with f64 `log2`.
fn reference_exponent(amax: f32, rule: ScaleRule) -> i32 {
    if amax == 0.0 {
        return -127;
    }
    let amax = f64::from(amax);
    let mut n = amax.log2().floor();
    if rule == ScaleRule::Even && amax / 2f64.powf(n) >= 1.75 {
        n += 1.0;
    }
    (n as i32 - 2).clamp(-127, 127)
}

/// The nearest E2M1 code to `x` by exhaustive search, ties to the even code.
fn reference_code(x: f64) -> u8 {
    let magnitude = (0u8..8)
        .min_by(|&a, &b| {
            let da = (f64::from(E2M1[usize::from(a)]) - x.abs()).abs();
            let db = (f64::from(E2M1[usize::from(b)]) - x.abs()).abs();
            da.total_cmp(&db).then((a % 2).cmp(&(b % 2)))
        })
        .unwrap();
    if x.is_sign_negative() {
        magnitude | 8
    } else {
        magnitude
    }
}

/// Half the distance between the grid values around `|x|` (x in units of the block scale).
fn half_step(x: f64) -> f64 {
    match x.abs() {
        m if m <= 2.0 => 0.25,
        m if m <= 4.0 => 0.5,
        _ => 1.0,
    }
}

/// Random f32 blocks whose elements span the whole exponent range, including denormals, zeros
/// and blocks of very different magnitudes.
fn any_block() -> impl Strategy<Value = Vec<f32>> {
    let element = prop_oneof![
        1 => Just(0.0f32),
        8 => (-1.0f32..1.0, -12i32..12).prop_map(|(m, e)| m * 2f32.powi(e)),
        1 => (-1.0f32..1.0, -149i32..80).prop_map(|(m, e)| (f64::from(m) * 2f64.powi(e)) as f32),
    ];
    let spread = (proptest::collection::vec(element, BLOCK), -40i32..40)
        .prop_map(|(v, shift)| v.into_iter().map(|x| x * 2f32.powi(shift)).collect());
    // Grid values and the midpoints between them at one binade: every rounding tie, and amax
    // on or near the rules' decision points.
    let grid = [
        0.0f32, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0,
    ];
    let tie = (proptest::sample::select(grid.to_vec()), any::<bool>())
        .prop_map(|(v, negative)| if negative { -v } else { v });
    let ties = (proptest::collection::vec(tie, BLOCK), -60i32..60).prop_map(|(v, shift)| {
        v.into_iter()
            .map(|x| (f64::from(x) * 2f64.powi(shift)) as f32)
            .collect()
    });
    prop_oneof![spread, ties]
}

fn any_rule() -> impl Strategy<Value = ScaleRule> {
    prop_oneof![Just(ScaleRule::Ocp), Just(ScaleRule::Even)]
}

proptest! {
    #[test]
    fn pack_unpack_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut codes = vec![0u8; bytes.len() * 2];
        unpack(&bytes, &mut codes).unwrap();
        for (i, &b) in bytes.iter().enumerate() {
            prop_assert_eq!(codes[2 * i], b & 15);
            prop_assert_eq!(codes[2 * i + 1], b >> 4);
        }
        let mut repacked = vec![0u8; bytes.len()];
        pack(&codes, &mut repacked).unwrap();
        prop_assert_eq!(repacked, bytes);
    }

    #[test]
    fn quantize_matches_reference(values in any_block(), rule in any_rule()) {
        let block: [f32; BLOCK] = values.clone().try_into().unwrap();
        let (packed, scale) = quantize_block(&block, rule).unwrap();
        let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let exponent = reference_exponent(amax, rule);
        prop_assert_eq!(i32::from(scale) - 127, exponent, "amax {}", amax);

        let mut codes = [0u8; BLOCK];
        unpack(&packed, &mut codes).unwrap();
        let step = 2f64.powi(exponent);
        let mut out = [0.0f32; BLOCK];
        dequantize_f32(&packed, &[scale], &mut out).unwrap();
        let mut out16 = [bf16::ZERO; BLOCK];
        dequantize_bf16(&packed, &[scale], &mut out16).unwrap();
        let mut fake = block;
        fake_quantize(&mut fake, rule).unwrap();
        for i in 0..BLOCK {
            let x = f64::from(values[i]) / step;
            prop_assert_eq!(codes[i], reference_code(x), "element {} = {}", i, values[i]);
            let want = f64::from(E2M1[usize::from(codes[i])]) * step;
            prop_assert_eq!(f64::from(out[i]), want);
            prop_assert_eq!(out16[i].to_f32().to_bits(), out[i].to_bits());
            prop_assert_eq!(fake[i].to_bits(), out[i].to_bits());
            let error = (f64::from(values[i]) - want).abs();
            if x.abs() <= 6.0 {
                prop_assert!(error <= half_step(x) * step, "element {} error {}", i, error);
            } else {
                // Above 6 an element clamps to ±6: OCP leaves amax below 8 (error < 2 steps),
                // "even" below 7 (error < 1 step, half the top grid spacing).
                let limit = if rule == ScaleRule::Ocp { 8.0 } else { 7.0 };
                prop_assert!(x.abs() < limit, "element {} is {} steps", i, x);
                prop_assert_eq!(want.abs(), 6.0 * step);
            }
        }
    }

    #[test]
    fn rows_are_blocks_side_by_side(
        blocks in proptest::collection::vec(any_block(), 1..6),
        rule in any_rule(),
    ) {
        let row: Vec<f32> = blocks.concat();
        let mut packed = vec![0u8; row.len() / 2];
        let mut scales = vec![0u8; row.len() / BLOCK];
        quantize(&row, rule, &mut packed, &mut scales).unwrap();
        for (b, values) in blocks.iter().enumerate() {
            let one: [f32; BLOCK] = values.clone().try_into().unwrap();
            let (bytes, scale) = quantize_block(&one, rule).unwrap();
            prop_assert_eq!(&packed[b * 16..(b + 1) * 16], &bytes[..]);
            prop_assert_eq!(scales[b], scale);
        }
        let mut out = vec![0.0f32; row.len()];
        dequantize_f32(&packed, &scales, &mut out).unwrap();
        let mut fake = row.clone();
        fake_quantize(&mut fake, rule).unwrap();
        prop_assert_eq!(
            fake.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn scale_byte_matches_reference_at_every_binade_edge() {
    // Edges of every binade and of the "even" rounding point 1.75, on both sides.
    for k in -149..128 {
        let base = 2f64.powi(k);
        for m in [1.0, 1.75, 2.0] {
            let x = (base * m) as f32;
            if !x.is_finite() || x == 0.0 {
                continue;
            }
            for v in [
                f32::from_bits(x.to_bits() - 1),
                x,
                f32::from_bits(x.to_bits() + 1),
            ] {
                if !v.is_finite() {
                    continue;
                }
                for rule in [ScaleRule::Ocp, ScaleRule::Even] {
                    let got = i32::from(mxfp4::scale_byte(v, rule)) - 127;
                    assert_eq!(
                        got,
                        reference_exponent(v, rule),
                        "amax {v:e} under {rule:?}"
                    );
                }
            }
        }
    }
}
