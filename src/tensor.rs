//! Format-independent tensor descriptions: dtypes, headers and where a tensor's bytes live.
//!
//! Readers produce a [`Checkpoint`]: a list of [`TensorEntry`] (header + [`DataRef`]) plus non-tensor entries.
//! Nothing here knows about a file format or a model family.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use memmap2::Mmap;

/// Element types a checkpoint can hold. Spelled as in `inspect --json` (`F32`, `BF16`, `BOOL`...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// FP8 e4m3fn (OCP; torch `float8_e4m3fn`): bias 7, no infinities, `S.1111.111` is NaN.
    F8E4M3,
    /// FP8 e5m2 (OCP; torch `float8_e5m2`): bias 15, IEEE-like infinities and NaNs.
    F8E5M2,
    /// FP8 e8m0fnu (OCP MX scale; torch `float8_e8m0fnu`): an unsigned power of two 2^(e-127), 0xFF is NaN.
    F8E8M0,
}

/// One row per dtype: (dtype, canonical name, element size, is float).
const DTYPES: &[(DType, &str, usize, bool)] = &[
    (DType::F64, "F64", 8, true),
    (DType::F32, "F32", 4, true),
    (DType::F16, "F16", 2, true),
    (DType::BF16, "BF16", 2, true),
    (DType::I64, "I64", 8, false),
    (DType::I32, "I32", 4, false),
    (DType::I16, "I16", 2, false),
    (DType::I8, "I8", 1, false),
    (DType::U8, "U8", 1, false),
    (DType::U16, "U16", 2, false),
    (DType::U32, "U32", 4, false),
    (DType::U64, "U64", 8, false),
    (DType::Bool, "BOOL", 1, false),
    // FP8 is not "float" for casts: its bytes move as they are, and only an explicit decode or block
    // dequantisation (crate::fp8) turns it into numbers.
    (DType::F8E4M3, "F8_E4M3", 1, false),
    (DType::F8E5M2, "F8_E5M2", 1, false),
    (DType::F8E8M0, "F8_E8M0", 1, false),
];

impl DType {
    pub const ALL: [DType; 16] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::F8E8M0,
    ];

    fn row(self) -> &'static (DType, &'static str, usize, bool) {
        DTYPES
            .iter()
            .find(|r| r.0 == self)
            .expect("every dtype has a row")
    }

    /// Canonical name: `F64 F32 F16 BF16 I64 I32 I16 I8 U8 U16 U32 U64 BOOL F8_E4M3 F8_E5M2 F8_E8M0` (also
    /// safetensors' spelling).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        self.row().2
    }

    /// Floating dtypes that casts (`--dtype`, `Expr::Cast`) work on. FP8 is not one of them (see [`is_fp8`]).
    ///
    /// [`is_fp8`]: Self::is_fp8
    pub fn is_float(self) -> bool {
        self.row().3
    }

    /// The 8-bit floating formats (e4m3fn, e5m2, e8m0fnu).
    pub fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0)
    }

    /// Parse the canonical name (as written by `name`).
    pub fn from_name(s: &str) -> Option<DType> {
        DTYPES.iter().find(|r| r.1 == s).map(|r| r.0)
    }

    /// The user-facing `--dtype` spellings of the reference tool.
    pub fn from_cli(s: &str) -> Option<DType> {
        match s {
            "fp32" => Some(DType::F32),
            "fp16" => Some(DType::F16),
            "bf16" => Some(DType::BF16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of elements of a shape (1 for a scalar). `None` on overflow.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Header of one tensor: what `inspect` lists and what planning works from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> Self {
        TensorInfo {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape).unwrap_or(usize::MAX)
    }

    /// Size of the tensor's contiguous bytes (saturating; readers reject overflowing shapes).
    pub fn nbytes(&self) -> usize {
        self.numel().saturating_mul(self.dtype.size())
    }
}

/// Shared, read-only bytes a tensor can point into: a memory map or an owned buffer.
#[derive(Clone)]
pub enum Backing {
    Mmap(Arc<Mmap>),
    Owned(Arc<Vec<u8>>),
}

impl Backing {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => &m[..],
            Backing::Owned(v) => &v[..],
        }
    }

    /// Owned bytes (for tensors that a reader had to build itself).
    pub fn owned(v: Vec<u8>) -> Self {
        Backing::Owned(Arc::new(v))
    }
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Mmap(m) => write!(f, "Mmap({} bytes)", m.len()),
            Backing::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// Where a tensor's bytes live. Readers validate ranges when they build one, so reading never fails on bounds.
#[derive(Clone, Debug)]
pub enum DataRef {
    /// Row-major little-endian bytes, one range of the backing.
    Contiguous {
        backing: Backing,
        range: Range<usize>,
    },
    /// Row-major bytes cut into consecutive pieces (MindSpore slices); concatenated they are the tensor.
    Chunks {
        backing: Backing,
        ranges: Vec<Range<usize>>,
    },
    /// A strided view into a storage (torch): element `offset + Σ idx_i·stride_i` of `storage`.
    /// `storage` is the byte range of the whole storage; offsets and strides are in elements.
    Strided {
        backing: Backing,
        storage: Range<usize>,
        elem_size: usize,
        offset: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
    /// A global tensor assembled from slices of other tensors (distributed checkpoints: each rank's file holds a
    /// box of the global tensor). The reader has checked that the boxes tile `shape` exactly, so every byte is
    /// written once.
    Assembled {
        elem_size: usize,
        /// Global shape.
        shape: Vec<usize>,
        pieces: Vec<Placed>,
    },
}

/// One slice of a global tensor: `data` holds the row-major bytes of a box of shape `shape` whose first element is
/// at `offset` in the global tensor.
#[derive(Clone, Debug)]
pub struct Placed {
    pub data: DataRef,
    pub offset: Vec<usize>,
    pub shape: Vec<usize>,
}

/// Copy the row-major box `piece` (shape `box_shape`, placed at `offset`) into the row-major global buffer `out`
/// of shape `shape`. The caller has checked that the box lies inside the tensor.
pub fn place_box(
    out: &mut [u8],
    shape: &[usize],
    elem_size: usize,
    piece: &[u8],
    offset: &[usize],
    box_shape: &[usize],
) {
    box_runs(shape, offset, box_shape, elem_size, |g, b| {
        out[g].copy_from_slice(&piece[b])
    });
}

/// Cut the box (`box_shape` at `offset`) out of the row-major global buffer `global` into `out` (row-major).
pub fn cut_box(
    global: &[u8],
    shape: &[usize],
    elem_size: usize,
    offset: &[usize],
    box_shape: &[usize],
    out: &mut [u8],
) {
    box_runs(shape, offset, box_shape, elem_size, |g, b| {
        out[b].copy_from_slice(&global[g])
    });
}

/// Walk a box of a row-major tensor as runs of contiguous bytes: `f(global byte range, box byte range)`.
/// Trailing dimensions the box covers whole are merged into one run.
pub fn box_runs(
    shape: &[usize],
    offset: &[usize],
    box_shape: &[usize],
    elem_size: usize,
    mut f: impl FnMut(Range<usize>, Range<usize>),
) {
    let n = numel(box_shape).unwrap_or(0);
    if n == 0 {
        return;
    }
    // Merge the trailing dims that the box spans fully, plus the first one that it does not.
    let rank = shape.len();
    let mut k = rank; // dims k.. form one run
    let mut run = elem_size;
    while k > 0 {
        k -= 1;
        run *= box_shape[k];
        if box_shape[k] != shape[k] {
            break;
        }
    }
    // strides of the global tensor in bytes
    let mut strides = vec![0usize; rank];
    let mut acc = elem_size;
    for d in (0..rank).rev() {
        strides[d] = acc;
        acc *= shape[d];
    }
    let base: usize = offset.iter().zip(&strides).map(|(o, s)| o * s).sum();
    let outer = &box_shape[..k.min(rank)];
    let mut idx = vec![0usize; outer.len()];
    let mut b = 0usize;
    loop {
        let g = base + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
        f(g..g + run, b..b + run);
        b += run;
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < outer[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

impl DataRef {
    /// The tensor's row-major bytes: borrowed when they are contiguous in the backing, else materialised.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            DataRef::Contiguous { backing, range } => {
                Cow::Borrowed(&backing.bytes()[range.clone()])
            }
            DataRef::Chunks { backing, ranges } => {
                if ranges.len() == 1 {
                    return Cow::Borrowed(&backing.bytes()[ranges[0].clone()]);
                }
                let total = ranges.iter().map(|r| r.len()).sum();
                let mut out = Vec::with_capacity(total);
                for r in ranges {
                    out.extend_from_slice(&backing.bytes()[r.clone()]);
                }
                Cow::Owned(out)
            }
            DataRef::Strided {
                backing,
                storage,
                elem_size,
                offset,
                shape,
                strides,
            } => {
                let st = &backing.bytes()[storage.clone()];
                if let Some(r) = contiguous_range(*elem_size, *offset, shape, strides) {
                    return Cow::Borrowed(&st[r]);
                }
                Cow::Owned(materialise_strided(st, *elem_size, *offset, shape, strides))
            }
            DataRef::Assembled {
                elem_size,
                shape,
                pieces,
            } => {
                if let [p] = &pieces[..] {
                    if p.shape == *shape {
                        return p.data.bytes();
                    }
                }
                let total = numel(shape).unwrap_or(0) * elem_size;
                let mut out = vec![0u8; total];
                for p in pieces {
                    place_box(
                        &mut out,
                        shape,
                        *elem_size,
                        &p.data.bytes(),
                        &p.offset,
                        &p.shape,
                    );
                }
                Cow::Owned(out)
            }
        }
    }

    /// The tensor's row-major bytes when they lie contiguous in the backing, without materialising anything
    /// (`None` when [`bytes`](Self::bytes) would have to build them).
    pub fn borrowed(&self) -> Option<&[u8]> {
        match self {
            DataRef::Contiguous { backing, range } => Some(&backing.bytes()[range.clone()]),
            DataRef::Chunks { backing, ranges } if ranges.len() == 1 => {
                Some(&backing.bytes()[ranges[0].clone()])
            }
            DataRef::Chunks { .. } => None,
            DataRef::Strided {
                backing,
                storage,
                elem_size,
                offset,
                shape,
                strides,
            } => contiguous_range(*elem_size, *offset, shape, strides)
                .map(|r| &backing.bytes()[storage.clone()][r]),
            DataRef::Assembled { shape, pieces, .. } => match &pieces[..] {
                [p] if p.shape == *shape => p.data.borrowed(),
                _ => None,
            },
        }
    }

    /// Byte length of the tensor's row-major data.
    pub fn len(&self) -> usize {
        match self {
            DataRef::Contiguous { range, .. } => range.len(),
            DataRef::Chunks { ranges, .. } => ranges.iter().map(|r| r.len()).sum(),
            DataRef::Strided {
                elem_size, shape, ..
            } => numel(shape).unwrap_or(0) * elem_size,
            DataRef::Assembled {
                elem_size, shape, ..
            } => numel(shape).unwrap_or(0) * elem_size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// If a strided view is in fact row-major contiguous, its byte range within the storage.
pub fn contiguous_range(
    elem_size: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Option<Range<usize>> {
    let n = numel(shape)?;
    if n == 0 {
        return Some(0..0);
    }
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expect {
            return None;
        }
        expect *= d;
    }
    let start = offset * elem_size;
    Some(start..start + n * elem_size)
}

/// Copy a strided view into a fresh row-major buffer. The caller has validated the bounds.
pub fn materialise_strided(
    storage: &[u8],
    elem_size: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Vec<u8> {
    let n = numel(shape).unwrap_or(0);
    let mut out = Vec::with_capacity(n * elem_size);
    if n == 0 {
        return out;
    }
    let rank = shape.len();
    if rank == 0 {
        let s = offset * elem_size;
        out.extend_from_slice(&storage[s..s + elem_size]);
        return out;
    }
    // Walk every index but the last with an odometer; copy the last dimension in one go when it is unit-strided.
    let last = rank - 1;
    let inner = shape[last];
    let inner_contig = strides[last] == 1;
    let mut idx = vec![0usize; last];
    loop {
        let base: usize = offset + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        if inner_contig {
            let s = base * elem_size;
            out.extend_from_slice(&storage[s..s + inner * elem_size]);
        } else {
            for j in 0..inner {
                let s = (base + j * strides[last]) * elem_size;
                out.extend_from_slice(&storage[s..s + elem_size]);
            }
        }
        // advance the odometer
        let mut d = last;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// One tensor of a checkpoint: its header and where its bytes are.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub info: TensorInfo,
    pub data: DataRef,
    /// Index of an earlier entry in the same checkpoint that this one is tied to (same storage, same view),
    /// so writers that can share storage (torch) write it once.
    pub tied_to: Option<usize>,
}

/// A non-tensor entry (MindSpore `str` records, pickle scalars in a training checkpoint...): reported, not converted.
#[derive(Clone, Debug, PartialEq)]
pub struct OtherEntry {
    pub name: String,
    /// What it is (`str`, `int`...).
    pub kind: String,
    /// A printable rendering of its value.
    pub value: String,
}

/// Everything a reader found in one file (or one sharded set of files).
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// `torch_zip`, `torch_legacy_pickle`, `safetensors`, `mindspore_ckpt_protobuf`, or `sharded(<inner>)`.
    pub format: String,
    pub tensors: Vec<TensorEntry>,
    pub others: Vec<OtherEntry>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// Format metadata (safetensors `__metadata__`), if any.
    pub metadata: Vec<(String, String)>,
    /// Reader notes for the user: which dict of a training checkpoint was read and what was left out.
    pub notes: Vec<String>,
}

impl Checkpoint {
    pub fn infos(&self) -> Vec<TensorInfo> {
        self.tensors.iter().map(|t| t.info.clone()).collect()
    }

    pub fn find(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.info.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_table_round_trips() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::Bool.name(), "BOOL");
        assert_eq!(DType::BF16.size(), 2);
        assert!(DType::BF16.is_float() && !DType::I64.is_float());
        assert_eq!(DType::from_name("F8_E4M3"), Some(DType::F8E4M3));
        assert_eq!(DType::F8E8M0.name(), "F8_E8M0");
        assert!(DType::F8E5M2.is_fp8() && !DType::F8E5M2.is_float() && DType::F8E5M2.size() == 1);
    }

    #[test]
    fn assembled_boxes_place_and_borrow() {
        // a 4x4 u8 tensor from four 2x2 boxes
        let full: Vec<u8> = (0..16).collect();
        let mut pieces = Vec::new();
        for (r, c) in [(0, 0), (0, 2), (2, 0), (2, 2)] {
            let mut b = vec![0u8; 4];
            cut_box(&full, &[4, 4], 1, &[r, c], &[2, 2], &mut b);
            pieces.push(Placed {
                data: DataRef::Contiguous {
                    backing: Backing::owned(b),
                    range: 0..4,
                },
                offset: vec![r, c],
                shape: vec![2, 2],
            });
        }
        let d = DataRef::Assembled {
            elem_size: 1,
            shape: vec![4, 4],
            pieces,
        };
        assert!(d.borrowed().is_none());
        assert_eq!(&*d.bytes(), &full[..]);
        assert_eq!(d.len(), 16);
        let whole = DataRef::Assembled {
            elem_size: 1,
            shape: vec![4, 4],
            pieces: vec![Placed {
                data: DataRef::Contiguous {
                    backing: Backing::owned(full.clone()),
                    range: 0..16,
                },
                offset: vec![0, 0],
                shape: vec![4, 4],
            }],
        };
        assert_eq!(whole.borrowed(), Some(&full[..]));
    }

    #[test]
    fn strided_transpose_materialises_row_major() {
        // storage holds a 2x3 row-major matrix of u8; view its transpose (3x2, strides (1,3)).
        let st: Vec<u8> = (0..6).collect();
        let out = materialise_strided(&st, 1, 0, &[3, 2], &[1, 3]);
        assert_eq!(out, vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(contiguous_range(1, 0, &[3, 2], &[1, 3]), None);
        assert_eq!(contiguous_range(2, 1, &[2, 3], &[3, 1]), Some(2..14));
        // stride-0 broadcast
        assert_eq!(
            materialise_strided(&st, 1, 2, &[2, 2], &[0, 1]),
            vec![2, 3, 2, 3]
        );
        // scalar with offset
        assert_eq!(materialise_strided(&st, 2, 1, &[], &[]), vec![2, 3]);
    }
}
