//! A restricted reader of the pickle stream inside a `torch.save` file. A pickle is a program
//! for a small stack machine whose `GLOBAL` opcode imports any Python callable and whose
//! `REDUCE` calls it: loading an untrusted one with Python's `pickle` runs whatever it names.
//! This reader interprets the opcodes as data only and knows a fixed list of globals, the ones a
//! tensor state dict needs ([`Global`]); any other global is refused, naming it, before
//! anything is built from it. No global is ever "called": `REDUCE` on a known global builds the
//! value that global would have built (an ordered dict, a tensor reference), nothing else.
//!
//! Why not a crate: serde-pickle, the maintained Rust pickle reader, has no hook for torch's
//! persistent ids (how tensors point at their storages) and, with unresolved globals allowed,
//! accepts every global silently; without, it refuses the ones a state dict needs.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{bail, ensure, Context, Result};

/// Element types of torch storages this reader converts to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    pub fn bytes(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            StorageDtype::F32 | StorageDtype::F64 | StorageDtype::F16 | StorageDtype::BF16
        )
    }

    /// The storage class `torch.save` names (`torch.FloatStorage`, ...).
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "DoubleStorage" => StorageDtype::F64,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }
}

/// The only globals a state dict pickle may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: the state dict itself and the empty backward-hooks dicts.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: an `nn.Parameter`.
    RebuildParameter,
    /// `torch.FloatStorage` and friends: the element type in a persistent id.
    Storage(StorageDtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", class) => Global::Storage(StorageDtype::from_storage_class(class)?),
            _ => return None,
        })
    }
}

/// Where a tensor's elements are: the storage (a file `data/<key>` of the zip), the offset and
/// strides in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage_key: Rc<str>,
    pub dtype: StorageDtype,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A value of the pickle machine. Dicts and lists are shared (`Rc`): the stream memoizes a
/// container and then fills it, and a later reference must see the filled one. Strings, bytes
/// and tuples are shared too, so a stream that reads one memo entry over and over (a "billion
/// laughs" pickle) costs a pointer per read, not a copy.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    /// A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`.
    Storage {
        key: Rc<str>,
        dtype: StorageDtype,
    },
    Tensor(TensorRef),
}

impl Value {
    fn new_dict() -> Value {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    /// What kind of value this is, for error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn as_usize(&self, what: &str) -> Result<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => bail!("{what}: expected a non-negative int, found {}", other.describe()),
        }
    }

    fn as_usizes(&self, what: &str) -> Result<Vec<usize>> {
        match self {
            Value::Tuple(items) => items.iter().map(|v| v.as_usize(what)).collect(),
            other => bail!("{what}: expected a tuple of ints, found {}", other.describe()),
        }
    }

    /// The key/value pairs of a dict, `None` for anything else.
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the machine's stack: a value or a MARK.
enum Slot {
    Mark,
    Value(Value),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
}

/// Interprets a pickle stream and returns the value it stops with.
pub fn parse(data: &[u8]) -> Result<Value> {
    Ok(parse_prefix(data)?.0)
}

/// Interprets the pickle at the start of `data` and returns its value and its length in bytes
/// (the legacy torch format writes several pickles one after the other).
pub fn parse_prefix(data: &[u8]) -> Result<(Value, usize)> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let v = m.run()?;
    Ok((v, m.pos))
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("the pickle stream ends in the middle of an opcode (byte {})", self.pos)
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            bail!("the pickle stream ends inside a GLOBAL name")
        };
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Value> {
        let bytes = self.take(n)?.to_vec();
        Ok(Value::Str(
            String::from_utf8(bytes).context("a pickle string is not UTF-8")?.into(),
        ))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::Value(v));
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => bail!("malformed pickle: a MARK where a value was expected"),
            None => bail!("malformed pickle: the stack is empty"),
        }
    }

    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Slot::Value(v)) => Ok(v),
            _ => bail!("malformed pickle: no value on the stack"),
        }
    }

    /// The values above the topmost MARK, which is removed.
    fn pop_to_mark(&mut self) -> Result<Vec<Value>> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            bail!("malformed pickle: no MARK")
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|s| match s {
                Slot::Value(v) => v,
                Slot::Mark => unreachable!("the topmost mark was found above"),
            })
            .collect())
    }

    fn memo_get(&self, key: u32) -> Result<Value> {
        self.memo
            .get(&key)
            .cloned()
            .with_context(|| format!("malformed pickle: memo entry {key} read before it was written"))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push(Value::Global(g));
                Ok(())
            }
            None => bail!(
                "the pickle names the global {module}.{name}, which a tensor state dict never needs; \
                 refusing to read it (loading this file in PyTorch would call it). If you trust the file, \
                 convert it to safetensors in Python and pass that instead"
            ),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        ensure!(
            items.len().is_multiple_of(2),
            "malformed pickle: SETITEMS with an odd number of values"
        );
        let Value::Dict(d) = self.top()? else {
            bail!("malformed pickle: SETITEMS on something other than a dict")
        };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let Value::List(l) = self.top()? else {
            bail!("malformed pickle: APPEND on something other than a list")
        };
        l.borrow_mut().extend(items);
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    ensure!(proto <= 5, "pickle protocol {proto} is newer than any Python writes");
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    ensure!(n <= 8, "pickle LONG1 of {n} bytes: too large for a tensor size");
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(bytes);
                    if n > 0 && bytes[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    let v = self.utf8(usize::try_from(n).context("string too long")?)?;
                    self.push(v);
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.push(Value::Bytes(v.into()));
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.push(Value::Bytes(v.into()));
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b'}' => self.push(Value::new_dict()),
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    self.push(Value::new_dict());
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    self.append(items)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.push(v);
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => self.global(m, n)?,
                        _ => bail!("malformed pickle: STACK_GLOBAL without two strings"),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_storage(&pid)?;
                    self.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(&callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD sets attributes (an OrderedDict's `_metadata`, a parameter's state):
                    // nothing a tensor's values depend on, so the state is dropped.
                    let _state = self.pop()?;
                    let target = self.top()?;
                    ensure!(
                        matches!(target, Value::Dict(_) | Value::Tensor(_)),
                        "malformed pickle: BUILD on {}",
                        target.describe()
                    );
                }
                0x81 | 0x92 | b'i' | b'o' => {
                    bail!("the pickle instantiates a class (opcode {op:#04x} at byte {at}); a tensor state dict never does")
                }
                other => bail!("unsupported pickle opcode {other:#04x} at byte {at}"),
            }
        }
    }
}

/// A torch persistent id: `('storage', <storage class>, key, location, numel)`, and in the
/// legacy format a sixth item, the view of another storage (`None` unless the storage is a view).
fn persistent_storage(pid: &Value) -> Result<Value> {
    let Value::Tuple(items) = pid else {
        bail!("persistent id: expected a tuple, found {}", pid.describe())
    };
    if let Some(view) = items.get(5).filter(|v| !matches!(v, Value::None)) {
        bail!(
            "persistent id: a storage view ({}), which cephalo does not read; re-save the file with a recent PyTorch",
            view.describe()
        );
    }
    match items.get(..5).unwrap_or(items.as_slice()) {
        [Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), _location, _numel]
            if &**kind == "storage" =>
        {
            Ok(Value::Storage {
                key: key.clone(),
                dtype: *dtype,
            })
        }
        _ => bail!("persistent id: not a torch storage reference ({} items)", items.len()),
    }
}

/// What calling a known global with `args` builds.
fn reduce(callable: &Value, args: Value) -> Result<Value> {
    let Value::Global(g) = callable else {
        bail!("malformed pickle: REDUCE calls {}, not a global", callable.describe())
    };
    let Value::Tuple(args) = args else {
        bail!(
            "malformed pickle: REDUCE arguments are {}, not a tuple",
            args.describe()
        )
    };
    match g {
        Global::OrderedDict => {
            let dict = Value::new_dict();
            // OrderedDict(pairs): a list of (key, value) tuples; usually empty, filled by SETITEMS.
            if let Some(Value::List(pairs)) = args.first() {
                let Value::Dict(d) = &dict else { unreachable!() };
                for pair in pairs.borrow().iter() {
                    match pair {
                        Value::Tuple(kv) if kv.len() == 2 => d.borrow_mut().push((kv[0].clone(), kv[1].clone())),
                        _ => bail!("OrderedDict: an item is not a (key, value) pair"),
                    }
                }
            }
            Ok(dict)
        }
        Global::RebuildTensor => {
            ensure!(
                args.len() >= 4,
                "_rebuild_tensor_v2 with {} arguments (at least 4 expected)",
                args.len()
            );
            let Value::Storage { key, dtype } = &args[0] else {
                bail!(
                    "_rebuild_tensor_v2: the first argument is {}, not a storage",
                    args[0].describe()
                )
            };
            let shape = args[2].as_usizes("tensor size")?;
            let stride = args[3].as_usizes("tensor stride")?;
            ensure!(shape.len() == stride.len(), "tensor size and stride differ in length");
            // Real tensors have a handful of dimensions; a crafted size tuple read from the memo
            // again and again must not cost a copy of its length each time.
            ensure!(shape.len() <= 8, "a tensor of {} dimensions", shape.len());
            Ok(Value::Tensor(TensorRef {
                storage_key: key.clone(),
                dtype: *dtype,
                offset: args[1].as_usize("storage offset")?,
                shape,
                stride,
            }))
        }
        Global::RebuildParameter => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => bail!("_rebuild_parameter without a tensor"),
        },
        Global::Storage(_) => bail!("malformed pickle: a storage class is called"),
    }
}
