//! The OCP MX v1.0 MXFP4 codec: E2M1 elements in blocks of 32 sharing one E8M0 scale.
//!
//! Storage follows Quark's export: two E2M1 codes a byte with the **low nibble holding the even
//! (first) element**, and one E8M0 byte per block of 32 whose value is `2^(s - 127)`.
//!
//! Quantizing picks the block's shared exponent from its largest magnitude `amax` by one of two
//! [`ScaleRule`]s, then rounds every element half-to-even onto the E2M1 grid, clamped to ±6.
//! The dequantizers are the hot path of the CPU model, so they decode whole bytes through a
//! 256-entry table and scale a block at a time.

use half::bf16;

/// Elements sharing one E8M0 scale.
pub const BLOCK: usize = 32;

/// Packed bytes per block (two E2M1 codes a byte).
pub const BLOCK_BYTES: usize = BLOCK / 2;

/// E2M1 code → value. Codes 8..16 are the negated 0..8 (code 8 is −0).
pub const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The E8M0 byte that OCP reserves for NaN; a checkpoint containing it is corrupt.
pub const E8M0_NAN: u8 = 255;

/// E8M0 exponent bias.
const E8M0_BIAS: i32 = 127;

/// E2M1's largest exponent: the element grid tops out at 1.5 · 2^2 = 6.
const E2M1_EMAX: i32 = 2;

/// How a block's shared exponent is derived from its largest magnitude `amax`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ScaleRule {
    /// OCP MX v1.0: exponent `floor(log2(amax)) - 2`. Quark calls it `"floor"`.
    Ocp,
    /// Quark's `scale_calculation_mode: "even"`: amax's mantissa is first rounded to one bit
    /// (`[2^n, 1.75·2^n)` → `2^n`, `[1.75·2^n, 2^(n+1))` → `2^(n+1)`), then the OCP formula.
    /// Fewer elements clip at ±6, at the cost of a coarser grid for some blocks. (Only a block
    /// whose amax is within 12.5% of `f32::MAX` decodes out of f32's range, to ±inf.)
    Even,
}

/// Errors of the codec. Each names the offending position so a caller can name the tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// A scale byte was 255, which E8M0 reserves for NaN.
    #[error("E8M0 scale byte at index {index} is 255 (NaN); the scales are corrupt")]
    NanScale {
        /// Index of the scale byte in the slice given.
        index: usize,
    },
    /// An input to the quantizer was NaN or infinite.
    #[error("element {index} is {value}; MXFP4 can only quantize finite values")]
    NonFinite {
        /// Index of the element in the slice given.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A row or buffer length is not what the element count implies.
    #[error("{what}: expected length {expected}, found {found}")]
    Length {
        /// Which buffer is wrong (`"packed"`, `"scales"`, `"output"`, …).
        what: &'static str,
        /// The length the element count implies.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// An element count is not a multiple of the block size.
    #[error("{what} has {len} elements, not a multiple of the MXFP4 block size {BLOCK}")]
    NotBlockMultiple {
        /// Which buffer is wrong.
        what: &'static str,
        /// Its element count.
        len: usize,
    },
    /// A code given to [`pack`] does not fit in four bits.
    #[error("E2M1 code {code} at index {index} does not fit in four bits")]
    CodeOutOfRange {
        /// Index of the code.
        index: usize,
        /// The code.
        code: u8,
    },
}

/// Decodes one E8M0 scale byte to `2^(byte - 127)`.
///
/// Byte 0 is `2^-127`, an f32 denormal, and is returned exactly; byte 255 (NaN) is an error.
pub fn e8m0_to_f32(byte: u8) -> Result<f32, CodecError> {
    if byte == E8M0_NAN {
        return Err(CodecError::NanScale { index: 0 });
    }
    Ok(e8m0_unchecked(byte))
}

/// `2^(byte - 127)` for a byte already known not to be 255.
fn e8m0_unchecked(byte: u8) -> f32 {
    if byte == 0 {
        // 2^-127 has no normal f32 encoding: it is the denormal with only mantissa bit 22 set.
        f32::from_bits(1 << 22)
    } else {
        f32::from_bits(u32::from(byte) << 23)
    }
}

/// The E8M0 byte of a block whose largest magnitude is `amax` (finite, ≥ 0) under `rule`;
/// exponents below −127 clamp to byte 0.
///
/// An all-zero block gets byte 0, the smallest scale: OCP's formula has no value there and any
/// scale decodes zeros exactly, so the one that cannot overflow anything is chosen.
pub fn scale_byte(amax: f32, rule: ScaleRule) -> u8 {
    if amax == 0.0 {
        return 0;
    }
    // f64 holds every f32, denormals included, as a normal number, so the exponent field is
    // floor(log2) exactly.
    let mut bits = f64::from(amax).to_bits();
    if rule == ScaleRule::Even {
        // Adding a quarter of the leading bit carries into the exponent exactly when the
        // mantissa is ≥ 1.75.
        bits += 1 << 50;
    }
    let floor_log2 = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let exponent = (floor_log2 - E2M1_EMAX).clamp(-E8M0_BIAS, E8M0_BIAS);
    (exponent + E8M0_BIAS) as u8
}

/// The E2M1 code nearest to `x` (already divided by the block scale), ties to the even code,
/// magnitudes above 6 clamped to 6. The sign bit follows `x`'s sign, so small negatives give −0
/// as Quark's packer does.
fn e2m1_code(x: f64) -> u8 {
    let m = x.abs();
    // Count the midpoints between grid values that `m` lies above. At a tie, `>` keeps the
    // lower neighbour and `>=` takes the upper one: whichever has the even code.
    let magnitude = u8::from(m > 0.25)
        + u8::from(m >= 0.75)
        + u8::from(m > 1.25)
        + u8::from(m >= 1.75)
        + u8::from(m > 2.5)
        + u8::from(m >= 3.5)
        + u8::from(m > 5.0);
    magnitude | (u8::from(x.is_sign_negative()) << 3)
}

/// Quantizes one block of 32 values: returns the 16 packed bytes and the E8M0 scale byte.
pub fn quantize_block(
    values: &[f32; BLOCK],
    rule: ScaleRule,
) -> Result<([u8; BLOCK_BYTES], u8), CodecError> {
    let mut amax = 0.0f32;
    for (index, &value) in values.iter().enumerate() {
        if !value.is_finite() {
            return Err(CodecError::NonFinite { index, value });
        }
        amax = amax.max(value.abs());
    }
    let scale = scale_byte(amax, rule);
    // Dividing by a power of two in f64 is exact for every f32 input and every E8M0 scale.
    let inv_scale = 2f64.powi(E8M0_BIAS - i32::from(scale));
    let mut packed = [0u8; BLOCK_BYTES];
    for (byte, pair) in packed.iter_mut().zip(values.chunks_exact(2)) {
        let even = e2m1_code(f64::from(pair[0]) * inv_scale);
        let odd = e2m1_code(f64::from(pair[1]) * inv_scale);
        *byte = even | (odd << 4);
    }
    Ok((packed, scale))
}

/// [`quantize_block`] for the block at `block_index` of a longer slice, so that an error names
/// the element's index in that slice.
fn quantize_block_at(
    values: &[f32; BLOCK],
    rule: ScaleRule,
    block_index: usize,
) -> Result<([u8; BLOCK_BYTES], u8), CodecError> {
    quantize_block(values, rule).map_err(|e| match e {
        CodecError::NonFinite { index, value } => CodecError::NonFinite {
            index: block_index * BLOCK + index,
            value,
        },
        other => other,
    })
}

/// Quantizes a row (or a row-major matrix whose rows are multiples of 32 long) into `packed`
/// (`len / 2` bytes) and `scales` (`len / 32` bytes).
pub fn quantize(
    values: &[f32],
    rule: ScaleRule,
    packed: &mut [u8],
    scales: &mut [u8],
) -> Result<(), CodecError> {
    check_lengths(values.len(), packed.len(), scales.len())?;
    for (block_index, ((block, out), scale)) in values
        .chunks_exact(BLOCK)
        .zip(packed.chunks_exact_mut(BLOCK_BYTES))
        .zip(scales.iter_mut())
        .enumerate()
    {
        let block: &[f32; BLOCK] = block
            .try_into()
            .expect("chunks_exact yields BLOCK elements");
        let (bytes, byte) = quantize_block_at(block, rule, block_index)?;
        out.copy_from_slice(&bytes);
        *scale = byte;
    }
    Ok(())
}

/// Quantizes and dequantizes `values` in place, block by block: what a W4A4 layer does to its
/// activations before the matmul.
pub fn fake_quantize(values: &mut [f32], rule: ScaleRule) -> Result<(), CodecError> {
    if !values.len().is_multiple_of(BLOCK) {
        return Err(CodecError::NotBlockMultiple {
            what: "activations",
            len: values.len(),
        });
    }
    for (block_index, block) in values.chunks_exact_mut(BLOCK).enumerate() {
        let block: &mut [f32; BLOCK] = block.try_into().expect("chunks_exact yields BLOCK");
        let (bytes, byte) = quantize_block_at(block, rule, block_index)?;
        decode_block_f32(&bytes, e8m0_unchecked(byte), block);
    }
    Ok(())
}

/// Packs E2M1 codes two a byte, low nibble = even element. `codes.len()` must be even.
pub fn pack(codes: &[u8], packed: &mut [u8]) -> Result<(), CodecError> {
    if codes.len() != packed.len() * 2 {
        return Err(CodecError::Length {
            what: "packed",
            expected: codes.len().div_ceil(2),
            found: packed.len(),
        });
    }
    if let Some((index, &code)) = codes.iter().enumerate().find(|(_, c)| **c > 15) {
        return Err(CodecError::CodeOutOfRange { index, code });
    }
    for (byte, pair) in packed.iter_mut().zip(codes.chunks_exact(2)) {
        *byte = pair[0] | (pair[1] << 4);
    }
    Ok(())
}

/// Unpacks bytes into E2M1 codes (0..16), low nibble first.
pub fn unpack(packed: &[u8], codes: &mut [u8]) -> Result<(), CodecError> {
    if codes.len() != packed.len() * 2 {
        return Err(CodecError::Length {
            what: "codes",
            expected: packed.len() * 2,
            found: codes.len(),
        });
    }
    for (byte, pair) in packed.iter().zip(codes.chunks_exact_mut(2)) {
        pair[0] = byte & 0x0f;
        pair[1] = byte >> 4;
    }
    Ok(())
}

/// Both elements of every byte, unscaled: `PAIRS[b] = [E2M1[b & 15], E2M1[b >> 4]]`.
static PAIRS: [[f32; 2]; 256] = {
    let mut table = [[0.0f32; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [E2M1[byte & 0x0f], E2M1[byte >> 4]];
        byte += 1;
    }
    table
};

/// Decodes one block of 16 bytes with an already-decoded scale.
#[inline(always)]
fn decode_block_f32(bytes: &[u8], scale: f32, out: &mut [f32; BLOCK]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        let [even, odd] = PAIRS[usize::from(byte)];
        pair[0] = even * scale;
        pair[1] = odd * scale;
    }
}

/// Checks that `elements` values need exactly `packed` bytes and `scales` scale bytes.
fn check_lengths(elements: usize, packed: usize, scales: usize) -> Result<(), CodecError> {
    if !elements.is_multiple_of(BLOCK) {
        return Err(CodecError::NotBlockMultiple {
            what: "row",
            len: elements,
        });
    }
    if packed != elements / 2 {
        return Err(CodecError::Length {
            what: "packed",
            expected: elements / 2,
            found: packed,
        });
    }
    if scales != elements / BLOCK {
        return Err(CodecError::Length {
            what: "scales",
            expected: elements / BLOCK,
            found: scales,
        });
    }
    Ok(())
}

/// Checks every scale byte up front so a 255 is reported before any output is written.
fn checked_scale(scales: &[u8]) -> Result<(), CodecError> {
    match scales.iter().position(|&s| s == E8M0_NAN) {
        Some(index) => Err(CodecError::NanScale { index }),
        None => Ok(()),
    }
}

/// Dequantizes packed MXFP4 (`out.len() / 2` bytes, `out.len() / 32` scales) to f32.
///
/// Works on a single row or on a whole row-major `[rows, cols]` matrix with `cols % 32 == 0`,
/// since blocks never straddle rows then.
pub fn dequantize_f32(packed: &[u8], scales: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    check_lengths(out.len(), packed.len(), scales.len())?;
    checked_scale(scales)?;
    for ((bytes, &scale), block) in packed
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let block: &mut [f32; BLOCK] = block.try_into().expect("chunks_exact yields BLOCK");
        decode_block_f32(bytes, e8m0_unchecked(scale), block);
    }
    Ok(())
}

/// Dequantizes packed MXFP4 to bf16; same layout rules as [`dequantize_f32`].
///
/// Every MXFP4 value (a 2-bit significand times a power of two within f32's range, denormals
/// included) is exact in bf16, so the conversion truncates the f32 product without rounding.
pub fn dequantize_bf16(packed: &[u8], scales: &[u8], out: &mut [bf16]) -> Result<(), CodecError> {
    check_lengths(out.len(), packed.len(), scales.len())?;
    checked_scale(scales)?;
    for ((bytes, &scale), block) in packed
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let scale = e8m0_unchecked(scale);
        for (pair, &byte) in block.chunks_exact_mut(2).zip(bytes) {
            let [even, odd] = PAIRS[usize::from(byte)];
            pair[0] = bf16::from_bits(((even * scale).to_bits() >> 16) as u16);
            pair[1] = bf16::from_bits(((odd * scale).to_bits() >> 16) as u16);
        }
    }
    Ok(())
}
