//! The command line: `kproxy run | plugins | cleanup | check-config | version`.

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    0
}
