//! `cephalo eval --refiner`: the global-only and refined figures side by side.
use crate::eval::metrics::{ErrorStats, MetricsReport};

fn pair_row(name: &str, g: &ErrorStats, r: &ErrorStats) -> String {
    format!(
        "{name:<10} {:>8.3} {:>8.3} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        g.mre_mm,
        r.mre_mm,
        g.sdr_percent[0],
        r.sdr_percent[0],
        g.sdr_percent[2],
        r.sdr_percent[2],
        g.sdr_percent[3],
        r.sdr_percent[3]
    )
}

/// Prints overall, per landmark (worst refined first) and per machine: MRE and SDR at 2, 3 and
/// 4 mm of the global model alone and of the two stages.
pub fn print_comparison(global: &MetricsReport, refined: &MetricsReport) {
    let header = format!(
        "{:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "MRE glob", "MRE ref", "SDR2 gl", "SDR2 ref", "SDR3 gl", "SDR3 ref", "SDR4 gl", "SDR4 ref"
    );
    println!("\nglobal only vs refined (mm, %):\n{header}");
    println!("{}", pair_row("overall", &global.overall, &refined.overall));
    println!(
        "refined SD {:.3} mm (global {:.3}), SDR@2.5mm {:.1} % (global {:.1})",
        refined.overall.sd_mm, global.overall.sd_mm, refined.overall.sdr_percent[1], global.overall.sdr_percent[1]
    );
    println!("\nper landmark, worst refined first:\n{header}");
    for (symbol, r) in refined.worst_first() {
        if let Some((_, g)) = global.per_landmark.iter().find(|(s, _)| s == symbol) {
            println!("{}", pair_row(symbol, g, r));
        }
    }
    if !refined.per_machine.is_empty() {
        println!("\nper machine:\n{header}");
        for ((machine, r), (_, g)) in refined.per_machine.iter().zip(&global.per_machine) {
            println!("{}", pair_row(machine, g, r));
        }
    }
}
