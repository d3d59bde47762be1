//! Learning-rate schedule: linear warmup, then cosine annealing with warm restarts (SGDR), stepped
//! every iteration with a fractional epoch (docs/maths.md#learning-rate-schedule).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Warmup + cosine annealing with warm restarts. Durations are in epochs (fractional allowed); the
/// schedule is evaluated per iteration at `t = iteration / iters_per_epoch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosineRestarts {
    /// Peak learning rate, reached at the end of warmup and at every restart.
    pub lr_max: f64,
    /// Floor of every cosine cycle.
    pub lr_min: f64,
    /// Length of the linear warmup, epochs (0: none).
    pub warmup_epochs: f64,
    pub iters_per_epoch: u64,
    /// Length of the first cosine cycle, epochs.
    pub t0: f64,
    /// Each cycle is `t_mult` times longer than the previous one (1: all equal).
    pub t_mult: f64,
}

impl WarmupCosineRestarts {
    /// Checks the parameters; the messages name the command-line flags that set them.
    pub fn new(
        lr_max: f64,
        lr_min: f64,
        warmup_epochs: f64,
        iters_per_epoch: u64,
        t0: f64,
        t_mult: f64,
    ) -> Result<Self> {
        if !(lr_max.is_finite() && lr_max > 0.0) {
            bail!("--lr must be a positive number, got {lr_max}");
        }
        if !(lr_min.is_finite() && (0.0..=lr_max).contains(&lr_min)) {
            bail!("--min-lr must be between 0 and --lr ({lr_max}), got {lr_min}");
        }
        if !(warmup_epochs.is_finite() && warmup_epochs >= 0.0) {
            bail!("--warmup-epochs must be 0 or more, got {warmup_epochs}");
        }
        if iters_per_epoch == 0 {
            bail!("an epoch has no iterations: the training split is smaller than one batch");
        }
        if !(t0.is_finite() && t0 > 0.0) {
            bail!(
                "the cosine period must be positive, got {t0} epochs: give --restart-period, or \
                 more --epochs than --warmup-epochs"
            );
        }
        if !(t_mult.is_finite() && t_mult >= 1.0) {
            bail!("--restart-mult must be 1 or more, got {t_mult}");
        }
        Ok(Self {
            lr_max,
            lr_min,
            warmup_epochs,
            iters_per_epoch,
            t0,
            t_mult,
        })
    }

    /// Learning rate for iteration `iteration` (counted from 0 over the whole run).
    pub fn lr_at(&self, iteration: u64) -> f64 {
        let iters = self.iters_per_epoch as f64;
        let t = iteration as f64 / iters;
        if t < self.warmup_epochs {
            // lr_max * (t + 1/iters) / W, written so the last warmup iteration gives lr_max exactly.
            return self.lr_max * ((iteration + 1) as f64 / (self.warmup_epochs * iters)).min(1.0);
        }
        let (t_cur, t_i) = self.position_in_cycle(t - self.warmup_epochs);
        let cosine = (1.0 + (std::f64::consts::PI * t_cur / t_i).cos()) / 2.0;
        self.lr_min + (self.lr_max - self.lr_min) * cosine
    }

    /// `(T_cur, T_i)`: epochs into the current cycle and that cycle's length, at `t'` epochs after
    /// warmup.
    fn position_in_cycle(&self, t: f64) -> (f64, f64) {
        if self.t_mult == 1.0 {
            return (t % self.t0, self.t0);
        }
        let m = self.t_mult;
        // Start of cycle n: T0 * (m^n - 1) / (m - 1).
        let start = |n: i32| self.t0 * (m.powi(n) - 1.0) / (m - 1.0);
        let mut n = (t / self.t0 * (m - 1.0) + 1.0).log(m).floor().max(0.0) as i32;
        // The logarithm can land a hair off an exact restart point: settle n by the cycle starts.
        while start(n + 1) <= t {
            n += 1;
        }
        while n > 0 && start(n) > t {
            n -= 1;
        }
        (t - start(n), self.t0 * m.powi(n))
    }
}

/// The schedule's command-line flags, to be flattened into a command's arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ScheduleArgs {
    /// Epochs of linear warmup from ~0 to --lr [default: 5, or a fifth of a run of 5 epochs or
    /// fewer].
    // An Option, so that a resumed run can tell whether the user asked for a new schedule.
    #[arg(long, alias = "warmup_epochs", allow_negative_numbers = true)]
    pub warmup_epochs: Option<f64>,
    /// Epochs of the first cosine cycle after warmup [default: the remaining epochs, one cycle].
    #[arg(long, alias = "restart_period")]
    pub restart_period: Option<f64>,
    /// Each cosine cycle is this many times longer than the previous one.
    #[arg(long, alias = "restart_mult", default_value_t = 1.0)]
    pub restart_mult: f64,
    /// Learning rate at the bottom of each cosine cycle.
    #[arg(long, alias = "min_lr", default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_lr: f64,
}

impl ScheduleArgs {
    pub const DEFAULT_WARMUP_EPOCHS: f64 = 5.0;

    /// The warmup of a run of `epochs` epochs: as given, else the default, shortened to a fifth
    /// of the run when the run is not longer than the default warmup (a short trial run, or the
    /// demo, would otherwise have no epochs left for the cosine cycle).
    pub fn warmup_epochs(&self, epochs: f64) -> f64 {
        match self.warmup_epochs {
            Some(w) => w,
            None if epochs <= Self::DEFAULT_WARMUP_EPOCHS => epochs / 5.0,
            None => Self::DEFAULT_WARMUP_EPOCHS,
        }
    }

    /// The schedule for a run of `epochs` epochs peaking at `lr`.
    pub fn build(&self, lr: f64, epochs: f64, iters_per_epoch: u64) -> Result<WarmupCosineRestarts> {
        let warmup = self.warmup_epochs(epochs);
        if self.warmup_epochs.is_none() && warmup != Self::DEFAULT_WARMUP_EPOCHS {
            eprintln!(
                "note: {epochs} epochs leave no room for the default {} warmup epochs; warming up for {warmup} \
                 instead (set --warmup-epochs to choose)",
                Self::DEFAULT_WARMUP_EPOCHS
            );
        }
        let t0 = self.restart_period.unwrap_or(epochs - warmup);
        WarmupCosineRestarts::new(lr, self.min_lr, warmup, iters_per_epoch, t0, self.restart_mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        schedule: ScheduleArgs,
    }

    #[test]
    fn flags_accept_the_users_spelling_and_default_to_one_cycle() {
        let cli = Cli::parse_from(["x", "--warmup_epochs", "3"]);
        assert_eq!(cli.schedule.warmup_epochs, Some(3.0));
        assert_eq!(
            Cli::parse_from(["x"]).schedule.warmup_epochs(100.0),
            ScheduleArgs::DEFAULT_WARMUP_EPOCHS
        );
        let s = cli.schedule.build(2e-4, 50.0, 10).unwrap();
        assert_eq!((s.t0, s.t_mult, s.lr_min), (47.0, 1.0, 0.0));
        let err = Cli::parse_from(["x", "--warmup-epochs", "5"])
            .schedule
            .build(1e-3, 5.0, 10);
        assert!(err.unwrap_err().to_string().contains("--epochs"));
    }

    #[test]
    fn short_runs_shorten_the_default_warmup_only() {
        let default = Cli::parse_from(["x"]).schedule;
        for epochs in [1.0, 2.0, 5.0] {
            let s = default.build(1e-3, epochs, 10).unwrap();
            assert_eq!(s.warmup_epochs, epochs / 5.0, "{epochs} epochs");
            assert!(s.t0 > 0.0 && s.lr_at(0) > 0.0);
        }
        assert_eq!(default.build(1e-3, 6.0, 10).unwrap().warmup_epochs, 5.0);
        // An explicit warmup is the user's choice: still refused when it leaves nothing.
        let explicit = Cli::parse_from(["x", "--warmup-epochs", "2"]).schedule;
        assert!(explicit.build(1e-3, 2.0, 10).is_err());
        // Negative numbers reach the real check instead of clap's "unexpected argument".
        let negative = Cli::try_parse_from(["x", "--warmup-epochs", "-1"]).unwrap().schedule;
        let err = negative.build(1e-3, 10.0, 10).unwrap_err().to_string();
        assert!(err.contains("--warmup-epochs must be 0 or more, got -1"), "{err}");
    }

    #[test]
    fn invalid_parameters_name_their_flag() {
        let bad = |r: Result<WarmupCosineRestarts>, flag: &str| {
            assert!(r.unwrap_err().to_string().contains(flag), "{flag}");
        };
        bad(WarmupCosineRestarts::new(0.0, 0.0, 1.0, 10, 5.0, 1.0), "--lr");
        bad(WarmupCosineRestarts::new(1e-3, 1e-2, 1.0, 10, 5.0, 1.0), "--min-lr");
        bad(
            WarmupCosineRestarts::new(1e-3, 0.0, -1.0, 10, 5.0, 1.0),
            "--warmup-epochs",
        );
        bad(
            WarmupCosineRestarts::new(1e-3, 0.0, 1.0, 10, 5.0, 0.5),
            "--restart-mult",
        );
    }
}
