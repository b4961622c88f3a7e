//! The GGUF file format: reading (memory-mapped, hostile-input safe), dequantization and writing.

pub mod dequant;
pub mod error;
pub mod metadata;
pub mod reader;
pub mod tensor_type;
pub mod writer;

pub use dequant::{dequantize, dequantize_into, quantize};
pub use error::{GgufError, Result};
pub use metadata::{Metadata, MetadataValue};
pub use reader::{FileBytes, GgufFile, TensorInfo};
pub use tensor_type::GgmlType;
pub use writer::GgufWriter;
