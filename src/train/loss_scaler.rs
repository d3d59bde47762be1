//! Dynamic loss scaling (docs/maths.md#dynamic-loss-scaling, the usual GradScaler behaviour).
//!
//! The loss gradient is multiplied by `scale` before its fp16 cast so that small gradients stay
//! representable; the optimizer divides it out again in fp32. When any unscaled gradient is
//! inf/NaN the step is skipped (weights, moments and the step count untouched) and the scale
//! halves; after `growth_interval` consecutive good steps it doubles.
use serde::{Deserialize, Serialize};

/// What the trainer must do with the step whose gradients were just checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome {
    /// Gradients finite: apply the optimizer step. `grew` is set when the scale just doubled.
    Apply { grew: bool },
    /// Gradients overflowed: skip the optimizer step. The trainer logs this.
    Skip { old_scale: f32, new_scale: f32 },
}

/// The scale fell below its floor: the gradients are inf/NaN at every scale, so the loss or the
/// weights themselves have gone bad and lowering the scale further cannot help.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "gradients are still inf/NaN after lowering the loss scale to {scale} (floor {min_scale}): \
     the loss or the weights are not finite; try a lower --lr or resume from the last good checkpoint"
)]
pub struct ScaleCollapsed {
    pub scale: f32,
    pub min_scale: f32,
}

/// Dynamic loss scaler; its whole state is serialisable so checkpoints resume it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicLossScaler {
    scale: f32,
    /// Consecutive good steps since the last change of scale.
    good_steps: u32,
    /// Good steps needed before the scale doubles; 0 never grows it.
    growth_interval: u32,
    /// Lowest scale tolerated before the overflow is treated as a real failure.
    min_scale: f32,
    /// Steps skipped over the whole run, for the logs.
    skipped_steps: u64,
}

impl Default for DynamicLossScaler {
    /// Scale 2^16, doubling after 2000 good steps, floor 1.
    fn default() -> Self {
        Self::new(65536.0, 2000, 1.0)
    }
}

impl DynamicLossScaler {
    /// A scaler starting at `init_scale`. The floor `min_scale` (1 by default): at scale 1 an fp16
    /// gradient overflows only past 65504, which no sane training step produces.
    pub fn new(init_scale: f32, growth_interval: u32, min_scale: f32) -> Self {
        assert!(
            init_scale.is_finite() && init_scale >= min_scale && min_scale > 0.0,
            "loss scale {init_scale} must be finite and at least its floor {min_scale} > 0"
        );
        Self {
            scale: init_scale,
            good_steps: 0,
            growth_interval,
            min_scale,
            skipped_steps: 0,
        }
    }

    /// For full-precision (f32) training: scale fixed at 1, so any non-finite gradient is at once
    /// a [`ScaleCollapsed`] error instead of a silently skipped step.
    pub fn disabled() -> Self {
        Self::new(1.0, 0, 1.0)
    }

    /// The factor the loss gradient is multiplied by.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The factor gradients are unscaled with.
    pub fn inv_scale(&self) -> f32 {
        1.0 / self.scale
    }

    /// Steps skipped so far in this run.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// Records whether the step's unscaled gradients were all finite and says what to do.
    pub fn update(&mut self, all_finite: bool) -> Result<StepOutcome, ScaleCollapsed> {
        if all_finite {
            self.good_steps += 1;
            let grew = self.growth_interval > 0 && self.good_steps >= self.growth_interval;
            if grew {
                let doubled = self.scale * 2.0;
                // Never grow into infinity: fp16's range makes anything past 2^24 useless anyway.
                if doubled.is_finite() && doubled <= 16_777_216.0 {
                    self.scale = doubled;
                }
                self.good_steps = 0;
            }
            return Ok(StepOutcome::Apply { grew });
        }
        let old_scale = self.scale;
        let new_scale = old_scale * 0.5;
        self.good_steps = 0;
        self.skipped_steps += 1;
        if new_scale < self.min_scale {
            return Err(ScaleCollapsed {
                scale: old_scale,
                min_scale: self.min_scale,
            });
        }
        self.scale = new_scale;
        Ok(StepOutcome::Skip { old_scale, new_scale })
    }
}

impl std::fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepOutcome::Apply { grew: false } => write!(f, "step applied"),
            StepOutcome::Apply { grew: true } => write!(f, "step applied, loss scale doubled"),
            StepOutcome::Skip { old_scale, new_scale } => write!(
                f,
                "step skipped: inf/NaN gradients at loss scale {old_scale}, scale now {new_scale}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = DynamicLossScaler::default();
        assert_eq!(s.scale(), 65536.0);
        let skip = s.update(false).unwrap();
        assert_eq!(
            skip,
            StepOutcome::Skip {
                old_scale: 65536.0,
                new_scale: 32768.0
            }
        );
        assert!(skip.to_string().contains("skipped"));
        for _ in 0..1999 {
            assert_eq!(s.update(true).unwrap(), StepOutcome::Apply { grew: false });
        }
        assert_eq!(s.scale(), 32768.0);
        assert_eq!(s.update(true).unwrap(), StepOutcome::Apply { grew: true });
        assert_eq!(s.scale(), 65536.0);
        // An overflow resets the run of good steps.
        for _ in 0..1000 {
            s.update(true).unwrap();
        }
        s.update(false).unwrap();
        for _ in 0..1999 {
            s.update(true).unwrap();
        }
        assert_eq!(s.scale(), 32768.0);
        assert_eq!(s.skipped_steps(), 2);
    }

    #[test]
    fn collapses_into_an_error_below_the_floor() {
        let mut s = DynamicLossScaler::new(4.0, 2000, 1.0);
        s.update(false).unwrap();
        s.update(false).unwrap();
        assert_eq!(s.scale(), 1.0);
        let err = s.update(false).unwrap_err();
        assert!(err.to_string().contains("not finite"));
        let mut off = DynamicLossScaler::disabled();
        for _ in 0..5000 {
            off.update(true).unwrap();
        }
        assert_eq!(off.scale(), 1.0);
        assert!(off.update(false).is_err());
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = DynamicLossScaler::default();
        s.update(false).unwrap();
        s.update(true).unwrap();
        let back: DynamicLossScaler = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
