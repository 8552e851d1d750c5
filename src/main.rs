use clap::Parser;

fn main() -> std::process::ExitCode {
    evalsink::cli::main(evalsink::cli::Cli::parse())
}
