//! `cephalo bench` on a machine without a GPU (or asked for the CPU) refuses with a clear error
//! instead of measuring the wrong thing; its flags parse in the users' and the spellings.
mod cli_support;

#[test]
fn bench_refuses_the_cpu_and_names_the_gpu() {
    let err = cli_support::run(&["bench", "--device", "cpu"]).unwrap_err().to_string();
    assert!(err.contains("measures the GPU"), "{err}");
}

/// On a machine without a GPU (CI) the default `--device cuda` says so, without suggesting the CPU.
#[test]
fn bench_without_a_gpu_says_it_needs_one() {
    if matches!(cephalo::gpu::probe(), cephalo::gpu::Probe::Devices { .. }) {
        return; // a GPU machine: nothing to check here
    }
    let err = cli_support::run(&["bench"]).unwrap_err().to_string();
    assert!(
        err.contains("measures a CUDA GPU") && !err.contains("--device cpu"),
        "{err}"
    );
}

#[test]
fn bench_flags_parse_in_every_spelling() {
    use cephalo::cli::Cli;
    use clap::Parser;
    for line in [
        "cephalo bench --model resnet50 --batch_size 8 --profile",
        "cephalo bench --inference --image-size 512 512 --steps 5",
        "cephalo bench --mode infer --profile-ops --json out.json",
    ] {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    assert!(Cli::try_parse_from(["cephalo", "bench", "--inference", "--mode", "train"]).is_err());
    assert!(Cli::try_parse_from(["cephalo", "bench", "--steps", "many"]).is_err());
}
