//! Broken and hostile GGUF files get typed errors, never a panic or a huge allocation.

use proptest::prelude::*;
use tokenflow_operators::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue};

/// A raw GGUF v3 image with one metadata entry and the given tensor infos, then `data_len` bytes.
fn raw(version: u32, tensors: &[(&str, &[u64], u32, u64)], data_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(1u64.to_le_bytes());
    let key = "general.name";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(b"test");
    for (name, dims, ty, offset) in tensors {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32) + data_len, 0);
    b
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

#[test]
fn a_well_formed_file_parses() {
    let f = parse(raw(3, &[("w", &[32, 2], 0, 0)], 256)).unwrap();
    assert_eq!(f.tensor_info("w").unwrap().size_bytes, 256);
    assert_eq!(f.tensor_f32("w").unwrap().len(), 64);
    assert!(parse(raw(2, &[("w", &[32], 0, 0)], 128)).is_ok());
}

#[test]
fn wrong_magic() {
    let mut b = raw(3, &[], 0);
    b[..4].copy_from_slice(b"GGML");
    assert!(matches!(parse(b), Err(GgufError::BadMagic { found }) if &found == b"GGML"));
}

#[test]
fn unsupported_versions() {
    assert!(matches!(
        parse(raw(1, &[], 0)),
        Err(GgufError::UnsupportedVersion(1))
    ));
    assert!(matches!(
        parse(raw(99, &[], 0)),
        Err(GgufError::UnsupportedVersion(99))
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let full = raw(3, &[("w", &[32, 2], 0, 0)], 256);
    for len in 0..full.len() {
        assert!(
            parse(full[..len].to_vec()).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn absurd_tensor_count() {
    let mut b = raw(3, &[], 0);
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        parse(b),
        Err(GgufError::AbsurdCount {
            count: u64::MAX,
            ..
        })
    ));
}

#[test]
fn absurd_metadata_count() {
    let mut b = raw(3, &[], 0);
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(parse(b), Err(GgufError::AbsurdCount { .. })));
}

#[test]
fn absurd_string_length() {
    let mut b = raw(3, &[], 0);
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(parse(b), Err(GgufError::AbsurdString { .. })));
}

#[test]
fn absurd_array_length() {
    let mut w = GgufWriter::new();
    w.metadata("a", MetadataValue::Array(vec![MetadataValue::U32(1); 4]));
    let mut b = w.to_bytes();
    // magic, version, counts (24) + key length and "a" (9) + value type (4) + item type (4) = array count at 41.
    b[41..49].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(matches!(parse(b), Err(GgufError::AbsurdCount { .. })));
}

#[test]
fn unknown_value_type() {
    let mut b = raw(3, &[], 0);
    // counts end at 24; key length (8) and "general.name" (12) put the value type at 44.
    b[44..48].copy_from_slice(&77u32.to_le_bytes());
    assert!(matches!(
        parse(b),
        Err(GgufError::UnknownValueType { type_id: 77, .. })
    ));
}

#[test]
fn unknown_tensor_type() {
    let r = parse(raw(3, &[("w", &[32], 99, 0)], 128));
    assert!(matches!(
        r,
        Err(GgufError::UnknownTensorType { type_id: 99, .. })
    ));
}

#[test]
fn tensor_out_of_bounds() {
    let r = parse(raw(3, &[("w", &[32, 4], 0, 0)], 100));
    assert!(matches!(
        r,
        Err(GgufError::OutOfBounds {
            end: 512,
            len: 100,
            ..
        })
    ));
    let r = parse(raw(3, &[("w", &[32], 0, u64::MAX - 31)], 128));
    assert!(matches!(r, Err(GgufError::OutOfBounds { .. })));
}

#[test]
fn misaligned_offset() {
    let r = parse(raw(3, &[("w", &[8], 0, 4)], 128));
    assert!(matches!(
        r,
        Err(GgufError::Misaligned {
            offset: 4,
            alignment: 32,
            ..
        })
    ));
}

#[test]
fn bad_dimensions_and_shapes() {
    assert!(matches!(
        parse(raw(3, &[("w", &[1, 1, 1, 1, 1], 0, 0)], 64)),
        Err(GgufError::BadDims { n_dims: 5, .. })
    ));
    assert!(matches!(
        parse(raw(3, &[("w", &[], 0, 0)], 64)),
        Err(GgufError::BadDims { n_dims: 0, .. })
    ));
    assert!(matches!(
        parse(raw(3, &[("w", &[1 << 40, 1 << 40], 0, 0)], 64)),
        Err(GgufError::BadShape { .. })
    ));
    assert!(matches!(
        parse(raw(3, &[("w", &[0], 0, 0)], 64)),
        Err(GgufError::BadShape { .. })
    ));
    assert!(matches!(
        parse(raw(3, &[("w", &[33], GgmlType::Q8_0.id(), 0)], 64)),
        Err(GgufError::BadBlockMultiple {
            row: 33,
            block: 32,
            ..
        })
    ));
}

#[test]
fn duplicate_tensor_names() {
    let r = parse(raw(3, &[("w", &[8], 0, 0), ("w", &[8], 0, 32)], 128));
    assert!(matches!(r, Err(GgufError::DuplicateTensor(name)) if name == "w"));
}

#[test]
fn missing_file_is_an_io_error() {
    assert!(matches!(
        GgufFile::open("/nonexistent/model.gguf"),
        Err(GgufError::Io { .. })
    ));
}

#[test]
fn writer_round_trips_metadata_and_tensors() {
    let values: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut w = GgufWriter::new();
    w.metadata("u8", MetadataValue::U8(7))
        .metadata("i8", MetadataValue::I8(-7))
        .metadata("u16", MetadataValue::U16(700))
        .metadata("i16", MetadataValue::I16(-700))
        .metadata("u32", MetadataValue::U32(70_000))
        .metadata("i32", MetadataValue::I32(-70_000))
        .metadata("f32", MetadataValue::F32(0.5))
        .metadata("bool", MetadataValue::Bool(true))
        .metadata("string", MetadataValue::String("héllo".into()))
        .metadata("u64", MetadataValue::U64(1 << 40))
        .metadata("i64", MetadataValue::I64(-(1 << 40)))
        .metadata("f64", MetadataValue::F64(0.25))
        .metadata(
            "array",
            MetadataValue::Array(vec![
                MetadataValue::String("a".into()),
                MetadataValue::String("b".into()),
            ]),
        );
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ];
    for ty in types {
        w.tensor(format!("t.{ty}"), &[32, 2], ty, &values).unwrap();
    }
    let f = parse(w.to_bytes()).unwrap();
    assert_eq!(f.metadata.get("i16"), Some(&MetadataValue::I16(-700)));
    assert_eq!(f.metadata.str("string").unwrap(), "héllo");
    assert_eq!(f.metadata.strings("array").unwrap(), vec!["a", "b"]);
    assert_eq!(f.metadata.u64("u64").unwrap(), 1 << 40);
    for (ty, tolerance) in types.into_iter().zip([0.0, 1e-3, 1e-2, 1e-2, 0.15, 0.07]) {
        let back = f.tensor_f32(&format!("t.{ty}")).unwrap();
        let worst = back
            .iter()
            .zip(&values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tolerance, "{ty}: worst error {worst}");
    }
}

fn valid_image() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.metadata("general.name", MetadataValue::String("x".into()))
        .metadata(
            "list",
            MetadataValue::Array(vec![MetadataValue::I32(1), MetadataValue::I32(2)]),
        );
    let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
    w.tensor("a", &[32, 2], GgmlType::Q8_0, &values).unwrap();
    w.tensor("b", &[64], GgmlType::F16, &values).unwrap();
    w.to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any byte of the header changed to anything: parsing and reading every tensor never panics.
    #[test]
    fn mutated_headers_never_panic(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..6), cut in 0usize..400) {
        let mut image = valid_image();
        let header = image.len().min(200);
        for (pos, byte) in edits {
            image[pos % header] = byte;
        }
        image.truncate(image.len() - cut.min(image.len()));
        if let Ok(file) = GgufFile::from_bytes(image) {
            for info in file.tensors().to_vec() {
                let _ = file.tensor_f32(&info.name);
            }
        }
    }

    /// Mutated 64-bit fields (counts, lengths, dims, offsets) set to extreme values never panic.
    #[test]
    fn extreme_u64_fields_never_panic(pos in 0usize..190, value in prop_oneof![Just(u64::MAX), Just(u64::MAX / 2), Just(1u64 << 32), any::<u64>()]) {
        let mut image = valid_image();
        image[pos..pos + 8].copy_from_slice(&value.to_le_bytes());
        let _ = GgufFile::from_bytes(image).map(|f| f.tensors().len());
    }
}

#[test]
fn a_directory_is_named_as_one() {
    let dir = std::env::temp_dir();
    let e = GgufFile::open(&dir).unwrap_err();
    assert!(matches!(e, GgufError::NotAFile { .. }), "{e}");
    assert!(e.to_string().contains("is a directory"), "{e}");
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
}
