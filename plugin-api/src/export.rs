//! The safe way to export a plugin: implement [`Plugin`] and call [`export_plugin!`].
//!
//! The macro builds the root module. Every call that crosses the ABI runs inside
//! `catch_unwind` in the plugin itself — a panic can never unwind into the host (each cdylib has
//! its own std, so the host could not catch it) — and comes back as an [`ErrorCode::Panic`]
//! error. A plugin that panicked once is marked poisoned: its further syncs fail fast until the
//! host builds a new one, because its kernel state is no longer known.

use crate::{
    error::{ErrorCode, PluginError},
    logging::panic_message,
    model::{ChangeSet, ProxyState},
    module::{Capabilities, Dataplane, HostContext, PluginStats, SyncReport},
};
use abi_stable::std_types::{RResult, RString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a dataplane plugin implements, in plain Rust; [`export_plugin!`] adapts it to the ABI.
pub trait Plugin: Sized + Send + 'static {
    /// The dataplane's name as used in the config (`dataplane = "<NAME>"`).
    const NAME: &'static str;
    /// One line on what the plugin programs.
    const DESCRIPTION: &'static str;
    /// The features it implements.
    fn capabilities() -> Capabilities;
    /// Checks the plugin's TOML config section without touching the kernel.
    fn validate_config(plugin_config: &str) -> Result<(), PluginError>;
    /// Builds the dataplane; must not change the kernel.
    fn new(ctx: &HostContext) -> Result<Self, PluginError>;
    /// See [`Dataplane::sync`].
    fn sync(&mut self, state: &ProxyState, changes: &ChangeSet) -> Result<SyncReport, PluginError>;
    /// See [`Dataplane::cleanup`].
    fn cleanup(&mut self) -> Result<(), PluginError>;
    /// See [`Dataplane::stats`].
    fn stats(&self) -> PluginStats {
        PluginStats::default()
    }
}

/// Runs `f`, turning a panic into an [`ErrorCode::Panic`] error naming `what`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e),
        Err(payload) => RResult::RErr(PluginError::new(
            ErrorCode::Panic,
            format!(
                "plugin panicked in {what}: {}",
                panic_message(payload.as_ref())
            ),
        )),
    }
}

/// Wraps a [`Plugin`] as a [`Dataplane`]; used by [`export_plugin!`].
#[doc(hidden)]
pub struct Guarded<P: Plugin> {
    inner: P,
    poisoned: Option<RString>,
}

impl<P: Plugin> Guarded<P> {
    #[doc(hidden)]
    pub fn new(inner: P) -> Self {
        Guarded {
            inner,
            poisoned: None,
        }
    }

    fn call<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut P) -> Result<T, PluginError>,
    ) -> RResult<T, PluginError> {
        if let Some(why) = &self.poisoned {
            return RResult::RErr(PluginError::new(
                ErrorCode::Panic,
                format!("plugin is unusable after an earlier panic ({why}); it must be rebuilt"),
            ));
        }
        let inner = &mut self.inner;
        let result = guard(what, || f(inner));
        if let RResult::RErr(e) = &result {
            if e.code == ErrorCode::Panic {
                self.poisoned = Some(e.message.clone());
            }
        }
        result
    }
}

impl<P: Plugin> Dataplane for Guarded<P> {
    fn sync(
        &mut self,
        state: &ProxyState,
        changes: &ChangeSet,
    ) -> RResult<SyncReport, PluginError> {
        self.call("sync", |p| p.sync(state, changes))
    }
    fn cleanup(&mut self) -> RResult<(), PluginError> {
        self.call("cleanup", |p| p.cleanup())
    }
    fn stats(&self) -> PluginStats {
        let inner = &self.inner;
        catch_unwind(AssertUnwindSafe(|| inner.stats())).unwrap_or_default()
    }
}

/// Exports a [`Plugin`] implementation as this cdylib's kproxy root module.
///
/// The plugin crate must list `abi_stable` among its own dependencies (the same version as this
/// crate's): abi_stable's `#[export_root_module]`, which this expands to, names `::abi_stable`.
///
/// ```ignore
/// kproxy_plugin_api::export_plugin!(MyDataplane);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[::kproxy_plugin_api::abi_stable::export_root_module]
        fn kproxy_root_module() -> ::kproxy_plugin_api::PluginModRef {
            use ::kproxy_plugin_api::abi_stable::prefix_type::PrefixTypeTrait;
            ::kproxy_plugin_api::PluginMod {
                info: __kproxy_info,
                set_logger: __kproxy_set_logger,
                validate_config: __kproxy_validate_config,
                new: __kproxy_new,
            }
            .leak_into_prefix()
        }

        extern "C" fn __kproxy_info() -> ::kproxy_plugin_api::PluginInfo {
            ::kproxy_plugin_api::PluginInfo {
                name: <$plugin as ::kproxy_plugin_api::Plugin>::NAME.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                interface: ::kproxy_plugin_api::INTERFACE_VERSION,
                capabilities: <$plugin as ::kproxy_plugin_api::Plugin>::capabilities(),
                description: <$plugin as ::kproxy_plugin_api::Plugin>::DESCRIPTION.into(),
            }
        }

        extern "C" fn __kproxy_set_logger(logger: ::kproxy_plugin_api::logging::HostLogger) {
            let _ = ::std::panic::catch_unwind(|| {
                ::kproxy_plugin_api::logging::install_forwarder(
                    <$plugin as ::kproxy_plugin_api::Plugin>::NAME,
                    logger,
                )
            });
        }

        extern "C" fn __kproxy_validate_config(
            config: ::kproxy_plugin_api::abi_stable::std_types::RStr<'_>,
        ) -> ::kproxy_plugin_api::abi_stable::std_types::RResult<(), ::kproxy_plugin_api::PluginError>
        {
            ::kproxy_plugin_api::export::guard("validate_config", || {
                <$plugin as ::kproxy_plugin_api::Plugin>::validate_config(config.as_str())
            })
        }

        extern "C" fn __kproxy_new(
            ctx: &::kproxy_plugin_api::HostContext,
        ) -> ::kproxy_plugin_api::abi_stable::std_types::RResult<
            ::kproxy_plugin_api::DataplaneBox,
            ::kproxy_plugin_api::PluginError,
        > {
            ::kproxy_plugin_api::export::guard("new", || {
                let plugin = <$plugin as ::kproxy_plugin_api::Plugin>::new(ctx)?;
                Ok(::kproxy_plugin_api::Dataplane_TO::from_value(
                    ::kproxy_plugin_api::export::Guarded::new(plugin),
                    ::kproxy_plugin_api::abi_stable::sabi_trait::TD_Opaque,
                ))
            })
        }
    };
}
