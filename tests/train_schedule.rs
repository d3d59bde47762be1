//! Warmup + cosine annealing with warm restarts: values at chosen iterations, computed by hand
//! from the formula of docs/maths.md#learning-rate-schedule
//! (lr = lr_min + (lr_max - lr_min) * (1 + cos(pi*T_cur/T_i)) / 2).
use cephalo::train::schedule::WarmupCosineRestarts;

const MAX: f64 = 1e-3;
const MIN: f64 = 1e-5;

fn check(s: &WarmupCosineRestarts, cases: &[(u64, f64)]) {
    for &(it, want) in cases {
        let got = s.lr_at(it);
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "iteration {it}: lr {got}, want {want}"
        );
    }
}

#[test]
fn warmup_then_equal_cycles() {
    // 10 iterations per epoch, 2 warmup epochs, then 4-epoch cycles.
    let s = WarmupCosineRestarts::new(MAX, MIN, 2.0, 10, 4.0, 1.0).unwrap();
    check(
        &s,
        &[
            (0, 5e-5),                   // (0 + 1/10) / 2 of lr_max: warmup starts near 0
            (7, 4e-4),                   // (0.7 + 0.1) / 2
            (19, MAX),                   // last warmup iteration reaches lr_max
            (20, MAX),                   // cosine starts at its top
            (30, 0.000855017856687341),  // T_cur = 1 of 4: cos(pi/4)
            (40, 0.000505),              // half way: (max + min) / 2
            (59, 1.1525919802101659e-5), // T_cur = 3.9 of 4, near the bottom
            (60, MAX),                   // restart
            (70, 0.000855017856687341),  // second cycle repeats the first
        ],
    );
}

#[test]
fn cycles_doubling_in_length() {
    // No warmup, T_0 = 1 epoch, T_mult = 2: cycles start at epochs 0, 1, 3, 7, 15.
    let s = WarmupCosineRestarts::new(MAX, MIN, 0.0, 4, 1.0, 2.0).unwrap();
    check(
        &s,
        &[
            (0, MAX),
            (2, 0.000505),               // T_cur = 0.5 of 1
            (4, MAX),                    // restart at epoch 1
            (10, 0.000154982143312659),  // epoch 2.5: T_cur = 1.5 of 2
            (12, MAX),                   // restart at epoch 3
            (27, 1.9511286200400937e-5), // epoch 6.75: T_cur = 3.75 of 4
            (28, MAX),                   // restart at epoch 7
            (44, 0.000505),              // epoch 11: T_cur = 4 of 8
        ],
    );
}

#[test]
fn restarts_land_exactly_where_the_logarithm_is_inexact() {
    // T_0 = 2, T_mult = 3: cycles start at 0, 2, 8, 26; log_3(27) is not exactly 3 in floating point.
    let s = WarmupCosineRestarts::new(MAX, MIN, 0.0, 1, 2.0, 3.0).unwrap();
    check(
        &s,
        &[
            (2, MAX),
            (7, 7.631742512670284e-5), // T_cur = 5 of 6
            (8, MAX),
            (25, 1.752016225895703e-5), // T_cur = 17 of 18
            (26, MAX),
        ],
    );
}

#[test]
fn warmup_rises_and_each_cycle_falls_monotonically() {
    let s = WarmupCosineRestarts::new(5e-4, 0.0, 5.0, 37, 95.0, 1.0).unwrap();
    let lrs: Vec<f64> = (0..100 * 37).map(|i| s.lr_at(i)).collect();
    assert!(lrs[..185].windows(2).all(|w| w[1] > w[0]));
    assert!(lrs[185..].windows(2).all(|w| w[1] < w[0]));
    assert!(lrs.iter().all(|&lr| lr > 0.0 && lr <= 5e-4));
}
