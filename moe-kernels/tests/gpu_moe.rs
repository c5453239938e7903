//! The GPU MoE kernels against the CPU reference, on every GPU present (skipped, with a
//! message, where there is none). Fresh random inputs from a seed per case; outputs and
//! scratch memory poisoned with NaN first, so an element nobody wrote fails the check.

use half::bf16;
use moe_kernels::gpu::{
    ExpertPath, MoeIo, MoeKernels, MoeShape, MoeWeights, MoeWorkspace, QuantizedActivations,
    Routing, SharedExpertMode,
};
use moe_kernels::reference::{
    ActivationMode, ActivationQuant, Linear, MlpWeights, Mxfp4Matrix, RoutingParams, ScaleRule,
    fake_quantize_rows, mlp, moe_forward, route_noaux_tc,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use runtime_rocm::{Device, DeviceBuffer, Stream, gpus};

/// Relative L2 error allowed on a layer's bf16 output: bf16 rounding of the output alone is
/// about 1e-3; the f32 sums run in another order than the reference's (METHOD.md: bf16
/// operands land between 1e-3 and 1e-2).
const LAYER_TOLERANCE: f64 = 1e-2;

fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = 1.0 - rng.random::<f32>();
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The layer's element types as the tests make and read them.
trait Io: MoeIo {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Io for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Io for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Host copies of stacked expert weights: random E2M1 codes, E8M0 scales in 118..=124.
struct HostExperts {
    shape: MoeShape,
    w13: Vec<u8>,
    s13: Vec<u8>,
    w2: Vec<u8>,
    s2: Vec<u8>,
}

impl HostExperts {
    fn random(rng: &mut StdRng, shape: MoeShape) -> Self {
        let (h, i, e) = (shape.hidden, shape.inter, shape.slots());
        let mut bytes = |n: usize| {
            let mut v = vec![0u8; n];
            rng.fill_bytes(&mut v);
            v
        };
        let w13 = bytes(e * 2 * i * h / 2);
        let w2 = bytes(e * h * i / 2);
        let mut scales = |n: usize| {
            (0..n)
                .map(|_| rng.random_range(118u8..=124))
                .collect::<Vec<u8>>()
        };
        let s13 = scales(e * 2 * i * h / 32);
        let s2 = scales(e * h * i / 32);
        HostExperts {
            shape,
            w13,
            s13,
            w2,
            s2,
        }
    }

    fn upload(&self, device: &Device) -> MoeWeights {
        MoeWeights::new(
            self.shape,
            device.upload(&self.w13).unwrap(),
            device.upload(&self.s13).unwrap(),
            device.upload(&self.w2).unwrap(),
            device.upload(&self.s2).unwrap(),
        )
        .unwrap()
    }

    /// The reference's view of expert slot `e`.
    fn mlp(&self, e: usize, act: ActivationQuant) -> MlpWeights {
        let (h, i) = (self.shape.hidden, self.shape.inter);
        let matrix =
            |packed: &[u8], scales: &[u8], rows: usize, cols: usize, row0: usize| Linear::Mxfp4 {
                weight: Mxfp4Matrix::new(
                    rows,
                    cols,
                    packed[row0 * cols / 2..(row0 + rows) * cols / 2].to_vec(),
                    scales[row0 * cols / 32..(row0 + rows) * cols / 32].to_vec(),
                )
                .unwrap(),
                activations: act,
            };
        MlpWeights {
            gate_proj: matrix(&self.w13, &self.s13, i, h, e * 2 * i),
            up_proj: matrix(&self.w13, &self.s13, i, h, e * 2 * i + i),
            down_proj: matrix(&self.w2, &self.s2, h, i, e * h),
        }
    }
}

struct LayerCase {
    shape: MoeShape,
    params: RoutingParams,
    tokens: &'static [usize],
}

fn routing(n_group: usize, topk_group: usize, top_k: usize, rsf: f32) -> RoutingParams {
    RoutingParams {
        n_group,
        topk_group,
        top_k,
        norm_topk_prob: true,
        routed_scaling_factor: rsf,
        shared_slots: 0,
    }
}

fn small(n_routed: usize, n_shared: usize) -> MoeShape {
    MoeShape {
        hidden: 256,
        inter: 128,
        n_routed,
        n_shared,
    }
}

/// Runs one layer on the GPU and the reference and compares them; the reference sees the
/// input exactly as uploaded. `ws` may have served earlier calls (as the model's one
/// workspace serves every batch): nothing a forward leaves behind may change the next.
#[allow(clippy::too_many_arguments)]
fn check_layer<T: Io>(
    kernels: &MoeKernels,
    stream: &Stream,
    host: &HostExperts,
    weights: &MoeWeights,
    params: RoutingParams,
    act: ActivationQuant,
    mode: SharedExpertMode,
    n_tokens: usize,
    ws: &mut MoeWorkspace,
    rng: &mut StdRng,
) {
    let device = kernels.device();
    let shape = host.shape;
    let params = RoutingParams {
        shared_slots: if mode == SharedExpertMode::Fused {
            shape.n_shared
        } else {
            0
        },
        ..params
    };
    let x: Vec<T> = (0..n_tokens * shape.hidden)
        .map(|_| T::from_f32(normal(rng)))
        .collect();
    let logits: Vec<f32> = (0..n_tokens * shape.n_routed)
        .map(|_| normal(rng))
        .collect();
    let bias: Vec<f32> = (0..shape.n_routed).map(|_| 0.1 * normal(rng)).collect();

    ws.fill(0xff).unwrap();
    let mut out: DeviceBuffer<T> = device.alloc_uninit(n_tokens * shape.hidden).unwrap();
    out.memset(0xff).unwrap();
    kernels
        .forward(
            stream,
            weights,
            &params,
            act,
            mode,
            &device.upload(&x).unwrap(),
            &device.upload(&logits).unwrap(),
            &device.upload(&bias).unwrap(),
            n_tokens,
            ws,
            &mut out,
        )
        .unwrap();
    stream.synchronize().unwrap();
    let got: Vec<f32> = out.to_vec().unwrap().into_iter().map(T::to_f32).collect();

    let x32: Vec<f32> = x.into_iter().map(T::to_f32).collect();
    let routes: Vec<_> = (0..n_tokens)
        .flat_map(|t| {
            route_noaux_tc(
                &logits[t * shape.n_routed..(t + 1) * shape.n_routed],
                &bias,
                &params,
            )
        })
        .collect();
    let experts: Vec<MlpWeights> = (0..shape.slots()).map(|e| host.mlp(e, act)).collect();
    let mut want = vec![0f32; n_tokens * shape.hidden];
    moe_forward(
        &x32,
        n_tokens,
        &routes,
        &experts,
        params.routed_scaling_factor,
        ActivationMode::Quantized,
        &mut want,
    );
    if mode == SharedExpertMode::Separate {
        for shared_expert in &experts[shape.n_routed..] {
            let mut y = vec![0f32; want.len()];
            mlp(
                &x32,
                n_tokens,
                shared_expert,
                ActivationMode::Quantized,
                &mut y,
            );
            want.iter_mut().zip(&y).for_each(|(w, y)| *w += y);
        }
    }

    let label = format!(
        "{shape:?} {mode:?} {act:?} {:?} {} I/O tokens {n_tokens}",
        kernels.expert_path(),
        std::any::type_name::<T>()
    );
    let unwritten = got.iter().filter(|v| !v.is_finite()).count();
    assert_eq!(
        unwritten, 0,
        "{label}: {unwritten} output elements not finite (unwritten or NaN)"
    );
    let err = rel_l2(&got, &want);
    eprintln!("{label}: relative L2 error {err:.2e}");
    assert!(
        err < LAYER_TOLERANCE,
        "{label}: relative L2 error {err:.3e} ≥ {LAYER_TOLERANCE}"
    );
}

/// Runs every case on every GPU (`test` names the caller in the skip message).
fn run_layer_cases<T: Io>(test: &str, cases: &[LayerCase], acts: &[ActivationQuant], seed: u64) {
    for device in gpus(test) {
        let stream = device.create_stream().unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        for case in cases {
            let mut kernels =
                MoeKernels::compile(&device, case.shape.hidden, case.shape.inter).unwrap();
            let host = HostExperts::random(&mut rng, case.shape);
            let weights = host.upload(&device);
            for &act in acts {
                for path in expert_paths(&kernels, act) {
                    kernels.set_expert_path(path).unwrap();
                    for mode in [SharedExpertMode::Fused, SharedExpertMode::Separate] {
                        // One workspace for every token count, in turn, as in the model.
                        let most = case.tokens.iter().copied().max().unwrap();
                        let mut ws =
                            MoeWorkspace::new(&device, case.shape, case.params.top_k, most)
                                .unwrap();
                        for &n in case.tokens {
                            check_layer::<T>(
                                &kernels,
                                &stream,
                                &host,
                                &weights,
                                case.params,
                                act,
                                mode,
                                n,
                                &mut ws,
                                &mut rng,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every expert path that computes `act` differently on this device: W4A4 runs on both the
/// GEMV and (where present) the tensor-core kernels, at every token count.
fn expert_paths(kernels: &MoeKernels, act: ActivationQuant) -> Vec<ExpertPath> {
    match act {
        ActivationQuant::None => vec![ExpertPath::Gemv],
        ActivationQuant::Mxfp4(_) if kernels.has_tensor_cores() => {
            vec![ExpertPath::Gemv, ExpertPath::TensorCore]
        }
        ActivationQuant::Mxfp4(_) => {
            eprintln!(
                "tensor-core path skipped: {} has no E4M3 tensor cores",
                kernels.device().info().name
            );
            vec![ExpertPath::Gemv]
        }
    }
}

const W4A4: ActivationQuant = ActivationQuant::Mxfp4(ScaleRule::Even);

#[test]
fn layer_matches_reference_on_validated_and_other_expert_counts() {
    let cases = [
        // DeepSeek-V3: 256 routed + 1 shared (257 slots fused), 8 groups keep 4.
        LayerCase {
            shape: small(256, 1),
            params: routing(8, 4, 8, 2.5),
            tokens: &[1, 5, 64, 700],
        },
        // Kimi-K2.5: 384 routed + 1 shared (385 slots fused), one group.
        LayerCase {
            shape: small(384, 1),
            // 1 to 8 tokens take the staged gate_up kernels (6 a partly filled 8-token one),
            // 9 and more the tile one.
            params: routing(1, 1, 8, 2.827),
            tokens: &[1, 2, 4, 6, 8, 9, 33, 4096],
        },
        // Not a validated count: 160 routed, shared MLP split into 2 slots, top-6.
        LayerCase {
            shape: small(160, 2),
            params: routing(1, 1, 6, 16.0),
            tokens: &[1, 3, 200],
        },
    ];
    run_layer_cases::<bf16>(
        "layer_matches_reference_on_validated_and_other_expert_counts",
        &cases,
        &[W4A4, ActivationQuant::Mxfp4(ScaleRule::Ocp)],
        0x5eed_0001,
    );
}

#[test]
fn layer_with_f32_input_and_output_matches_reference() {
    // The GPU model's path: f32 in and out, W4A4 quantizing the unrounded f32 input.
    let cases = [
        LayerCase {
            shape: small(256, 1),
            params: routing(8, 4, 8, 2.5),
            tokens: &[1, 5, 64],
        },
        LayerCase {
            shape: small(384, 1),
            params: routing(1, 1, 8, 2.827),
            tokens: &[1, 33],
        },
    ];
    run_layer_cases::<f32>(
        "layer_with_f32_input_and_output_matches_reference",
        &cases,
        &[
            W4A4,
            ActivationQuant::Mxfp4(ScaleRule::Ocp),
            ActivationQuant::None,
        ],
        0x5eed_0006,
    );
}

#[test]
fn layer_with_bf16_activations_matches_reference() {
    let cases = [LayerCase {
        shape: small(384, 1),
        params: routing(1, 1, 8, 2.827),
        tokens: &[1, 9, 300],
    }];
    run_layer_cases::<bf16>(
        "layer_with_bf16_activations_matches_reference",
        &cases,
        &[ActivationQuant::None],
        0x5eed_0002,
    );
}

#[test]
fn full_width_experts_match_reference() {
    // The production expert shape (hidden 7168, intermediate 2048) with few experts, so the
    // reference stays quick: every lane's chunk loop runs at its real trip count.
    let shape = MoeShape {
        hidden: 7168,
        inter: 2048,
        n_routed: 16,
        n_shared: 1,
    };
    let cases = [LayerCase {
        shape,
        params: routing(1, 1, 8, 2.827),
        tokens: &[1, 8, 40],
    }];
    run_layer_cases::<bf16>(
        "full_width_experts_match_reference",
        &cases,
        &[W4A4, ActivationQuant::None],
        0x5eed_0003,
    );
}

#[test]
fn routing_matches_reference() {
    for device in gpus("routing_matches_reference") {
        let stream = device.create_stream().unwrap();
        let kernels = MoeKernels::compile(&device, 256, 128).unwrap();
        let mut rng = StdRng::seed_from_u64(0x5eed_0004);
        // (routed experts, routing, shared slots)
        let cases = [
            (256, routing(8, 4, 8, 2.5), 1),
            (256, routing(8, 4, 8, 2.5), 0),
            (384, routing(1, 1, 8, 2.827), 1),
            (384, routing(1, 1, 8, 2.827), 0),
            (160, routing(4, 2, 6, 16.0), 2),
        ];
        for (n_routed, params, shared_slots) in cases {
            let params = RoutingParams {
                shared_slots,
                ..params
            };
            let n_tokens = 300;
            let mut logits: Vec<f32> = (0..n_tokens * n_routed).map(|_| normal(&mut rng)).collect();
            // A non-finite hidden state: token 0's logits are all NaN, tokens 1 and 2 have one
            // NaN of either sign. Each must take valid experts, the ones the reference takes.
            logits[..n_routed].fill(f32::NAN);
            logits[n_routed + rng.random_range(0..n_routed)] = f32::NAN;
            logits[2 * n_routed + rng.random_range(0..n_routed)] = -f32::NAN;
            let bias: Vec<f32> = (0..n_routed).map(|_| 0.1 * normal(&mut rng)).collect();
            let slots = params.top_k + shared_slots;
            let mut out = Routing::alloc(&device, n_tokens * slots).unwrap();
            out.ids.memset(0xff).unwrap();
            out.weights.memset(0xff).unwrap();
            kernels
                .route(
                    &stream,
                    &device.upload(&logits).unwrap(),
                    &device.upload(&bias).unwrap(),
                    n_tokens,
                    n_routed,
                    &params,
                    &mut out,
                )
                .unwrap();
            stream.synchronize().unwrap();
            let (ids, weights) = (out.ids.to_vec().unwrap(), out.weights.to_vec().unwrap());
            for t in 0..n_tokens {
                let want =
                    route_noaux_tc(&logits[t * n_routed..(t + 1) * n_routed], &bias, &params);
                for (s, r) in want.iter().enumerate() {
                    let (id, w) = (ids[t * slots + s], weights[t * slots + s]);
                    assert_eq!(
                        id as usize, r.expert,
                        "{n_routed} experts, token {t}, slot {s}: expert"
                    );
                    assert!(
                        (w - r.weight).abs() <= 1e-6 * r.weight.abs().max(1.0)
                            || (w.is_nan() && r.weight.is_nan()),
                        "{n_routed} experts, token {t}, slot {s}: weight {w} vs {}",
                        r.weight
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantization_matches_reference_exactly() {
    for device in gpus("activation_quantization_matches_reference_exactly") {
        let stream = device.create_stream().unwrap();
        let kernels = MoeKernels::compile(&device, 256, 128).unwrap();
        let mut rng = StdRng::seed_from_u64(0x5eed_0005);
        check_quantize::<bf16>(&kernels, &stream, &mut rng);
        check_quantize::<f32>(&kernels, &stream, &mut rng);
    }
}

/// Quantizes rows of `T` on the GPU and checks every element against
/// [`fake_quantize_rows`] of the same values.
fn check_quantize<T: Io>(kernels: &MoeKernels, stream: &Stream, rng: &mut StdRng) {
    let device = kernels.device();
    let (rows, cols) = (37, 256);
    // Blocks of very different magnitudes, from denormal-range scales to large ones, and
    // some all-zero blocks.
    let x: Vec<T> = (0..rows * cols / 32)
        .flat_map(|_| {
            let magnitude = 2f32.powi(rng.random_range(-130..40));
            let zero = rng.random_range(0..10) == 0;
            (0..32)
                .map(|_| T::from_f32(if zero { 0.0 } else { magnitude * normal(rng) }))
                .collect::<Vec<_>>()
        })
        .collect();
    let x32: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let ty = std::any::type_name::<T>();
    for rule in [ScaleRule::Even, ScaleRule::Ocp] {
        let mut q = QuantizedActivations::alloc(device, rows * cols).unwrap();
        q.values.memset(0x7f).unwrap();
        q.scales.memset(0xff).unwrap();
        kernels
            .quantize(
                stream,
                &device.upload(&x).unwrap(),
                rows,
                cols,
                rule,
                &mut q,
            )
            .unwrap();
        stream.synchronize().unwrap();
        let (values, scales) = (q.values.to_vec().unwrap(), q.scales.to_vec().unwrap());
        let want = fake_quantize_rows(&x32, cols, rule);
        for (i, w) in want.iter().enumerate() {
            let s = scales[i / 32];
            assert_ne!(s, 0xff, "{ty} {rule:?}: scale {} unwritten", i / 32);
            let scale = if s == 0 {
                f32::from_bits(0x0040_0000)
            } else {
                f32::from_bits(u32::from(s) << 23)
            };
            let got = f32::from(values[i]) * 0.5 * scale;
            assert_eq!(
                got, *w,
                "{ty} {rule:?}: element {i} (x = {}) quantized to {got}, reference {w}",
                x32[i]
            );
        }
    }
}
