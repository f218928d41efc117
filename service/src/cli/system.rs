//! `rota system update <URL>|status|cancel`: a client of the main ECU's
//! `dev.rota.System1`.

use super::client::dbus_error;
use rota_bundle::cli::{CliError, Context, fail};
use rota_dbus::SystemProxy;
use std::collections::HashMap;
use std::time::Duration;

/// A snapshot of the interface's properties.
struct Snapshot {
    state: String,
    transaction: String,
    version: u64,
    committed: u64,
    error: String,
    ecus: Vec<(String, String, String, String, String, u32)>,
}

async fn snapshot(p: &SystemProxy<'_>) -> zbus::Result<Snapshot> {
    Ok(Snapshot {
        state: p.state().await?,
        transaction: p.transaction_id().await?,
        version: p.system_version().await?,
        committed: p.committed_system_version().await?,
        error: p.last_error().await?,
        ecus: p.ecus().await?,
    })
}

fn ecu_line(e: &(String, String, String, String, String, u32)) -> String {
    let (id, state, error, slot, version, progress) = e;
    let mut line = format!("  {id:<16} {state:<12} booted {} {}", if slot.is_empty() { "?" } else { slot }, version);
    if state == "preparing" {
        line.push_str(&format!(" ({progress}%)"));
    }
    if !error.is_empty() {
        line.push_str(&format!(": {error}"));
    }
    line
}

fn readable(s: &Snapshot) -> String {
    let mut o = format!(
        "System update:    {}\nTransaction:      {}\nSystem version:   {} (committed: {})\n",
        s.state,
        if s.transaction.is_empty() { "-" } else { &s.transaction },
        s.version,
        s.committed
    );
    if !s.error.is_empty() {
        o.push_str(&format!("Last error:       {}\n", s.error));
    }
    o.push_str("ECUs:\n");
    for e in &s.ecus {
        o.push_str(&ecu_line(e));
        o.push('\n');
    }
    o
}

fn json(s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "state": s.state,
        "transaction-id": s.transaction,
        "system-version": s.version,
        "committed-system-version": s.committed,
        "last-error": s.error,
        "ecus": s.ecus.iter().map(|(id, state, error, slot, version, progress)| serde_json::json!({
            "id": id, "state": state, "error": error, "booted-slot": slot, "booted-version": version, "progress": progress,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `rota system …`.
pub fn run(ctx: &Context) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let conn = crate::dbus::connect_bus(crate::dbus::use_session_bus())
            .await
            .map_err(|e| CliError::from(format!("Failed to connect to the bus: {e}")))?;
        let p = SystemProxy::new(&conn).await.map_err(dbus_error)?;
        match (ctx.arg(0), ctx.args.positionals.get(1)) {
            ("status", None) => {
                let s = snapshot(&p).await.map_err(|e| {
                    CliError::from(format!("No system updates here (is this the main ECU's service?): {e}"))
                })?;
                match ctx.args.value("output-format").unwrap_or("readable") {
                    "readable" => print!("{}", readable(&s)),
                    "json" => println!("{}", json(&s)),
                    other => return fail(format!("Unknown output format: '{other}'")),
                }
                Ok(())
            }
            ("cancel", None) => p.cancel().await.map_err(dbus_error),
            ("update", Some(url)) => {
                let location = rota_bundle::cli::commands::location(url);
                let id = p.update(&location, HashMap::new()).await.map_err(dbus_error)?;
                println!("System update {id} started");
                let mut shown: Vec<String> = Vec::new();
                let mut last_state = String::new();
                let mut away = false;
                loop {
                    // The main itself may reboot during the update: the
                    // service is asked again until it answers.
                    let s = match snapshot(&p).await {
                        Ok(s) => {
                            away = false;
                            s
                        }
                        Err(e) => {
                            if !away {
                                println!("(the service does not answer: {e}; waiting for it)");
                                away = true;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    if s.transaction == id {
                        if s.state != last_state {
                            println!("{}", s.state);
                            last_state = s.state.clone();
                        }
                        for e in &s.ecus {
                            let line = ecu_line(e);
                            if !shown.contains(&line) {
                                println!("{line}");
                                shown.retain(|l| !l.starts_with(&format!("  {:<16} ", e.0)));
                                shown.push(line);
                            }
                        }
                        match s.state.as_str() {
                            "committed" => {
                                println!("System update committed: system version {}", s.version);
                                return Ok(());
                            }
                            "reverted" => return fail(format!("System update reverted: {}", s.error)),
                            "failed" => return fail(format!("System update failed: {}", s.error)),
                            _ => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            _ => fail("Usage: system update <URL> | system status | system cancel"),
        }
    })
}
