use clap::Parser;

fn main() -> std::process::ExitCode {
    evalsink::memory::limit_arenas();
    evalsink::cli::main(evalsink::cli::Cli::parse())
}
