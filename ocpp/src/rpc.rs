//! OCPP-J's RPC framing (OCPP-J 1.6 §4, OCPP 2.0.1 part 4 §4): every
//! websocket text message is a JSON array — a call `[2, id, action,
//! payload]`, its result `[3, id, payload]` or its error `[4, id, code,
//! description, details]`.

use crate::Protocol;
use serde_json::Value;

/// The longest message id both versions allow.
pub const MAX_ID_LEN: usize = 36;

/// One OCPP-J message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A request (`CALL`).
    Call {
        /// Message id, echoed by the answer.
        id: String,
        /// The action (`UpdateFirmware`, `BootNotification`, …).
        action: String,
        /// The request's JSON object.
        payload: Value,
    },
    /// A successful answer (`CALLRESULT`).
    CallResult {
        /// The id of the call answered.
        id: String,
        /// The response's JSON object.
        payload: Value,
    },
    /// A failed answer (`CALLERROR`).
    CallError {
        /// The id of the call answered.
        id: String,
        /// The error code (see [`ErrorCode`]).
        code: String,
        /// A text for people.
        description: String,
        /// A JSON object with details (often empty).
        details: Value,
    },
}

/// Why a text is no OCPP-J frame.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Not JSON at all, or not an array of the right shape; the id is
    /// known when the array began well enough to carry one.
    #[error("malformed OCPP-J message: {reason}")]
    Malformed {
        /// The message id, if one could be read.
        id: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A message type other than 2, 3 or 4.
    #[error("unknown OCPP-J message type {kind}")]
    UnknownType {
        /// The message id, if one could be read.
        id: Option<String>,
        /// The type number found.
        kind: i64,
    },
}

impl FrameError {
    /// The id of the message that could not be read, to answer it.
    pub fn id(&self) -> Option<&str> {
        match self {
            FrameError::Malformed { id, .. } | FrameError::UnknownType { id, .. } => id.as_deref(),
        }
    }
}

/// The error codes of a `CALLERROR`, spelled per protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The action is unknown to the receiver.
    NotImplemented,
    /// The action is known but not supported.
    NotSupported,
    /// The receiver failed while handling the call.
    InternalError,
    /// The payload is incomplete.
    ProtocolError,
    /// A security problem prevented handling the call.
    SecurityError,
    /// The payload is syntactically wrong (1.6 `FormationViolation`, 2.0.1 `FormatViolation`).
    FormatViolation,
    /// A field holds a value outside its constraints.
    PropertyConstraintViolation,
    /// A required field is missing or one too many is present.
    OccurrenceConstraintViolation,
    /// A field has the wrong type.
    TypeConstraintViolation,
    /// Anything else.
    GenericError,
    /// 2.0.1: a message type number the receiver does not know.
    MessageTypeNotSupported,
    /// 2.0.1: the message could not be read as an RPC frame.
    RpcFrameworkError,
}

impl ErrorCode {
    /// The code's text in `protocol`; codes 1.6 lacks fall back to its nearest.
    pub fn as_str(self, protocol: Protocol) -> &'static str {
        let v16 = protocol.is_v16();
        match self {
            ErrorCode::NotImplemented => "NotImplemented",
            ErrorCode::NotSupported => "NotSupported",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::ProtocolError => "ProtocolError",
            ErrorCode::SecurityError => "SecurityError",
            ErrorCode::FormatViolation if v16 => "FormationViolation",
            ErrorCode::FormatViolation => "FormatViolation",
            ErrorCode::PropertyConstraintViolation => "PropertyConstraintViolation",
            // 1.6 spells it with one "r".
            ErrorCode::OccurrenceConstraintViolation if v16 => "OccurenceConstraintViolation",
            ErrorCode::OccurrenceConstraintViolation => "OccurrenceConstraintViolation",
            ErrorCode::TypeConstraintViolation => "TypeConstraintViolation",
            ErrorCode::GenericError => "GenericError",
            ErrorCode::MessageTypeNotSupported if v16 => "NotSupported",
            ErrorCode::MessageTypeNotSupported => "MessageTypeNotSupported",
            ErrorCode::RpcFrameworkError if v16 => "FormationViolation",
            ErrorCode::RpcFrameworkError => "RpcFrameworkError",
        }
    }
}

impl Frame {
    /// Reads one websocket text message.
    pub fn parse(text: &str) -> Result<Frame, FrameError> {
        let malformed = |id: Option<String>, reason: &str| FrameError::Malformed { id, reason: reason.to_string() };
        let value: Value = serde_json::from_str(text).map_err(|e| malformed(None, &format!("not JSON: {e}")))?;
        let Value::Array(items) = value else { return Err(malformed(None, "not a JSON array")) };
        let id = match items.get(1) {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => id.clone(),
            Some(Value::String(_)) => return Err(malformed(None, "message id is empty or longer than 36 characters")),
            _ => return Err(malformed(None, "no message id")),
        };
        let kind =
            items.first().and_then(Value::as_i64).ok_or_else(|| malformed(Some(id.clone()), "no message type"))?;
        let object = |v: Option<&Value>, what: &str| match v {
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            _ => Err(malformed(Some(id.clone()), &format!("{what} is not a JSON object"))),
        };
        let string = |v: Option<&Value>, what: &str| match v {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(malformed(Some(id.clone()), &format!("{what} is not a string"))),
        };
        let arity = |n: usize| {
            if items.len() == n {
                Ok(())
            } else {
                Err(malformed(Some(id.clone()), &format!("{} elements where {n} belong", items.len())))
            }
        };
        match kind {
            2 => {
                arity(4)?;
                Ok(Frame::Call {
                    id: id.clone(),
                    action: string(items.get(2), "action")?,
                    payload: object(items.get(3), "payload")?,
                })
            }
            3 => {
                arity(3)?;
                Ok(Frame::CallResult { id: id.clone(), payload: object(items.get(2), "payload")? })
            }
            4 => {
                arity(5)?;
                Ok(Frame::CallError {
                    id: id.clone(),
                    code: string(items.get(2), "error code")?,
                    description: string(items.get(3), "error description")?,
                    details: object(items.get(4), "error details")?,
                })
            }
            kind => Err(FrameError::UnknownType { id: Some(id), kind }),
        }
    }

    /// The websocket text of this message.
    pub fn to_text(&self) -> String {
        let value = match self {
            Frame::Call { id, action, payload } => serde_json::json!([2, id, action, payload]),
            Frame::CallResult { id, payload } => serde_json::json!([3, id, payload]),
            Frame::CallError { id, code, description, details } => {
                serde_json::json!([4, id, code, description, details])
            }
        };
        value.to_string()
    }

    /// A `CALLERROR` answering `id` with `code` spelled for `protocol`.
    pub fn error(id: &str, code: ErrorCode, protocol: Protocol, description: impl Into<String>) -> Frame {
        Frame::CallError {
            id: id.to_string(),
            code: code.as_str(protocol).to_string(),
            description: description.into(),
            details: Value::Object(Default::default()),
        }
    }

    /// The message id.
    pub fn id(&self) -> &str {
        match self {
            Frame::Call { id, .. } | Frame::CallResult { id, .. } | Frame::CallError { id, .. } => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_three_message_types_round_trip() {
        let call = r#"[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"SingleSocketCharger"}]"#;
        let f = Frame::parse(call).unwrap();
        assert_eq!(
            f,
            Frame::Call {
                id: "19223201".into(),
                action: "BootNotification".into(),
                payload: json!({"chargePointVendor": "VendorX", "chargePointModel": "SingleSocketCharger"}),
            }
        );
        assert_eq!(f.to_text(), call);
        let result = r#"[3,"19223201",{"status":"Accepted","currentTime":"2013-02-01T20:53:32.486Z","interval":300}]"#;
        assert_eq!(Frame::parse(result).unwrap().to_text(), result);
        let error = r#"[4,"162376037","NotSupported","SetDisplayMessageRequest not implemented",{}]"#;
        let f = Frame::parse(error).unwrap();
        assert_eq!(f.id(), "162376037");
        assert_eq!(f.to_text(), error);
    }

    #[test]
    fn malformed_messages_say_what_is_wrong_and_keep_the_id_when_there_is_one() {
        let e = Frame::parse("not json").unwrap_err();
        assert!(matches!(e, FrameError::Malformed { id: None, .. }), "{e:?}");
        assert_eq!(Frame::parse(r#"{"a":1}"#).unwrap_err().to_string(), "malformed OCPP-J message: not a JSON array");
        let e = Frame::parse(r#"[2,"7","Heartbeat"]"#).unwrap_err();
        assert_eq!(e.id(), Some("7"));
        assert_eq!(e.to_string(), "malformed OCPP-J message: 3 elements where 4 belong");
        let e = Frame::parse(r#"[2,"7","Heartbeat",[]]"#).unwrap_err();
        assert_eq!(e.to_string(), "malformed OCPP-J message: payload is not a JSON object");
        let e = Frame::parse(r#"[5,"8",{}]"#).unwrap_err();
        assert_eq!(e, FrameError::UnknownType { id: Some("8".into()), kind: 5 });
        let long = format!(r#"[2,"{}","Heartbeat",{{}}]"#, "x".repeat(37));
        assert!(Frame::parse(&long).unwrap_err().to_string().contains("longer than 36"));
        assert!(Frame::parse(r#"[2,"","Heartbeat",{}]"#).is_err());
        assert!(Frame::parse(r#"[2,7,"Heartbeat",{}]"#).is_err());
    }

    #[test]
    fn error_codes_are_spelled_per_version() {
        let v16 = Protocol::Ocpp16;
        let v201 = Protocol::Ocpp201;
        assert_eq!(ErrorCode::FormatViolation.as_str(v16), "FormationViolation");
        assert_eq!(ErrorCode::FormatViolation.as_str(v201), "FormatViolation");
        assert_eq!(ErrorCode::OccurrenceConstraintViolation.as_str(v16), "OccurenceConstraintViolation");
        assert_eq!(ErrorCode::OccurrenceConstraintViolation.as_str(v201), "OccurrenceConstraintViolation");
        assert_eq!(ErrorCode::RpcFrameworkError.as_str(v201), "RpcFrameworkError");
        assert_eq!(ErrorCode::MessageTypeNotSupported.as_str(v16), "NotSupported");
        let f = Frame::error("1", ErrorCode::NotImplemented, v201, "no such action");
        assert_eq!(f.to_text(), r#"[4,"1","NotImplemented","no such action",{}]"#);
    }
}
