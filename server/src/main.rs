//! `mxserve`: the command-line entry point.

fn main() {
    eprintln!("mxserve: no subcommands yet");
    std::process::exit(2);
}
