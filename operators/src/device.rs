//! Which burn device stages run on.

use burn::tensor::Device;

/// The device of this build: CUDA GPU 0 with the `cuda` feature, else the burn-flex CPU backend.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::flex()
    }
}

/// A short name of the device kind, for reports.
pub fn device_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "cpu-flex"
    }
}
