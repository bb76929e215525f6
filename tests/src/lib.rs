//! kproxy test support: the lab, the test API server and fixtures.
