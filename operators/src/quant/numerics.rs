//! Which arithmetic the quantized linear layers use.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How products with quantized weights are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Numerics {
    /// f32 activations times weights expanded to f32: the same values as an f32
    /// pass over the dequantized file, within f32 rounding (the default: it gives
    /// the independent f32 reference's answers).
    #[default]
    Exact,
    /// Activations quantized to 8-bit blocks of 32 (an f16 scale each) once per
    /// input, and integer dot products with the weights' quants, as llama.cpp does.
    Q8,
}

impl Numerics {
    /// Both numerics, in a fixed order (for benchmarks that run each).
    pub const ALL: [Numerics; 2] = [Numerics::Exact, Numerics::Q8];

    /// The option value naming this numerics.
    pub fn name(self) -> &'static str {
        match self {
            Numerics::Exact => "exact",
            Numerics::Q8 => "q8",
        }
    }
}

impl fmt::Display for Numerics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A numerics name that is neither `exact` nor `q8`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown numerics {0:?}: expected `exact` or `q8`")]
pub struct NumericsParseError(pub String);

impl FromStr for Numerics {
    type Err = NumericsParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "exact" => Ok(Numerics::Exact),
            "q8" => Ok(Numerics::Q8),
            _ => Err(NumericsParseError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_own_names_and_refuses_others() {
        for n in Numerics::ALL {
            assert_eq!(n.name().parse::<Numerics>(), Ok(n));
        }
        assert!("f32".parse::<Numerics>().is_err());
        assert!("".parse::<Numerics>().is_err());
    }
}
