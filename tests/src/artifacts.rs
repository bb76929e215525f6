//! Finds built artifacts (the `kproxy` binary, plugin `.so` files) for tests.
