//! kproxy's configuration: one TOML file, `KPROXY_*` environment variables and flags, read into
//! typed structs and validated before anything else happens.
