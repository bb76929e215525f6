//! The error a plugin returns across the ABI: a stable code plus a message.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What kind of failure a [`PluginError`] reports; stable across versions so the host can count
/// and react to failures without parsing messages.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The plugin's config section is invalid; retrying will not help.
    Config = 1,
    /// The kernel (or a tool such as `nft`) refused a change; the previous rules still serve and
    /// a retry may succeed.
    Kernel = 2,
    /// The plugin cannot do what was asked on this node (missing kernel feature, wrong OS).
    Unsupported = 3,
    /// The plugin panicked; the panic was caught inside the plugin.
    Panic = 4,
    /// Anything else.
    Internal = 5,
}

impl ErrorCode {
    /// A short lowercase name, used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Config => "config",
            ErrorCode::Kernel => "kernel",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Panic => "panic",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error returned by a plugin. `message` carries the context the operator needs (for a kernel
/// failure: the command, the failing line, and the kernel's own text).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The stable category.
    pub code: ErrorCode,
    /// Whether retrying the same call later can help.
    pub retryable: bool,
    /// Human-readable detail.
    pub message: RString,
}

impl PluginError {
    /// Builds an error; `retryable` defaults to true for kernel and internal errors.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = matches!(
            code,
            ErrorCode::Kernel | ErrorCode::Internal | ErrorCode::Panic
        );
        PluginError {
            code,
            retryable,
            message: RString::from(message.into()),
        }
    }
    /// A config error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Config, message)
    }
    /// A kernel error.
    pub fn kernel(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Kernel, message)
    }
    /// An unsupported-feature error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }
    /// An internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for PluginError {}
