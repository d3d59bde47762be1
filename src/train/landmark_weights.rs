//! Per-landmark loss weights (`--landmark-weights`): a landmark's weight multiplies every pixel
//! loss of its heatmap channel, so the network spends more effort on the landmarks that are hard
//! to place.
use std::{fmt, path::Path, path::PathBuf, str::FromStr};

use anyhow::{bail, Context, Result};

/// The users' table for the difficult landmarks (their `train2.py`); every other landmark has 1.
pub const DIFFICULT_WEIGHTS: [(&str, f32); 10] = [
    ("UMT", 2.5),
    ("UPM", 2.5),
    ("R", 2.0),
    ("Ar", 1.8),
    ("Go", 1.8),
    ("LMT", 1.6),
    ("LPM", 1.4),
    ("Or", 1.3),
    ("Co", 1.2),
    ("PNS", 1.2),
];

/// Value of `--landmark-weights`: `none`, `difficult`, or the path of a JSON (`{"UMT": 2.5}`) or
/// CSV (`symbol,weight` rows, header optional) file.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LandmarkWeightsArg {
    /// Every landmark weighs 1.
    #[default]
    None,
    /// [`DIFFICULT_WEIGHTS`]; its symbols that the dataset lacks are ignored.
    Difficult,
    /// A user file; every symbol in it must be one of the dataset's.
    File(PathBuf),
}

impl FromStr for LandmarkWeightsArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("expected `none`, `difficult` or the path of a JSON/CSV weights file".into()),
            "none" => Ok(Self::None),
            "difficult" => Ok(Self::Difficult),
            _ => Ok(Self::File(PathBuf::from(s))),
        }
    }
}

impl fmt::Display for LandmarkWeightsArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "none"),
            Self::Difficult => write!(f, "difficult"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl LandmarkWeightsArg {
    /// One weight per symbol of the dataset, in the dataset's channel order.
    pub fn resolve(&self, symbols: &[String]) -> Result<Vec<f32>> {
        match self {
            Self::None => Ok(vec![1.0; symbols.len()]),
            Self::Difficult => Ok(symbols
                .iter()
                .map(|s| {
                    DIFFICULT_WEIGHTS
                        .iter()
                        .find(|(sym, _)| sym == s)
                        .map_or(1.0, |&(_, w)| w)
                })
                .collect()),
            Self::File(path) => {
                let table = read_weights_file(path)?;
                weights_for_symbols(&table, symbols)
                    .with_context(|| format!("landmark weights file {}", path.display()))
            }
        }
    }
}

/// Reads a weights file: JSON when it ends in `.json` or starts with `{`, CSV otherwise. Checks
/// every weight is a finite number > 0 and no symbol appears twice.
pub fn read_weights_file(path: &Path) -> Result<Vec<(String, f32)>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read landmark weights file {}; --landmark-weights takes `none`, `difficult` \
             or the path of a JSON/CSV file",
            path.display()
        )
    })?;
    let is_json =
        path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) || text.trim_start().starts_with('{');
    let table = if is_json { parse_json(&text) } else { parse_csv(&text) }
        .with_context(|| format!("landmark weights file {}", path.display()))?;
    Ok(table)
}

fn check_weight(symbol: &str, weight: f64, seen: &[(String, f32)]) -> Result<f32> {
    if symbol.is_empty() {
        bail!("a landmark symbol is empty");
    }
    if seen.iter().any(|(s, _)| s == symbol) {
        bail!("landmark '{symbol}' is given twice");
    }
    let w = weight as f32;
    if !(w.is_finite() && w > 0.0) {
        bail!("the weight of '{symbol}' is {weight}; weights must be finite numbers > 0");
    }
    Ok(w)
}

fn parse_json(text: &str) -> Result<Vec<(String, f32)>> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .context("expected a JSON object of symbol → weight, e.g. {\"UMT\": 2.5, \"Go\": 1.8}")?;
    let mut table = Vec::with_capacity(map.len());
    for (symbol, value) in map {
        let Some(weight) = value.as_f64() else {
            bail!("the weight of '{symbol}' is {value}, not a number");
        };
        let w = check_weight(&symbol, weight, &table)?;
        table.push((symbol, w));
    }
    Ok(table)
}

fn parse_csv(text: &str) -> Result<Vec<(String, f32)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let mut table = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.context("malformed CSV")?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        if record.len() != 2 {
            bail!("line {line}: expected `symbol,weight`, found {} fields", record.len());
        }
        let (symbol, weight) = (&record[0], &record[1]);
        let weight = match weight.parse::<f64>() {
            Ok(w) => w,
            // A first row that is not a number is the header (`symbol,weight`).
            Err(_) if table.is_empty() && i == 0 => continue,
            Err(_) => bail!("line {line}: the weight of '{symbol}' is '{weight}', not a number"),
        };
        let w = check_weight(symbol, weight, &table).with_context(|| format!("line {line}"))?;
        table.push((symbol.to_string(), w));
    }
    if table.is_empty() {
        bail!("no `symbol,weight` rows");
    }
    Ok(table)
}

/// Weights in the order of `symbols` (1 for symbols the table does not mention). Every table
/// symbol must be a dataset symbol: a typo would otherwise silently weigh nothing.
pub fn weights_for_symbols(table: &[(String, f32)], symbols: &[String]) -> Result<Vec<f32>> {
    let unknown: Vec<&str> = table
        .iter()
        .map(|(s, _)| s.as_str())
        .filter(|s| !symbols.iter().any(|d| d == s))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown landmark symbol(s) {}: this dataset's symbols are {} (symbols are case-sensitive)",
            unknown.join(", "),
            symbols.join(", ")
        );
    }
    Ok(symbols
        .iter()
        .map(|s| table.iter().find(|(t, _)| t == s).map_or(1.0, |&(_, w)| w))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn difficult_table_ignores_symbols_the_dataset_lacks() {
        // ISBI has no UMT/UPM/R/LMT/LPM/Co.
        let isbi = syms(&["S", "N", "Or", "Go", "Ar", "PNS"]);
        let w = LandmarkWeightsArg::Difficult.resolve(&isbi).unwrap();
        assert_eq!(w, [1.0, 1.0, 1.3, 1.8, 1.8, 1.2]);
        assert_eq!(LandmarkWeightsArg::None.resolve(&isbi).unwrap(), [1.0; 6]);
    }

    #[test]
    fn argument_parsing() {
        assert_eq!("difficult".parse(), Ok(LandmarkWeightsArg::Difficult));
        assert_eq!("none".parse(), Ok(LandmarkWeightsArg::None));
        assert_eq!("w.json".parse(), Ok(LandmarkWeightsArg::File(PathBuf::from("w.json"))));
        assert!("".parse::<LandmarkWeightsArg>().is_err());
    }

    #[test]
    fn works_as_a_clap_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[arg(long, alias = "landmark_weights", default_value_t)]
            landmark_weights: LandmarkWeightsArg,
        }
        assert_eq!(Cli::parse_from(["x"]).landmark_weights, LandmarkWeightsArg::None);
        let cli = Cli::parse_from(["x", "--landmark_weights", "difficult"]);
        assert_eq!(cli.landmark_weights, LandmarkWeightsArg::Difficult);
        assert!(Cli::try_parse_from(["x", "--landmark-weights", ""]).is_err());
    }
}
