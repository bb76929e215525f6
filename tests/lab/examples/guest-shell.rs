//! Runs one shell command in the qemu guest and prints its console, for looking around in the
//! guest by hand:
//!
//! ```sh
//! cargo run -p kproxy-lab --example guest-shell -- 'lsmod; nft list ruleset; ip -br link'
//! ```
//!
//! Exits with the command's exit code.

use kproxy_lab::vm::Guest;

fn main() {
    let command: Vec<String> = std::env::args().skip(1).collect();
    if command.is_empty() {
        eprintln!("usage: guest-shell '<shell command>'");
        std::process::exit(2);
    }
    let result = Guest::prepare().and_then(|mut guest| {
        guest.load_module("sctp");
        guest.run(&["sh", "-c", &command.join(" ")])
    });
    match result {
        Ok(run) => {
            println!("{run}");
            std::process::exit(run.exit_code);
        }
        Err(e) => {
            eprintln!("guest-shell: {e}");
            std::process::exit(1);
        }
    }
}
