//! Parsing GGUF v2/v3 files: header, metadata, tensor infos and mapped data.
//!
//! Every count and length read from the file is checked against what is left
//! of the file before anything is allocated, so a hostile header cannot make
//! the reader allocate gigabytes or read out of bounds.

use super::dequant::dequantize;
use super::error::{GgufError, Result};
use super::metadata::{Metadata, MetadataValue};
use super::tensor_type::GgmlType;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string the reader accepts (chat templates are a few KiB; token strings are short).
pub const MAX_STRING_BYTES: u64 = 64 << 20;
/// Deepest nesting of arrays the reader accepts.
pub const MAX_ARRAY_NESTING: usize = 4;
/// Most dimensions a GGUF tensor may have.
pub const MAX_DIMS: u32 = 4;

/// Where a tensor lies and how it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape with `ne[0]` (the fastest-moving dimension) first.
    pub shape: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size_bytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// The bytes of an open GGUF file (mapped or owned), shared by everything built from it.
#[derive(Clone)]
pub struct FileBytes(Arc<Backing>);

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// An open GGUF file: parsed header and metadata, tensor data mapped lazily.
///
/// Cloning is cheap and shares the mapping, so every stage of a model can hold
/// the file and read only the tensors it needs.
#[derive(Clone)]
pub struct GgufFile {
    backing: Arc<Backing>,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// All metadata.
    pub metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: u64,
    /// Alignment of tensor data.
    pub alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.entries.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, parsing its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let kind = file.metadata().map_err(io)?.file_type();
        if !kind.is_file() {
            return Err(GgufError::NotAFile {
                path: path.to_path_buf(),
                kind: if kind.is_dir() {
                    "a directory"
                } else {
                    "not a regular file"
                },
            });
        }
        // Safety: the mapping is read-only; a file truncated under us by another
        // process is outside what any mmap-based reader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mapped(map))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<Self> {
        let bytes = backing.bytes();
        let mut cur = Cursor { bytes, pos: 0 };
        let magic: [u8; 4] = cur.take(4, "magic")?.try_into().expect("4 bytes");
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        // Smallest possible tensor info: empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
        let tensor_count = cur.count("tensor", 32)?;
        // Smallest possible metadata entry: empty key (8) + type (4) + u8 value (1).
        let kv_count = cur.count("metadata entry", 13)?;

        let mut entries = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cur.string("metadata key")?;
            let type_id = cur.u32("metadata value type")?;
            let value = cur.value(&key, type_id, 0)?;
            if entries.insert(key.clone(), value).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
        }
        let metadata = Metadata { entries };
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                    key: "general.alignment".into(),
                    found: v.type_name().into(),
                    expected: "unsigned integer".into(),
                })?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
        };

        let mut infos = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = cur.string("tensor name")?;
            let n_dims = cur.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadDims { name, n_dims });
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                shape.push(cur.u64("tensor dimension")?);
            }
            let type_id = cur.u32("tensor type")?;
            let offset = cur.u64("tensor offset")?;
            infos.push((name, shape, type_id, offset));
        }
        let data_start = cur.pos.next_multiple_of(alignment);
        let file_len = bytes.len() as u64;
        let data_len = file_len.saturating_sub(data_start);

        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = HashMap::with_capacity(infos.len());
        for (name, shape, type_id, offset) in infos {
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                name: name.clone(),
                type_id,
            })?;
            let elements = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&e| e > 0)
                .ok_or_else(|| GgufError::BadShape {
                    name: name.clone(),
                    shape: shape.clone(),
                })?;
            if !shape[0].is_multiple_of(ty.block_elements()) {
                return Err(GgufError::BadBlockMultiple {
                    name,
                    row: shape[0],
                    block: ty.block_elements(),
                    ty: ty.to_string(),
                });
            }
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::Misaligned {
                    name,
                    offset,
                    alignment,
                });
            }
            let size_bytes = ty.bytes_for(elements).ok_or_else(|| GgufError::BadShape {
                name: name.clone(),
                shape: shape.clone(),
            })?;
            let end = offset.checked_add(size_bytes);
            if end.is_none_or(|e| e > data_len) {
                return Err(GgufError::OutOfBounds {
                    name,
                    start: offset,
                    end: end.unwrap_or(u64::MAX),
                    len: data_len,
                });
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                ty,
                offset,
                size_bytes,
            });
        }
        Ok(GgufFile {
            backing: Arc::new(backing),
            version,
            metadata,
            tensors,
            by_name,
            data_start,
            alignment,
        })
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// Whether tensor `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The raw (possibly quantized) bytes of tensor `name`, straight from the mapping.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(name)?;
        let start = (self.data_start + info.offset) as usize;
        Ok(&self.backing.bytes()[start..start + info.size_bytes as usize])
    }

    /// Where the bytes of tensor `name` lie in [`GgufFile::data`].
    pub fn tensor_range(&self, name: &str) -> Result<std::ops::Range<usize>> {
        let info = self.tensor_info(name)?;
        let start = (self.data_start + info.offset) as usize;
        Ok(start..start + info.size_bytes as usize)
    }

    /// The whole file as mapped (or held) in memory.
    pub fn data(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// A handle on the file's bytes alone, cheap to clone (unlike the file, which
    /// also holds the metadata: the tokenizer's vocabulary among it).
    pub fn bytes_handle(&self) -> FileBytes {
        FileBytes(self.backing.clone())
    }

    /// Tensor `name` dequantized to f32, in memory order (`ne[0]` fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        let bytes = self.tensor_bytes(name)?;
        dequantize(info.ty, bytes, info.elements() as usize).map_err(|ty| {
            GgufError::UnsupportedDequant {
                name: name.to_string(),
                ty: ty.to_string(),
            }
        })
    }

    /// Tensor `name` dequantized to f32, checking its shape (`ne[0]` first).
    pub fn tensor_f32_shaped(&self, name: &str, expected: &[u64]) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        if info.shape != expected {
            return Err(GgufError::WrongShape {
                name: name.to_string(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        self.tensor_f32(name)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() as u64).saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let start = self.pos as usize;
        self.pos += n;
        Ok(&self.bytes[start..start + n as usize])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long: refused if they cannot fit.
    fn count(&mut self, what: &str, min_item_bytes: u64) -> Result<u64> {
        let count = self.u64(&format!("{what} count"))?;
        if count.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(GgufError::AbsurdCount {
                what: what.to_string(),
                count,
                len: self.bytes.len() as u64,
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let offset = self.pos;
        let length = self.u64(what)?;
        if length > MAX_STRING_BYTES || length > self.remaining() {
            return Err(GgufError::AbsurdString {
                what: what.to_string(),
                length,
                offset,
                limit: MAX_STRING_BYTES,
            });
        }
        let raw = self.take(length, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::BadUtf8 {
            what: what.to_string(),
            offset: offset + 8,
        })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<MetadataValue> {
        let what = key;
        Ok(match type_id {
            0 => MetadataValue::U8(self.array::<1>(what)?[0]),
            1 => MetadataValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetadataValue::U32(self.u32(what)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetadataValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetadataValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep {
                        key: key.to_string(),
                        limit: MAX_ARRAY_NESTING,
                    });
                }
                let item_type = self.u32(what)?;
                let min = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(GgufError::UnknownValueType {
                            key: key.to_string(),
                            type_id: item_type,
                        });
                    }
                };
                let n = self.count(&format!("array {key:?}"), min)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(key, item_type, depth + 1)?);
                }
                MetadataValue::Array(items)
            }
            10 => MetadataValue::U64(self.u64(what)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id,
                });
            }
        })
    }
}
