//! Checkpoints: one safetensors file holding the weights, the BN running statistics, the
//! optimizer moments when training, and JSON metadata, shared by train, eval and predict.
//!
//! Layout (any safetensors reader opens it, e.g. Python's `safetensors.numpy.load_file`):
//! * tensors, all `F32`, little-endian, keyed by the model's stable parameter names
//!   (`stage3.m1.b2.block0.conv1.weight`, `...bn1.running_mean`). Weights are stored in fp32
//!   and *are* the master weights; the GPU derives its fp16 copy on load. Conv weights are
//!   `[c_out, kh, kw, c_in]` (KRSC), transposed-conv weights `[c_in, kh, kw, c_out]`;
//! * optimizer moments as `optim.m.<name>` and `optim.v.<name>` when training;
//! * `__metadata__` (string -> string): `format` = `cephalo-checkpoint`, `format_version`,
//!   and `meta`: the JSON of [`Meta`] (model and config, landmark symbols, image size, heatmap
//!   stride and sigma, epoch, step, scheduler, loss-scaler and RNG state, best metric, dataset
//!   fingerprint).
//!
//! Writes are atomic ([`write_atomically`]): a temporary file in the same directory is written,
//! fsynced and renamed over the target, so a crash leaves the previous checkpoint intact.
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ParamId};
use crate::graph::exec::Executor;
use crate::graph::Graph;
use crate::model::ModelConfig;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "cephalo-checkpoint";
/// Bumped whenever the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Prefixes of the optimizer's first and second moments.
pub const MOMENT1_PREFIX: &str = "optim.m.";
pub const MOMENT2_PREFIX: &str = "optim.v.";

/// Everything besides tensors that a run needs to resume or a prediction needs to interpret
/// the heatmaps. Opaque training state (scheduler, loss scaler, RNG) is JSON owned by `train`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format_version: u32,
    pub model: ModelConfig,
    /// Landmark symbols in heatmap order.
    pub landmarks: Vec<String>,
    /// Network input height and width.
    pub image_size: [usize; 2],
    pub heatmap_stride: usize,
    pub heatmap_sigma: f32,
    pub epoch: u64,
    pub step: u64,
    pub scheduler: serde_json::Value,
    pub loss_scaler: serde_json::Value,
    pub rng: serde_json::Value,
    pub best_metric: Option<f64>,
    pub dataset_fingerprint: Option<String>,
    /// A refinement-stage model's patches (`cephalo train --stage refine`); absent for a global
    /// model, and in checkpoints written before the refinement stage existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refiner: Option<crate::refine::PatchSpec>,
}

impl Meta {
    /// Metadata for a fresh model: epoch and step 0, no training state yet.
    pub fn new(model: ModelConfig, landmarks: Vec<String>, heatmap_stride: usize, heatmap_sigma: f32) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            image_size: model.image_size,
            model,
            landmarks,
            heatmap_stride,
            heatmap_sigma,
            epoch: 0,
            step: 0,
            scheduler: serde_json::Value::Null,
            loss_scaler: serde_json::Value::Null,
            rng: serde_json::Value::Null,
            best_metric: None,
            dataset_fingerprint: None,
            refiner: None,
        }
    }
}

/// One stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub meta: Meta,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// The executor's parameters and running statistics.
    pub fn from_executor<B: Backend>(ex: &Executor<B>, meta: Meta) -> Self {
        let tensors = ex
            .graph()
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    p.name.clone(),
                    Tensor {
                        shape: p.shape.clone(),
                        data: ex.param(ParamId(i)),
                    },
                )
            })
            .collect();
        Self { meta, tensors }
    }

    /// Adds the optimizer's moments for parameter `name`.
    pub fn insert_moments(&mut self, name: &str, shape: &[usize], m: Vec<f32>, v: Vec<f32>) {
        self.tensors.insert(
            format!("{MOMENT1_PREFIX}{name}"),
            Tensor {
                shape: shape.to_vec(),
                data: m,
            },
        );
        self.tensors.insert(
            format!("{MOMENT2_PREFIX}{name}"),
            Tensor {
                shape: shape.to_vec(),
                data: v,
            },
        );
    }

    /// Checks that the checkpoint holds exactly `graph`'s parameters with the same shapes
    /// (optimizer moments aside), and says precisely what differs.
    pub fn check_params(&self, graph: &Graph) -> Result<()> {
        let expected: HashMap<&str, &[usize]> = graph
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.shape.as_slice()))
            .collect();
        let stored: Vec<(&String, &Tensor)> = self
            .tensors
            .iter()
            .filter(|(k, _)| !k.starts_with(MOMENT1_PREFIX) && !k.starts_with(MOMENT2_PREFIX))
            .collect();
        let mut problems = Vec::new();
        let missing: Vec<&str> = graph
            .params
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| !self.tensors.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("missing {} tensor(s): {}", missing.len(), list(&missing)));
        }
        let unexpected: Vec<&str> = stored
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !expected.contains_key(k))
            .collect();
        if !unexpected.is_empty() {
            problems.push(format!(
                "unexpected {} tensor(s): {}",
                unexpected.len(),
                list(&unexpected)
            ));
        }
        let shapes: Vec<String> = stored
            .iter()
            .filter_map(|(k, t)| {
                let want = expected.get(k.as_str())?;
                (t.shape.as_slice() != *want)
                    .then(|| format!("{k} is {:?} in the checkpoint but {:?} in the model", t.shape, want))
            })
            .collect();
        if !shapes.is_empty() {
            problems.push(format!("shape mismatch: {}", list(&shapes)));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(
                "checkpoint of a {} does not fit this model ({} input channel(s), {} landmarks): {}",
                self.meta.model.model,
                graph.input_shape().c,
                graph.output_shape().c,
                problems.join("; ")
            )
        }
    }

    /// Loads the parameters and running statistics into `ex` after [`check_params`](Self::check_params).
    pub fn load_into<B: Backend>(&self, ex: &mut Executor<B>) -> Result<()> {
        self.check_params(ex.graph())?;
        for i in 0..ex.graph().params.len() {
            let name = ex.graph().params[i].name.clone();
            ex.set_param(ParamId(i), &self.tensors[&name].data);
        }
        Ok(())
    }
}

/// The file's bytes with only the header and the tensors `keep` accepts actually read: the buffer
/// has the file's length (so the safetensors parser validates it as a whole), but the skipped
/// tensors' bytes are zeroed pages the system never materialises (`vec![0; n]` allocates them
/// lazily). For inference this skips the optimizer's moments, two thirds of the file.
fn read_sparse(path: &Path, keep: &impl Fn(&str) -> bool) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = usize::try_from(file.metadata()?.len()).context("file too large")?;
    let mut bytes = vec![0u8; len];
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).context("reading the header length")?;
    let header_end = usize::try_from(u64::from_le_bytes(prefix))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= len)
        .context("the header length points past the end of the file")?;
    bytes[..8].copy_from_slice(&prefix);
    file.read_exact(&mut bytes[8..header_end])
        .context("reading the header")?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)?;
    // Read the kept tensors in file order (one forward pass over the file).
    let mut ranges: Vec<(usize, usize)> = metadata
        .tensors()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .map(|(_, info)| (header_end + info.data_offsets.0, header_end + info.data_offsets.1))
        .collect();
    ranges.sort_unstable();
    for (start, end) in ranges {
        file.seek(SeekFrom::Start(start as u64))?;
        file.read_exact(&mut bytes[start..end]).context("reading tensor data")?;
    }
    Ok(bytes)
}

/// Little-endian f32 bytes (safetensors' layout) as values: one copy on little-endian machines.
fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec(bytes)
    } else {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

/// Shows the first few items of a list and how many more there are.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOW: usize = 5;
    let mut s: Vec<String> = items.iter().take(SHOW).map(|i| i.to_string()).collect();
    if items.len() > SHOW {
        s.push(format!("and {} more", items.len() - SHOW));
    }
    s.join(", ")
}

/// Writes `path` atomically: `write` fills a temporary file in the same directory, which is
/// fsynced and renamed over `path` only if `write` succeeded. On any error (or a crash) the
/// previous file at `path` is untouched and the temporary file is removed.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // tempfile's default is 0600; the user's umask decides, as for any file the user asked for.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).with_context(|| {
        format!(
            "creating a temporary file in {} (does the directory exist and is it writable?)",
            dir.display()
        )
    })?;
    write(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("flushing {} to disk", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temporary file to {}", path.display()))?;
    // Make the rename itself durable.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Names of our temporary files: the prefix, the writing process's id, a dash and a random part.
pub const TEMP_PREFIX: &str = ".cephalo-tmp-";

/// A temporary file of ours that nothing will finish any more: its process has exited (known on
/// Linux), or it has not been touched for an hour (a write in progress touches it constantly,
/// and the rename follows the final fsync at once).
fn is_stale_temporary(name: &str, modified: Option<std::time::SystemTime>) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    if pid == Some(std::process::id()) {
        return false;
    }
    let proc_root = Path::new("/proc/self");
    if let Some(pid) = pid {
        if proc_root.exists() && !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
    }
    modified
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(3600))
}

/// Removes the temporary files a killed write of ours left in `dir` (only plain files named
/// with [`TEMP_PREFIX`] whose writer is gone), and says on stderr how many and how large.
/// Returns the number removed; failures to list or remove are ignored (the next run retries).
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let (mut count, mut bytes) = (0usize, 0u64);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_file()
            && is_stale_temporary(name, meta.modified().ok())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            count += 1;
            bytes += meta.len();
        }
    }
    if count > 0 {
        eprintln!(
            "removed {count} temporary file(s) ({}) left in {} by an interrupted write",
            crate::gpu::memory::human_bytes(bytes),
            dir.display()
        );
    }
    count
}

/// Saves `ck` to `path` atomically.
pub fn save(path: &Path, ck: &Checkpoint) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = ck
        .tensors
        .iter()
        .map(|(k, t)| {
            assert_eq!(
                t.shape.iter().product::<usize>(),
                t.data.len(),
                "tensor {k}: shape and data disagree"
            );
            (
                k.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| Ok((k.as_str(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .context("preparing checkpoint tensors")?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert(
        "meta".to_string(),
        serde_json::to_string(&ck.meta).context("encoding checkpoint metadata")?,
    );
    let mut data =
        safetensors::serialize(views, Some(meta.clone().into_iter().collect())).context("serialising checkpoint")?;
    sort_metadata_keys(&mut data, &meta)?;
    write_atomically(path, |f| Ok(f.write_all(&data)?))
}

/// safetensors writes `__metadata__` from a `HashMap`, so the key order (and the file's bytes)
/// change from one save to the next. The header starts with that object; this rewrites it in
/// place with the keys sorted (the same entries, so the same length), which makes two saves of
/// one state byte-identical and a bitwise-exact resume checkable with sha256.
fn sort_metadata_keys(data: &mut [u8], meta: &BTreeMap<String, String>) -> Result<()> {
    const START: &[u8] = b"{\"__metadata__\":";
    let sorted = serde_json::to_vec(meta).context("encoding checkpoint metadata")?;
    let end = START.len() + sorted.len();
    let header = data
        .get(8..9 + end)
        .context("checkpoint header shorter than its metadata")?;
    anyhow::ensure!(
        header.starts_with(START) && matches!(header[end], b',' | b'}'),
        "unexpected safetensors header layout: it does not start with __metadata__"
    );
    data[8 + START.len()..8 + end].copy_from_slice(&sorted);
    Ok(())
}

/// Loads a checkpoint, checking its format and version.
pub fn load(path: &Path) -> Result<Checkpoint> {
    load_filtered(path, |_| true)
}

/// Loads what inference needs (eval, predict): the model's tensors, not the optimizer's moments,
/// which are two thirds of a training checkpoint and are never decoded here.
pub fn load_for_inference(path: &Path) -> Result<Checkpoint> {
    load_filtered(path, |name| {
        !(name.starts_with(MOMENT1_PREFIX) || name.starts_with(MOMENT2_PREFIX))
    })
}

/// Loads a checkpoint with the tensors whose names `keep` accepts.
fn load_filtered(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Checkpoint> {
    let what = || {
        format!(
            "checkpoint {} is not a valid safetensors file (truncated or corrupt?)",
            path.display()
        )
    };
    let bytes = read_sparse(path, &keep).with_context(what)?;
    let st = SafeTensors::deserialize(&bytes).with_context(what)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).with_context(what)?;
    let meta_map = header.metadata().clone().unwrap_or_default();
    let format = meta_map.get("format").map(String::as_str).unwrap_or("(none)");
    if format != FORMAT {
        bail!(
            "{} is a safetensors file but not a cephalo checkpoint (format {format:?})",
            path.display()
        );
    }
    let version: u32 = meta_map
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("checkpoint {} has no readable format_version", path.display()))?;
    if version != FORMAT_VERSION {
        bail!(
            "checkpoint {} has format version {version}, this cephalo reads version {FORMAT_VERSION}{}",
            path.display(),
            if version > FORMAT_VERSION {
                ": update cephalo"
            } else {
                ""
            }
        );
    }
    let meta: Meta =
        serde_json::from_str(meta_map.get("meta").map(String::as_str).unwrap_or("")).with_context(|| {
            format!(
                "checkpoint {}: the `meta` metadata is missing or malformed",
                path.display()
            )
        })?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if !keep(&name) {
            continue;
        }
        if view.dtype() != Dtype::F32 {
            bail!(
                "checkpoint {}: tensor {name} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let data = f32s_from_le(view.data());
        tensors.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(Checkpoint { meta, tensors })
}
