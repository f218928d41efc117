//! `rota`: the multi-call command line. Invoked as `rauc` (e.g. through a
//! symlink) it behaves as RAUC's command line does.

fn main() {
    let commands = rota::cli::all_commands();
    let code = rota_bundle::cli::main_with(std::env::args_os().collect(), &commands);
    std::process::exit(code);
}
