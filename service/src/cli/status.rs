//! `status` and `status mark-good|mark-bad|mark-active [booted|other|SLOT]`.

use crate::mark::{self, MarkState};
use crate::report::{StatusFormat, StatusReport};
use rota_bundle::cli::{CliError, Context, fail};

pub(super) fn run(ctx: &Context) -> Result<(), CliError> {
    let format = StatusFormat::parse(ctx.args.value("output-format").unwrap_or("readable"))?;
    let positionals = &ctx.args.positionals;
    let action = positionals.first().map(String::as_str);
    let state = match action {
        None => None,
        Some("mark-good") => Some(MarkState::Good),
        Some("mark-bad") => Some(MarkState::Bad),
        Some("mark-active") => Some(MarkState::Active),
        Some(other) => return fail(format!("unknown subcommand {other}")),
    };
    if let Some(client) = super::client::Client::connect() {
        if ctx.args.value("override-boot-slot").is_some() {
            return fail("--override-boot-slot not supported when using the D-Bus service");
        }
        return match state {
            None => {
                print!("{}", client.status()?.render(format, ctx.args.has("detailed")));
                Ok(())
            }
            Some(state) => {
                let identifier = positionals.get(1).map(String::as_str).unwrap_or("booted");
                match client.mark(state.as_str(), identifier) {
                    Ok(message) => {
                        println!("{} status: {message}", ctx.prog);
                        Ok(())
                    }
                    Err(e) => fail(format!("{} status: {}", ctx.prog, e.message)),
                }
            }
        };
    }
    let system = super::setup(ctx)?;
    match state {
        None => {
            crate::artifacts::init(&system)?;
            print!("{}", StatusReport::gather(&system).render(format, ctx.args.has("detailed")));
            Ok(())
        }
        Some(state) => {
            let identifier = positionals.get(1).map(String::as_str).unwrap_or("booted");
            match mark::mark(&system, state, identifier) {
                Ok((_, message)) => {
                    println!("{} status: {message}", ctx.prog);
                    Ok(())
                }
                Err(e) => fail(format!("{} status: {e}", ctx.prog)),
            }
        }
    }
}
