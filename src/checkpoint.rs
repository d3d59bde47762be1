//! Checkpoints: one safetensors file holding the weights (f32, under their stable graph names),
//! BN running statistics, and when training the optimizer moments (`optim.m.<name>`,
//! `optim.v.<name>`), plus JSON metadata under the `cephalo` key of the safetensors header.
//!
//! A Python user opens the weights with `safetensors.numpy.load_file` (or `torch`): every tensor
//! is little-endian F32 with its logical shape (conv weights KRSC = `[out, kh, kw, in]`).
//!
//! Writes are atomic: the bytes go to a temporary file in the same directory, are fsynced, and
//! the file is renamed over the old one, so a crash mid-write leaves the previous checkpoint whole.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Bumped whenever the layout or the metadata changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// The safetensors metadata key of our JSON.
const META_KEY: &str = "cephalo";

/// One named f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A checkpoint in memory: tensors by name and the metadata JSON.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: serde_json::Value,
}

impl Checkpoint {
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.tensors.insert(name.into(), Tensor { shape, data });
    }

    /// The tensor `name` with exactly `shape`, or an error saying what differs.
    pub fn get(&self, path: &Path, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: the checkpoint has no tensor {name:?}", path.display()))?;
        if t.shape != shape {
            bail!(
                "{}: tensor {name:?} has shape {:?}, the model needs {:?}",
                path.display(),
                t.shape,
                shape
            );
        }
        Ok(&t.data)
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = serde_json::json!({ "format_version": FORMAT_VERSION, "state": self.meta });
        let header: HashMap<String, String> = [(META_KEY.to_string(), meta.to_string())].into();
        let bytes: Vec<(&String, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name, bytemuck::cast_slice::<f32, u8>(&t.data).to_vec()))
            .collect();
        let views = bytes
            .iter()
            .zip(self.tensors.values())
            .map(|((name, raw), t)| Ok((name.as_str(), TensorView::new(Dtype::F32, t.shape.clone(), raw)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .context("preparing checkpoint tensors")?;
        let buffer = safetensors::serialize(views, Some(header)).context("serialising the checkpoint")?;

        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        tmp.write_all(&buffer)
            .with_context(|| format!("writing a checkpoint into {}", dir.display()))?;
        tmp.as_file().sync_all().context("flushing the checkpoint to disk")?;
        tmp.persist(path)
            .with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// Reads a checkpoint, checking the format and version.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a safetensors checkpoint (truncated or corrupt?): {e}",
                path.display()
            )
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: unreadable safetensors header: {e}", path.display()))?;
        let raw_meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .with_context(|| {
                format!(
                    "{}: a safetensors file, but not a cephalo checkpoint (no {META_KEY:?} metadata)",
                    path.display()
                )
            })?;
        let meta: serde_json::Value = serde_json::from_str(raw_meta)
            .with_context(|| format!("{}: the checkpoint metadata is not valid JSON", path.display()))?;
        let version = meta.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != FORMAT_VERSION as u64 {
            bail!(
                "{}: checkpoint format version {version}, this cephalo reads version {FORMAT_VERSION}",
                path.display()
            );
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!(
                    "{}: tensor {name:?} is {:?}, checkpoints hold F32",
                    path.display(),
                    view.dtype()
                );
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Checkpoint {
            tensors,
            meta: meta.get("state").cloned().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut c = Checkpoint {
            meta: serde_json::json!({ "epoch": 3, "model": "hrnet-w32" }),
            ..Default::default()
        };
        c.insert(
            "stem.conv1.weight",
            vec![2, 3, 3, 1],
            (0..18).map(|i| i as f32 * 0.5 - 3.0).collect(),
        );
        c.insert("stem.bn1.running_var", vec![2], vec![1.0, 2.5]);
        c
    }

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        sample().save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.tensors, sample().tensors);
        assert_eq!(back.meta["epoch"], 3);
        assert_eq!(back.get(&path, "stem.bn1.running_var", &[2]).unwrap(), &[1.0, 2.5]);
        let err = back.get(&path, "stem.bn1.running_var", &[3]).unwrap_err().to_string();
        assert!(err.contains("shape [2]") && err.contains("[3]"), "{err}");
        let err = back.get(&path, "nope", &[1]).unwrap_err().to_string();
        assert!(err.contains("no tensor \"nope\""), "{err}");
    }

    /// The layout a Python reader sees, parsed from the raw bytes without the safetensors crate:
    /// an 8-byte little-endian header length, a JSON header with dtype, shape and data offsets,
    /// then the raw little-endian f32 data.
    #[test]
    fn layout_is_plain_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        sample().save(&path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let w = &header["stem.conv1.weight"];
        assert_eq!(w["dtype"], "F32");
        assert_eq!(w["shape"], serde_json::json!([2, 3, 3, 1]));
        let [start, end] = [
            w["data_offsets"][0].as_u64().unwrap() as usize,
            w["data_offsets"][1].as_u64().unwrap() as usize,
        ];
        let data = &bytes[8 + n + start..8 + n + end];
        assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), -2.5);
        let meta: serde_json::Value =
            serde_json::from_str(header["__metadata__"]["cephalo"].as_str().unwrap()).unwrap();
        assert_eq!(meta["format_version"], FORMAT_VERSION);
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        sample().save(&path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let truncated = dir.path().join("truncated.safetensors");
        fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
        let err = format!("{:#}", Checkpoint::load(&truncated).unwrap_err());
        assert!(
            err.contains("truncated.safetensors") && err.contains("corrupt"),
            "{err}"
        );
        let garbage = dir.path().join("garbage.pth");
        fs::write(&garbage, b"PK\x03\x04 a pytorch zip").unwrap();
        assert!(format!("{:#}", Checkpoint::load(&garbage).unwrap_err()).contains("garbage.pth"));
        let missing = format!(
            "{:#}",
            Checkpoint::load(&dir.path().join("none.safetensors")).unwrap_err()
        );
        assert!(missing.contains("none.safetensors"), "{missing}");
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        sample().save(&path).unwrap();
        let before = fs::read(&path).unwrap();
        // A tensor whose shape disagrees with its data cannot be serialised: save must fail
        // before touching the existing file.
        let mut bad = sample();
        bad.tensors.insert(
            "broken".into(),
            Tensor {
                shape: vec![5],
                data: vec![1.0],
            },
        );
        assert!(bad.save(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }
}
