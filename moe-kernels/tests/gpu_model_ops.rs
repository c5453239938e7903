//! The dense model ops of `gpu::model_ops` against the CPU reference ops, with the same f32
//! inputs, on the first GPU present (skipped, with a message, where there is none). Fresh
//! random inputs per case; outputs poisoned with NaN first, so an element nobody wrote fails.
//!
//! Tolerance: the kernels compute the same f32 formulas as the reference in another summation
//! order (and `expf`/`sqrtf` of the device library), so relative L2 errors land near 1e-6;
//! 1e-4 leaves room for the longest sums. W4A4 layers quantize identical f32 inputs with the
//! same rule, so they too match to f32 rounding. MLA attention keeps a running softmax over key
//! tiles and splits (rescaling partial sums: f32 rounding again) and stores `kv_b_proj` bf16
//! only when its values are bf16, so it multiplies by the reference's exact weights.

use moe_kernels::gpu::model_ops::{
    DeviceLinear, MLA_MAX_KEYS, MlaWeights, MlaWorkspace, ModelOps, PagedKeys, QueryRope,
    mla_launch,
};
use moe_kernels::reference::{
    ActivationMode, ActivationQuant, Linear, Matrix, MlaCache, MlaDims, Mxfp4Matrix, Rope,
    ScaleRule, YarnParams, fake_quantize_rows, linear, mla_attention, rmsnorm, silu_mul,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use runtime_rocm::{Device, DeviceBuffer, Stream, first_gpu};

const TOLERANCE: f64 = 1e-4;

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

/// The first GPU with the model ops compiled for it and a stream (`None`, after the skip
/// message, where there is no GPU).
fn compiled(test: &str) -> Option<(Device, ModelOps, Stream)> {
    let device = first_gpu(test)?;
    let ops = ModelOps::compile(&device).unwrap();
    let stream = device.create_stream().unwrap();
    Some((device, ops, stream))
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
/// at and above one token tile (1, 2, 3, 8, 17, 64 tokens), on shapes that take each launch
/// path: k split over a block's waves (few rows, long k), no split (many rows), rows shorter
/// than a wave's chunks (k = 64 and 128, the q absorption's), rows not a multiple of a wave's
/// rows, and a k off the 8-element chunks (the scalar path; dense only, MXFP4 needs whole
/// blocks).
#[test]
fn linear_layers_match_the_reference() {
    let Some((device, ops, stream)) = compiled("linear_layers_match_the_reference") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(1);
    let shapes = [(64, 96), (128, 300), (7168, 33), (512, 1030), (2048, 7)];
    // From 9 tokens bf16 layers run on tensor cores where the device has them (k a multiple
    // of 32); 130 tokens cover a partial third token tile.
    for m in [1, 2, 3, 8, 17, 64, 130] {
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

/// Layers stacked by rows (q_a_proj over kv_a_proj_with_mqa) give each part's output side by
/// side, in every weight format; parts that cannot share one launch are refused (`None`).
#[test]
fn stacked_linear_layers_equal_their_parts() {
    let Some((device, ops, stream)) = compiled("stacked_linear_layers_equal_their_parts") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(4);
    let (k, rows) = (256, [96, 40]);
    let bf16_dense = |rng: &mut StdRng, n: usize| {
        let v = normal(rng, n * k, 0.1)
            .into_iter()
            .map(|v| half::bf16::from_f32(v).to_f32())
            .collect();
        Linear::Dense(Matrix::new(n, k, v).unwrap())
    };
    let f32_dense = |rng: &mut StdRng, n: usize| {
        Linear::Dense(Matrix::new(n, k, normal(rng, n * k, 0.1)).unwrap())
    };
    let mx = |rng: &mut StdRng, n: usize, activations| Linear::Mxfp4 {
        weight: random_mxfp4(rng, n, k),
        activations,
    };
    let w4a4 = ActivationQuant::Mxfp4(ScaleRule::Even);
    let stackable = [
        [bf16_dense(&mut rng, rows[0]), bf16_dense(&mut rng, rows[1])],
        [f32_dense(&mut rng, rows[0]), f32_dense(&mut rng, rows[1])],
        [mx(&mut rng, rows[0], w4a4), mx(&mut rng, rows[1], w4a4)],
    ];
    let m = 3;
    let x = normal(&mut rng, m * k, 1.0);
    let x_dev = device.upload(&x).unwrap();
    for parts in &stackable {
        let refs: Vec<&Linear> = parts.iter().collect();
        let stacked = DeviceLinear::upload_stacked(&device, &refs)
            .unwrap()
            .expect("parts of one format and input width stack");
        let n = rows[0] + rows[1];
        let mut want = vec![0f32; m * n];
        for (i, part) in parts.iter().enumerate() {
            let mut out = vec![0f32; m * rows[i]];
            linear(&x, m, part, ActivationMode::Quantized, &mut out);
            let first = if i == 0 { 0 } else { rows[0] };
            for t in 0..m {
                want[t * n + first..t * n + first + rows[i]]
                    .copy_from_slice(&out[t * rows[i]..(t + 1) * rows[i]]);
            }
        }
        let mut scratch = poisoned(&device, m * k);
        let mut out = poisoned(&device, m * n);
        ops.linear(
            &stream,
            &x_dev,
            m,
            &stacked,
            ActivationMode::Quantized,
            &mut scratch,
            &mut out,
        )
        .unwrap();
        stream.synchronize().unwrap();
        check(&format!("stacked {stacked:?}"), &out, &want);
    }
    let other_width = Linear::Dense(Matrix::new(8, k + 32, vec![0.5; 8 * (k + 32)]).unwrap());
    let refused = [
        ("bf16 with f32", [&stackable[0][0], &stackable[1][1]]),
        ("dense with mxfp4", [&stackable[0][0], &stackable[2][1]]),
        ("other input width", [&stackable[0][0], &other_width]),
    ];
    let w4a16 = mx(&mut rng, rows[1], ActivationQuant::None);
    for (why, parts) in refused
        .iter()
        .chain([&("w4a4 with w4a16", [&stackable[2][0], &w4a16])])
    {
        let stacked = DeviceLinear::upload_stacked(&device, parts).unwrap();
        assert!(stacked.is_none(), "{why}: stacked anyway");
    }
}

/// The embedding lookup from a bf16 table widens the exact rows; from an f32 table it copies.
#[test]
fn embedding_rows_match_the_table() {
    let Some((device, ops, stream)) = compiled("embedding_rows_match_the_table") else {
        return;
    };
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
    let Some((device, ops, stream)) = compiled("fake_quantize_matches_the_reference_bit_for_bit")
    else {
        return;
    };
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
fn norms_kv_append_and_elementwise_match_the_reference() {
    let Some((device, ops, s)) = compiled("norms_kv_append_and_elementwise_match_the_reference")
    else {
        return;
    };
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

    // A width and stride that are not multiples of 4 take the one-by-one path.
    let (rows, d, stride) = (3, 1001, 1003);
    let x = normal(&mut rng, rows * stride, 2.0);
    let w = normal(&mut rng, d, 1.0);
    let dense_rows: Vec<f32> = x
        .chunks_exact(stride)
        .flat_map(|r| &r[..d])
        .copied()
        .collect();
    let mut want = vec![0f32; rows * d];
    rmsnorm(&dense_rows, &w, 1e-6, &mut want);
    let mut out = poisoned(&device, rows * d);
    let (x_dev, w_dev) = (device.upload(&x).unwrap(), device.upload(&w).unwrap());
    ops.rmsnorm(&s, &x_dev, stride, &w_dev, 1e-6, rows, &mut out, d)
        .unwrap();
    check("rmsnorm, odd width", &out, &want);

    // The residual add fused into the norm: x is updated and its norm written. A row of the
    // model's width is held in registers; 9000 is too wide for that (more than 8 quads a
    // thread) and 1001 is not in quads: both take the loop.
    for (rows, d) in [(2, 7168), (3, 1001), (2, 9000)] {
        let x = normal(&mut rng, rows * d, 2.0);
        let delta = normal(&mut rng, rows * d, 1.0);
        let w = normal(&mut rng, d, 1.0);
        let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        let mut want = vec![0f32; rows * d];
        rmsnorm(&sum, &w, 1e-6, &mut want);
        let mut x_dev = device.upload(&x).unwrap();
        let (delta_dev, w_dev) = (device.upload(&delta).unwrap(), device.upload(&w).unwrap());
        let mut out = poisoned(&device, rows * d);
        ops.add_rmsnorm(&s, &mut x_dev, &delta_dev, &w_dev, 1e-6, rows, &mut out)
            .unwrap();
        check("add_rmsnorm", &out, &want);
        assert_eq!(
            x_dev.to_vec().unwrap(),
            sum,
            "add_rmsnorm: x += delta, exactly"
        );
    }

    // YaRN rope, as Kimi-K2.5 configures it.
    let (heads, nope, rope_dim) = (4, 128, 64);
    let q_head = nope + rope_dim;
    let yarn = YarnParams {
        factor: 40.0,
        original_max_position_embeddings: 4096.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        cos_sin_scale: 1.0,
    };
    let rope = Rope::new(rope_dim, 10000.0, Some(&yarn));

    let dims = MlaDims {
        heads,
        qk_nope: nope,
        qk_rope: rope_dim,
        v: 128,
        kv_lora: 512,
    };
    // The cache append: each token's kv_a row (here the tail of a stacked q_a + kv_a row)
    // normalized, optionally fake-quantized, its rope key rotated, all to its own scattered
    // cache row; the other rows stay untouched. The rope part of every query head of the
    // token is rotated in place by the same angles, its nope part left as it was.
    let (q_lora, width) = (1536, dims.kv_lora + dims.qk_rope);
    let stride = q_lora + width;
    let stored = [13usize, 2, 95, 40];
    let kv = normal(&mut rng, stored.len() * stride, 1.0);
    let norm = normal(&mut rng, dims.kv_lora, 1.0);
    let cache_rows = 96;
    let row_ids: Vec<i32> = stored.iter().map(|&r| r as i32).collect();
    let key_positions = [7usize, 0, 4095, 100_000];
    let q = normal(&mut rng, stored.len() * heads * q_head, 1.0);
    let mut want_q = q.clone();
    for (t, &p) in key_positions.iter().enumerate() {
        let token = &mut want_q[t * heads * q_head..(t + 1) * heads * q_head];
        rope.rotate(token, p, heads, q_head, nope);
    }
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for &p in &key_positions {
        let (c, si) = rope.cos_sin(p);
        cos.extend(c);
        sin.extend(si);
    }
    let (kv_dev, norm_dev) = (device.upload(&kv).unwrap(), device.upload(&norm).unwrap());
    let (cos, sin) = (device.upload(&cos).unwrap(), device.upload(&sin).unwrap());
    let rows_dev = device.upload(&row_ids).unwrap();
    let append = |quant| {
        let mut cache_latent = device
            .upload(&vec![0f32; cache_rows * dims.kv_lora])
            .unwrap();
        let mut cache_rope = device
            .upload(&vec![0f32; cache_rows * dims.qk_rope])
            .unwrap();
        let mut q_dev = device.upload(&q).unwrap();
        ops.kv_append(
            &s,
            &kv_dev,
            stride,
            q_lora,
            &norm_dev,
            1e-6,
            quant,
            dims.qk_rope,
            &cos,
            &sin,
            &rows_dev,
            stored.len(),
            &mut cache_latent,
            &mut cache_rope,
            QueryRope {
                q: &mut q_dev,
                heads,
                nope,
            },
        )
        .unwrap();
        s.synchronize().unwrap();
        check("kv_append query rope", &q_dev, &want_q);
        let got_q = q_dev.to_vec().unwrap();
        for (head, (got, was)) in got_q.chunks(q_head).zip(q.chunks(q_head)).enumerate() {
            assert_eq!(
                got[..nope],
                was[..nope],
                "kv_append changed head {head}'s nope part"
            );
        }
        (cache_latent.to_vec().unwrap(), cache_rope.to_vec().unwrap())
    };
    // Only the stored rows, packed in token order; every other row must still be zero.
    let gather = |cache: &[f32], width: usize| -> Vec<f32> {
        for (r, row) in cache.chunks_exact(width).enumerate() {
            if !stored.contains(&r) {
                assert!(row.iter().all(|&v| v == 0.0), "kv_append wrote row {r}");
            }
        }
        stored
            .iter()
            .flat_map(|&r| cache[r * width..(r + 1) * width].to_vec())
            .collect()
    };
    let latent_in: Vec<f32> = kv
        .chunks_exact(stride)
        .flat_map(|r| &r[q_lora..q_lora + dims.kv_lora])
        .copied()
        .collect();
    let mut want_latent = vec![0f32; stored.len() * dims.kv_lora];
    rmsnorm(&latent_in, &norm, 1e-6, &mut want_latent);
    let mut want_rope: Vec<f32> = kv
        .chunks_exact(stride)
        .flat_map(|r| &r[q_lora + dims.kv_lora..])
        .copied()
        .collect();
    for (t, &p) in key_positions.iter().enumerate() {
        let key = &mut want_rope[t * dims.qk_rope..(t + 1) * dims.qk_rope];
        rope.rotate(key, p, 1, dims.qk_rope, 0);
    }
    let (latent, rope_keys) = append(ActivationQuant::None);
    let latent = gather(&latent, dims.kv_lora);
    assert!(
        rel_l2(&latent, &want_latent) <= TOLERANCE,
        "kv_append latent"
    );
    assert!(
        rel_l2(&gather(&rope_keys, dims.qk_rope), &want_rope) <= TOLERANCE,
        "kv_append rope key"
    );
    // The quantization must be exactly the reference rule applied to the normalized latent
    // (compared with the device's own unquantized latent: an ulp of normalization could move a
    // value across a rounding boundary).
    for rule in [ScaleRule::Even, ScaleRule::Ocp] {
        let (quantized, rope_again) = append(ActivationQuant::Mxfp4(rule));
        let want = fake_quantize_rows(&latent, dims.kv_lora, rule);
        let got = gather(&quantized, dims.kv_lora);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "kv_append {rule:?} latent {i}");
        }
        assert_eq!(rope_again, rope_keys, "kv_append {rule:?} rope key");
    }

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

/// One absorbed MLA attention call against [`mla_attention`]: sequences of `lens` keys whose
/// cache blocks of `block` rows are scattered over a cache with spare blocks (random block
/// tables, each sequence's last block partly filled where its length says so), queries
/// `(sequence, position)` in any order. `kv_b` is drawn as bf16 values (stored bf16 on the
/// device) or as f32 values (stored f32); either way the device multiplies by exactly the
/// reference's values, so the tolerance is the f32 summation-order one. Also checks that a
/// key count beyond the kernels' limit is refused by name.
fn attention_case(
    device: &Device,
    ops: &ModelOps,
    rng: &mut StdRng,
    (dims, block): (MlaDims, usize),
    lens: &[usize],
    queries: &[(usize, usize)],
    bf16_kv_b: bool,
) {
    let s = device.create_stream().unwrap();
    let d = dims;
    let q_head = d.qk_nope + d.qk_rope;
    let mut order: Vec<usize> =
        (0..lens.iter().map(|l| l.div_ceil(block)).sum::<usize>() + 3).collect();
    let rows = order.len() * block;
    order.shuffle(rng);
    let mut free = order.into_iter();
    let tables: Vec<Vec<usize>> = lens
        .iter()
        .map(|l| free.by_ref().take(l.div_ceil(block)).collect())
        .collect();
    let latent = normal(rng, rows * d.kv_lora, 1.0);
    let rope_key = normal(rng, rows * d.qk_rope, 1.0);
    let mut kv_b = normal(rng, d.heads * (d.qk_nope + d.v) * d.kv_lora, 0.05);
    if bf16_kv_b {
        for v in &mut kv_b {
            *v = half::bf16::from_f32(*v).to_f32();
        }
    }
    let q = normal(rng, queries.len() * d.heads * q_head, 1.0);
    let scale = 0.07;

    let (q_len, out_len) = (d.heads * q_head, d.heads * d.v);
    let mut want = vec![0f32; queries.len() * out_len];
    for (seq, table) in tables.iter().enumerate() {
        // The reference reads one contiguous slab: gather the sequence's rows in order.
        let gather = |data: &[f32], width: usize| -> Vec<f32> {
            (0..lens[seq])
                .flat_map(|j| {
                    let row = table[j / block] * block + j % block;
                    data[row * width..(row + 1) * width].iter().copied()
                })
                .collect()
        };
        let (lat, kpe) = (gather(&latent, d.kv_lora), gather(&rope_key, d.qk_rope));
        let cache = MlaCache {
            latent: &lat,
            rope_key: &kpe,
        };
        for (i, &(_, pos)) in queries.iter().enumerate().filter(|(_, q)| q.0 == seq) {
            mla_attention(
                &q[i * q_len..(i + 1) * q_len],
                &[pos],
                &cache,
                &kv_b,
                &d,
                scale,
                &mut want[i * out_len..(i + 1) * out_len],
            );
        }
    }

    let starts: Vec<i32> = tables
        .iter()
        .scan(0, |at, t| {
            let start = *at;
            *at += t.len() as i32;
            Some(start)
        })
        .collect();
    let flat: Vec<i32> = tables.iter().flatten().map(|&b| b as i32).collect();
    let offsets: Vec<i32> = queries.iter().map(|&(seq, _)| starts[seq]).collect();
    let pos: Vec<i32> = queries.iter().map(|&(_, p)| p as i32).collect();
    let max_keys = queries.iter().map(|&(_, p)| p + 1).max().unwrap();
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
        max_keys,
    };
    let kv_b = Linear::Dense(Matrix::new(d.heads * (d.qk_nope + d.v), d.kv_lora, kv_b).unwrap());
    let weights = MlaWeights::upload(device, &kv_b, &d).unwrap();
    for w in [&weights.uk_t, &weights.uv] {
        assert_eq!(matches!(w, DeviceLinear::Bf16 { .. }), bf16_kv_b, "{w:?}");
    }
    let mut workspace = MlaWorkspace::new(device, &d, queries.len()).unwrap();
    let (latent, rope_key) = (
        device.upload(&latent).unwrap(),
        device.upload(&rope_key).unwrap(),
    );
    let q = device.upload(&q).unwrap();
    let mut out = poisoned(device, want.len());
    ops.mla_attention(
        &s,
        &q,
        &latent,
        &rope_key,
        &weights,
        &keys,
        queries.len(),
        &d,
        scale,
        &mut workspace,
        &mut out,
    )
    .unwrap();
    s.synchronize().unwrap();
    let launch = mla_launch(queries.len(), d.heads, max_keys);
    check(
        &format!(
            "mla_attention {d:?} block {block}, {} queries, {max_keys} keys at most, {launch:?}, \
             kv_b {}",
            queries.len(),
            if bf16_kv_b { "bf16" } else { "f32" }
        ),
        &out,
        &want,
    );

    let too_many = PagedKeys {
        max_keys: MLA_MAX_KEYS + 1,
        ..keys
    };
    let err = ops
        .mla_attention(
            &s,
            &q,
            &latent,
            &rope_key,
            &weights,
            &too_many,
            queries.len(),
            &d,
            scale,
            &mut workspace,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("max_keys"), "{err}");
}

/// Absorbed MLA attention against the reference: decode batches over key lengths around a
/// cache block (1, 63, 64, 65) and a few hundred, a ragged batch of 16 sequences, prefill
/// chunks (every position of a sequence, and a chunk after a cached prefix; one key split),
/// the old shared-memory cap exceeded (70 000 keys), small blocks of 8 rows, the tiny test
/// model's dimensions, odd dimensions that take the scalar paths, and head counts that leave
/// a partial group of heads.
#[test]
fn mla_attention_matches_the_reference() {
    let Some(device) = first_gpu("mla_attention_matches_the_reference") else {
        return;
    };
    let ops = ModelOps::compile(&device).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let kimi = |heads| MlaDims {
        heads,
        qk_nope: 128,
        qk_rope: 64,
        v: 128,
        kv_lora: 512,
    };
    let last = |lens: &[usize]| -> Vec<(usize, usize)> {
        lens.iter().enumerate().map(|(s, &l)| (s, l - 1)).collect()
    };

    let lens = [1, 63, 64, 65, 300];
    attention_case(
        &device,
        &ops,
        &mut rng,
        (kimi(12), 64),
        &lens,
        &last(&lens),
        false,
    );

    let lens: Vec<usize> = (0..16).map(|_| rng.random_range(1..=1000)).collect();
    attention_case(
        &device,
        &ops,
        &mut rng,
        (kimi(16), 64),
        &lens,
        &last(&lens),
        true,
    );

    let lens = [200, 90];
    let queries: Vec<(usize, usize)> = (0..200)
        .map(|p| (0, p))
        .chain((60..90).map(|p| (1, p)))
        .collect();
    attention_case(
        &device,
        &ops,
        &mut rng,
        (kimi(12), 64),
        &lens,
        &queries,
        true,
    );

    let lens = [70_000, 4_500];
    let queries = [(0, 69_999), (1, 4_499), (0, 57_000)];
    attention_case(
        &device,
        &ops,
        &mut rng,
        (kimi(8), 64),
        &lens,
        &queries,
        true,
    );

    let lens = [40, 21];
    let queries = [(0, 0), (0, 39), (1, 7), (1, 8), (1, 20), (0, 12), (0, 23)];
    attention_case(
        &device,
        &ops,
        &mut rng,
        (kimi(4), 8),
        &lens,
        &queries,
        false,
    );

    let tiny = MlaDims {
        heads: 4,
        qk_nope: 16,
        qk_rope: 8,
        v: 16,
        kv_lora: 32,
    };
    let lens = [5, 130];
    attention_case(
        &device,
        &ops,
        &mut rng,
        (tiny, 64),
        &lens,
        &last(&lens),
        true,
    );

    let odd = MlaDims {
        heads: 3,
        qk_nope: 20,
        qk_rope: 6,
        v: 12,
        kv_lora: 36,
    };
    let lens = [17, 70];
    let queries = [(1, 69), (0, 16), (1, 3)];
    attention_case(&device, &ops, &mut rng, (odd, 16), &lens, &queries, false);

    // One query (a decode step of one sequence): the absorptions over rows of at most 16
    // chunks take the short-row kernels (Kimi's k = 128 as bf16, the tiny dims' 16 and 32 as
    // f32; the odd dims' 20 and 36 through their scalar path).
    for (dims, bf16_kv_b) in [(kimi(16), true), (tiny, false), (odd, false)] {
        let lens = [300];
        attention_case(
            &device,
            &ops,
            &mut rng,
            (dims, 16),
            &lens,
            &last(&lens),
            bf16_kv_b,
        );
    }
}
