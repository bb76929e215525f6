//! The test API server: a test double of the Kubernetes API server speaking real list/watch HTTP.
