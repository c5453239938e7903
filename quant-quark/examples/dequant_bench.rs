//! Times the MXFP4 dequantizers on one core: 1 GiB of packed weights (plus their E8M0 scales)
//! decoded to f32 and to bf16, the CPU model's hot path; then the activation fake-quantizer.
//!
//! `cargo run --release -p quant-quark --example dequant_bench`
//!
//! The weights are streamed through a 32 MiB packed buffer decoded 32 times, so the output
//! (256 MiB of f32) is far larger than any cache and the numbers include memory traffic.

use std::hint::black_box;
use std::time::Instant;

use half::bf16;
use quant_quark::ScaleRule;
use quant_quark::mxfp4::{BLOCK, dequantize_bf16, dequantize_f32, fake_quantize};

const CHUNK_BYTES: usize = 32 << 20;
const REPEATS: usize = 32;
const RUNS: usize = 3;

fn main() -> Result<(), quant_quark::CodecError> {
    // A fixed xorshift stream: every byte is a valid pair of codes, scales stay in 100..150.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let packed: Vec<u8> = (0..CHUNK_BYTES).map(|_| next() as u8).collect();
    let elements = CHUNK_BYTES * 2;
    let scales: Vec<u8> = (0..elements / BLOCK)
        .map(|_| 100 + (next() % 50) as u8)
        .collect();
    let mut out_f32 = vec![0.0f32; elements];
    let mut out_bf16 = vec![bf16::ZERO; elements];

    let total_packed = (CHUNK_BYTES * REPEATS) as f64;
    println!("MXFP4 dequantize, one core, 1 GiB packed (+ 32 MiB scales) per run, best of {RUNS}");
    println!(
        "{:<8} {:>10} {:>14} {:>14}",
        "output", "seconds", "packed GB/s", "output GB/s"
    );
    for (name, out_bytes) in [("f32", 4.0), ("bf16", 2.0)] {
        let mut best = f64::INFINITY;
        for _ in 0..RUNS {
            let start = Instant::now();
            for _ in 0..REPEATS {
                if name == "f32" {
                    dequantize_f32(black_box(&packed), black_box(&scales), &mut out_f32)?;
                    black_box(&out_f32);
                } else {
                    dequantize_bf16(black_box(&packed), black_box(&scales), &mut out_bf16)?;
                    black_box(&out_bf16);
                }
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{:<8} {:>10.3} {:>14.2} {:>14.2}",
            name,
            best,
            total_packed / best / 1e9,
            total_packed * 2.0 * out_bytes / best / 1e9
        );
    }

    // W4A4 layers fake-quantize their activations on every call; far less data, but per element
    // it is the slower direction, so it is timed too (64 MiB of f32, a large prefill batch).
    let mut activations: Vec<f32> = out_f32[..16 << 20].to_vec();
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let start = Instant::now();
        fake_quantize(black_box(&mut activations), ScaleRule::Even)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    let bytes = (activations.len() * 4) as f64;
    println!();
    println!(
        "MXFP4 fake-quantize (\"even\" rule), one core, 64 MiB of f32 activations, best of {RUNS}"
    );
    println!("{:<8} {:>10} {:>14}", "input", "seconds", "f32 GB/s");
    println!("{:<8} {:>10.3} {:>14.2}", "f32", best, bytes / best / 1e9);
    Ok(())
}
