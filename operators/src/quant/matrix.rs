//! A weight matrix kept in its GGUF block encoding.

use crate::gguf::{FileBytes, GgmlType, GgufError, GgufFile};
use std::ops::Range;
use std::sync::Arc;

/// Errors of building a [`QMatrix`].
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The storage type has no kernel here.
    #[error("tensor {name}: type {ty} has no quantized kernel (supported: {supported})")]
    UnsupportedType {
        /// Tensor name.
        name: String,
        /// Its type.
        ty: GgmlType,
        /// The types that are supported.
        supported: &'static str,
    },
    /// Rows are not a whole number of blocks, or the bytes do not match the shape.
    #[error("tensor {name}: {reason}")]
    BadLayout {
        /// Tensor name.
        name: String,
        /// What does not fit.
        reason: String,
    },
    /// The tensor could not be read from the file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Where the block bytes of a matrix live.
#[derive(Clone)]
enum BlockBytes {
    /// A range of a (memory-mapped) GGUF file, shared with every other stage of the model.
    File {
        file: FileBytes,
        range: Range<usize>,
    },
    /// Bytes owned by the matrix (matrices built in memory, e.g. in tests).
    Owned(Arc<[u8]>),
}

/// A `[rows, cols]` matrix (`rows` outputs of `cols` inputs each) stored as GGUF
/// blocks: each row is `cols / block_elements` consecutive blocks of its type.
#[derive(Clone)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: BlockBytes,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// The types [`QMatrix`] computes with, as listed in errors.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K";

fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q5_K | Q6_K
    )
}

impl QMatrix {
    /// The linear weight `name` of a GGUF file, stored with `ne = [cols, rows]`
    /// (GGUF's order: `ne[0]`, the input width, moves fastest), without copying it.
    pub fn from_gguf(
        file: &GgufFile,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Self, QuantError> {
        let info = file.tensor_info(name)?;
        let expected = [cols as u64, rows as u64];
        if info.shape != expected {
            return Err(GgufError::WrongShape {
                name: name.to_string(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            }
            .into());
        }
        let range = file.tensor_range(name)?;
        let matrix = Self::layout(name, info.ty, rows, cols, range.len())?;
        Ok(Self {
            bytes: BlockBytes::File {
                file: file.bytes_handle(),
                range,
            },
            ..matrix
        })
    }

    /// A matrix from block bytes held in memory (`rows` rows of `cols` values of type `ty`).
    pub fn from_bytes(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, QuantError> {
        let matrix = Self::layout("(in memory)", ty, rows, cols, bytes.len())?;
        Ok(Self {
            bytes: BlockBytes::Owned(bytes.into()),
            ..matrix
        })
    }

    fn layout(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        len: usize,
    ) -> Result<Self, QuantError> {
        if !supported(ty) {
            return Err(QuantError::UnsupportedType {
                name: name.to_string(),
                ty,
                supported: SUPPORTED,
            });
        }
        let block = ty.block_elements() as usize;
        // The kernels work on 32-element groups of every row.
        if cols == 0 || !cols.is_multiple_of(block.max(32)) {
            return Err(QuantError::BadLayout {
                name: name.to_string(),
                reason: format!(
                    "rows of {cols} values are not a whole number of {} blocks of {}",
                    ty,
                    block.max(32)
                ),
            });
        }
        let row_bytes = cols / block * ty.block_bytes() as usize;
        if row_bytes.checked_mul(rows) != Some(len) {
            return Err(QuantError::BadLayout {
                name: name.to_string(),
                reason: format!("{len} bytes for {rows} rows of {row_bytes} bytes"),
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            bytes: BlockBytes::Owned(Arc::from(Vec::new())),
        })
    }

    /// Storage type of the blocks.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All block bytes, row after row.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            BlockBytes::File { file, range } => &file[range.clone()],
            BlockBytes::Owned(bytes) => bytes,
        }
    }

    /// Bytes of the blocks (what the matrix occupies in memory).
    pub fn byte_len(&self) -> u64 {
        (self.row_bytes * self.rows) as u64
    }

    /// Bytes of one row's blocks.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The blocks of row `row`.
    pub fn row(&self, row: usize) -> &[u8] {
        &self.bytes()[row * self.row_bytes..(row + 1) * self.row_bytes]
    }

    /// Row `row` expanded to f32 into `out` (`cols` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        super::decode::row_f32(self.ty, self.row(row), out);
    }
}
