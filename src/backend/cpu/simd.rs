//! Which vector instructions the CPU ops' inner loops are compiled for.
//!
//! The hot loops are compiled for AVX-512, for AVX2 with FMA, and for the baseline instruction
//! set (whatever the target guarantees: SSE2 on x86-64, NEON on aarch64); the best one the CPU
//! supports is picked at run time, so one binary runs everywhere and uses what it finds. Most are
//! written once as plain Rust over fixed-size arrays and compiled three times by
//! [`for_each_isa`]; the convolutions' register tiles in f32 are written with x86 intrinsics
//! (`conv/x86.rs`), because LLVM vectorizes some of the plain forms along the wrong loop.
//!
//! The variants differ only in how many values one instruction handles and in register tile
//! sizes; every output element is computed by the same sequence of IEEE operations (fused
//! multiply-adds in a fixed order) in all of them, so **results are bit-identical whatever the
//! instruction set** (and, because no sum is split by thread, whatever the thread count);
//! `tests/cpu_isa.rs` checks it. Without hardware FMA the baseline variant computes each fused
//! multiply-add in software: correct to the bit, but slow (x86-64 CPUs older than 2013).
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512 F/VL (and AVX2, FMA): 32 vector registers of 16 floats.
    Avx512,
    /// x86-64 with AVX2 and FMA: 16 vector registers of 8 floats.
    Avx2,
    /// Whatever the compilation target guarantees.
    Baseline,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Baseline => "baseline",
        }
    }

    /// Whether this CPU can run the variant.
    pub fn supported(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn from_code(code: u8) -> Isa {
        match code {
            1 => Isa::Avx512,
            2 => Isa::Avx2,
            _ => Isa::Baseline,
        }
    }

    fn code(self) -> u8 {
        match self {
            Isa::Avx512 => 1,
            Isa::Avx2 => 2,
            Isa::Baseline => 3,
        }
    }
}

/// 0: not chosen yet.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The variant the CPU ops run: the best this CPU supports, unless `CEPHALO_CPU_ISA`
/// (`avx512`, `avx2` or `baseline`) or [`set_isa`] asks for a lower one.
pub fn isa() -> Isa {
    match CHOSEN.load(Ordering::Relaxed) {
        0 => {
            let best = [Isa::Avx512, Isa::Avx2, Isa::Baseline]
                .into_iter()
                .find(|i| i.supported())
                .unwrap_or(Isa::Baseline);
            let wanted = std::env::var("CEPHALO_CPU_ISA").ok().and_then(|v| {
                [Isa::Avx512, Isa::Avx2, Isa::Baseline]
                    .into_iter()
                    .find(|i| i.name() == v)
            });
            let isa = match wanted {
                Some(w) if w.supported() => w,
                Some(w) => {
                    eprintln!(
                        "warning: CEPHALO_CPU_ISA={} is not supported by this CPU; using {}",
                        w.name(),
                        best.name()
                    );
                    best
                }
                None => best,
            };
            CHOSEN.store(isa.code(), Ordering::Relaxed);
            isa
        }
        code => Isa::from_code(code),
    }
}

/// Makes the CPU ops run `isa` from now on (tests compare the variants bit for bit).
pub fn set_isa(isa: Isa) -> anyhow::Result<()> {
    anyhow::ensure!(isa.supported(), "this CPU cannot run the {} kernels", isa.name());
    CHOSEN.store(isa.code(), Ordering::Relaxed);
    Ok(())
}

/// Compiles an `#[inline(always)]` function `$body<T: Real, const ..: usize>` once per
/// instruction set, as `$module::{avx512, avx2, baseline}`: the body is inlined into a
/// `#[target_feature]` function of each, so the same source is vectorised for each. The x86
/// variants are `unsafe` to call: only where [`Isa::supported`] says the CPU has the features,
/// which [`isa`] guarantees for the variant it returns.
macro_rules! for_each_isa {
    ($module:ident: $body:ident<$($cn:ident),*>($($a:ident: $t:ty),* $(,)?)) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            pub unsafe fn avx512<T: $crate::backend::cpu::Real, $(const $cn: usize),*>($($a: $t),*) {
                super::$body::<T, $($cn),*>($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn avx2<T: $crate::backend::cpu::Real, $(const $cn: usize),*>($($a: $t),*) {
                super::$body::<T, $($cn),*>($($a),*)
            }
            pub fn baseline<T: $crate::backend::cpu::Real, $(const $cn: usize),*>($($a: $t),*) {
                super::$body::<T, $($cn),*>($($a),*)
            }
        }
    };
}
pub(crate) use for_each_isa;

/// Calls the variant of a [`for_each_isa`] module that [`isa`] picks:
/// `on_isa!(module::<T>(args...))`.
macro_rules! on_isa {
    ($module:ident::<$t:ty>($($a:expr),* $(,)?)) => {
        match $crate::backend::cpu::simd::isa() {
            // SAFETY: `isa()` only returns instruction sets this CPU supports.
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::simd::Isa::Avx512 => unsafe { $module::avx512::<$t>($($a),*) },
            #[cfg(target_arch = "x86_64")]
            $crate::backend::cpu::simd::Isa::Avx2 => unsafe { $module::avx2::<$t>($($a),*) },
            _ => $module::baseline::<$t>($($a),*),
        }
    };
}
pub(crate) use on_isa;
