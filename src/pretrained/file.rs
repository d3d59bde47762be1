//! Reading a weights file the users' PyTorch tools publish into a flat state dict: safetensors
//! (timm's `model.safetensors`) or `torch.save`'s zip container (`.pth`, `pytorch_model.bin`):
//! a zip whose `data.pkl` is the pickled state dict ([`super::pickle`]) and whose `data/<key>`
//! entries hold the raw storages.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors};

use super::pickle::{self, StorageDtype, TensorRef, Value};

/// One tensor of the file, converted to f32, in PyTorch's layout (conv weights OIHW).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// False for integer tensors (BN's `num_batches_tracked`): never loaded as weights.
    pub is_float: bool,
}

/// Tensors by their key in the file.
pub type StateDict = BTreeMap<String, SourceTensor>;

/// Reads `path`, telling the format by its first bytes rather than its extension (hub files
/// named `.bin` are zip files, a renamed safetensors file still reads).
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("reading --pretrained {}", path.display()))?;
    let sd = if bytes.starts_with(b"PK\x03\x04") {
        read_torch_zip(&bytes)
    } else if bytes.len() > 8 && bytes[8] == b'{' {
        // safetensors: an 8-byte header length, then the JSON header
        read_safetensors(&bytes)
    } else if bytes.starts_with(LEGACY_MAGIC) {
        read_torch_legacy(&bytes)
    } else if bytes.starts_with(&[0x80]) {
        Err(anyhow!(
            "a bare pickle, not a torch.save file (no tensor data follows it); re-save it with torch.save \
             or convert it to safetensors"
        ))
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        Err(anyhow!(
            "this is a tar archive (PyTorch's oldest format), which cephalo does not read; convert it to safetensors"
        ))
    } else {
        Err(anyhow!(
            "neither safetensors nor a torch.save zip file (the first bytes match neither)"
        ))
    };
    sd.with_context(|| format!("reading --pretrained {}", path.display()))
}

/// A safetensors file's tensors.
pub fn read_safetensors(bytes: &[u8]) -> Result<StateDict> {
    let st = SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let mut out = StateDict::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            Dtype::F32 => StorageDtype::F32,
            Dtype::F64 => StorageDtype::F64,
            Dtype::F16 => StorageDtype::F16,
            Dtype::BF16 => StorageDtype::BF16,
            Dtype::I64 => StorageDtype::I64,
            Dtype::I32 => StorageDtype::I32,
            Dtype::I16 => StorageDtype::I16,
            Dtype::I8 => StorageDtype::I8,
            Dtype::U8 => StorageDtype::U8,
            Dtype::BOOL => StorageDtype::Bool,
            other => bail!("{name}: element type {other:?} is not supported"),
        };
        let data = view
            .data()
            .chunks_exact(dtype.bytes())
            .map(|b| element(dtype, b))
            .collect();
        out.insert(
            name.to_string(),
            SourceTensor {
                shape: view.shape().to_vec(),
                data,
                is_float: dtype.is_float(),
            },
        );
    }
    Ok(out)
}

/// A `torch.save` zip file's tensors, from the state dict at the top of its pickle or under
/// `state_dict` / `model` / `module` (training checkpoints of mmpose, timm and others).
pub fn read_torch_zip(bytes: &[u8]) -> Result<StateDict> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("not a valid zip file")?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(|n| n.into_owned())
        .context("the zip file has no data.pkl: not written by torch.save")?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        ensure!(
            order == b"little",
            "the tensors are stored {}-endian; only little-endian files are read",
            String::from_utf8_lossy(&order)
        );
    }
    let top = pickle::parse(&read_entry(&mut zip, &pkl_name)?).with_context(|| format!("reading {pkl_name}"))?;
    let dict = find_state_dict(&top)?;
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (_, value) in &dict {
        if let Value::Tensor(t) = value {
            if !storages.contains_key(&*t.storage_key) {
                let entry = format!("{prefix}data/{}", t.storage_key);
                storages.insert(t.storage_key.to_string(), read_entry(&mut zip, &entry)?);
            }
        }
    }
    tensors_of(dict, &storages)
}

/// The first pickle of a legacy (PyTorch < 1.6, `_use_new_zipfile_serialization=False`)
/// file: protocol 2, the magic number 0x1950a86a20f9469cfc6c as a 10-byte LONG1.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// A legacy `torch.save` file: pickles of the magic number, the protocol version, the system
/// info and the object, then the list of storage keys, then each storage in that order as its
/// element count (8 bytes) and its bytes. MSRA's and timm's 2019-2020 HRNet files are of this
/// kind.
pub fn read_torch_legacy(bytes: &[u8]) -> Result<StateDict> {
    let mut at = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<Value> {
        let (v, n) = pickle::parse_prefix(&bytes[at..]).with_context(|| format!("reading the legacy file's {what}"))?;
        at += n;
        Ok(v)
    };
    let _protocol = next("protocol version")?;
    let info = next("system info")?;
    let little = info
        .dict_items()
        .and_then(|items| items.into_iter().find(|(k, _)| k.as_str() == Some("little_endian")))
        .map(|(_, v)| matches!(v, Value::Bool(true)));
    ensure!(
        little != Some(false),
        "the tensors are stored big-endian; only little-endian files are read"
    );
    let top = next("object")?;
    let keys = match next("storage keys")? {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| k.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .context("the legacy file's storage keys are not a list of strings")?;
    let dict = find_state_dict(&top)?;
    let dtypes: BTreeMap<&str, StorageDtype> = dict
        .iter()
        .filter_map(|(_, v)| match v {
            Value::Tensor(t) => Some((&*t.storage_key, t.dtype)),
            _ => None,
        })
        .collect();
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for key in &keys {
        let count = bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .context("the legacy file ends before its storages")?;
        at += 8;
        // A storage no tensor of the state dict uses has an unknown element size only if it is
        // the last one; those files hold other objects than a state dict and fail below.
        let size = dtypes
            .get(key.as_str())
            .map(|d| d.bytes())
            .context("a storage that no tensor uses")?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .context("storage too large")?;
        let data = bytes
            .get(at..at + len)
            .context("the legacy file ends inside a storage")?;
        storages.insert(key.clone(), data.to_vec());
        at += len;
    }
    tensors_of(dict, &storages)
}

/// The tensors of a state dict's items, read from their storages.
fn tensors_of(dict: Vec<(Value, Value)>, storages: &BTreeMap<String, Vec<u8>>) -> Result<StateDict> {
    let mut out = StateDict::new();
    for (key, value) in dict {
        let (Some(key), Value::Tensor(t)) = (key.as_str(), &value) else {
            continue;
        };
        let storage = storages
            .get(&*t.storage_key)
            .with_context(|| format!("tensor {key}: its storage {} is missing", t.storage_key))?;
        let data = gather(t, storage).with_context(|| format!("tensor {key}"))?;
        out.insert(
            key.to_string(),
            SourceTensor {
                shape: t.shape.clone(),
                data,
                is_float: t.dtype.is_float(),
            },
        );
    }
    ensure!(!out.is_empty(), "the file holds no tensors");
    Ok(out)
}

fn read_entry(zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>> {
    let mut f = zip
        .by_name(name)
        .with_context(|| format!("the zip file has no entry {name}"))?;
    let mut buf = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut buf)
        .with_context(|| format!("reading zip entry {name}"))?;
    Ok(buf)
}

/// The dict of tensors: the top value, or its `state_dict`/`model`/`module` entry.
fn find_state_dict(top: &Value) -> Result<Vec<(Value, Value)>> {
    let Some(items) = top.dict_items() else {
        bail!("the pickle holds {}, not a dict of tensors", top.describe())
    };
    let has_tensors = items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if has_tensors {
        return Ok(items);
    }
    for wanted in ["state_dict", "model", "module"] {
        if let Some((_, inner)) = items.iter().find(|(k, _)| k.as_str() == Some(wanted)) {
            if let Some(inner_items) = inner.dict_items() {
                return Ok(inner_items);
            }
        }
    }
    let keys: Vec<&str> = items.iter().filter_map(|(k, _)| k.as_str()).take(8).collect();
    bail!(
        "no tensors at the top of the file nor under state_dict/model/module (top-level keys: {})",
        keys.join(", ")
    )
}

/// The tensor's elements in row-major order, converted to f32, from its storage's bytes.
fn gather(t: &TensorRef, storage: &[u8]) -> Result<Vec<f32>> {
    let size = t.dtype.bytes();
    let n: usize = t.shape.iter().product();
    let elements = storage.len() / size;
    if n == 0 {
        return Ok(Vec::new());
    }
    let last = t.offset + t.shape.iter().zip(&t.stride).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
    ensure!(
        last < elements,
        "it reaches element {last} of a storage of {elements}: the file is truncated or corrupt"
    );
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..n {
        let at = t.offset + index.iter().zip(&t.stride).map(|(&i, &s)| i * s).sum::<usize>();
        out.push(element(t.dtype, &storage[at * size..(at + 1) * size]));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

/// One little-endian element as f32.
fn element(dtype: StorageDtype, b: &[u8]) -> f32 {
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        StorageDtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        StorageDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        StorageDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        StorageDtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        StorageDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        StorageDtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
        StorageDtype::I8 => b[0] as i8 as f32,
        StorageDtype::U8 | StorageDtype::Bool => b[0] as f32,
    }
}
