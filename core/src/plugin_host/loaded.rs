//! A plugin that passed every check, and the dataplanes it builds.

use kproxy_plugin_api::{
    abi_stable::std_types::RStr, ChangeSet, DataplaneBox, HostContext, PluginError, PluginInfo,
    PluginModRef, PluginStats, ProxyState, SyncReport,
};
use std::{fmt, path::PathBuf};

/// A loaded, checked plugin. Cheap to clone: the shared object stays mapped for the life of the
/// process (abi_stable never unloads libraries), so this only holds a reference to its module.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// What the plugin says about itself.
    pub info: PluginInfo,
    module: PluginModRef,
}

impl LoadedPlugin {
    pub(super) fn new(path: PathBuf, info: PluginInfo, module: PluginModRef) -> Self {
        LoadedPlugin { path, info, module }
    }

    /// The plugin's name (`dataplane = "<name>"` in the config).
    pub fn name(&self) -> &str {
        self.info.name.as_str()
    }

    /// Asks the plugin whether its config section (TOML text, empty when absent) is valid,
    /// without touching the kernel; used by `kproxy check-config` and before start-up.
    pub fn validate_config(&self, section_toml: &str) -> Result<(), PluginError> {
        (self.module.validate_config())(RStr::from(section_toml)).into_result()
    }

    /// Builds a dataplane; the plugin must not change the kernel until its first sync.
    pub fn build(&self, ctx: &HostContext) -> Result<Dataplane, PluginError> {
        let inner = (self.module.new())(ctx).into_result()?;
        Ok(Dataplane {
            inner,
            name: self.info.name.to_string(),
        })
    }
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A built dataplane, as the host uses it: the ABI object behind plain `Result` methods.
///
/// Calls block (they program the kernel), so call them from the sync thread, never from the
/// async runtime. A panic inside the plugin comes back as an error with
/// [`kproxy_plugin_api::ErrorCode::Panic`]; after that every call fails until a new dataplane is
/// built with [`LoadedPlugin::build`].
pub struct Dataplane {
    inner: DataplaneBox,
    name: String,
}

impl Dataplane {
    /// Makes the kernel match `state`; `changes` lists the service ports changed since the last
    /// successful sync. On error the plugin's previous rules are still in place.
    pub fn sync(
        &mut self,
        state: &ProxyState,
        changes: &ChangeSet,
    ) -> Result<SyncReport, PluginError> {
        self.inner.sync(state, changes).into_result()
    }

    /// Removes every kernel object the plugin made, and nothing else.
    pub fn cleanup(&mut self) -> Result<(), PluginError> {
        self.inner.cleanup().into_result()
    }

    /// The plugin's counters, for metrics.
    pub fn stats(&self) -> PluginStats {
        self.inner.stats()
    }

    /// The name of the plugin that built this dataplane.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
