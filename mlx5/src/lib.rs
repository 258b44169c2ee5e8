//! The mlx5 provider: a software model of a ConnectX HCA (WQE/CQE rings, mkeys, UMR/BSF/PSV, signature engine) whose queue pairs run over sockets.
//!
//! Driver half ([`driver`]): encodes verbs work requests as mlx5 WQEs into the send
//! and receive rings and rings a doorbell; decodes 64-byte CQEs (including SIGERR).
//! Device half: reads those WQE bytes ([`requester`]), answers the peer
//! ([`responder`]), completes requests ([`completer`]), keeps mkeys ([`mr`]) and
//! runs the signature engine ([`sig`]) on every SEND / RDMA READ / RDMA WRITE that
//! touches a signature MR; bulk transfers of plain memory skip the staging copy
//! ([`bulk`]). Layouts live in [`layout`], the fabric frame in
//! [`frame`], sockets and threads in [`transport`] and [`fabric`], the receive path
//! (rx thread or poll mode) in [`receive`], fault injection in [`fault`].

#![forbid(unsafe_code)]

pub mod bulk;
pub mod completer;
pub mod dma;
pub mod driver;
pub mod fabric;
pub mod fault;
pub mod frame;
pub mod hca;
pub mod layout;
pub mod mr;
pub mod receive;
pub mod requester;
pub mod responder;
pub mod sig;
pub mod sync;
pub mod transport;

use std::sync::{Arc, OnceLock};

pub use driver::Mlx5Device;
pub use fault::{FaultDirection, FaultScope, FaultSpec, FaultTarget};

/// Name of the device the registered provider offers.
pub const SOFT_DEVICE: &str = "mlx5_soft_0";

/// The soft mlx5 provider for the verbs registry: one device per process.
#[derive(Debug, Default)]
pub struct SoftProvider {
    dev: OnceLock<Arc<Mlx5Device>>,
}

impl SoftProvider {
    /// The process's soft device (created on first use).
    pub fn device(&self) -> Arc<Mlx5Device> {
        Arc::clone(self.dev.get_or_init(|| Mlx5Device::new(SOFT_DEVICE)))
    }
}

impl verbs::provider::Provider for SoftProvider {
    fn name(&self) -> &str {
        "mlx5_soft"
    }
    fn devices(&self) -> Vec<String> {
        vec![SOFT_DEVICE.to_string()]
    }
    fn open(&self, device: &str) -> verbs::Result<Arc<dyn verbs::provider::ContextOps>> {
        if device != SOFT_DEVICE {
            return Err(verbs::VerbsError::NoSuchDevice(device.to_string()));
        }
        Ok(self.device())
    }
}

static PROVIDER: OnceLock<Arc<SoftProvider>> = OnceLock::new();

/// Registers the soft provider so that `verbs::Context::open("mlx5_soft_0")` works.
/// Returns the provider (for fault injection on its device).
pub fn register() -> Arc<SoftProvider> {
    let p = Arc::clone(PROVIDER.get_or_init(|| Arc::new(SoftProvider::default())));
    verbs::provider::register_provider(Arc::clone(&p) as Arc<dyn verbs::provider::Provider>);
    p
}
