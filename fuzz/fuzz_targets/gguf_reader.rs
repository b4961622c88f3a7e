//! Fuzzes the GGUF reader: any byte string either parses or gives a typed error,
//! and every tensor of a file that parses can be read and dequantized.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenflow_operators::gguf::GgufFile;
use tokenflow_operators::llama::LlamaConfig;
use tokenflow_operators::tokenizer::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for info in file.tensors().to_vec() {
        let _ = file.tensor_f32(&info.name);
    }
    let _ = LlamaConfig::from_gguf(&file);
    let _ = TextTokenizer::from_gguf(&file);
});
