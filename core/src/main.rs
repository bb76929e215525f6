//! The `kproxy` binary: parses the command line and hands over to [`kproxy::cli`].

fn main() {
    std::process::exit(kproxy::cli::main());
}
