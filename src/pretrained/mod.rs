//! `cephalo train --pretrained FILE`: start a network's backbone from the ImageNet weights the
//! users' PyTorch tools publish (timm's and MSRA/mmpose's HRNets, torchvision's and timm's
//! ResNets), read from safetensors or `torch.save` files ([`file`]) without executing anything
//! ([`pickle`]), renamed onto cephalo's parameters ([`layout`]).
//!
//! The mapping is strict: every file key is loaded, or ignored because it belongs to a
//! classification head ([`layout::IGNORED_PREFIXES`], BN's `num_batches_tracked`), or it is an
//! error; every backbone parameter of the network must be loaded; only the landmark head
//! ([`crate::model::HEAD_PREFIXES`]) starts fresh. Half a backbone is never loaded silently.
//!
//! Grayscale: the ImageNet stem convolution reads three channels; on a one-channel network its
//! weights are summed over them ([`fold_rgb`]). That is exactly the three-channel stem on the grey
//! image repeated to three channels, each normalised as cephalo normalises its input. ImageNet's
//! per-channel normalisation differs from cephalo's by a scale and a shift per channel; in
//! training the first batch norm takes both out of its output (batch statistics), so nothing
//! is gained by folding them into the weights, and that fold would be exact only away from the
//! zero-padded border.
pub mod file;
pub mod layout;
pub mod pickle;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};

use crate::checkpoint::{Checkpoint, Meta, Tensor};
use crate::graph::{Graph, ParamInfo};
use crate::model::{Arch, ModelConfig, HEAD_PREFIXES};
pub use file::{read_state_dict, SourceTensor, StateDict};

/// The parameters taken from a file, in cephalo's layouts, and what happened to every key.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// cephalo parameter name -> values (conv weights KRSC).
    pub params: BTreeMap<String, Vec<f32>>,
    pub report: LoadReport,
}

/// The load table printed by `train --pretrained`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// What the file seems to be (`an HRNet-W18 file`).
    pub file_kind: String,
    pub loaded_tensors: usize,
    pub loaded_values: usize,
    /// File keys not loaded, counted by prefix (`incre_modules.`, `num_batches_tracked`).
    pub ignored: BTreeMap<String, usize>,
    /// Network parameters left to their fresh initialisation, counted by prefix.
    pub fresh: BTreeMap<String, usize>,
    /// The stem convolution whose RGB weights were summed to one input channel.
    pub folded: Option<String>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<10} {:>6} tensors ({:.2} M values): the backbone",
            "loaded",
            self.loaded_tensors,
            self.loaded_values as f64 / 1e6
        )?;
        let ignored: usize = self.ignored.values().sum();
        writeln!(f, "  {:<10} {ignored:>6} tensors of the file:", "ignored")?;
        for (prefix, n) in &self.ignored {
            writeln!(f, "    {prefix:<24} {n:>6}")?;
        }
        let fresh: usize = self.fresh.values().sum();
        writeln!(f, "  {:<10} {fresh:>6} tensors freshly initialised:", "fresh")?;
        for (prefix, n) in &self.fresh {
            writeln!(f, "    {prefix:<24} {n:>6}")?;
        }
        if let Some(conv) = &self.folded {
            writeln!(
                f,
                "  {conv}: the RGB weights summed to one input channel (grayscale input)"
            )?;
        }
        Ok(())
    }
}

/// A file's keys with their shapes and whether they hold floats: all the mapping looks at.
pub type KeyShapes = BTreeMap<String, (Vec<usize>, bool)>;

/// The keys and shapes of a state dict.
pub fn key_shapes(sd: &StateDict) -> KeyShapes {
    sd.iter()
        .map(|(k, t)| (k.clone(), (t.shape.clone(), t.is_float)))
        .collect()
}

/// Which file tensor goes where, decided from keys and shapes alone (so the full-size key lists
/// of the published models can be checked without their weights).
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// (file key, index of the network parameter, whether the RGB stem is folded to one channel).
    pub entries: Vec<(String, usize, bool)>,
    pub report: LoadReport,
}

/// Reads `path` and maps it onto `graph` (the network `model` of architecture `arch`).
pub fn load(path: &Path, graph: &Graph, model: &str, arch: Arch) -> Result<Loaded> {
    let sd = read_state_dict(path)?;
    map_state_dict(&sd, graph, model, arch).map_err(|e| e.context(format!("--pretrained {}", path.display())))
}

/// The starting weights of a training run from `path`: the mapped backbone, and every other
/// parameter (the landmark head) at its seeded initialisation, as the executor would draw it.
/// Loading them leaves the optimizer state fresh.
pub fn starting_checkpoint(
    path: &Path,
    graph: &Graph,
    model: &ModelConfig,
    seed: u64,
) -> Result<(Checkpoint, LoadReport)> {
    let (_, arch) = crate::model::resolve(&model.model)?;
    let loaded = load(path, graph, &model.model, arch)?;
    let mut params = loaded.params;
    let tensors = graph
        .params
        .iter()
        .map(|p| {
            let data = params.remove(&p.name).unwrap_or_else(|| p.initial_values(seed));
            (
                p.name.clone(),
                Tensor {
                    shape: p.shape.clone(),
                    data,
                },
            )
        })
        .collect();
    let meta = Meta::new(model.clone(), Vec::new(), 0, 0.0);
    Ok((Checkpoint { meta, tensors }, loaded.report))
}

/// Maps a file's state dict onto `graph`'s parameters (see the module doc for the rules).
pub fn map_state_dict(sd: &StateDict, graph: &Graph, model: &str, arch: Arch) -> Result<Loaded> {
    let mapping = plan(&key_shapes(sd), graph, model, arch)?;
    let params = mapping
        .entries
        .iter()
        .map(|(key, i, fold)| {
            let p = &graph.params[*i];
            (p.name.clone(), to_cephalo_layout(&sd[key], &p.shape, *fold))
        })
        .collect();
    Ok(Loaded {
        params,
        report: mapping.report,
    })
}

/// Decides the mapping of `keys` onto `graph`, or says why it does not fit.
pub fn plan(keys: &KeyShapes, graph: &Graph, model: &str, arch: Arch) -> Result<Mapping> {
    let kind = layout::identify(keys);
    let whose = || format!("this is {kind}; --model is {model}");
    let wrapped = layout::has_backbone_prefix(keys);
    let by_name: BTreeMap<&str, usize> = graph
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut report = LoadReport {
        file_kind: kind.clone(),
        ..LoadReport::default()
    };
    let mut entries = Vec::new();
    let mut loaded = vec![false; graph.params.len()];
    for (key, (shape, is_float)) in keys {
        let inner = key.strip_prefix("module.").unwrap_or(key);
        if wrapped && !inner.starts_with("backbone.") {
            let part = inner.split('.').next().unwrap_or(inner);
            *report.ignored.entry(format!("{part}.")).or_default() += 1;
            continue;
        }
        let k = layout::unwrapped(key);
        if k.ends_with(".num_batches_tracked") {
            *report.ignored.entry("num_batches_tracked".into()).or_default() += 1;
            continue;
        }
        if let Some(prefix) = layout::IGNORED_PREFIXES.iter().find(|p| k.starts_with(*p)) {
            *report.ignored.entry((*prefix).to_string()).or_default() += 1;
            continue;
        }
        let name = match arch {
            Arch::HrNet { .. } => layout::hrnet_name(k),
            Arch::ResNet(_) => layout::resnet_name(k),
        };
        let Some(&i) = name.as_deref().and_then(|n| by_name.get(n)) else {
            bail!(
                "{key}: no parameter of cephalo's {model} corresponds to this key ({})",
                whose()
            );
        };
        let p = &graph.params[i];
        if !is_float {
            bail!("{key}: an integer tensor where {} expects floats", p.name);
        }
        if loaded[i] {
            bail!(
                "{key}: a second tensor for {} (the file repeats a key under another prefix?)",
                p.name
            );
        }
        let fold = fits(key, shape, p).map_err(|e| e.context(whose()))?;
        if fold {
            report.folded = Some(p.name.trim_end_matches(".weight").to_string());
        }
        loaded[i] = true;
        report.loaded_tensors += 1;
        report.loaded_values += p.len();
        entries.push((key.clone(), i, fold));
    }
    let backbone: Vec<&ParamInfo> = graph.params.iter().filter(|p| !is_head(&p.name)).collect();
    let missing: Vec<&str> = graph
        .params
        .iter()
        .zip(&loaded)
        .filter(|(p, &l)| !l && !is_head(&p.name))
        .map(|(p, _)| p.name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the file lacks {} of the {model} backbone's {} tensors (first: {}); {}",
            missing.len(),
            backbone.len(),
            missing[..missing.len().min(3)].join(", "),
            whose()
        );
    }
    for (p, _) in graph.params.iter().zip(&loaded).filter(|(_, &l)| !l) {
        let prefix = HEAD_PREFIXES
            .iter()
            .find(|h| p.name.starts_with(*h))
            .expect("only heads are left");
        *report.fresh.entry((*prefix).to_string()).or_default() += 1;
    }
    Ok(Mapping { entries, report })
}

fn is_head(name: &str) -> bool {
    HEAD_PREFIXES.iter().any(|h| name.starts_with(h))
}

/// Whether the file's `shape` fits `p`: `Ok(true)` when it does after folding an RGB stem to
/// one channel. Shapes are compared (and reported) in PyTorch's order, the one the user's
/// file and tools show.
fn fits(key: &str, shape: &[usize], p: &ParamInfo) -> Result<bool> {
    let expected = torch_shape(&p.shape);
    match (shape, expected.as_slice()) {
        (&[o, 3, kh, kw], &[eo, 1, ekh, ekw]) if (o, kh, kw) == (eo, ekh, ekw) => Ok(true),
        (s, e) if s == e => Ok(false),
        (s, e) => bail!(
            "{key}: the file's tensor has shape {s:?}, cephalo's {} expects {e:?}",
            p.name
        ),
    }
}

/// A cephalo parameter shape in PyTorch's order (conv weights KRSC -> OIHW).
fn torch_shape(shape: &[usize]) -> Vec<usize> {
    match *shape {
        [o, kh, kw, i] => vec![o, i, kh, kw],
        _ => shape.to_vec(),
    }
}

/// A file tensor in the layout of a parameter of `shape`: conv weights OIHW -> KRSC, folded
/// to one input channel first when `fold`.
fn to_cephalo_layout(t: &SourceTensor, shape: &[usize], fold: bool) -> Vec<f32> {
    match *shape {
        [o, kh, kw, i] if fold => oihw_to_krsc(&fold_rgb(&t.data, o, kh, kw), o, i, kh, kw),
        [o, kh, kw, i] => oihw_to_krsc(&t.data, o, i, kh, kw),
        _ => t.data.clone(),
    }
}

/// Sums a `[o, 3, kh, kw]` convolution weight over its input channels: `[o, 1, kh, kw]`.
pub fn fold_rgb(w: &[f32], o: usize, kh: usize, kw: usize) -> Vec<f32> {
    let plane = kh * kw;
    (0..o)
        .flat_map(|k| {
            let filter = &w[k * 3 * plane..(k + 1) * 3 * plane];
            (0..plane).map(move |i| filter[i] + filter[plane + i] + filter[2 * plane + i])
        })
        .collect()
}

/// PyTorch's `[o, i, kh, kw]` weight in cephalo's `[o, kh, kw, i]`.
pub fn oihw_to_krsc(w: &[f32], o: usize, i: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for k in 0..o {
        for c in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    out[((k * kh + y) * kw + x) * i + c] = w[((k * i + c) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}
