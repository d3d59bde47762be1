//! `--device auto|cpu|cuda[:N]`: where a command runs.
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

use crate::gpu::{probe, Probe};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceArg {
    /// The first CUDA GPU when one is usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceArg::Auto),
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!(
                    "{s:?} is not a device: use auto, cpu, cuda or cuda:N (e.g. cuda:1)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceArg::Auto => write!(f, "auto"),
            DeviceArg::Cpu => write!(f, "cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where the command will actually run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl DeviceArg {
    /// Resolves `auto` by probing the driver (never panics without one); an explicit `cuda:N`
    /// that is not there is an error naming what was found.
    pub fn resolve(self) -> Result<Device> {
        match (self, probe()) {
            (DeviceArg::Cpu, _) => Ok(Device::Cpu),
            (DeviceArg::Auto, Probe::Devices { devices, .. }) if !devices.is_empty() => Ok(Device::Cuda(0)),
            (DeviceArg::Auto, _) => Ok(Device::Cpu),
            (DeviceArg::Cuda(n), Probe::Devices { devices, .. }) if n < devices.len() => Ok(Device::Cuda(n)),
            (DeviceArg::Cuda(n), Probe::Devices { devices, .. }) => {
                bail!(
                    "--device cuda:{n}: this machine has {} GPU(s) (cuda:0..cuda:{})",
                    devices.len(),
                    devices.len() - 1
                )
            }
            (DeviceArg::Cuda(_), Probe::NoDriver) => {
                bail!("--device cuda: no NVIDIA driver found on this machine; use --device cpu")
            }
            (DeviceArg::Cuda(_), Probe::NoDevice(why)) => bail!("--device cuda: {why}; use --device cpu"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_nonsense() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        let err = "cuda:x".parse::<DeviceArg>().unwrap_err();
        assert!(err.contains("cuda:N"), "{err}");
        assert!("tpu".parse::<DeviceArg>().is_err());
        assert_eq!(DeviceArg::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves_and_auto_never_fails() {
        assert_eq!(DeviceArg::Cpu.resolve().unwrap(), Device::Cpu);
        assert!(DeviceArg::Auto.resolve().is_ok());
    }
}
