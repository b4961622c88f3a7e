//! Property tests over every text the planner and simulator parse from a
//! command line or a file: any input gives a value or a typed error, never a
//! panic, and accepted values are within their documented ranges.

use proptest::prelude::*;
use tokenflow_planner::Cluster;
use tokenflow_sim::workload::parse_trace;
use tokenflow_sim::{
    ChurnSpec, Lengths, ReplanPolicy, RouteCache, RouterChoice, Slo, WorkloadSpec, spec::duration,
    strategy_list,
};

proptest! {
    #[test]
    fn any_text_is_a_spec_or_an_error(text in "\\PC{0,60}") {
        let _ = WorkloadSpec::parse(&text);
        let _ = ChurnSpec::parse(&text);
        let _ = Slo::parse(&text);
        let _ = RouteCache::parse(&text);
        let _ = ReplanPolicy::parse(&text);
        let _ = RouterChoice::parse(&text);
        let _ = strategy_list(&text);
        let _ = Lengths::parse("prompt", &text);
        let _ = parse_trace("trace.csv", &text);
        let _ = Cluster::from_toml_str(&text);
        if let Ok(s) = duration("--duration", &text) {
            prop_assert!(s.is_finite() && s >= 0.0);
        }
    }

    /// Text shaped like the specs, with numbers anywhere from NaN to 1e300.
    #[test]
    fn spec_shaped_text(
        kind in "(poisson|gamma|diurnal|exp|weibull|trace)",
        key in "(rate|cv|amplitude|period|prompt|output|requests|scale|mtbf|mttr|shape|down-scale|speedup|ttft|itl)",
        value in "(NaN|inf|-inf|-1|0|1e300|1e-300|0.5|3|uniform:1:9|lognormal:5:1|[0-9]{1,4}(ms|s|m|h)?)",
    ) {
        let text = format!("{kind}:{key}={value}");
        let _ = WorkloadSpec::parse(&text);
        let _ = ChurnSpec::parse(&text);
        let _ = Slo::parse(&format!("{key}={value}"));
    }

    #[test]
    fn cluster_shaped_toml(count in "(0|1|-1|4000000000|99999999999999999999|NaN|2)", up in "(nan|-1.0|0.0|1e308|2.5)") {
        let toml = format!(
            "name = \"p\"\n[link_defaults]\nintra_site = {{ latency_ms = 1.0, bandwidth_gbps = 1.0 }}\n[[nodes]]\nid = \"n\"\ngpu = \"RTX4090\"\ncount = {count}\nuplink_gbps = {up}\nsite = \"a\"\nregion = \"r\"\n"
        );
        if let Ok(c) = Cluster::from_toml_str(&toml) {
            prop_assert!(c.len() <= 2);
        }
    }
}
