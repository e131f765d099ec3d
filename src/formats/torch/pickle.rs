//! A pickle machine for torch checkpoints, and the small pickle emitter our writer uses.
//!
//! The machine runs the opcodes `torch.save` emits (protocol 2, plus protocol 3–5 stragglers) but never executes
//! anything: `GLOBAL` resolves only names from an allow-list into inert [`Global`] markers, and `REDUCE`/`NEWOBJ`
//! interpret those markers (build a dict, record a tensor view...). Every container lives in a flat arena
//! ([`Node`]s addressed by index), so hostile nesting can neither overflow the stack when dropped nor explode when
//! memoized objects are fetched many times. Stack, mark, memo and arena sizes are bounded.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use crate::tensor::DType;

use super::{DTYPE_GLOBALS, STORAGE_CLASSES};

/// Most values the stack may hold at once.
const MAX_STACK: usize = 1 << 22;
/// Deepest `MARK` nesting.
const MAX_MARKS: usize = 4096;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 24;
/// Most arena nodes (containers, storages, tensors).
const MAX_NODES: usize = 1 << 24;
/// Longest `LONG1`/`LONG4` integer, in bytes.
const MAX_LONG_BYTES: usize = 1024;
/// Longest text line (`GLOBAL` names, text `INT`...).
const MAX_LINE: usize = 1024;
/// Values a pickle may copy per byte of input (plus a fixed allowance).
const WORK_PER_BYTE: usize = 1;
/// Highest tensor rank accepted.
pub(crate) const MAX_RANK: usize = 64;

/// A pickle that cannot be run: where and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PickleError {
    /// Byte offset of the opcode (within the whole buffer given to [`unpickle`]).
    pub pos: usize,
    pub msg: String,
    /// The global (module, name) whose refusal stopped the machine, if that is what stopped it.
    pub refused: Option<(String, String)>,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle byte {}: {}", self.pos, self.msg)
    }
}

/// An allow-listed global: an inert marker, never a Python object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildV1,
    RebuildV2,
    RebuildV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `_rebuild_device_tensor_from_cpu_tensor(data, dtype, device, requires_grad)`: a plain tensor moved on load.
    RebuildFromCpuTensor,
    Storage(StorageKind),
    Dtype(TorchDtype),
    Size,
    TensorClass,
    Parameter,
    Set,
    ByteArray,
    CodecsEncode,
    Device,
}

/// What a storage class global stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageKind {
    /// A legacy typed storage (`torch FloatStorage`...): numel counts elements of this dtype.
    Typed(DType),
    /// `torch.storage UntypedStorage`: numel counts bytes; the dtype comes from `_rebuild_tensor_v3`.
    Untyped,
    /// A recognised storage class whose dtype we cannot convert (quantized, complex): its class name.
    Unsupported(&'static str),
}

impl StorageKind {
    /// Bytes per counted unit of the storage's numel.
    pub(crate) fn unit_size(self) -> Option<usize> {
        match self {
            StorageKind::Typed(d) => Some(d.size()),
            StorageKind::Untyped => Some(1),
            StorageKind::Unsupported(_) => None,
        }
    }
}

/// A `torch <dtype>` global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TorchDtype {
    Supported(DType),
    /// A real torch dtype we cannot represent (float8, complex...): its name.
    Unsupported(&'static str),
}

/// Known-but-refused globals, with the reason given to the user.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "torch._utils",
        "_rebuild_qtensor",
        "quantized tensors are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_sparse_tensor",
        "sparse tensors are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_sparse_csr",
        "sparse tensors are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_nested_tensor",
        "nested tensors are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_device_tensor_from_numpy",
        "numpy-backed tensors are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_meta_tensor_no_storage",
        "meta tensors have no data to convert",
    ),
    (
        "torch._utils",
        "_rebuild_wrapper_subclass",
        "tensor wrapper subclasses are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_xla_tensor",
        "XLA tensors are not supported",
    ),
    (
        "torch._utils",
        "_rebuild_mtia_tensor",
        "MTIA tensors are not supported",
    ),
];

/// Plain allow-listed globals (storage classes and dtypes come from their own tables).
const ALLOWED: &[(&str, &str, Global)] = &[
    ("collections", "OrderedDict", Global::OrderedDict),
    ("torch._utils", "_rebuild_tensor", Global::RebuildV1),
    ("torch._utils", "_rebuild_tensor_v2", Global::RebuildV2),
    ("torch._utils", "_rebuild_tensor_v3", Global::RebuildV3),
    (
        "torch._utils",
        "_rebuild_parameter",
        Global::RebuildParameter,
    ),
    (
        "torch._utils",
        "_rebuild_parameter_with_state",
        Global::RebuildParameterWithState,
    ),
    (
        "torch._tensor",
        "_rebuild_from_type_v2",
        Global::RebuildFromTypeV2,
    ),
    (
        "torch._utils",
        "_rebuild_device_tensor_from_cpu_tensor",
        Global::RebuildFromCpuTensor,
    ),
    (
        "torch.storage",
        "UntypedStorage",
        Global::Storage(StorageKind::Untyped),
    ),
    ("torch", "Size", Global::Size),
    ("torch", "Tensor", Global::TensorClass),
    ("torch.nn.parameter", "Parameter", Global::Parameter),
    ("builtins", "set", Global::Set),
    ("builtins", "bytearray", Global::ByteArray),
    ("_codecs", "encode", Global::CodecsEncode),
    ("torch", "device", Global::Device),
];

/// Resolve `module name` against the allow-list. Anything else is refused by name; nothing is imported.
pub(crate) fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
    if let Some(g) = ALLOWED.iter().find(|(m, n, _)| *m == module && *n == name) {
        return Ok(g.2);
    }
    if module == "torch" || module == "torch.cuda" {
        if let Some((cls, d)) = STORAGE_CLASSES.iter().find(|(c, _)| *c == name) {
            return Ok(Global::Storage(match d {
                Some(d) => StorageKind::Typed(*d),
                None => StorageKind::Unsupported(cls),
            }));
        }
    }
    if module == "torch" {
        if let Some((n, d)) = DTYPE_GLOBALS.iter().find(|(n, _)| *n == name) {
            return Ok(Global::Dtype(match d {
                Some(d) => TorchDtype::Supported(*d),
                None => TorchDtype::Unsupported(n),
            }));
        }
    }
    if let Some((_, _, why)) = REFUSED.iter().find(|(m, n, _)| *m == module && *n == name) {
        return Err(format!("global '{module}.{name}' refused: {why}"));
    }
    Err(format!(
        "global '{module}.{name}' refused: not on the allow-list of torch weight globals (nothing is executed)"
    ))
}

/// A pickle value. Containers live in the arena and are referenced by index, so cloning is cheap.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64: little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    /// An arena node.
    Obj(usize),
}

/// A dict with Python's key semantics for hashable scalar keys (insertion order kept, later SETITEM replaces).
#[derive(Debug, Default)]
pub(crate) struct Dict {
    pub items: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

#[derive(Debug, Hash, PartialEq, Eq)]
enum DictKey {
    None,
    Int(i64),
    Big(Rc<[u8]>),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Float(u64),
    Obj(usize),
    Global(String),
}

impl DictKey {
    fn of(v: &Value) -> DictKey {
        match v {
            Value::None => DictKey::None,
            Value::Bool(b) => DictKey::Int(i64::from(*b)),
            Value::Int(i) => DictKey::Int(*i),
            Value::BigInt(b) => DictKey::Big(b.clone()),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => DictKey::Int(*f as i64),
            Value::Float(f) => DictKey::Float(f.to_bits()),
            Value::Str(s) => DictKey::Str(s.clone()),
            Value::Bytes(b) => DictKey::Bytes(b.clone()),
            Value::Obj(i) => DictKey::Obj(*i),
            Value::Global(g) => DictKey::Global(format!("{g:?}")),
        }
    }
}

impl Dict {
    fn insert(&mut self, k: Value, v: Value) {
        let key = DictKey::of(&k);
        match self.index.get(&key) {
            Some(&i) => self.items[i].1 = v,
            None => {
                self.index.insert(key, self.items.len());
                self.items.push((k, v));
            }
        }
    }
}

/// A storage named by a persistent id.
#[derive(Debug, Clone)]
pub(crate) struct StorageRef {
    pub kind: StorageKind,
    pub key: Rc<str>,
    /// Elements (typed storages) or bytes (untyped) of the whole storage.
    pub numel: u64,
    /// Legacy storage views: (offset, size) in elements of the root storage `key`.
    pub view: Option<(u64, u64)>,
}

/// A tensor view rebuilt by `_rebuild_tensor_v2/v3`: validated later against its storage.
#[derive(Debug, Clone)]
pub(crate) struct TensorSpec {
    /// Arena index of the [`Node::Storage`].
    pub storage: usize,
    pub dtype: DType,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// Arena nodes.
#[derive(Debug)]
pub(crate) enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    Set(Vec<Value>),
    Storage(StorageRef),
    /// A rebuilt tensor, or why it cannot be converted (reported with its name if the tensor is wanted).
    Tensor(Result<TensorSpec, String>),
}

/// The result of running one pickle.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub nodes: Vec<Node>,
    pub root: Value,
    /// Offset just past the `STOP` opcode.
    pub end: usize,
}

impl Unpickled {
    pub(crate) fn node(&self, v: &Value) -> Option<&Node> {
        match v {
            Value::Obj(i) => self.nodes.get(*i),
            _ => None,
        }
    }

    /// The items of a tuple or list value.
    pub(crate) fn seq(&self, v: &Value) -> Option<&[Value]> {
        match self.node(v)? {
            Node::Tuple(x) | Node::List(x) => Some(x),
            _ => None,
        }
    }

    pub(crate) fn dict(&self, v: &Value) -> Option<&Dict> {
        match self.node(v)? {
            Node::Dict(d) => Some(d),
            _ => None,
        }
    }
}

/// Run the pickle starting at `data[start]` up to its `STOP`.
pub(crate) fn unpickle(data: &[u8], start: usize) -> Result<Unpickled, PickleError> {
    let mut vm = Vm {
        data,
        pos: start,
        op_pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: Vec::new(),
        work: 0,
        refused: None,
        work_limit: data
            .len()
            .saturating_sub(start)
            .saturating_mul(WORK_PER_BYTE)
            .saturating_add(1 << 18),
    };
    match vm.run() {
        Ok(root) => Ok(Unpickled {
            nodes: vm.nodes,
            root,
            end: vm.pos,
        }),
        Err(msg) => Err(PickleError {
            pos: vm.op_pos,
            msg,
            refused: vm.refused,
        }),
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    nodes: Vec<Node>,
    /// Values copied so far, and the most allowed.
    work: usize,
    /// The refused global that stopped the machine.
    refused: Option<(String, String)>,
    work_limit: usize,
}

type R<T> = Result<T, String>;

/// Opcodes we recognise but refuse, with their names (everything else unknown is reported by byte).
const REFUSED_OPS: &[(u8, &str)] = &[
    (b'S', "STRING"),
    (b'V', "UNICODE"),
    (b'P', "PERSID (text persistent id)"),
    (b'i', "INST"),
    (b'o', "OBJ"),
    (0x82, "EXT1"),
    (0x83, "EXT2"),
    (0x84, "EXT4"),
    (0x92, "NEWOBJ_EX"),
    (0x97, "NEXT_BUFFER"),
    (0x98, "READONLY_BUFFER"),
];

impl<'a> Vm<'a> {
    // ---- input ----

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: needs {n} more bytes, {} left",
                    self.data.len().saturating_sub(self.pos)
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn take_arr<const N: usize>(&mut self) -> R<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take_arr::<1>()?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.take_arr()?))
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take_arr()?))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take_arr()?))
    }

    /// A length prefix, checked against the input left (so nothing is allocated beyond the input's size).
    fn len_arg(&mut self, n: u64) -> R<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| format!("length {n} exceeds the input"))?;
        self.take(n)
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest
            .iter()
            .take(MAX_LINE + 1)
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("text argument without newline within {MAX_LINE} bytes (truncated or malformed)"))?;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| "text argument is not UTF-8".to_string())
    }

    // ---- stack ----

    fn push(&mut self, v: Value) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("stack exceeds {MAX_STACK} values"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> R<Value> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&self) -> R<&Value> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        self.stack.last().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("no MARK on the stack")?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn new_node(&mut self, n: Node) -> R<Value> {
        if self.nodes.len() >= MAX_NODES {
            return Err(format!("more than {MAX_NODES} objects"));
        }
        self.nodes.push(n);
        Ok(Value::Obj(self.nodes.len() - 1))
    }

    fn memo_put(&mut self, idx: u64) -> R<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(format!("memo exceeds {MAX_MEMO} entries"));
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> R<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("memo entry {idx} was never stored"))?;
        self.push(v)
    }

    fn node_mut(&mut self, v: &Value, op: &str) -> R<&mut Node> {
        match v {
            Value::Obj(i) => self
                .nodes
                .get_mut(*i)
                .ok_or_else(|| format!("{op}: bad object")),
            other => Err(format!("{op} on a {}", kind_of_scalar(other))),
        }
    }

    /// The items of a tuple, list or set, borrowed.
    fn seq_ref(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(i) => match self.nodes.get(*i)? {
                Node::Tuple(x) | Node::List(x) | Node::Set(x) => Some(x),
                _ => None,
            },
            _ => None,
        }
    }

    /// The items of a tuple, list or set, copied (charged to the copy budget).
    fn seq_items(&mut self, v: &Value) -> R<Option<Vec<Value>>> {
        let n = self.seq_ref(v).map_or(0, <[Value]>::len);
        self.charge(n)?;
        Ok(self.seq_ref(v).map(<[Value]>::to_vec))
    }

    /// Account for copying `n` values; a pickle may copy at most a fixed multiple of its own size, so
    /// re-using one huge memoized tuple over and over cannot amplify memory or time.
    fn charge(&mut self, n: usize) -> R<()> {
        self.work = self.work.saturating_add(n);
        if self.work > self.work_limit {
            return Err(
                "pickle copies far more values than its size allows (hostile input?)".into(),
            );
        }
        Ok(())
    }

    // ---- main loop ----

    fn run(&mut self) -> R<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self
                .u8()
                .map_err(|_| "truncated: no STOP opcode".to_string())?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length of the next frame, informational
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(format!("MARK nesting exceeds {MAX_MARKS}"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.stack.len() <= self.floor() && !self.marks.is_empty() {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take_arr()?);
                    self.push(Value::Int(v.into()))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?
                }
                b'I' => {
                    let s = self.line()?;
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(s.parse().map_err(|_| format!("bad INT text '{s}'"))?),
                    };
                    self.push(v)?
                }
                b'L' => {
                    let s = self.line()?;
                    let t = s.strip_suffix('L').unwrap_or(s);
                    let v = t
                        .parse()
                        .map_err(|_| format!("LONG text '{s}' is not an i64"))?;
                    self.push(Value::Int(v))?
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s.parse().map_err(|_| format!("bad FLOAT text '{s}'"))?;
                    self.push(Value::Float(v))?
                }
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take(n.into())?;
                    self.push(decode_long(b))?
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_arr()?);
                    let n =
                        usize::try_from(n).map_err(|_| format!("LONG4 length {n} is negative"))?;
                    if n > MAX_LONG_BYTES {
                        return Err(format!("LONG4 of {n} bytes (limit {MAX_LONG_BYTES})"));
                    }
                    let b = self.take(n)?;
                    self.push(decode_long(b))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_arr()?);
                    self.push(Value::Float(v))?
                }
                b'X' => {
                    let n = self.u32()?;
                    let s = self.len_arg(n.into())?;
                    self.push_str(s)?
                }
                0x8c => {
                    let n = self.u8()?;
                    let s = self.len_arg(n.into())?;
                    self.push_str(s)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.len_arg(n)?;
                    self.push_str(s)?
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.take_arr()?);
                    let n = u64::try_from(n).map_err(|_| "BINSTRING length is negative")?;
                    let s = self.len_arg(n)?;
                    self.push_py2_str(s)?
                }
                b'U' => {
                    let n = self.u8()?;
                    let s = self.len_arg(n.into())?;
                    self.push_py2_str(s)?
                }
                b'B' => {
                    let n = self.u32()?;
                    let s = self.len_arg(n.into())?;
                    self.push(Value::Bytes(s.into()))?
                }
                b'C' => {
                    let n = self.u8()?;
                    let s = self.len_arg(n.into())?;
                    self.push(Value::Bytes(s.into()))?
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let s = self.len_arg(n)?;
                    self.push(Value::Bytes(s.into()))?
                }
                b')' => {
                    let v = self.new_node(Node::Tuple(Vec::new()))?;
                    self.push(v)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_node(Node::Tuple(items))?;
                    self.push(v)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_node(Node::Tuple(items))?;
                    self.push(v)?
                }
                b']' => {
                    let v = self.new_node(Node::List(Vec::new()))?;
                    self.push(v)?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_node(Node::List(items))?;
                    self.push(v)?
                }
                b'a' => {
                    let v = self.pop()?;
                    let t = self.top()?.clone();
                    self.extend(&t, vec![v], "APPEND")?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let t = self.top()?.clone();
                    self.extend(&t, items, "APPENDS")?
                }
                0x8f => {
                    let v = self.new_node(Node::Set(Vec::new()))?;
                    self.push(v)?
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let t = self.top()?.clone();
                    self.extend(&t, items, "ADDITEMS")?
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_node(Node::Set(items))?;
                    self.push(v)?
                }
                b'}' => {
                    let v = self.new_node(Node::Dict(Dict::default()))?;
                    self.push(v)?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.new_node(Node::Dict(Dict::default()))?;
                    self.set_items(&v, items, "DICT")?;
                    self.push(v)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let t = self.top()?.clone();
                    self.set_items(&t, vec![k, v], "SETITEM")?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let t = self.top()?.clone();
                    self.set_items(&t, items, "SETITEMS")?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(Value::Global(g))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(m, n)?;
                            self.push(Value::Global(g))?
                        }
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let args = match self.node(&args) {
                        Some(Node::Tuple(a)) => a.clone(),
                        _ => return Err("REDUCE/NEWOBJ arguments are not a tuple".into()),
                    };
                    self.charge(args.len())?;
                    let Value::Global(g) = f else {
                        return Err(format!(
                            "REDUCE/NEWOBJ on a {} (only allow-listed globals may be called)",
                            kind_of_scalar(&f)
                        ));
                    };
                    let v = self.call(g, &args, 0)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD sets state on the object below (e.g. an OrderedDict's `_metadata`): inert here.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i.into())?
                }
                b'p' => {
                    let s = self.line()?;
                    let i = s.parse().map_err(|_| format!("bad PUT index '{s}'"))?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i.into())?
                }
                b'g' => {
                    let s = self.line()?;
                    let i = s.parse().map_err(|_| format!("bad GET index '{s}'"))?;
                    self.memo_get(i)?
                }
                _ => {
                    return Err(match REFUSED_OPS.iter().find(|(o, _)| *o == op) {
                        Some((_, name)) => {
                            format!("opcode {name} is not supported in torch weights")
                        }
                        None => format!("unknown opcode 0x{op:02X}"),
                    })
                }
            }
        }
    }

    /// Resolve a global, remembering a refused one (so the caller can say what the file is).
    fn global(&mut self, module: &str, name: &str) -> R<Global> {
        resolve_global(module, name).inspect_err(|_| {
            self.refused = Some((module.to_string(), name.to_string()));
        })
    }

    fn node(&self, v: &Value) -> Option<&Node> {
        match v {
            Value::Obj(i) => self.nodes.get(*i),
            _ => None,
        }
    }

    fn push_str(&mut self, s: &[u8]) -> R<()> {
        let s = std::str::from_utf8(s).map_err(|_| "string is not valid UTF-8".to_string())?;
        self.push(Value::Str(s.into()))
    }

    /// Python 2 `str`: torch loads with `encoding='utf-8'`; keep undecodable data as bytes.
    fn push_py2_str(&mut self, s: &[u8]) -> R<()> {
        match std::str::from_utf8(s) {
            Ok(t) => self.push(Value::Str(t.into())),
            Err(_) => self.push(Value::Bytes(s.into())),
        }
    }

    fn extend(&mut self, target: &Value, items: Vec<Value>, op: &str) -> R<()> {
        match self.node_mut(target, op)? {
            Node::List(l) | Node::Set(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(format!("{op} on something that is not a list or set")),
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>, op: &str) -> R<()> {
        if items.len() % 2 != 0 {
            return Err(format!("{op} with an odd number of items"));
        }
        match self.node_mut(target, op)? {
            Node::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                }
                Ok(())
            }
            _ => Err(format!("{op} on something that is not a dict")),
        }
    }

    fn persistent_load(&mut self, pid: &Value) -> R<Value> {
        let items = match self.node(pid) {
            Some(Node::Tuple(t)) if t.len() <= 6 => t.clone(),
            Some(Node::Tuple(t)) => {
                return Err(format!(
                    "storage persistent id has {} items, expected 5 (zip) or 6 (legacy)",
                    t.len()
                ))
            }
            _ => return Err("persistent id is not a tuple".into()),
        };
        if items.first() != Some(&Value::Str("storage".into())) {
            return Err("persistent id is not a ('storage', ...) tuple".into());
        }
        if items.len() != 5 && items.len() != 6 {
            return Err(format!(
                "storage persistent id has {} items, expected 5 (zip) or 6 (legacy)",
                items.len()
            ));
        }
        let kind = match &items[1] {
            Value::Global(Global::Storage(k)) => *k,
            other => {
                return Err(format!(
                    "storage persistent id names a {}, expected a storage class",
                    kind_of_scalar(other)
                ))
            }
        };
        let key: Rc<str> = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string().into(),
            _ => return Err("storage key is not a string".into()),
        };
        let numel = match &items[4] {
            Value::Int(i) if *i >= 0 => *i as u64,
            other => {
                return Err(format!(
                    "storage '{key}' size {} is not a non-negative integer below 2^63",
                    render_scalar(other)
                ))
            }
        };
        // Legacy files of old torch may name a view of the root storage: (view_key, offset, size) in elements.
        let view = match items.get(5) {
            None | Some(Value::None) => None,
            Some(v) => match self.seq_ref(v) {
                Some([_, Value::Int(o), Value::Int(n)]) if *o >= 0 && *n >= 0 => {
                    Some((*o as u64, *n as u64))
                }
                _ => {
                    return Err(format!(
                        "storage '{key}' has view metadata that is not (key, offset, size)"
                    ))
                }
            },
        };
        self.new_node(Node::Storage(StorageRef {
            kind,
            key,
            numel,
            view,
        }))
    }

    /// Apply an allow-listed callable.
    fn call(&mut self, g: Global, args: &[Value], depth: usize) -> R<Value> {
        match g {
            Global::OrderedDict => {
                let d = self.new_node(Node::Dict(Dict::default()))?;
                match args {
                    [] => {}
                    [items] => {
                        let pairs = self
                            .seq_items(items)?
                            .ok_or("OrderedDict argument is not a sequence")?;
                        let mut flat = Vec::new();
                        for p in &pairs {
                            match self.seq_ref(p) {
                                Some([k, v]) => {
                                    flat.push(k.clone());
                                    flat.push(v.clone());
                                }
                                _ => return Err("OrderedDict item is not a pair".into()),
                            }
                        }
                        self.set_items(&d, flat, "OrderedDict")?;
                    }
                    _ => return Err("OrderedDict called with several arguments".into()),
                }
                Ok(d)
            }
            Global::RebuildV1 | Global::RebuildV2 | Global::RebuildV3 => {
                let spec = self.tensor_spec(args, g);
                self.new_node(Node::Tensor(spec))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState | Global::Parameter => {
                let want = match g {
                    Global::RebuildParameter => 3..=3,
                    Global::RebuildParameterWithState => 4..=4,
                    _ => 1..=2,
                };
                if !want.contains(&args.len()) {
                    return Err(format!("{g:?} called with {} arguments", args.len()));
                }
                match self.node(&args[0]) {
                    Some(Node::Tensor(_)) => Ok(args[0].clone()),
                    _ => Err(format!("{g:?} of something that is not a tensor")),
                }
            }
            Global::RebuildFromCpuTensor => {
                let [data, dtype, _device, _grad] = args else {
                    return Err(
                        "_rebuild_device_tensor_from_cpu_tensor expects (data, dtype, device, requires_grad)"
                            .into(),
                    );
                };
                let inner = match self.node(data) {
                    Some(Node::Tensor(t)) => t.clone(),
                    _ => return Err(
                        "_rebuild_device_tensor_from_cpu_tensor of something that is not a tensor"
                            .into(),
                    ),
                };
                let spec = inner.and_then(|t| match dtype {
                    Value::Global(Global::Dtype(TorchDtype::Supported(d))) if *d == t.dtype => {
                        Ok(t)
                    }
                    Value::Global(Global::Dtype(TorchDtype::Supported(d))) => Err(format!(
                        "the tensor is cast from {:?} to {d:?} on load: not supported",
                        t.dtype
                    )),
                    Value::Global(Global::Dtype(TorchDtype::Unsupported(n))) => {
                        Err(format!("unsupported dtype torch.{n}"))
                    }
                    other => Err(format!(
                        "_rebuild_device_tensor_from_cpu_tensor: dtype argument is a {}",
                        kind_of_scalar(other)
                    )),
                });
                self.new_node(Node::Tensor(spec))
            }
            Global::RebuildFromTypeV2 => {
                let [Value::Global(f), _ty, inner, _state] = args else {
                    return Err("_rebuild_from_type_v2 expects (func, type, args, state)".into());
                };
                if depth > 0
                    || !matches!(
                        f,
                        Global::RebuildV1
                            | Global::RebuildV2
                            | Global::RebuildV3
                            | Global::RebuildParameter
                    )
                {
                    return Err(format!("_rebuild_from_type_v2 of {f:?} is not supported"));
                }
                let inner = match self.node(inner) {
                    Some(Node::Tuple(a)) => a.clone(),
                    _ => return Err("_rebuild_from_type_v2 arguments are not a tuple".into()),
                };
                self.charge(inner.len())?;
                self.call(*f, &inner, depth + 1)
            }
            Global::Size => match args {
                [t] if self.seq_ref(t).is_some() => Ok(t.clone()),
                [] => self.new_node(Node::Tuple(Vec::new())),
                _ => Err("torch.Size expects one tuple".into()),
            },
            Global::Set => match args {
                [] => self.new_node(Node::Set(Vec::new())),
                [it] => {
                    let items = self.seq_items(it)?.ok_or("set() of a non-sequence")?;
                    self.new_node(Node::Set(items))
                }
                _ => Err("set() with several arguments".into()),
            },
            Global::ByteArray => match args {
                [] => Ok(Value::Bytes(Rc::from(&[][..]))),
                [Value::Bytes(b)] => Ok(Value::Bytes(b.clone())),
                _ => Err("bytearray() of something that is not bytes".into()),
            },
            Global::CodecsEncode => match args {
                [Value::Str(s), Value::Str(enc)]
                    if enc.eq_ignore_ascii_case("latin1")
                        || enc.eq_ignore_ascii_case("latin-1") =>
                {
                    let b: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    Ok(Value::Bytes(
                        b.ok_or("_codecs.encode: character outside latin-1")?.into(),
                    ))
                }
                _ => Err("_codecs.encode supports only (str, 'latin1')".into()),
            },
            Global::Device => match args.first() {
                Some(v @ Value::Str(_)) => Ok(v.clone()),
                _ => Err("torch.device expects a string".into()),
            },
            Global::Storage(_) | Global::Dtype(_) | Global::TensorClass => {
                Err(format!("{g:?} cannot be called in a weights file"))
            }
        }
    }

    fn usize_arg(&self, v: &Value, what: &str) -> Result<usize, String> {
        match v {
            Value::Int(i) => {
                usize::try_from(*i).map_err(|_| format!("{what} {i} is negative or too large"))
            }
            Value::BigInt(_) => Err(format!("{what} is an integer beyond 64 bits")),
            other => Err(format!(
                "{what} is a {}, expected an integer",
                kind_of_scalar(other)
            )),
        }
    }

    fn dims_arg(&self, v: &Value, what: &str) -> Result<Vec<usize>, String> {
        let items = self
            .seq_ref(v)
            .ok_or_else(|| format!("{what} is not a tuple"))?;
        if items.len() > MAX_RANK {
            return Err(format!(
                "{what} has {} dims (limit {MAX_RANK})",
                items.len()
            ));
        }
        items.iter().map(|d| self.usize_arg(d, what)).collect()
    }

    /// Interpret `_rebuild_tensor` (v1: storage, offset, size, stride — torch ≤ 0.3), `_rebuild_tensor_v2` or
    /// `_rebuild_tensor_v3` arguments. Errors are kept with the tensor and reported with its name.
    fn tensor_spec(&self, args: &[Value], g: Global) -> Result<TensorSpec, String> {
        let v3 = g == Global::RebuildV3;
        let (fname, n, extra) = match g {
            Global::RebuildV1 => ("_rebuild_tensor", 4, 0),
            Global::RebuildV3 => ("_rebuild_tensor_v3", 7, 1),
            _ => ("_rebuild_tensor_v2", 6, 1),
        };
        if args.len() < n || args.len() > n + extra {
            return Err(format!(
                "{fname} expects {n}{} arguments, got {}",
                if extra > 0 {
                    format!(" or {}", n + extra)
                } else {
                    String::new()
                },
                args.len()
            ));
        }
        let (storage, st) = match &args[0] {
            Value::Obj(i) => match self.nodes.get(*i) {
                Some(Node::Storage(s)) => (*i, s),
                _ => return Err(format!("{fname}: first argument is not a storage")),
            },
            _ => return Err(format!("{fname}: first argument is not a storage")),
        };
        if let StorageKind::Unsupported(cls) = st.kind {
            return Err(format!(
                "unsupported dtype: storage class torch.{cls} (quantized and complex tensors cannot be converted)"
            ));
        }
        let dtype = if v3 {
            match &args[6] {
                Value::Global(Global::Dtype(TorchDtype::Supported(d))) => *d,
                Value::Global(Global::Dtype(TorchDtype::Unsupported(name))) => {
                    return Err(format!("unsupported dtype torch.{name}"))
                }
                other => {
                    return Err(format!(
                        "{fname}: dtype argument is a {}",
                        kind_of_scalar(other)
                    ))
                }
            }
        } else {
            match st.kind {
                StorageKind::Typed(d) => d,
                _ => return Err(format!("{fname} on an untyped storage: dtype unknown")),
            }
        };
        let offset = self.usize_arg(&args[1], "storage offset")?;
        let shape = self.dims_arg(&args[2], "size")?;
        let strides = self.dims_arg(&args[3], "stride")?;
        if shape.len() != strides.len() {
            return Err(format!(
                "size has {} dims but stride has {}",
                shape.len(),
                strides.len()
            ));
        }
        if let Some(meta) = args.get(n).filter(|_| extra > 0) {
            let empty = match meta {
                Value::None => true,
                v => matches!(self.node(v), Some(Node::Dict(d)) if d.items.is_empty()),
            };
            if !empty {
                return Err("tensor has conj/neg math bits set (metadata): not supported".into());
            }
        }
        Ok(TensorSpec {
            storage,
            dtype,
            offset,
            shape,
            strides,
        })
    }
}

/// Decode a little-endian two's complement integer (`LONG1`/`LONG4`).
fn decode_long(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let fill = if neg { 0xFF } else { 0x00 };
    // Significant bytes: drop redundant sign extension.
    let mut n = b.len();
    while n > 1 && b[n - 1] == fill && (b[n - 2] & 0x80 != 0) == neg {
        n -= 1;
    }
    if n <= 8 {
        let mut a = [fill; 8];
        a[..n].copy_from_slice(&b[..n]);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b[..n].into())
    }
}

/// What a value is, for messages and `OtherEntry::kind`.
pub(crate) fn kind_of_scalar(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Global(_) => "global",
        Value::Obj(_) => "object",
    }
}

/// A printable rendering of a scalar value.
pub(crate) fn render_scalar(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(b) => {
            let hex: String = b.iter().rev().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex} (two's complement)")
        }
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => s.to_string(),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::Global(g) => format!("{g:?}"),
        Value::Obj(_) => "<object>".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Emitter

/// Writes the minimal protocol-2 vocabulary `torch.load(weights_only=True)` accepts from torch 1.13 on (no memo).
#[derive(Default)]
pub(crate) struct Emitter {
    pub buf: Vec<u8>,
}

impl Emitter {
    pub(crate) fn proto2(&mut self) {
        self.buf.extend_from_slice(&[0x80, 2]);
    }
    pub(crate) fn op(&mut self, op: u8) {
        self.buf.push(op);
    }
    pub(crate) fn mark(&mut self) {
        self.op(b'(');
    }
    pub(crate) fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.buf.extend_from_slice(module.as_bytes());
        self.op(b'\n');
        self.buf.extend_from_slice(name.as_bytes());
        self.op(b'\n');
    }
    pub(crate) fn unicode(&mut self, s: &str) {
        self.op(b'X');
        // Names longer than 4 GiB cannot occur (they come from a checkpoint header).
        let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&n.to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// A non-negative integer in the smallest opcode.
    pub(crate) fn int(&mut self, v: u64) {
        if v <= 0xFF {
            self.buf.extend_from_slice(&[b'K', v as u8]);
        } else if v <= 0xFFFF {
            self.op(b'M');
            self.buf.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.op(b'J');
            self.buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, with a 0 byte if the top bit is set.
            let mut b = v.to_le_bytes().to_vec();
            while b.len() > 1 && b[b.len() - 1] == 0 && b[b.len() - 2] & 0x80 == 0 {
                b.pop();
            }
            if b[b.len() - 1] & 0x80 != 0 {
                b.push(0);
            }
            self.buf.extend_from_slice(&[0x8a, b.len() as u8]);
            self.buf.extend_from_slice(&b);
        }
    }
    /// A tuple of non-negative integers (EMPTY_TUPLE, TUPLE1-3 or MARK...TUPLE).
    pub(crate) fn int_tuple(&mut self, vals: &[u64]) {
        match vals.len() {
            0 => self.op(b')'),
            1..=3 => {
                for &v in vals {
                    self.int(v);
                }
                self.op(0x84 + vals.len() as u8);
            }
            _ => {
                self.mark();
                for &v in vals {
                    self.int(v);
                }
                self.op(b't');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> Result<Unpickled, PickleError> {
        unpickle(p, 0)
    }

    #[test]
    fn refuses_dangerous_globals_by_name() {
        for (m, n) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("subprocess", "Popen"),
            ("posix", "system"),
        ] {
            let mut p = vec![0x80, 2, b'c'];
            p.extend_from_slice(format!("{m}\n{n}\n").as_bytes());
            p.extend_from_slice(b"X\x02\x00\x00\x00ls\x85R.");
            let e = run(&p).unwrap_err();
            assert!(e.msg.contains(&format!("{m}.{n}")), "{e}");
            // STACK_GLOBAL too
            let mut p = vec![0x80, 4, 0x8c, m.len() as u8];
            p.extend_from_slice(m.as_bytes());
            p.push(0x8c);
            p.push(n.len() as u8);
            p.extend_from_slice(n.as_bytes());
            p.extend_from_slice(&[0x93, b')', b'R', b'.']);
            let e = run(&p).unwrap_err();
            assert!(e.msg.contains(&format!("{m}.{n}")), "{e}");
        }
    }

    #[test]
    fn longs_decode() {
        assert_eq!(decode_long(&[]), Value::Int(0));
        assert_eq!(decode_long(&[0xFF]), Value::Int(-1));
        assert_eq!(
            decode_long(&[0x00, 0x00, 0x00, 0x00, 0x01]),
            Value::Int(1 << 32)
        );
        assert_eq!(decode_long(&[0x00, 0x80, 0x00]), Value::Int(0x8000));
        let big = [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19];
        assert_eq!(decode_long(&big), Value::BigInt(big[..].into()));
        // redundant sign bytes are dropped
        assert_eq!(
            decode_long(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Value::Int(1)
        );
    }

    #[test]
    fn emitter_ints_round_trip() {
        for v in [
            0u64,
            1,
            255,
            256,
            65535,
            65536,
            i32::MAX as u64,
            1 << 31,
            1 << 40,
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let mut e = Emitter::default();
            e.proto2();
            e.int(v);
            e.op(b'.');
            let u = run(&e.buf).unwrap();
            match u.root {
                Value::Int(i) => assert_eq!(i as u64, v),
                Value::BigInt(b) => {
                    assert_eq!(v, u64::MAX);
                    assert_eq!(
                        &b[..],
                        &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0][..]
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn memo_shares_mutable_dicts() {
        // d = {}; outer = {'a': d, 'b': d}; d['x'] = 1 after memoization
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00ah\x00X\x01\x00\x00\x00bh\x00uh\x00X\x01\x00\x00\x00xK\x01s0.";
        // Stack: d(memo0) MARK 'a' d 'b' d SETITEMS -> d is its own values (cyclic); then GET d, set x; POP
        let u = run(p).unwrap();
        let d = u.dict(&u.root).unwrap();
        assert_eq!(d.items.len(), 3);
    }

    #[test]
    fn hostile_shapes_error_cleanly() {
        // underflow, missing mark, huge LONG4, truncated string, unknown opcode, odd SETITEMS
        let cases: &[&[u8]] = &[
            b"\x80\x02.",
            b"\x80\x02t.",
            b"\x80\x02\x8b\xff\xff\xff\x7f",
            b"\x80\x02X\xff\xff\xff\xffab",
            b"\x80\x02\xff",
            b"\x80\x02}(K\x01u.",
            b"\x80\x02(((((",
            b"\x80\x02h\x05.",
            b"\x80\x02cos\nsys",
        ];
        for c in cases {
            assert!(run(c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn copying_a_memoized_tuple_over_and_over_is_bounded() {
        // t = tuple(range-ish 200k); then set(t) 100k times via BINGET: refused long before 2e10 copies.
        let mut p = vec![0x80, 2, b'('];
        p.extend(std::iter::repeat_n(b'N', 200_000));
        p.extend_from_slice(b"tq\x00");
        for _ in 0..100_000 {
            p.extend_from_slice(b"cbuiltins\nset\nh\x00\x85R0");
        }
        p.extend_from_slice(b"N.");
        let e = run(&p).unwrap_err();
        assert!(e.msg.contains("copies"), "{e}");
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        // 100k lists appended each into the one below: a chain 100k deep, held flat in the arena
        let mut p = vec![0x80, 2, b']'];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 100_000));
        p.push(b'.');
        let u = run(&p).unwrap();
        assert!(u.nodes.len() > 100_000);
    }
}
