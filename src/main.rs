//! The `umbra` binary: the daemon (`umbra serve`) and the admin CLI.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
