//! Dequantization checked element for element against the `gguf` Python package's
//! dequantizer on seeded random blocks (`tests/reference/reference.py` writes the fixture).

use serde::Deserialize;
use tokenflow_operators::gguf::{GgmlType, dequantize};

#[derive(Deserialize)]
struct Case {
    #[serde(rename = "type")]
    name: String,
    ggml_type: u32,
    n_elements: usize,
    bytes_hex: String,
    values: Vec<f32>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_type_matches_the_gguf_package() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/dequant_cases.json"
    );
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for required in [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K",
    ] {
        assert!(names.contains(&required), "fixture lacks {required}");
    }
    for case in cases {
        let ty = GgmlType::from_id(case.ggml_type).unwrap();
        assert_eq!(ty.to_string(), case.name);
        let got = dequantize(ty, &hex(&case.bytes_hex), case.n_elements).unwrap();
        assert_eq!(got.len(), case.values.len());
        for (i, (a, b)) in got.iter().zip(&case.values).enumerate() {
            // numpy and this code multiply the same f32 factors, possibly in another order.
            let tolerance = 2.0 * f32::EPSILON * b.abs().max(1e-30);
            assert!(
                (a - b).abs() <= tolerance,
                "{}: element {i} is {a}, reference {b}",
                case.name
            );
        }
    }
}

#[test]
fn wrong_byte_count_is_refused() {
    assert_eq!(
        dequantize(GgmlType::Q4_K, &[0; 143], 256),
        Err(GgmlType::Q4_K)
    );
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0; 34], 33),
        Err(GgmlType::Q8_0)
    );
    assert_eq!(
        dequantize(GgmlType::Q2_K, &[0; 84], 256),
        Err(GgmlType::Q2_K)
    );
}
