//! Finds, checks and loads dataplane plugins.
