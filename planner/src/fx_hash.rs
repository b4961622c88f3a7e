//! A fast, deterministic hasher for integer keys (FxHash's multiply-rotate),
//! for the link tables, the max-flow edge store and the simulator's memo
//! tables. Maps hashed with it are looked up, never iterated into results, so
//! no output depends on its values.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's state: one word, rotated, xored and multiplied per integer.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Builds [`FxHasher`]s for `HashMap`s.
pub type FxBuild = BuildHasherDefault<FxHasher>;
