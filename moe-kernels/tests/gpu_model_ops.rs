//! The dense model ops of `gpu::model_ops` against the CPU reference ops, with the same f32
//! inputs, on the first GPU present (skipped, with a message, where there is none). Fresh
//! random inputs per case; outputs poisoned with NaN first, so an element nobody wrote fails.
//!
//! Tolerance: the kernels compute the same f32 formulas as the reference in another summation
//! order (and `expf`/`sqrtf` of the device library), so relative L2 errors land near 1e-6;
//! 1e-4 leaves room for the longest sums. W4A4 layers quantize identical f32 inputs with the
//! same rule, so they too match to f32 rounding.

use moe_kernels::gpu::model_ops::{DeviceLinear, ModelOps, PagedKeys, mla_max_keys};
use moe_kernels::reference::{
    ActivationMode, ActivationQuant, Linear, Matrix, MlaCache, MlaDims, Mxfp4Matrix, Rope,
    ScaleRule, YarnParams, fake_quantize_rows, linear, mla_attention, rmsnorm, silu_mul,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use runtime_rocm::{Device, DeviceBuffer};

const TOLERANCE: f64 = 1e-4;

fn gpu() -> Option<Device> {
    let device = runtime_rocm::enumerate()
        .devices
        .into_iter()
        .find(|d| !d.is_cpu());
    if device.is_none() {
        eprintln!("skipped: no GPU");
    }
    device
}

fn normal(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = 1.0 - rng.random::<f32>();
            let u2: f32 = rng.random();
            scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn poisoned(device: &Device, n: usize) -> DeviceBuffer<f32> {
    device.upload(&vec![f32::NAN; n]).unwrap()
}

fn check(what: &str, got: &DeviceBuffer<f32>, want: &[f32]) {
    let got = got.to_vec().unwrap();
    let err = rel_l2(&got[..want.len()], want);
    println!("{what}: rel L2 {err:.2e}");
    assert!(err <= TOLERANCE, "{what}: rel L2 {err:.2e}");
}

fn random_mxfp4(rng: &mut StdRng, rows: usize, cols: usize) -> Mxfp4Matrix {
    let mut packed = vec![0u8; rows * cols / 2];
    rng.fill_bytes(&mut packed);
    let scales = (0..rows * cols / 32)
        .map(|_| rng.random_range(120..=126))
        .collect();
    Mxfp4Matrix::new(rows, cols, packed, scales).unwrap()
}

/// Every weight format of the linear kernels against [`linear`], for decode batches below,
/// at and above one token tile (1, 3, 8, 17, 64 tokens), on shapes that take each launch
/// path: k split over a block's waves (few rows, long k), no split (many rows), rows not a
/// multiple of a wave's rows, and a k off the 8-element chunks (the scalar path; dense only,
/// MXFP4 needs whole blocks).
#[test]
fn linear_layers_match_the_reference() {
    let Some(device) = gpu() else { return };
    let ops = ModelOps::compile(&device).unwrap();
    let stream = device.create_stream().unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let shapes = [(64, 96), (7168, 33), (512, 1030), (2048, 7)];
    for m in [1, 3, 8, 17, 64] {
        for (k, n) in shapes.into_iter().chain([(60, 9)]) {
            let x = normal(&mut rng, m * k, 1.0);
            let f32_values = normal(&mut rng, n * k, 0.1);
            let bf16_values = f32_values
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            let mut layers = vec![
                ("f32", Linear::Dense(Matrix::new(n, k, f32_values).unwrap())),
                (
                    "bf16",
                    Linear::Dense(Matrix::new(n, k, bf16_values).unwrap()),
                ),
            ];
            if k % 32 == 0 {
                let w = random_mxfp4(&mut rng, n, k);
                layers.extend([
                    (
                        "mxfp4 w4a16",
                        Linear::Mxfp4 {
                            weight: w.clone(),
                            activations: ActivationQuant::None,
                        },
                    ),
                    (
                        "mxfp4 w4a4 even",
                        Linear::Mxfp4 {
                            weight: w.clone(),
                            activations: ActivationQuant::Mxfp4(ScaleRule::Even),
                        },
                    ),
                    (
                        "mxfp4 w4a4 ocp",
                        Linear::Mxfp4 {
                            weight: w,
                            activations: ActivationQuant::Mxfp4(ScaleRule::Ocp),
                        },
                    ),
                ]);
            }
            let x_dev = device.upload(&x).unwrap();
            for (name, layer) in &layers {
                let w_dev = DeviceLinear::upload(&device, layer).unwrap();
                let stored = match &w_dev {
                    DeviceLinear::Bf16 { .. } => "bf16",
                    DeviceLinear::Dense { .. } => "f32",
                    DeviceLinear::Mxfp4 { .. } => "mxfp4",
                };
                assert!(name.starts_with(stored), "{name} stored as {stored}");
                for mode in [ActivationMode::Quantized, ActivationMode::Unquantized] {
                    let mut want = vec![0f32; m * n];
                    linear(&x, m, layer, mode, &mut want);
                    let mut scratch = poisoned(&device, m * k);
                    let mut out = poisoned(&device, m * n);
                    ops.linear(&stream, &x_dev, m, &w_dev, mode, &mut scratch, &mut out)
                        .unwrap();
                    stream.synchronize().unwrap();
                    check(&format!("linear {name} {mode:?} {m}x{k}x{n}"), &out, &want);
                }
            }
        }
    }
}

/// The embedding lookup from a bf16 table widens the exact rows; from an f32 table it copies.
#[test]
fn embedding_rows_match_the_table() {
    let Some(device) = gpu() else { return };
    let ops = ModelOps::compile(&device).unwrap();
    let stream = device.create_stream().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let (vocab, cols) = (300, 72);
    let f32_values = normal(&mut rng, vocab * cols, 1.0);
    let bf16_values: Vec<f32> = f32_values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    let ids: Vec<i32> = (0..13).map(|_| rng.random_range(0..vocab as i32)).collect();
    let ids_dev = device.upload(&ids).unwrap();
    for values in [f32_values, bf16_values] {
        let table = Linear::Dense(Matrix::new(vocab, cols, values.clone()).unwrap());
        let table = DeviceLinear::upload(&device, &table).unwrap();
        let mut out = poisoned(&device, ids.len() * cols);
        ops.embed_rows(&stream, &table, &ids_dev, ids.len(), &mut out)
            .unwrap();
        stream.synchronize().unwrap();
        let got = out.to_vec().unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| values[i as usize * cols..(i as usize + 1) * cols].to_vec())
            .collect();
        assert_eq!(got, want, "{table:?}");
    }
}

#[test]
fn fake_quantize_matches_the_reference_bit_for_bit() {
    let Some(device) = gpu() else { return };
    let ops = ModelOps::compile(&device).unwrap();
    let stream = device.create_stream().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    // Wide dynamic range, exact grid points and ties, zeros, a NaN block.
    let mut x = normal(&mut rng, 32 * 64, 1.0);
    for (i, v) in x.iter_mut().enumerate().take(32 * 8) {
        *v *= 2f32.powi((i / 32) as i32 * 9 - 40);
    }
    for (i, v) in x[32 * 8..32 * 9].iter_mut().enumerate() {
        *v = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0][i % 8]
            * if i % 2 == 0 { 1.0 } else { -1.0 };
    }
    x[32 * 9..32 * 10].fill(0.0);
    x[32 * 10 + 3] = f32::NAN;
    let x_dev = device.upload(&x).unwrap();
    for rule in [ScaleRule::Even, ScaleRule::Ocp] {
        let want = fake_quantize_rows(&x, 64, rule);
        let mut out = poisoned(&device, x.len());
        ops.fake_quantize(&stream, &x_dev, x.len(), rule, &mut out)
            .unwrap();
        let got = out.to_vec().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{rule:?} element {i}: x {} got {g} want {w}",
                x[i]
            );
        }
    }
}

#[test]
fn norm_rope_attention_and_elementwise_match_the_reference() {
    let Some(device) = gpu() else { return };
    let ops = ModelOps::compile(&device).unwrap();
    let s = device.create_stream().unwrap();
    let mut rng = StdRng::seed_from_u64(3);

    // RMSNorm on strided rows (the latent part of kv_a rows).
    let (rows, d, stride) = (7, 512, 576);
    let x = normal(&mut rng, rows * stride, 2.0);
    let w = normal(&mut rng, d, 1.0);
    let mut want = vec![0f32; rows * d];
    let dense_rows: Vec<f32> = x
        .chunks_exact(stride)
        .flat_map(|r| &r[..d])
        .copied()
        .collect();
    rmsnorm(&dense_rows, &w, 1e-6, &mut want);
    let mut out = poisoned(&device, rows * d);
    let (x_dev, w_dev) = (device.upload(&x).unwrap(), device.upload(&w).unwrap());
    ops.rmsnorm(&s, &x_dev, stride, &w_dev, 1e-6, rows, &mut out, d)
        .unwrap();
    check("rmsnorm", &out, &want);

    // Rope with YaRN on the rope part of every head, tokens at scattered positions.
    let (tokens, heads, nope, rope_dim) = (5, 4, 128, 64);
    let q_head = nope + rope_dim;
    let yarn = YarnParams {
        factor: 40.0,
        original_max_position_embeddings: 4096.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        cos_sin_scale: 1.0,
    };
    let rope = Rope::new(rope_dim, 10000.0, Some(&yarn));
    let positions = [0usize, 3, 17, 4095, 100_000];
    let q = normal(&mut rng, tokens * heads * q_head, 1.0);
    let mut want = q.clone();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for (t, &p) in positions.iter().enumerate() {
        rope.rotate(
            &mut want[t * heads * q_head..(t + 1) * heads * q_head],
            p,
            heads,
            q_head,
            nope,
        );
        let (c, si) = rope.cos_sin(p);
        cos.extend(c);
        sin.extend(si);
    }
    let mut q_dev = device.upload(&q).unwrap();
    let (cos, sin) = (device.upload(&cos).unwrap(), device.upload(&sin).unwrap());
    ops.rope(
        &s,
        &mut q_dev,
        &cos,
        &sin,
        tokens,
        heads,
        heads * q_head,
        q_head,
        nope,
        rope_dim / 2,
    )
    .unwrap();
    check("rope", &q_dev, &want);

    // Absorbed MLA attention over a paged cache: two sequences whose blocks of 8 rows are
    // scattered through the cache out of order (a partly filled last block included), queries
    // at several positions, block boundaries among them.
    let dims = MlaDims {
        heads,
        qk_nope: nope,
        qk_rope: rope_dim,
        v: 128,
        kv_lora: 512,
    };
    let block = 8;
    let total_blocks = 12;
    let rows = total_blocks * block;
    let latent = normal(&mut rng, rows * dims.kv_lora, 1.0);
    let rope_key = normal(&mut rng, rows * dims.qk_rope, 1.0);
    let kv_b = normal(&mut rng, heads * (nope + dims.v) * dims.kv_lora, 0.05);
    let tables: [Vec<usize>; 2] = [vec![7, 2, 10, 0, 5], vec![11, 3, 1]];
    let queries = [
        (0usize, 0usize),
        (0, 39),
        (1, 7),
        (1, 8),
        (1, 20),
        (0, 12),
        (0, 23),
    ];
    let q = normal(&mut rng, queries.len() * heads * q_head, 1.0);
    let mut want = vec![0f32; queries.len() * heads * dims.v];
    for (i, &(seq, pos)) in queries.iter().enumerate() {
        // The reference reads one contiguous slab: gather the sequence's rows in order.
        let gather = |data: &[f32], width: usize| -> Vec<f32> {
            (0..=pos)
                .flat_map(|j| {
                    let row = tables[seq][j / block] * block + j % block;
                    data[row * width..(row + 1) * width].iter().copied()
                })
                .collect()
        };
        let (lat, kpe) = (
            gather(&latent, dims.kv_lora),
            gather(&rope_key, dims.qk_rope),
        );
        let cache = MlaCache {
            latent: &lat,
            rope_key: &kpe,
        };
        mla_attention(
            &q[i * heads * q_head..(i + 1) * heads * q_head],
            &[pos],
            &cache,
            &kv_b,
            &dims,
            0.07,
            &mut want[i * heads * dims.v..(i + 1) * heads * dims.v],
        );
    }
    let flat: Vec<i32> = tables.iter().flatten().map(|&b| b as i32).collect();
    let offsets: Vec<i32> = queries
        .iter()
        .map(|&(seq, _)| if seq == 0 { 0 } else { tables[0].len() as i32 })
        .collect();
    let pos: Vec<i32> = queries.iter().map(|&(_, p)| p as i32).collect();
    let (flat, offsets, pos) = (
        device.upload(&flat).unwrap(),
        device.upload(&offsets).unwrap(),
        device.upload(&pos).unwrap(),
    );
    let keys = PagedKeys {
        tables: &flat,
        table_offsets: &offsets,
        positions: &pos,
        block_tokens: block,
        max_keys: 40,
    };
    let mut out = poisoned(&device, want.len());
    let (latent, rope_key) = (
        device.upload(&latent).unwrap(),
        device.upload(&rope_key).unwrap(),
    );
    let kv_b = device.upload(&kv_b).unwrap();
    let q = device.upload(&q).unwrap();
    ops.mla_attention(
        &s,
        &q,
        &latent,
        &rope_key,
        &kv_b,
        &keys,
        queries.len(),
        &dims,
        0.07,
        &mut out,
    )
    .unwrap();
    check("mla_attention", &out, &want);
    // The cache store writes each token to its own (scattered) row and nothing else.
    let stored = [13usize, 2, 95, 40];
    let fresh_latent = normal(&mut rng, stored.len() * dims.kv_lora, 1.0);
    let kv_a = normal(&mut rng, stored.len() * (dims.kv_lora + dims.qk_rope), 1.0);
    let mut cache_latent = device.upload(&vec![0f32; rows * dims.kv_lora]).unwrap();
    let mut cache_rope = device.upload(&vec![0f32; rows * dims.qk_rope]).unwrap();
    let row_ids: Vec<i32> = stored.iter().map(|&r| r as i32).collect();
    ops.cache_store(
        &s,
        &device.upload(&fresh_latent).unwrap(),
        &device.upload(&kv_a).unwrap(),
        &device.upload(&row_ids).unwrap(),
        stored.len(),
        dims.kv_lora,
        dims.qk_rope,
        &mut cache_latent,
        &mut cache_rope,
    )
    .unwrap();
    let (mut want_latent, mut want_rope) = (
        vec![0f32; rows * dims.kv_lora],
        vec![0f32; rows * dims.qk_rope],
    );
    let width = dims.kv_lora + dims.qk_rope;
    for (t, &r) in stored.iter().enumerate() {
        want_latent[r * dims.kv_lora..(r + 1) * dims.kv_lora]
            .copy_from_slice(&fresh_latent[t * dims.kv_lora..(t + 1) * dims.kv_lora]);
        want_rope[r * dims.qk_rope..(r + 1) * dims.qk_rope]
            .copy_from_slice(&kv_a[t * width + dims.kv_lora..(t + 1) * width]);
    }
    s.synchronize().unwrap();
    assert_eq!(
        cache_latent.to_vec().unwrap(),
        want_latent,
        "cache_store latent"
    );
    assert_eq!(
        cache_rope.to_vec().unwrap(),
        want_rope,
        "cache_store rope key"
    );

    // More keys than shared memory holds is refused by name, before launching.
    let limit = ops.max_keys(dims.kv_lora);
    assert_eq!(limit, mla_max_keys(&device, dims.kv_lora));
    let too_many = PagedKeys {
        max_keys: limit + 1,
        ..keys
    };
    let err = ops
        .mla_attention(
            &s,
            &q,
            &latent,
            &rope_key,
            &kv_b,
            &too_many,
            queries.len(),
            &dims,
            0.07,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("max_keys"), "{err}");

    // SwiGLU.
    let n = 3000;
    let (g, u) = (normal(&mut rng, n, 3.0), normal(&mut rng, n, 1.0));
    let mut want = vec![0f32; n];
    silu_mul(&g, &u, &mut want);
    let mut out = poisoned(&device, n);
    ops.silu_mul(
        &s,
        &device.upload(&g).unwrap(),
        &device.upload(&u).unwrap(),
        n,
        &mut out,
    )
    .unwrap();
    check("silu_mul", &out, &want);
}
