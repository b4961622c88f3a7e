//! GPU kinds and their published figures, loaded from a catalogue file.

use serde::{Deserialize, Serialize};

use crate::error::{PlanError, positive};

/// The catalogue shipped with the planner (`planner/data/gpus.toml`).
pub const BUILTIN_CATALOG_TOML: &str = include_str!("../data/gpus.toml");

/// One GPU model with its peak figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuKind {
    /// Catalogue name, e.g. `RTX4090` or `A100-40GB`.
    pub name: String,
    /// On-board memory in GiB.
    pub memory_gib: f64,
    /// Peak dense FP16 tensor TFLOPS.
    pub fp16_tflops: f64,
    /// Peak memory bandwidth in GB/s.
    pub mem_bandwidth_gbs: f64,
    /// `desktop` or `datacenter`, informative.
    #[serde(default)]
    pub class: String,
    /// Where the figures come from.
    #[serde(default)]
    pub source: String,
}

impl GpuKind {
    /// Memory in bytes.
    pub fn memory_bytes(&self) -> f64 {
        self.memory_gib * crate::error::GIB
    }
    /// Peak FLOP/s.
    pub fn flops(&self) -> f64 {
        self.fp16_tflops * 1e12
    }
    /// Peak memory bandwidth in bytes/s.
    pub fn bandwidth(&self) -> f64 {
        self.mem_bandwidth_gbs * 1e9
    }
    /// Checks every figure is positive, naming the field of entry `index`.
    pub fn check(&self, field: &str) -> Result<(), PlanError> {
        if self.name.trim().is_empty() {
            return Err(PlanError::InvalidField {
                field: format!("{field}.name"),
                message: "must not be empty".into(),
            });
        }
        positive(&format!("{field}.memory_gib"), self.memory_gib)?;
        positive(&format!("{field}.fp16_tflops"), self.fp16_tflops)?;
        positive(
            &format!("{field}.mem_bandwidth_gbs"),
            self.mem_bandwidth_gbs,
        )?;
        Ok(())
    }
}

/// A set of GPU kinds looked up by name (case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuCatalog {
    /// The kinds, in file order.
    #[serde(default)]
    pub gpu: Vec<GpuKind>,
}

impl GpuCatalog {
    /// The catalogue shipped with the planner.
    pub fn builtin() -> GpuCatalog {
        // The shipped file is checked by a test; a failure here is a build defect.
        Self::from_toml_str(BUILTIN_CATALOG_TOML, "builtin gpus.toml").unwrap_or_default()
    }

    /// Parses and checks a catalogue in TOML.
    pub fn from_toml_str(text: &str, path: &str) -> Result<GpuCatalog, PlanError> {
        let cat: GpuCatalog = toml::from_str(text).map_err(|e| PlanError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        cat.check()?;
        Ok(cat)
    }

    /// Checks every entry.
    pub fn check(&self) -> Result<(), PlanError> {
        for (i, g) in self.gpu.iter().enumerate() {
            g.check(&format!("gpu[{i}]"))?;
        }
        Ok(())
    }

    /// Finds a kind by name, ignoring case, `-`, `_` and spaces.
    pub fn get(&self, name: &str) -> Option<&GpuKind> {
        let key = normalise(name);
        self.gpu.iter().find(|g| normalise(&g.name) == key)
    }

    /// Adds or replaces kinds from `other` (by name).
    pub fn merge(&mut self, other: &[GpuKind]) {
        for g in other {
            let key = normalise(&g.name);
            if let Some(slot) = self.gpu.iter_mut().find(|x| normalise(&x.name) == key) {
                *slot = g.clone();
            } else {
                self.gpu.push(g.clone());
            }
        }
    }

    /// Comma-separated names, for error messages.
    pub fn names(&self) -> String {
        self.gpu
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(|c| c.to_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses_and_has_required_kinds() {
        let cat = GpuCatalog::from_toml_str(BUILTIN_CATALOG_TOML, "gpus.toml").unwrap();
        for name in [
            "RTX3060",
            "RTX3080",
            "RTX3090",
            "RTX4070",
            "RTX4080",
            "RTX4090",
            "T4",
            "L4",
            "A100-40GB",
            "A100-80GB",
            "H100",
        ] {
            let g = cat.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(!g.source.is_empty(), "{name} has no source");
        }
        assert_eq!(cat.get("rtx-4090").unwrap().mem_bandwidth_gbs, 1008.0);
    }

    #[test]
    fn zero_memory_is_rejected_with_field() {
        let text = "[[gpu]]\nname='X'\nmemory_gib=0\nfp16_tflops=1\nmem_bandwidth_gbs=1\n";
        let err = GpuCatalog::from_toml_str(text, "x.toml").unwrap_err();
        assert!(err.to_string().contains("gpu[0].memory_gib"), "{err}");
    }
}
