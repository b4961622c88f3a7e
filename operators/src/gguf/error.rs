//! Typed errors for reading and writing GGUF files.

use std::path::PathBuf;

/// Everything that can be wrong with a GGUF file or with what is asked of it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The path names something that is not a regular file (a directory, a
    /// device, a pipe): it cannot be memory-mapped as a model.
    #[error("{path} is {kind}, not a GGUF file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is ("a directory", ...).
        kind: &'static str,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic bytes {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A GGUF version this reader does not understand (v1 used 32-bit counts).
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends before a field that the header promises.
    #[error(
        "file truncated: {what} needs {needed} bytes at offset {offset}, but the file has {len}"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Offset of the read.
        offset: u64,
        /// Bytes the read needs.
        needed: u64,
        /// Length of the file.
        len: u64,
    },
    /// A count that cannot possibly fit in the file (would allocate absurd memory).
    #[error("{what} count {count} is impossible in a file of {len} bytes")]
    AbsurdCount {
        /// What is counted.
        what: String,
        /// The count read.
        count: u64,
        /// Length of the file.
        len: u64,
    },
    /// A string longer than the limit or than the rest of the file.
    #[error(
        "{what}: string length {length} at offset {offset} exceeds the file or the {limit}-byte limit"
    )]
    AbsurdString {
        /// Where the string is.
        what: String,
        /// The length read.
        length: u64,
        /// Offset of the length field.
        offset: u64,
        /// The reader's limit.
        limit: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what}: invalid UTF-8 at offset {offset}")]
    BadUtf8 {
        /// Where the string is.
        what: String,
        /// Offset of the string.
        offset: u64,
    },
    /// A metadata value type id outside the GGUF specification.
    #[error("metadata key {key:?}: unknown value type {type_id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id read.
        type_id: u32,
    },
    /// Arrays nested deeper than the reader allows.
    #[error("metadata key {key:?}: arrays nested more than {limit} deep")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The limit.
        limit: usize,
    },
    /// A tensor type id this reader does not know.
    #[error("tensor {name:?}: unknown or unsupported tensor type {type_id}")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The type id read.
        type_id: u32,
    },
    /// A tensor with zero or more than four dimensions.
    #[error("tensor {name:?}: {n_dims} dimensions (GGUF allows 1 to 4)")]
    BadDims {
        /// The tensor.
        name: String,
        /// Number of dimensions read.
        n_dims: u32,
    },
    /// A shape whose element count overflows or is zero.
    #[error("tensor {name:?}: shape {shape:?} has no valid element count")]
    BadShape {
        /// The tensor.
        name: String,
        /// The shape, `ne[0]` first.
        shape: Vec<u64>,
    },
    /// A row length that is not a multiple of the quantization block.
    #[error(
        "tensor {name:?}: row of {row} elements is not a multiple of the {block}-element block of {ty}"
    )]
    BadBlockMultiple {
        /// The tensor.
        name: String,
        /// Elements in `ne[0]`.
        row: u64,
        /// Elements in one block.
        block: u64,
        /// The tensor type.
        ty: String,
    },
    /// Tensor data that lies outside the data section.
    #[error(
        "tensor {name:?}: data bytes {start}..{end} lie outside the data section of {len} bytes"
    )]
    OutOfBounds {
        /// The tensor.
        name: String,
        /// First byte, relative to the data section.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Length of the data section.
        len: u64,
    },
    /// A tensor offset not aligned as the file says.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// The tensor.
        name: String,
        /// The offset.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// `general.alignment` that is zero or not a power of two.
    #[error("general.alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// Two tensors with the same name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// Two metadata entries with the same key.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// A required metadata key is absent.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// A metadata key holds a value of the wrong type.
    #[error("metadata key {key:?} holds {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type found.
        found: String,
        /// The type expected.
        expected: String,
    },
    /// A metadata value that makes no sense for the model.
    #[error("metadata key {key:?}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// Why it is wrong.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A tensor has an unexpected shape.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// The tensor.
        name: String,
        /// Its shape, `ne[0]` first.
        found: Vec<u64>,
        /// The shape expected.
        expected: Vec<u64>,
    },
    /// Dequantization of a tensor type that is read but not converted.
    #[error("tensor {name:?}: dequantization of {ty} is not supported")]
    UnsupportedDequant {
        /// The tensor.
        name: String,
        /// The tensor type.
        ty: String,
    },
}

/// Result with a [`GgufError`].
pub type Result<T> = std::result::Result<T, GgufError>;
