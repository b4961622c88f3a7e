//! Writing GGUF v3 files (used to write the tiny test model and hostile test inputs).

use super::dequant::quantize;
use super::error::{GgufError, Result};
use super::metadata::MetadataValue;
use super::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::tensor_type::GgmlType;
use std::path::Path;

/// Collects metadata and tensors, then writes a GGUF v3 image.
#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor of f32 `values` with `shape` (`ne[0]` first), stored as `ty`.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<&mut Self> {
        let name = name.into();
        let bytes = quantize(ty, values).map_err(|ty| GgufError::UnsupportedDequant {
            name: name.clone(),
            ty: ty.to_string(),
        })?;
        self.tensors.push((name, shape.to_vec(), ty, bytes));
        Ok(self)
    }

    /// Adds a tensor from raw bytes already in format `ty`.
    pub fn raw_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push((name.into(), shape.to_vec(), ty, bytes));
        self
    }

    /// The GGUF image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(GGUF_MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let align = DEFAULT_ALIGNMENT;
        let mut offset = 0u64;
        for (name, shape, ty, bytes) in &self.tensors {
            write_string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for d in shape {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + bytes.len() as u64).next_multiple_of(align);
        }
        out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
        }
        out
    }

    /// Writes the image to `path`, atomically: readers see the old file or the whole new one.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}-{unique}.part", std::process::id()));
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.push(*v),
        MetadataValue::I8(v) => out.push(*v as u8),
        MetadataValue::U16(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend(v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(*v as u8),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array(items) => {
            let item_type = items.first().map_or(0, MetadataValue::type_id);
            out.extend(item_type.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
        MetadataValue::U64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend(v.to_le_bytes()),
    }
}
