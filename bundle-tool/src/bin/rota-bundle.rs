//! `rota-bundle`: the host-side bundle tool (create, sign, inspect, extract).

fn main() {
    let code = rota_bundle::cli::main_with(std::env::args_os().collect(), rota_bundle::cli::commands::HOST_COMMANDS);
    std::process::exit(code);
}
