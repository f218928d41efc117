//! `rota-ocpp`: the OCPP charge point client for firmware updates (see the
//! library's documentation and `config` for its settings).

use rota_ocpp::config::Config;
use rota_ocpp::rota::Rota;
use rota_ocpp::station::Station;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROTA_OCPP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cfg = match Config::from_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rota-ocpp: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async {
        let rota = Rota::connect().await?;
        Station::new(cfg, rota)?.run().await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rota-ocpp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
