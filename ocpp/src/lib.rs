//! `rota-ocpp`: an OCPP charge point client for firmware updates (1.6J with
//! the security extension's signed updates, and 2.0.1) that drives
//! `rota service` through its D-Bus API only, as any application would
//! (`spec/everest-ocpp.md`).
//!
//! This crate holds the protocol side: the OCPP-J framing ([`rpc`]), the
//! messages of the firmware-update flow ([`messages`]) and the firmware
//! statuses with their mapping between versions ([`status`]).
//!
//! The message types are written here rather than taken from `rust-ocpp`
//! (no 1.6 security extension, and `jsonschema`, `regex` and `validator`
//! with it) or `ocpp-types`: the flow needs a dozen messages, each a plain
//! serde struct.
#![deny(missing_docs)]

pub mod certs;
pub mod config;
pub mod download;
pub mod link;
pub mod messages;
pub mod rota;
pub mod rpc;
pub mod state;
pub mod station;
pub mod status;

/// The OCPP version of a connection: its websocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OCPP 1.6J (with the security extension's messages).
    Ocpp16,
    /// OCPP 2.0.1.
    Ocpp201,
}

impl Protocol {
    /// The websocket subprotocol that names this version (`ocpp1.6`, `ocpp2.0.1`).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Protocol::Ocpp16 => "ocpp1.6",
            Protocol::Ocpp201 => "ocpp2.0.1",
        }
    }

    /// Whether this is 1.6J.
    pub fn is_v16(self) -> bool {
        self == Protocol::Ocpp16
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "ocpp1.6" | "ocpp1.6j" | "1.6" => Ok(Protocol::Ocpp16),
            "ocpp2.0.1" | "2.0.1" => Ok(Protocol::Ocpp201),
            other => Err(format!("unknown OCPP protocol '{other}' (ocpp1.6 or ocpp2.0.1)")),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.subprotocol())
    }
}
