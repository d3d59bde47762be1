//! The CPU numerics that depend on transcendental functions give the same bits on every
//! platform: the Adaptive Wing loss (powf, log1p), the photometric augmentation (gamma: log, exp,
//! powf; blur taps: exp), the heatmap targets (exp) and the rotation of the geometric augmentation (sin, cos) use the
//! pure-Rust libm, not the platform's C library (glibc and Windows' CRT round them differently,
//! which made one seed give other training runs under Windows). The expected digests were
//! recorded on Linux; `scripts/windows-smoke.sh` runs this test under Wine, where they must hold
//! unchanged.
use cephalo::backend::AWingParams;
use cephalo::data::augment::{photometric, AugmentConfig};
use cephalo::data::geometry::{gaussian_kernel, Affine, Plane};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// FNV-1a over the bit patterns.
fn digest(values: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in values {
        for b in v.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[test]
fn awing_loss_bits_are_the_same_everywhere() {
    let params = AWingParams::default();
    let mut bits = Vec::new();
    for i in 0..200 {
        for j in 0..50 {
            let (p, y) = (i as f32 / 133.0 - 0.2, j as f32 / 49.0);
            let (loss, grad) = params.loss_and_grad(p, y);
            bits.push(loss.to_bits() as u64);
            bits.push(grad.to_bits() as u64);
        }
        let (a, c) = params.linear_coeffs(i as f32 / 199.0);
        bits.push(a.to_bits() as u64);
        bits.push(c.to_bits() as u64);
    }
    assert_eq!(digest(bits), AWING_DIGEST, "Adaptive Wing loss bits changed");
}

#[test]
fn augmentation_bits_are_the_same_everywhere() {
    let mut bits = Vec::new();
    for seed in 0..20u64 {
        let mut image = Plane {
            width: 48,
            height: 40,
            data: (0..48 * 40).map(|i| ((i * 37) % 256) as f32 / 255.0).collect(),
        };
        let cfg = AugmentConfig {
            blur_probability: 0.5,
            ..AugmentConfig::default()
        };
        photometric(&mut ChaCha8Rng::seed_from_u64(seed), &cfg, &mut image);
        bits.extend(image.data.iter().map(|v| v.to_bits() as u64));
        let rotation = Affine::rotation(seed as f64 * 0.173 - 1.5);
        bits.extend(rotation.apply([123.25, -45.5]).map(f64::to_bits));
    }
    bits.extend(gaussian_kernel(0.83, 3).iter().map(|v| v.to_bits() as u64));
    // The heatmap targets (exp) of a few sub-pixel points.
    let targets = cephalo::data::heatmap::encode(&[[3.3, 4.7], [10.25, 2.5]], 16, 16, 2.0);
    bits.extend(targets.iter().map(|v| v.to_bits() as u64));
    assert_eq!(digest(bits), AUGMENT_DIGEST, "augmentation bits changed");
}

const AWING_DIGEST: u64 = 11155239778739384253;
const AUGMENT_DIGEST: u64 = 5684416547341904728;
