//! Where each record lives: the mapping from `(keyspace, namespace, key)` to Redis key names.
//!
//! ```text
//! <prefix>:{<tag>}:<kind>:<namespace length>:<namespace>:<key>
//! ```
//!
//! - `<prefix>` is the store's prefix (default `sentinel`), checked to hold no `{`, `}` or glob
//!   characters.
//! - `<tag>` is 16 hex digits of FNV-1a-64 over the length-prefixed namespace and key. It is the
//!   Redis Cluster hash tag: a record's hash and its history stream share it, so every script
//!   touches one slot, whatever braces the key itself contains (Redis hashes only the first
//!   `{...}` of a name, and that is always the tag). The tag spreads records over all slots; it
//!   does not need to be unique, because the rest of the name is.
//! - `<kind>` is `er` / `eh` (execution record / history) or `lr` / `lh` (lease record / history).
//! - `<namespace length>` is the namespace's length in bytes, in decimal. With it the name is
//!   injective: the namespace ends exactly there, and the key is everything after the next `:`.
//!   `("a:b", "c")` is `…:3:a:b:c` and `("a", "b:c")` is `…:1:a:b:c`; keys holding `:`, `{`, `}`,
//!   `%`, quotes or any other UTF-8 never collide.
//!
//! The tag is a fixed function (FNV-1a is specified byte by byte), so every process and every
//! version of this crate computes the same names for the same records.

use sentinel_core::{Key, Keyspace, Namespace, RecordId};

/// The longest prefix accepted, in bytes.
pub const MAX_PREFIX_BYTES: usize = 64;

/// The key names of one store: its prefix, applied to every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    prefix: String,
}

/// The two Redis keys of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordKeys {
    /// The hash holding the record's fields (and its tombstone).
    pub(crate) record: Vec<u8>,
    /// The stream holding its history.
    pub(crate) history: Vec<u8>,
}

/// Checks a prefix: 1 to 64 bytes of `[A-Za-z0-9_.:/-]`, so it can never open a hash tag or
/// act as a glob pattern in a `SCAN MATCH`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "the key prefix is {} bytes; it must be 1 to {MAX_PREFIX_BYTES}",
            prefix.len()
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.:/-".contains(*c)))
    {
        return Err(format!(
            "the key prefix {prefix:?} contains {bad:?}; only ASCII letters, digits and _ . : / - \
             are allowed"
        ));
    }
    Ok(())
}

fn kind(keyspace: Keyspace, history: bool) -> &'static str {
    match (keyspace, history) {
        (Keyspace::Execution, false) => "er",
        (Keyspace::Execution, true) => "eh",
        (Keyspace::Lease, false) => "lr",
        (Keyspace::Lease, true) => "lh",
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// [`tag_bytes`] as text.
#[cfg(test)]
fn tag(namespace: &Namespace, key: &Key) -> String {
    String::from_utf8_lossy(&tag_bytes(namespace, key)).into_owned()
}

/// The hash tag of a record: 16 lowercase hex digits, never a brace (computed on every call of
/// the store, so without an allocation).
fn tag_bytes(namespace: &Namespace, key: &Key) -> [u8; 16] {
    let ns = namespace.as_str().as_bytes();
    let k = key.as_str().as_bytes();
    let mut hash = 0xcbf2_9ce4_8422_2325;
    hash = fnv1a((ns.len() as u64).to_le_bytes(), hash);
    hash = fnv1a(ns.iter().copied(), hash);
    hash = fnv1a(k.iter().copied(), hash);
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((hash >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn glob_escape(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

impl Layout {
    /// A layout with `prefix`, which must pass [`check_prefix`].
    pub(crate) fn new(prefix: impl Into<String>) -> Self {
        Layout {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The layout spelled with `format!`: what [`Layout::keys`] must build.
    #[cfg(test)]
    fn name(&self, keyspace: Keyspace, history: bool, tag: &str, ns: &str, key: &str) -> Vec<u8> {
        format!(
            "{}:{{{tag}}}:{}:{}:{ns}:{key}",
            self.prefix,
            kind(keyspace, history),
            ns.len()
        )
        .into_bytes()
    }

    /// The hash and the stream of one record (built by hand: this runs on every call).
    pub(crate) fn keys(&self, keyspace: Keyspace, id: &RecordId) -> RecordKeys {
        let tag = tag_bytes(&id.namespace, &id.key);
        let (ns, key) = (id.namespace.as_str(), id.key.as_str());
        let len_text = ns.len().to_string();
        let build = |history: bool| {
            let kind = kind(keyspace, history).as_bytes();
            let mut name = Vec::with_capacity(
                self.prefix.len() + 24 + kind.len() + len_text.len() + ns.len() + key.len(),
            );
            name.extend_from_slice(self.prefix.as_bytes());
            name.extend_from_slice(b":{");
            name.extend_from_slice(&tag);
            name.extend_from_slice(b"}:");
            name.extend_from_slice(kind);
            name.push(b':');
            name.extend_from_slice(len_text.as_bytes());
            name.push(b':');
            name.extend_from_slice(ns.as_bytes());
            name.push(b':');
            name.extend_from_slice(key.as_bytes());
            name
        };
        RecordKeys {
            record: build(false),
            history: build(true),
        }
    }

    /// A `SCAN MATCH` pattern for every record hash of `namespace` in `keyspace`.
    pub(crate) fn scan_pattern(&self, keyspace: Keyspace, namespace: &Namespace) -> Vec<u8> {
        let mut out = Vec::new();
        glob_escape(&self.prefix, &mut out);
        out.extend_from_slice(b":{");
        out.extend_from_slice(&[b'?'; 16]);
        out.extend_from_slice(b"}:");
        out.extend_from_slice(kind(keyspace, false).as_bytes());
        out.extend_from_slice(format!(":{}:", namespace.as_str().len()).as_bytes());
        glob_escape(namespace.as_str(), &mut out);
        out.extend_from_slice(b":*");
        out
    }

    /// The record a record hash name belongs to, if `name` is exactly the name
    /// [`Layout::keys`] gives that record in `keyspace`: a foreign key that merely looks alike
    /// (another tag, a length spelled `02` or `+2`) is ignored.
    pub(crate) fn parse(&self, keyspace: Keyspace, name: &[u8]) -> Option<RecordId> {
        let text = std::str::from_utf8(name).ok()?;
        let rest = text
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .get(16..)?
            .strip_prefix("}:")?
            .strip_prefix(kind(keyspace, false))?
            .strip_prefix(':')?;
        let (len, rest) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let ns = rest.get(..len)?;
        let key = rest.get(len..)?.strip_prefix(':')?;
        let id = RecordId::new(Namespace::new(ns).ok()?, Key::new(key).ok()?);
        (self.keys(keyspace, &id).record == name).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(ns: &str, key: &str) -> RecordId {
        RecordId::parse(ns, key).unwrap()
    }

    #[test]
    fn names_are_injective_where_joined_strings_collide() {
        let layout = Layout::new("p");
        let a = layout.keys(Keyspace::Execution, &id("a:b", "c"));
        let b = layout.keys(Keyspace::Execution, &id("a", "b:c"));
        assert_ne!(a.record, b.record);
        assert_ne!(
            layout.keys(Keyspace::Execution, &id("a", "b")).record,
            layout.keys(Keyspace::Lease, &id("a", "b")).record
        );
    }

    #[test]
    fn names_parse_back_to_their_record() {
        let layout = Layout::new("sentinel:test");
        for (ns, key) in [
            ("payments", "order-1"),
            ("a:b", "c"),
            ("a", "b:c"),
            ("{x}", "}{"),
            ("ns", "é/%\"'{}::*?[]\\"),
            ("7", "12:abc"),
        ] {
            let rid = id(ns, key);
            for ks in [Keyspace::Execution, Keyspace::Lease] {
                let keys = layout.keys(ks, &rid);
                assert_eq!(layout.parse(ks, &keys.record), Some(rid.clone()));
                assert_eq!(layout.parse(ks, &keys.history), None);
            }
            assert_eq!(
                layout.parse(
                    Keyspace::Lease,
                    &layout.keys(Keyspace::Execution, &rid).record
                ),
                None
            );
        }
        // Only the one spelling the layout builds: not another tag, nor another way to write
        // the namespace's length.
        let rid = id("ns", "k");
        let record = String::from_utf8(layout.keys(Keyspace::Execution, &rid).record).unwrap();
        let tag = tag(&rid.namespace, &rid.key);
        assert!(record.contains(&format!("{{{tag}}}:er:2:ns:k")), "{record}");
        for (from, to) in [
            (":2:", ":02:"),
            (":2:", ":+2:"),
            (":2:", ": 2:"),
            (tag.as_str(), "0000000000000000"),
            (tag.as_str(), tag.to_uppercase().as_str()),
        ] {
            let other = record.replacen(from, to, 1);
            assert_ne!(other, record);
            assert_eq!(
                layout.parse(Keyspace::Execution, other.as_bytes()),
                None,
                "{other}"
            );
        }
        let long = "k".repeat(1024);
        let rid = id(&long, &long);
        let keys = layout.keys(Keyspace::Execution, &rid);
        assert_eq!(layout.parse(Keyspace::Execution, &keys.record), Some(rid));
    }

    #[test]
    fn the_hash_tag_is_the_first_braces_and_shared_by_record_and_history() {
        let layout = Layout::new("p");
        let keys = layout.keys(Keyspace::Execution, &id("{ns}", "{key}"));
        let record = String::from_utf8(keys.record).unwrap();
        let history = String::from_utf8(keys.history).unwrap();
        let tag_of = |s: &str| {
            let open = s.find('{').unwrap();
            let close = open + s[open..].find('}').unwrap();
            s[open + 1..close].to_owned()
        };
        assert_eq!(tag_of(&record), tag_of(&history));
        assert_eq!(tag_of(&record).len(), 16);
    }

    #[test]
    fn hand_built_names_match_the_layout() {
        let layout = Layout::new("sentinel:x");
        for (ns, key) in [("payments", "order-1"), ("a:b", "{c}"), ("é", "")] {
            let Ok(rid) = RecordId::parse(ns, key) else {
                continue;
            };
            let t = tag(&rid.namespace, &rid.key);
            for ks in [Keyspace::Execution, Keyspace::Lease] {
                let keys = layout.keys(ks, &rid);
                assert_eq!(keys.record, layout.name(ks, false, &t, ns, key));
                assert_eq!(keys.history, layout.name(ks, true, &t, ns, key));
            }
        }
    }

    #[test]
    fn the_tag_is_stable() {
        // Changing the tag function would move every stored record: this value is fixed forever
        // (FNV-1a-64 over the namespace length as 8 little-endian bytes, the namespace, the key).
        let tag_of =
            |ns: &str, key: &str| tag(&Namespace::new(ns).unwrap(), &Key::new(key).unwrap());
        assert_eq!(tag_of("ns", "k"), "79bf6fce25cd28f9");
        assert_ne!(tag_of("ab", "c"), tag_of("a", "bc"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("sentinel").is_ok());
        assert!(check_prefix("app/prod:sentinel-1.2_x").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("a*").is_err());
        assert!(check_prefix(&"x".repeat(MAX_PREFIX_BYTES)).is_ok());
        assert!(check_prefix(&"x".repeat(MAX_PREFIX_BYTES + 1)).is_err());
    }

    #[test]
    fn scan_patterns_escape_globs() {
        let layout = Layout::new("p");
        let pattern = layout.scan_pattern(Keyspace::Execution, &Namespace::new("a*[b]").unwrap());
        assert_eq!(
            String::from_utf8(pattern).unwrap(),
            "p:{????????????????}:er:5:a\\*\\[b\\]:*"
        );
    }
}
