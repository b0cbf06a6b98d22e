//! `rnet`: the operator CLI. Parses flags, runs one subcommand, exits with its status.

use clap::Parser;
use rnet::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command {
        // Forks: must happen before any runtime thread exists.
        std::process::exit(cli::run::exec(&cli, args));
    }
    if let Command::Lab(args) = &cli.command {
        // `lab exec` enters a namespace and execs in place: before any runtime exists.
        std::process::exit(cli::lab::run(&cli, args));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    if let Err(f) = runtime.block_on(cli::exec(&cli)) {
        eprintln!("rnet: error: {}", f.message);
        std::process::exit(f.code);
    }
}
