//! `defenseclawctl` binary.

fn main() -> std::process::ExitCode {
    defenseclawctl::main_entry()
}
