//! Stand-in for `cubecl-llvm` 0.11.3 with only the items `cubecl-cuda` 0.11.3 names
//! (`src/compiler.rs`, `src/runtime.rs`, `src/compute/context.rs`).
//!
//! The real crate's build script needs an LLVM 23 bundle that `tracel-llvm-bundler`
//! downloads from GitHub. This one links nothing: the LLVM/PTX backend compiles to an
//! error, so `cubecl-cuda` must run its C++/NVRTC backend, which its `cpp` feature
//! (`cubecl/cuda-cpp`) makes the default.

pub mod nvptx {
    pub mod ptx_version;
}

pub mod shared {
    pub mod lowered_features {
        use cubecl_core::ir::DeviceProperties;

        /// The GPU target a device's features would be narrowed for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            Nvptx,
        }

        /// No-op: nothing compiles through the LLVM backend here, so there is nothing to
        /// narrow. `cubecl-cuda` only calls this when its default backend is LLVM.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

use cubecl_core::ir::{amd::GfxArch, nvidia::SmArch};
use cubecl_environment::backtrace::BackTrace;
use cubecl_runtime::{
    compiler::{CompilationError, Compiler},
    kernel::{BufferIOAttr, KernelDefinition},
};
use nvptx::ptx_version::PtxVersion;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    Nvptx,
}

#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    pub arch: Option<GfxArch>,
    pub sm_arch: Option<SmArch>,
    pub ptx_version: Option<PtxVersion>,
    pub grid_constants: bool,
}

/// Compiled PTX module (never produced by this stub).
#[derive(Clone, Debug)]
pub struct NvptxModule {
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    pub ir: String,
    pub shared_memory_size: usize,
    pub io: Vec<BufferIOAttr>,
}

#[derive(Clone, Debug)]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
    /// Stands for the real crate's other variants (`Jit`, ...); never constructed.
    Unavailable,
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => write!(f, "{}", module.ir),
            PlironArtifact::Unavailable => f.write_str("<cubecl-llvm stub>"),
        }
    }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: "the LLVM/PTX backend is stubbed out in this build (cubecl-llvm patched \
                     to build offline); enable cubecl-cuda's `cpp` feature (`cubecl/cuda-cpp`) \
                     to compile kernels with NVRTC"
                .to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
        match repr {
            PlironArtifact::NvptxCode(module) => Some(module.io.clone()),
            PlironArtifact::Unavailable => None,
        }
    }

    fn extension(&self) -> &'static str {
        match self.target {
            LlvmTarget::Cpu => "plir",
            LlvmTarget::Nvptx => "ll",
        }
    }

    fn lang_tag(&self) -> &'static str {
        match self.target {
            LlvmTarget::Cpu => "mlir",
            LlvmTarget::Nvptx => "llvm",
        }
    }
}
