//! Real SmolLM2 tensors (Q8_0, Q4_1, F32) dequantized as the `gguf` Python package does.

mod common;

use serde::Deserialize;
use tokenflow_operators::gguf::GgufFile;

#[derive(Deserialize)]
struct TensorCase {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    ne: Vec<u64>,
    first: Vec<f32>,
    sum: f64,
    sum_sq: f64,
}

#[test]
fn real_tensors_match_the_gguf_package() {
    let file = GgufFile::open(common::smollm2_path()).unwrap();
    let cases: Vec<TensorCase> =
        serde_json::from_str(&common::fixture("smollm2_tensors.json")).unwrap();
    for case in cases {
        let info = file.tensor_info(&case.name).unwrap();
        assert_eq!(info.ty.to_string(), case.ty, "{}", case.name);
        assert_eq!(info.shape, case.ne, "{}", case.name);
        let values = file.tensor_f32(&case.name).unwrap();
        assert_eq!(
            &values[..case.first.len()],
            &case.first[..],
            "{}: first values",
            case.name
        );
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let sum_sq: f64 = values.iter().map(|&v| v as f64 * v as f64).sum();
        assert!(
            (sum - case.sum).abs() <= 1e-9 * case.sum_sq.max(1.0),
            "{}: sum {sum} vs {}",
            case.name,
            case.sum
        );
        assert!(
            (sum_sq - case.sum_sq).abs() <= 1e-9 * case.sum_sq,
            "{}: sum of squares {sum_sq} vs {}",
            case.name,
            case.sum_sq
        );
    }
}
