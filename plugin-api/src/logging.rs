//! Carries a plugin's `tracing` events to the host's subscriber.
//!
//! A cdylib has its own copy of `tracing` with no subscriber, so events emitted inside a plugin
//! would be dropped. The host passes a [`HostLogger`] (a C callback) at load time; the plugin
//! installs [`install_forwarder`] as its global subscriber, which formats each event's message
//! and fields and calls back into the host, where [`host_logger`] re-emits it under the target
//! `kproxy::plugin` with the plugin's name and original target as fields.

use abi_stable::{std_types::RStr, StableAbi};
use std::{fmt::Write as _, sync::OnceLock};
use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

/// A log level as it crosses the ABI.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors.
    Error = 1,
    /// Warnings.
    Warn = 2,
    /// Information.
    Info = 3,
    /// Debugging detail.
    Debug = 4,
    /// Very verbose detail.
    Trace = 5,
}

impl From<Level> for LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }
}

/// One event from a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct LogRecord<'a> {
    /// The event's level.
    pub level: LogLevel,
    /// The plugin's name.
    pub plugin: RStr<'a>,
    /// The event's target inside the plugin (usually its module path).
    pub target: RStr<'a>,
    /// The event's message.
    pub message: RStr<'a>,
    /// The event's other fields, formatted as `key=value` pairs separated by spaces.
    pub fields: RStr<'a>,
}

/// The host's logging callback, handed to a plugin through [`crate::PluginMod::set_logger`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct HostLogger {
    /// Receives one event.
    pub log: extern "C" fn(record: &LogRecord<'_>),
    /// The most verbose level the host wants; the plugin drops anything finer before formatting.
    pub max_level: LogLevel,
}

extern "C" fn emit_on_host(r: &LogRecord<'_>) {
    let (plugin, target, message, fields) = (
        r.plugin.as_str(),
        r.target.as_str(),
        r.message.as_str(),
        r.fields.as_str(),
    );
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "kproxy::plugin",
                $lvl,
                plugin,
                plugin_target = target,
                fields,
                "{message}"
            )
        };
    }
    match r.level {
        LogLevel::Error => emit!(Level::ERROR),
        LogLevel::Warn => emit!(Level::WARN),
        LogLevel::Info => emit!(Level::INFO),
        LogLevel::Debug => emit!(Level::DEBUG),
        LogLevel::Trace => emit!(Level::TRACE),
    }
}

/// The host side: a logger that re-emits plugin events through the host's `tracing` subscriber.
pub fn host_logger(max_level: LogLevel) -> HostLogger {
    HostLogger {
        log: emit_on_host,
        max_level,
    }
}

struct Forwarder {
    plugin: &'static str,
    host: HostLogger,
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.push(field, format_args!("{value:?}"));
        }
    }
}

impl Collect {
    fn push(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={}", field.name(), value);
    }
}

impl<S: Subscriber> Layer<S> for Forwarder {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        LogLevel::from(*metadata.level()) <= self.host.max_level
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut c = Collect::default();
        event.record(&mut c);
        let record = LogRecord {
            level: (*event.metadata().level()).into(),
            plugin: self.plugin.into(),
            target: event.metadata().target().into(),
            message: c.message.as_str().into(),
            fields: c.fields.as_str().into(),
        };
        (self.host.log)(&record);
    }
}

static HOST: OnceLock<HostLogger> = OnceLock::new();

/// The plugin side: makes the host's logger this plugin's global `tracing` subscriber, and routes
/// panic messages through it. Only the first call has an effect.
pub fn install_forwarder(plugin: &'static str, host: HostLogger) {
    if HOST.set(host).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(Forwarder { plugin, host });
    let _ = tracing::subscriber::set_global_default(subscriber);
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(%location, "plugin panicked: {}", panic_message(info.payload()));
    }));
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}
