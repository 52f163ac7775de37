//! Who holds a record (owner ids) and which call made a claim (request ids).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::key::check_name;

/// The longest owner id, in bytes.
pub const MAX_OWNER_BYTES: usize = 256;

/// Identifies a worker process: `host:pid:random` by default.
///
/// It is recorded on every record and event so an operator can tell which worker held what.
/// Authority is carried by the fencing token, never by the owner id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnerId(String);

impl OwnerId {
    /// An owner id, checked: non-empty, at most 256 bytes, no U+0000.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
        let value = value.into();
        check_name("owner id", &value, MAX_OWNER_BYTES)?;
        Ok(OwnerId(value))
    }

    /// `host:pid:random` for this process; a new random part on every call.
    pub fn generate() -> Self {
        let host = hostname();
        OwnerId(format!(
            "{}:{}:{:08x}",
            host,
            std::process::id(),
            random_u64() as u32
        ))
    }

    /// The owner id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn hostname() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    host_part(
        from_kernel
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok()),
    )
}

/// The host part of a generated owner id from the machine's name as read: trimmed, cut to at most
/// [`MAX_HOST_BYTES`] bytes at a character boundary (room for ":pid:random" inside the owner id
/// limit), and `localhost` when there is none or it could not be part of an owner id (empty, or
/// holding U+0000).
fn host_part(name: Option<String>) -> String {
    let mut host = name
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains('\0'))
        .unwrap_or_else(|| "localhost".to_owned());
    let mut end = host.len().min(MAX_HOST_BYTES);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    host.truncate(end);
    host
}

/// The longest host part of a generated owner id, in bytes: with ":<pid>:<8 hex digits>" (at
/// most 20 bytes) it stays under [`MAX_OWNER_BYTES`].
const MAX_HOST_BYTES: usize = 200;

impl TryFrom<String> for OwnerId {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, InvalidInput> {
        Self::new(value)
    }
}

impl From<OwnerId> for String {
    fn from(value: OwnerId) -> String {
        value.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Identifies one claim or lease-acquire call, so that a retry of a call whose reply was lost is
/// recognised by the store as the same call and adopts the token it was granted, instead of
/// leaving behind a phantom execution that no code ever ran.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(u128);

impl RequestId {
    /// A fresh random request id.
    pub fn random() -> Self {
        RequestId((u128::from(random_u64()) << 64) | u128::from(random_u64()))
    }

    /// A request id from its 128-bit value.
    pub const fn from_u128(value: u128) -> Self {
        RequestId(value)
    }

    /// The 128-bit value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for RequestId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl FromStr for RequestId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        if s.len() != 32 {
            return Err(InvalidInput::Malformed {
                what: "request id",
                detail: format!("expected 32 hex digits, got {} characters", s.len()),
            });
        }
        u128::from_str_radix(s, 16)
            .map(RequestId)
            .map_err(|e| InvalidInput::Malformed {
                what: "request id",
                detail: e.to_string(),
            })
    }
}

impl TryFrom<String> for RequestId {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, InvalidInput> {
        value.parse()
    }
}

impl From<RequestId> for String {
    fn from(value: RequestId) -> String {
        value.to_string()
    }
}

/// 64 unpredictable-enough bits for identifiers (not for cryptography): the process's random
/// SipHash keys over a counter, the time and the process id.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_have_three_parts_and_differ() {
        let a = OwnerId::generate();
        let b = OwnerId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().rsplitn(3, ':').count(), 3);
        assert!(OwnerId::new("").is_err());
        // The first part is this machine's name.
        let host = a.as_str().rsplitn(3, ':').last().unwrap();
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(host, name.trim());
        }
        assert!(!host.is_empty());
    }

    #[test]
    fn host_parts_are_usable_in_owner_ids() {
        assert_eq!(host_part(Some(" web-1\n".to_owned())), "web-1");
        assert_eq!(host_part(None), "localhost");
        assert_eq!(host_part(Some("  \n".to_owned())), "localhost");
        assert_eq!(host_part(Some("we\0b".to_owned())), "localhost");
        // Cut in bytes, at a character boundary: "é" is two bytes, "€" three.
        assert_eq!(host_part(Some("é".repeat(300))), "é".repeat(100));
        assert_eq!(host_part(Some("€".repeat(100))), "€".repeat(66));
        let long = format!(
            "{}:{}:{:08x}",
            host_part(Some("€".repeat(100))),
            u32::MAX,
            u32::MAX
        );
        assert!(
            OwnerId::new(long).is_ok(),
            "a generated id within the limit"
        );
    }

    #[test]
    fn ids_debug_as_their_text() {
        assert_eq!(format!("{:?}", OwnerId::new("w-1").unwrap()), "\"w-1\"");
        assert_eq!(
            format!("{:?}", RequestId::from_u128(0xab)),
            format!("RequestId({:032x})", 0xab)
        );
    }

    #[test]
    fn request_ids_round_trip_through_text() {
        let id = RequestId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<RequestId>(), Ok(id));
        assert!("xyz".parse::<RequestId>().is_err());
        assert_ne!(RequestId::random(), RequestId::random());
        assert_eq!(RequestId::from_u128(7 << 64 | 9).as_u128(), 7 << 64 | 9);
    }

    #[test]
    fn request_ids_are_random_in_both_halves() {
        let ids: Vec<u128> = (0..64).map(|_| RequestId::random().as_u128()).collect();
        assert!(
            ids.iter().any(|id| id >> 64 != 0),
            "the high half is random"
        );
        assert!(
            ids.iter().any(|id| id & u128::from(u64::MAX) != 0),
            "the low half is random"
        );
    }

    #[test]
    fn ids_serialize_as_their_text() {
        let owner = OwnerId::new("billing:host-1:42").unwrap();
        assert_eq!(owner.to_string(), "billing:host-1:42");
        let json = serde_json::to_string(&owner).unwrap();
        assert_eq!(json, "\"billing:host-1:42\"");
        assert_eq!(serde_json::from_str::<OwnerId>(&json).unwrap(), owner);
        let request = RequestId::random();
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(json, format!("\"{request}\""));
        assert_eq!(serde_json::from_str::<RequestId>(&json).unwrap(), request);
    }
}
