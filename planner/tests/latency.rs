//! Tests of `tokenflow_planner::latency`: histogram precision, merging, V2 bytes,
//! `.hgrm` output, summaries, report files and SVG plots.

use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use tokenflow_planner::latency::{
    DecodeError, HIGHEST_US, LatencyError, LatencyHistogram, LatencyReport, LatencySummary,
    MICROS_PER_MILLI, hgrm_string, latency_cdf_multi_svg, latency_cdf_svg, metric, write_hgrm,
};

/// A fresh directory under Cargo's per-target temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("latency-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The deterministic data set whose Java output is in [`JAVA_HGRM`].
fn java_dataset() -> LatencyHistogram {
    let mut h = LatencyHistogram::new();
    for i in 0..10_000u64 {
        h.record_us(1 + (i * 7919) % 50_000);
    }
    for v in [120_000, 950_000, 2_500_000] {
        h.record_us(v);
    }
    h
}

fn within_precision(actual: u64, expected: f64) -> bool {
    (actual as f64 - expected).abs() <= expected * 0.001 + 1.0
}

#[test]
fn uniform_percentiles_are_within_hdr_precision() {
    let mut h = LatencyHistogram::new();
    for v in 1..=100_000u64 {
        h.record_us(v);
    }
    assert_eq!(h.count(), 100_000);
    for q in [0.1, 0.5, 0.9, 0.99, 0.999, 0.9999] {
        let v = h.value_at_quantile_us(q);
        assert!(within_precision(v, q * 100_000.0), "q={q}: {v}");
        assert_eq!(h.value_at_quantile(q), Duration::from_micros(v));
    }
    assert_eq!(h.min_us(), 1);
    assert!(within_precision(h.max_us(), 100_000.0), "{}", h.max_us());
    assert!((h.mean_us() - 50_000.5).abs() < 50.0, "{}", h.mean_us());
    // Out-of-range quantiles are clamped, NaN counts as 0.
    assert_eq!(h.value_at_quantile_us(2.0), h.value_at_quantile_us(1.0));
    assert_eq!(
        h.value_at_quantile_us(f64::NAN),
        h.value_at_quantile_us(0.0)
    );

    let s = LatencySummary::from_histogram(&h);
    assert_eq!(s.count, 100_000);
    assert!((s.p50_ms - 50.0).abs() <= 0.05 + 1e-9, "{}", s.p50_ms);
    assert!((s.p99_ms - 99.0).abs() <= 0.1 + 1e-9, "{}", s.p99_ms);
    assert!((s.p999_ms - 99.9).abs() <= 0.1 + 1e-9, "{}", s.p999_ms);
    assert!((s.max_ms - 100.0).abs() <= 0.1 + 1e-9, "{}", s.max_ms);
}

#[test]
fn durations_record_whole_microseconds() {
    let mut h = LatencyHistogram::new();
    h.record(Duration::from_micros(1500));
    h.record(Duration::from_nanos(1_500_999));
    assert_eq!(h.count(), 2);
    assert_eq!(h.min_us(), 1500);
    assert_eq!(h.max_us(), 1500);
}

#[test]
fn empty_histogram_reads_as_zeros() {
    let h = LatencyHistogram::new();
    assert!(h.is_empty());
    assert_eq!(h.count(), 0);
    assert_eq!(h.value_at_quantile_us(0.99), 0);
    assert_eq!(h.min_us(), 0);
    assert_eq!(h.max_us(), 0);
    assert_eq!(h.mean_us(), 0.0);
    assert_eq!(
        LatencySummary::from_histogram(&h),
        LatencySummary::default()
    );
    let back = LatencyHistogram::from_bytes(&h.to_bytes().expect("encode")).expect("decode");
    assert_eq!(back, h);
}

#[test]
fn clamping_beyond_one_hour_counts() {
    let mut h = LatencyHistogram::new();
    h.record_us(HIGHEST_US); // exactly one hour: not clamped
    h.record(Duration::from_secs(2 * 3600));
    h.record(Duration::MAX);
    h.record_n_us(u64::MAX, 3);
    assert_eq!(h.count(), 6);
    assert_eq!(h.clamped(), 5);
    assert!(
        within_precision(h.max_us(), HIGHEST_US as f64),
        "{}",
        h.max_us()
    );
    assert_eq!(LatencySummary::from_histogram(&h).clamped, 5);

    let mut other = LatencyHistogram::new();
    other.record_us(HIGHEST_US + 1);
    h.merge(&other);
    assert_eq!(h.clamped(), 6);

    let back = LatencyHistogram::from_bytes(&h.to_bytes().expect("encode")).expect("decode");
    assert_eq!(back.clamped(), 6);
    assert_eq!(back, h);
}

#[test]
fn merge_equals_recording_all() {
    let values: Vec<u64> = (0..20_000u64)
        .map(|i| (i * i * 31 + 7) % 5_000_000)
        .collect();
    let mut all = LatencyHistogram::new();
    let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
    for (i, &v) in values.iter().enumerate() {
        all.record_us(v);
        if i % 3 == 0 { &mut a } else { &mut b }.record_us(v);
    }
    a.merge(&b);
    assert_eq!(a, all);
    assert_eq!(
        LatencySummary::from_histogram(&a),
        LatencySummary::from_histogram(&all)
    );
    // Merging an empty histogram changes nothing; into an empty one copies.
    a.merge(&LatencyHistogram::new());
    assert_eq!(a, all);
    let mut empty = LatencyHistogram::new();
    empty.merge(&all);
    assert_eq!(empty, all);
}

#[test]
fn bytes_round_trip_and_serde() {
    let h = java_dataset();
    let bytes = h.to_bytes().expect("encode");
    let back = LatencyHistogram::from_bytes(&bytes).expect("decode");
    assert_eq!(back, h);
    assert_eq!(
        back.value_at_quantile_us(0.99),
        h.value_at_quantile_us(0.99)
    );

    let json = serde_json::to_string(&h).expect("serialise");
    let from_json: LatencyHistogram = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(from_json, h);
    assert!(serde_json::from_str::<LatencyHistogram>("[1,2,3]").is_err());

    let mut report = LatencyReport::new();
    report.insert(metric::TTFT, h.clone());
    report.record_us(metric::E2E, 42);
    let json = serde_json::to_string(&report).expect("serialise report");
    let back: LatencyReport = serde_json::from_str(&json).expect("deserialise report");
    assert_eq!(back, report);
    assert_eq!(back.names().collect::<Vec<_>>(), ["ttft", "e2e"]);
}

#[test]
fn garbage_bytes_are_typed_errors() {
    let good = java_dataset().to_bytes().expect("encode");
    let decode = LatencyHistogram::from_bytes;
    assert!(matches!(decode(&[]), Err(DecodeError::TooShort { len: 0 })));
    assert!(matches!(
        decode(&good[..39]),
        Err(DecodeError::TooShort { .. })
    ));
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    assert!(matches!(decode(&bad), Err(DecodeError::BadCookie { .. })));
    let mut compressed = good.clone();
    compressed[3] = 0x14;
    assert!(matches!(
        decode(&compressed),
        Err(DecodeError::CompressedUnsupported)
    ));
    let mut other_range = good.clone();
    other_range[31] ^= 1; // highest trackable value
    assert!(matches!(
        decode(&other_range),
        Err(DecodeError::Incompatible { .. })
    ));
    assert!(matches!(
        decode(&good[..good.len() - 1]),
        Err(DecodeError::PayloadLength { .. })
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        decode(&trailing),
        Err(DecodeError::TrailingBytes(1))
    ));
    // A zig-zag value whose negation overflows (i64::MIN): the plain decoder would panic.
    let mut overflow = good[..40].to_vec();
    overflow[4..8].copy_from_slice(&9u32.to_be_bytes());
    overflow.extend_from_slice(&[0xff; 9]);
    assert!(matches!(decode(&overflow), Err(DecodeError::Payload(_))));
    // More counts than the histogram holds.
    let mut too_long = good[..40].to_vec();
    let payload: Vec<u8> = std::iter::repeat_n(0x02, 100_000).collect();
    too_long[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    too_long.extend_from_slice(&payload);
    assert!(matches!(decode(&too_long), Err(DecodeError::Payload(_))));
    // A clamped count larger than the one-hour bucket.
    let mut lying = good.clone();
    lying.extend_from_slice(b"TFcl");
    lying.extend_from_slice(&5u64.to_be_bytes());
    assert!(matches!(decode(&lying), Err(DecodeError::Payload(_))));
    // The error converts into the module error.
    let e: LatencyError = decode(&[1, 2, 3]).unwrap_err().into();
    assert!(e.to_string().contains("shorter"), "{e}");
}

/// A valid V2 header for this module's histograms, announcing `payload_len` bytes.
fn header(payload_len: usize) -> Vec<u8> {
    let mut h = LatencyHistogram::new().to_bytes().expect("encode")[..40].to_vec();
    h[4..8].copy_from_slice(&(payload_len as u32).to_be_bytes());
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = LatencyHistogram::from_bytes(&bytes);
    }

    #[test]
    fn random_payload_after_valid_header_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        trailer in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = header(payload.len());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&trailer);
        if let Ok(h) = LatencyHistogram::from_bytes(&bytes) {
            // Whatever decodes must be usable.
            let _ = h.value_at_quantile_us(0.99);
            let _ = hgrm_string(&h, MICROS_PER_MILLI);
            let mut m = h.clone();
            m.merge(&h);
        }
    }

    #[test]
    fn mutated_encodings_never_panic(
        values in proptest::collection::vec(0u64..10_000_000_000, 1..200),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut h = LatencyHistogram::new();
        for v in &values {
            h.record_us(*v);
        }
        let mut bytes = h.to_bytes().expect("encode");
        prop_assert_eq!(&LatencyHistogram::from_bytes(&bytes).expect("decode"), &h);
        for (at, x) in flips {
            let n = bytes.len();
            bytes[at % n] ^= x;
        }
        let _ = LatencyHistogram::from_bytes(&bytes);
    }

    #[test]
    fn merge_is_recording_all(
        a in proptest::collection::vec(0u64..5_000_000_000, 0..300),
        b in proptest::collection::vec(0u64..5_000_000_000, 0..300),
    ) {
        let (mut ha, mut hb, mut all) =
            (LatencyHistogram::new(), LatencyHistogram::new(), LatencyHistogram::new());
        for v in &a { ha.record_us(*v); all.record_us(*v); }
        for v in &b { hb.record_us(*v); all.record_us(*v); }
        ha.merge(&hb);
        prop_assert_eq!(&ha, &all);
        prop_assert_eq!(ha.clamped(), all.clamped());
    }
}

/// A parsed `.hgrm` file.
struct Hgrm {
    rows: Vec<(f64, f64, u64, Option<f64>)>,
    mean: f64,
    stdev: f64,
    max: f64,
    total: u64,
    buckets: u64,
    sub_buckets: u64,
}

/// Parses the `outputPercentileDistribution` layout strictly.
fn parse_hgrm(text: &str) -> Hgrm {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines[1], "");
    let footer_at = lines
        .iter()
        .position(|l| l.starts_with("#["))
        .expect("footer");
    assert_eq!(
        lines.len(),
        footer_at + 3,
        "three footer lines end the file"
    );
    let mut rows = Vec::new();
    for (i, line) in lines[2..footer_at].iter().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let last = i + 2 == footer_at - 1;
        assert_eq!(f.len(), if last { 3 } else { 4 }, "row {line:?}");
        assert_eq!(line.len(), if last { 38 } else { 53 }, "row width {line:?}");
        rows.push((
            f[0].parse().expect("value"),
            f[1].parse().expect("percentile"),
            f[2].parse().expect("count"),
            f.get(3).map(|x| x.parse().expect("1/(1-p)")),
        ));
    }
    let nums = |line: &str| -> Vec<String> {
        line.trim_start_matches("#[")
            .trim_end_matches(']')
            .split(',')
            .map(|kv| kv.split('=').nth(1).expect("key = value").trim().to_owned())
            .collect()
    };
    let m = nums(lines[footer_at]);
    let x = nums(lines[footer_at + 1]);
    let b = nums(lines[footer_at + 2]);
    assert!(lines[footer_at].starts_with("#[Mean    = "));
    assert!(lines[footer_at + 1].starts_with("#[Max     = "));
    assert!(lines[footer_at + 2].starts_with("#[Buckets = "));
    Hgrm {
        rows,
        mean: m[0].parse().expect("mean"),
        stdev: m[1].parse().expect("stdev"),
        max: x[0].parse().expect("max"),
        total: x[1].parse().expect("total"),
        buckets: b[0].parse().expect("buckets"),
        sub_buckets: b[1].parse().expect("sub-buckets"),
    }
}

#[test]
fn hgrm_parses_back() {
    let h = java_dataset();
    let text = hgrm_string(&h, MICROS_PER_MILLI).expect("hgrm");
    let p = parse_hgrm(&text);
    assert!(p.rows.len() > 20, "{} rows", p.rows.len());
    let last = p.rows.last().expect("rows");
    assert_eq!(last.2, h.count());
    assert_eq!(last.1, 1.0);
    assert!(last.3.is_none());
    for w in p.rows.windows(2) {
        assert!(w[0].0 <= w[1].0, "values monotone");
        assert!(w[0].1 <= w[1].1, "percentiles monotone");
        assert!(w[0].2 <= w[1].2, "counts monotone");
    }
    for r in &p.rows[..p.rows.len() - 1] {
        let inv = r.3.expect("1/(1-p)");
        assert!((inv - 1.0 / (1.0 - r.1)).abs() <= 0.005 + inv * 1e-9);
    }
    assert!((p.mean - h.mean_us() / 1000.0).abs() <= 0.0005);
    assert!((p.stdev - h.stdev_us() / 1000.0).abs() <= 0.0005);
    assert!((p.max - h.max_us() as f64 / 1000.0).abs() <= 0.0005);
    assert_eq!(p.total, h.count());
    assert_eq!(p.sub_buckets, 2048);
    assert!(p.buckets > 0);
    // The last row's value is the maximum.
    assert!((last.0 - p.max).abs() <= 0.0005);
}

#[test]
fn hgrm_empty_and_bad_ratio() {
    let text = hgrm_string(&LatencyHistogram::new(), MICROS_PER_MILLI).expect("hgrm");
    let p = parse_hgrm(&text);
    assert!(p.rows.is_empty());
    assert_eq!((p.mean, p.stdev, p.max, p.total), (0.0, 0.0, 0.0, 0));
    let mut out = Vec::new();
    for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            write_hgrm(&LatencyHistogram::new(), &mut out, r),
            Err(LatencyError::InvalidUnitRatio(_))
        ));
    }
}

/// `histogram.outputPercentileDistribution(System.out, 5, 1000.0)` printed by Java
/// HdrHistogram 2.1.11 for [`java_dataset`] recorded into `new Histogram(1, 3600000000L, 3)`
/// (Java also decodes `to_bytes` of the same data to a histogram printing the same text).
const JAVA_HGRM: &str = r#"       Value     Percentile TotalCount 1/(1-Percentile)

       0.001 0.000000000000          1           1.00
       4.999 0.100000000000       1002           1.11
       9.999 0.200000000000       2002           1.25
      15.007 0.300000000000       3002           1.43
      19.999 0.400000000000       4002           1.67
      25.007 0.500000000000       5004           2.00
      27.503 0.550000000000       5504           2.22
      30.015 0.600000000000       6004           2.50
      32.495 0.650000000000       6502           2.86
      35.007 0.700000000000       7004           3.33
      37.503 0.750000000000       7503           4.00
      38.783 0.775000000000       7759           4.44
      39.999 0.800000000000       8003           5.00
      41.279 0.825000000000       8258           5.71
      42.527 0.850000000000       8506           6.67
      43.775 0.875000000000       8757           8.00
      44.415 0.887500000000       8885           8.89
      45.023 0.900000000000       9006          10.00
      45.631 0.912500000000       9129          11.43
      46.271 0.925000000000       9257          13.33
      46.911 0.937500000000       9384          16.00
      47.199 0.943750000000       9441          17.78
      47.519 0.950000000000       9505          20.00
      47.839 0.956250000000       9570          22.86
      48.159 0.962500000000       9632          26.67
      48.447 0.968750000000       9691          32.00
      48.607 0.971875000000       9723          35.56
      48.767 0.975000000000       9754          40.00
      48.927 0.978125000000       9787          45.71
      49.087 0.981250000000       9818          53.33
      49.247 0.984375000000       9850          64.00
      49.311 0.985937500000       9863          71.11
      49.407 0.987500000000       9882          80.00
      49.471 0.989062500000       9895          91.43
      49.567 0.990625000000       9915         106.67
      49.631 0.992187500000       9927         128.00
      49.663 0.992968750000       9934         142.22
      49.727 0.993750000000       9946         160.00
      49.759 0.994531250000       9953         182.86
      49.791 0.995312500000       9958         213.33
      49.823 0.996093750000       9965         256.00
      49.855 0.996484375000       9972         284.44
      49.855 0.996875000000       9972         320.00
      49.887 0.997265625000       9977         365.71
      49.919 0.997656250000       9984         426.67
      49.919 0.998046875000       9984         512.00
      49.951 0.998242187500       9991         568.89
      49.951 0.998437500000       9991         640.00
      49.951 0.998632812500       9991         731.43
      49.983 0.998828125000       9997         853.33
      49.983 0.999023437500       9997        1024.00
      49.983 0.999121093750       9997        1137.78
      49.983 0.999218750000       9997        1280.00
      49.983 0.999316406250       9997        1462.86
      50.015 0.999414062500      10000        1706.67
      50.015 0.999511718750      10000        2048.00
      50.015 0.999560546875      10000        2275.56
      50.015 0.999609375000      10000        2560.00
      50.015 0.999658203125      10000        2925.71
     120.063 0.999707031250      10001        3413.33
     120.063 0.999755859375      10001        4096.00
     120.063 0.999780273438      10001        4551.11
     950.271 0.999804687500      10002        5120.00
     950.271 0.999829101563      10002        5851.43
     950.271 0.999853515625      10002        6826.67
     950.271 0.999877929688      10002        8192.00
     950.271 0.999890136719      10002        9102.22
    2500.607 0.999902343750      10003       10240.00
    2500.607 1.000000000000      10003
#[Mean    =       25.341, StdDeviation   =       30.113]
#[Max     =     2500.607, Total count    =        10003]
#[Buckets =           22, SubBuckets     =         2048]
"#;

/// Java's output for one sample of 1234 µs.
const JAVA_HGRM_ONE: &str = r#"       Value     Percentile TotalCount 1/(1-Percentile)

       1.234 0.000000000000          1           1.00
       1.234 1.000000000000          1
#[Mean    =        1.234, StdDeviation   =        0.000]
#[Max     =        1.234, Total count    =            1]
#[Buckets =           22, SubBuckets     =         2048]
"#;

/// Java's output for an empty histogram.
const JAVA_HGRM_EMPTY: &str = r#"       Value     Percentile TotalCount 1/(1-Percentile)

#[Mean    =        0.000, StdDeviation   =        0.000]
#[Max     =        0.000, Total count    =            0]
#[Buckets =           22, SubBuckets     =         2048]
"#;

#[test]
fn hgrm_matches_java_byte_for_byte() {
    let text = hgrm_string(&java_dataset(), MICROS_PER_MILLI).expect("hgrm");
    assert_eq!(text, JAVA_HGRM);
    let mut one = LatencyHistogram::new();
    one.record_us(1234);
    assert_eq!(
        hgrm_string(&one, MICROS_PER_MILLI).expect("hgrm"),
        JAVA_HGRM_ONE
    );
    let empty = LatencyHistogram::new();
    assert_eq!(
        hgrm_string(&empty, MICROS_PER_MILLI).expect("hgrm"),
        JAVA_HGRM_EMPTY
    );
}

fn sample_report(scale: u64) -> LatencyReport {
    let mut r = LatencyReport::new();
    for i in 0..2_000u64 {
        r.record_us(metric::TTFT, scale * (50_000 + (i * 37) % 20_000));
        r.record_us(metric::INTER_TOKEN, scale * (8_000 + (i * 13) % 4_000));
        r.record_us(metric::E2E, scale * (900_000 + (i * 101) % 300_000));
    }
    r.record_us(metric::QUEUE, 10);
    r
}

#[test]
fn report_tables_and_merge() {
    let mut r = sample_report(1);
    assert_eq!(
        r.names().collect::<Vec<_>>(),
        ["ttft", "inter_token", "e2e", "queue"]
    );
    let md = r.to_markdown_table();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0],
        "| metric | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    assert_eq!(lines.len(), 2 + r.len());
    for (line, name) in lines[2..].iter().zip(r.names()) {
        assert!(line.starts_with(&format!("| {name} | ")), "{line}");
        assert_eq!(line.matches('|').count(), 8);
    }
    let csv = r.to_csv();
    assert_eq!(csv.lines().count(), 1 + r.len());
    assert!(csv.starts_with("metric,count,mean_ms,p50_ms,p90_ms,p99_ms,p99_9_ms,max_ms,clamped\n"));
    let json: serde_json::Value = serde_json::from_str(&r.to_json().expect("json")).expect("parse");
    assert_eq!(json["ttft"]["count"], 2000);
    let summaries: Vec<(String, LatencySummary)> = r.summaries();
    assert_eq!(summaries[3].1.count, 1);

    let other = sample_report(1);
    r.merge(&other);
    assert_eq!(r.get(metric::TTFT).expect("ttft").count(), 4000);
    let mut extra = LatencyReport::new();
    extra.record(metric::QUEUE, Duration::from_millis(1));
    extra.record("new|metric", Duration::from_millis(2));
    r.merge(&extra);
    assert_eq!(r.len(), 5);
    assert!(r.to_markdown_table().contains("| new\\|metric | 1 |"));
}

#[test]
fn report_write_dir() {
    let dir = temp_dir("write-dir");
    let r = sample_report(1);
    let paths = r.write_dir(dir.join("nested"), "run1-").expect("write");
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "run1-ttft.hgrm",
            "run1-inter_token.hgrm",
            "run1-e2e.hgrm",
            "run1-queue.hgrm",
            "run1-latency.json",
            "run1-latency.csv"
        ]
    );
    for p in &paths {
        assert!(p.is_file(), "{}", p.display());
    }
    let hgrm = std::fs::read_to_string(&paths[0]).expect("read");
    assert_eq!(parse_hgrm(&hgrm).total, 2000);

    let mut clash = LatencyReport::new();
    clash.record_us("a/b", 1);
    clash.record_us("a_b", 1);
    assert!(matches!(
        clash.write_dir(&dir, ""),
        Err(LatencyError::FileNameCollision { .. })
    ));
    // A file where the directory should be: a typed error, not a panic.
    let file = dir.join("plain-file");
    std::fs::write(&file, "x").expect("write");
    assert!(matches!(
        r.write_dir(&file, ""),
        Err(LatencyError::CreateDir { .. })
    ));
}

/// The trimmed contents of the SVG's `<text>` elements.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_owned())
        })
        .collect()
}

#[test]
fn svg_plots_have_legends() {
    let dir = temp_dir("svg");
    let fast = sample_report(1);
    let slow = sample_report(3);
    let path = dir.join("ttft.svg");
    let empty = LatencyHistogram::new();
    latency_cdf_svg(
        &[
            ("static & fast", fast.get(metric::TTFT).expect("ttft")),
            ("churn", slow.get(metric::TTFT).expect("ttft")),
            ("nothing", &empty),
        ],
        "TTFT <percentiles>",
        &path,
    )
    .expect("plot");
    let svg = std::fs::read_to_string(&path).expect("read");
    assert!(svg.contains("<svg"));
    assert!(svg.contains("<text"));
    for needle in [
        "static &amp; fast",
        "churn",
        "nothing",
        "TTFT &lt;percentiles&gt;",
    ] {
        assert!(svg.contains(needle), "missing {needle}");
    }
    let texts = svg_texts(&svg);
    for label in [
        "0%",
        "90%",
        "99%",
        "99.9%",
        "99.99%",
        "percentile",
        "latency (ms)",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "missing {label} in {texts:?}"
        );
    }

    let multi = dir.join("multi.svg");
    latency_cdf_multi_svg(
        &[("baseline", &fast), ("with churn", &slow)],
        &[],
        "baseline vs churn",
        &multi,
    )
    .expect("plot");
    let svg = std::fs::read_to_string(&multi).expect("read");
    assert!(svg.contains("<svg"));
    for needle in ["baseline", "with churn", "ttft", "inter_token", "e2e"] {
        assert!(svg.contains(needle), "missing {needle}");
    }
    // Default panels leave out metrics beyond ttft / inter_token / e2e.
    let texts = svg_texts(&svg);
    for panel in ["ttft", "inter_token", "e2e", "baseline vs churn"] {
        assert!(
            texts.iter().any(|t| t == panel),
            "missing {panel} in {texts:?}"
        );
    }
    assert!(!texts.iter().any(|t| t == "queue"));

    // Nothing to draw still gives a valid document; a bad path is a typed error.
    latency_cdf_multi_svg(&[], &[], "empty", dir.join("empty.svg")).expect("plot");
    assert!(matches!(
        latency_cdf_svg(&[], "x", dir.join("missing").join("x.svg")),
        Err(LatencyError::WriteFile { .. })
    ));
}
