//! The `m.login.*` messages carried inside the secure channel (docs/protocol.md §5).
//!
//! [`LoginMessage::from_json`] reads one message and [`LoginMessage::to_json`] writes one.
//! Decoding is done in two passes (first `type`, then the body of that type) rather than
//! through a generic tagged-enum deserializer, because serde buffers every field of an
//! internally tagged enum into an intermediate tree: that would leave copies of
//! `m.login.secrets` values behind that nothing zeroizes. Unknown fields are ignored so that
//! newer peers can extend messages; an unknown `type` is its own error so the state machine
//! can answer it as an unexpected message.

mod device_id;
mod secrets;

pub use device_id::{DeviceId, DeviceIdError};
pub use secrets::{BackupSecrets, CrossSigningSecrets, Secret, SecretsMessage};

use serde::de::DeserializeOwned;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::Generation;

/// The wire name of the only sign-in protocol defined so far.
pub const DEVICE_AUTHORIZATION_GRANT: &str = "device_authorization_grant";

/// Largest payload a rendezvous accepts (docs/protocol.md §3); serialising into a buffer of this
/// size up front means no reallocation leaves an unzeroized copy of a secret behind.
const ENCODE_CAPACITY: usize = 4096;

/// The `type` of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Protocols,
    Protocol,
    ProtocolAccepted,
    Success,
    Declined,
    Failure,
    Secrets,
}

impl MessageType {
    pub const ALL: [MessageType; 7] = [
        MessageType::Protocols,
        MessageType::Protocol,
        MessageType::ProtocolAccepted,
        MessageType::Success,
        MessageType::Declined,
        MessageType::Failure,
        MessageType::Secrets,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::Protocols => "m.login.protocols",
            MessageType::Protocol => "m.login.protocol",
            MessageType::ProtocolAccepted => "m.login.protocol_accepted",
            MessageType::Success => "m.login.success",
            MessageType::Declined => "m.login.declined",
            MessageType::Failure => "m.login.failure",
            MessageType::Secrets => "m.login.secrets",
        }
    }

    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plaintext is not a usable `m.login.*` message.
///
/// No variant carries serde's own message: that can quote field values, and a malformed
/// `m.login.secrets` would then put key material into logs. Line and column are enough to
/// find the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("not a JSON object with a string `type` field (line {line}, column {column})")]
    NoType { line: usize, column: usize },
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("malformed {message_type} message (line {line}, column {column})")]
    Malformed {
        message_type: MessageType,
        line: usize,
        column: usize,
    },
}

/// A sign-in protocol name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `device_authorization_grant` (RFC 8628 via MSC4341).
    DeviceAuthorizationGrant,
    /// A protocol this implementation does not speak, kept so it can be reported.
    Other(String),
}

impl Protocol {
    pub fn as_str(&self) -> &str {
        match self {
            Protocol::DeviceAuthorizationGrant => DEVICE_AUTHORIZATION_GRANT,
            Protocol::Other(name) => name,
        }
    }

    fn from_wire(name: String) -> Self {
        if name == DEVICE_AUTHORIZATION_GRANT {
            Protocol::DeviceAuthorizationGrant
        } else {
            Protocol::Other(name)
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Protocol::from_wire)
    }
}

/// The homeserver named in `m.login.protocols`, under the field name the sender used.
///
/// Current MSC4108 text calls it `base_url`; its 2024 revision, which matrix-sdk speaks,
/// calls it `homeserver` (and matrix-sdk puts a full URL with trailing `/` there).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HomeserverField {
    BaseUrl(String),
    Homeserver(String),
}

impl HomeserverField {
    /// The spelling a peer of `generation` expects: `homeserver` for 2024 peers
    /// (matrix-sdk), `base_url` for MSC4388 ones.
    pub fn for_generation(generation: Generation, url: impl Into<String>) -> Self {
        match generation {
            Generation::Msc4108v2024 => HomeserverField::Homeserver(url.into()),
            Generation::Msc4388 => HomeserverField::BaseUrl(url.into()),
        }
    }

    /// The homeserver, whichever field carried it.
    pub fn url(&self) -> &str {
        match self {
            HomeserverField::BaseUrl(url) | HomeserverField::Homeserver(url) => url,
        }
    }
}

/// Body of `m.login.protocols` (existing → new): the protocols the existing device offers
/// and its homeserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolsMessage {
    pub protocols: Vec<Protocol>,
    pub homeserver: HomeserverField,
}

impl ProtocolsMessage {
    /// Whether the offer includes the one protocol this implementation speaks.
    pub fn offers_device_authorization_grant(&self) -> bool {
        self.protocols.contains(&Protocol::DeviceAuthorizationGrant)
    }
}

#[derive(Deserialize)]
struct RawProtocols {
    protocols: Vec<Protocol>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    homeserver: Option<String>,
}

impl<'de> Deserialize<'de> for ProtocolsMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawProtocols::deserialize(deserializer)?;
        // Both spellings at once leave no single answer to "which one did the peer use".
        let homeserver = match (raw.base_url, raw.homeserver) {
            (Some(url), None) => HomeserverField::BaseUrl(url),
            (None, Some(url)) => HomeserverField::Homeserver(url),
            (None, None) => {
                return Err(serde::de::Error::missing_field("base_url"));
            }
            (Some(_), Some(_)) => {
                return Err(serde::de::Error::custom("both `base_url` and `homeserver`"));
            }
        };
        Ok(Self {
            protocols: raw.protocols,
            homeserver,
        })
    }
}

impl Serialize for ProtocolsMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ProtocolsMessage", 2)?;
        s.serialize_field("protocols", &self.protocols)?;
        match &self.homeserver {
            HomeserverField::BaseUrl(url) => s.serialize_field("base_url", url)?,
            HomeserverField::Homeserver(url) => s.serialize_field("homeserver", url)?,
        }
        s.end()
    }
}

/// Where the user approves the new device (RFC 8628 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAuthorizationGrant {
    pub verification_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
}

impl DeviceAuthorizationGrant {
    /// The URI to open: the complete one (user code filled in) when the server gave one.
    pub fn uri_to_open(&self) -> &str {
        self.verification_uri_complete
            .as_deref()
            .unwrap_or(&self.verification_uri)
    }
}

/// The protocol the new device chose, with that protocol's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginProtocol {
    DeviceAuthorizationGrant(DeviceAuthorizationGrant),
    /// A protocol this implementation does not speak; the existing device answers it with
    /// `unsupported_protocol`.
    Unsupported(String),
}

/// Body of `m.login.protocol` (new → existing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolMessage {
    pub protocol: LoginProtocol,
    pub device_id: DeviceId,
}

#[derive(Deserialize)]
struct RawProtocol {
    protocol: String,
    #[serde(default)]
    device_authorization_grant: Option<DeviceAuthorizationGrant>,
    device_id: DeviceId,
}

impl<'de> Deserialize<'de> for ProtocolMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawProtocol::deserialize(deserializer)?;
        let protocol = if raw.protocol == DEVICE_AUTHORIZATION_GRANT {
            let grant = raw
                .device_authorization_grant
                .ok_or_else(|| serde::de::Error::missing_field("device_authorization_grant"))?;
            LoginProtocol::DeviceAuthorizationGrant(grant)
        } else {
            LoginProtocol::Unsupported(raw.protocol)
        };
        Ok(Self {
            protocol,
            device_id: raw.device_id,
        })
    }
}

impl Serialize for ProtocolMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ProtocolMessage", 3)?;
        match &self.protocol {
            LoginProtocol::DeviceAuthorizationGrant(grant) => {
                s.serialize_field("protocol", DEVICE_AUTHORIZATION_GRANT)?;
                s.serialize_field(DEVICE_AUTHORIZATION_GRANT, grant)?;
            }
            LoginProtocol::Unsupported(name) => s.serialize_field("protocol", name)?,
        }
        s.serialize_field("device_id", &self.device_id)?;
        s.end()
    }
}

/// Why a device gave up, as carried in `m.login.failure`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The device authorization grant expired before the user approved it.
    AuthorizationExpired,
    /// The new device's ID is already in use on the account.
    DeviceAlreadyExists,
    /// The new device did not appear on the account after it said it had signed in.
    DeviceNotFound,
    /// A message arrived that does not fit the conversation at this point.
    UnexpectedMessageReceived,
    /// No protocol both devices speak.
    UnsupportedProtocol,
    /// The user cancelled on the sending device.
    UserCancelled,
    /// A reason from a newer revision, kept verbatim.
    Unknown(String),
}

impl FailureReason {
    pub fn as_str(&self) -> &str {
        match self {
            FailureReason::AuthorizationExpired => "authorization_expired",
            FailureReason::DeviceAlreadyExists => "device_already_exists",
            FailureReason::DeviceNotFound => "device_not_found",
            FailureReason::UnexpectedMessageReceived => "unexpected_message_received",
            FailureReason::UnsupportedProtocol => "unsupported_protocol",
            FailureReason::UserCancelled => "user_cancelled",
            FailureReason::Unknown(reason) => reason,
        }
    }

    /// Maps a known wire name to its variant, anything else to [`FailureReason::Unknown`].
    pub fn from_wire(reason: &str) -> Self {
        match reason {
            "authorization_expired" => FailureReason::AuthorizationExpired,
            "device_already_exists" => FailureReason::DeviceAlreadyExists,
            "device_not_found" => FailureReason::DeviceNotFound,
            "unexpected_message_received" => FailureReason::UnexpectedMessageReceived,
            "unsupported_protocol" => FailureReason::UnsupportedProtocol,
            "user_cancelled" => FailureReason::UserCancelled,
            other => FailureReason::Unknown(other.to_owned()),
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| FailureReason::from_wire(&s))
    }
}

/// Body of `m.login.failure` (either direction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureMessage {
    pub reason: FailureReason,
    /// MSC4108 lets a device name the homeserver it expected; no shipping client sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeserver: Option<String>,
}

impl FailureMessage {
    pub fn new(reason: FailureReason) -> Self {
        Self {
            reason,
            homeserver: None,
        }
    }
}

/// One `m.login.*` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum LoginMessage {
    #[serde(rename = "m.login.protocols")]
    Protocols(ProtocolsMessage),
    #[serde(rename = "m.login.protocol")]
    Protocol(ProtocolMessage),
    #[serde(rename = "m.login.protocol_accepted")]
    ProtocolAccepted,
    #[serde(rename = "m.login.success")]
    Success,
    #[serde(rename = "m.login.declined")]
    Declined,
    #[serde(rename = "m.login.failure")]
    Failure(FailureMessage),
    #[serde(rename = "m.login.secrets")]
    Secrets(SecretsMessage),
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    message_type: std::borrow::Cow<'a, str>,
}

/// Bodies without fields: any JSON object is fine (unknown fields are ignored).
#[derive(Deserialize)]
struct Empty {}

impl LoginMessage {
    pub fn message_type(&self) -> MessageType {
        match self {
            LoginMessage::Protocols(_) => MessageType::Protocols,
            LoginMessage::Protocol(_) => MessageType::Protocol,
            LoginMessage::ProtocolAccepted => MessageType::ProtocolAccepted,
            LoginMessage::Success => MessageType::Success,
            LoginMessage::Declined => MessageType::Declined,
            LoginMessage::Failure(_) => MessageType::Failure,
            LoginMessage::Secrets(_) => MessageType::Secrets,
        }
    }

    /// Reads one message from a channel plaintext.
    pub fn from_json(json: &[u8]) -> Result<Self, MessageError> {
        // serde also reads structs from JSON arrays; a message is an object and nothing else.
        if json.trim_ascii_start().first() != Some(&b'{') {
            return Err(MessageError::NoType { line: 1, column: 1 });
        }
        let head: TypeOnly<'_> =
            serde_json::from_slice(json).map_err(|e| MessageError::NoType {
                line: e.line(),
                column: e.column(),
            })?;
        let message_type = MessageType::from_wire(&head.message_type)
            .ok_or_else(|| MessageError::UnknownType(head.message_type.into_owned()))?;
        Ok(match message_type {
            MessageType::Protocols => LoginMessage::Protocols(body(json, message_type)?),
            MessageType::Protocol => LoginMessage::Protocol(body(json, message_type)?),
            MessageType::ProtocolAccepted => {
                body::<Empty>(json, message_type)?;
                LoginMessage::ProtocolAccepted
            }
            MessageType::Success => {
                body::<Empty>(json, message_type)?;
                LoginMessage::Success
            }
            MessageType::Declined => {
                body::<Empty>(json, message_type)?;
                LoginMessage::Declined
            }
            MessageType::Failure => LoginMessage::Failure(body(json, message_type)?),
            MessageType::Secrets => LoginMessage::Secrets(body(json, message_type)?),
        })
    }

    /// Writes the message as compact JSON, in a buffer that is wiped when dropped.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(ENCODE_CAPACITY));
        // Every type here serialises to a JSON object with string keys, which serde_json
        // cannot fail to write into a Vec; an error would leave an empty buffer, which any
        // receiver rejects as `NoType`, so it can never pass for a valid message.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.clear();
        }
        out
    }
}

fn body<T: DeserializeOwned>(json: &[u8], message_type: MessageType) -> Result<T, MessageError> {
    serde_json::from_slice(json).map_err(|e| MessageError::Malformed {
        message_type,
        line: e.line(),
        column: e.column(),
    })
}

impl From<ProtocolsMessage> for LoginMessage {
    fn from(m: ProtocolsMessage) -> Self {
        LoginMessage::Protocols(m)
    }
}

impl From<ProtocolMessage> for LoginMessage {
    fn from(m: ProtocolMessage) -> Self {
        LoginMessage::Protocol(m)
    }
}

impl From<FailureMessage> for LoginMessage {
    fn from(m: FailureMessage) -> Self {
        LoginMessage::Failure(m)
    }
}

impl From<SecretsMessage> for LoginMessage {
    fn from(m: SecretsMessage) -> Self {
        LoginMessage::Secrets(m)
    }
}
