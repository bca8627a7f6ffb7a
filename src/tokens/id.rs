//! The account id as the cache keeps it: the maps' key.
//!
//! An `Arc<str>` key costs an allocation per account (a 12-byte id: 48 bytes with the reference
//! counts and malloc's header) on top of its 16 bytes in the map's slot. [`Id`] keeps ids of up
//! to [`INLINE`] bytes inline in its 24 bytes — no allocation at all — and only longer ones in
//! the `Arc<str>` they came in. Measured at a million accounts with 12-byte ids: the 48-byte
//! allocation goes, the slot grows by 8 bytes (issue 11).
//!
//! Ids are compared, hashed and ordered as their bytes (`Hash` exactly as `[u8]` hashes, so
//! the maps are searched with `account.as_bytes()` and no `&str` is rebuilt on the request
//! path); byte order is the order of `str`, so listings keep their order.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The longest id kept inline.
pub(crate) const INLINE: usize = 22;

/// An account id: inline up to [`INLINE`] bytes, else shared.
#[derive(Clone)]
pub(crate) enum Id {
    /// `bytes[..len]` is the id (valid UTF-8: it was a `str`).
    Inline { len: u8, bytes: [u8; INLINE] },
    /// A longer id.
    Shared(Arc<str>),
}

impl Id {
    /// The id's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Id::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Id::Shared(s) => s.as_bytes(),
        }
    }

    /// The id as a string (an inline id is checked as UTF-8 again: a few nanoseconds, off the
    /// request path).
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Id::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or(""),
            Id::Shared(s) => s,
        }
    }
}

impl Id {
    /// `s` kept inline, when it fits.
    fn inline(s: &str) -> Option<Id> {
        (s.len() <= INLINE).then(|| {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Id::Inline {
                len: s.len() as u8,
                bytes,
            }
        })
    }
}

impl From<Arc<str>> for Id {
    fn from(s: Arc<str>) -> Id {
        match Id::inline(&s) {
            Some(id) => id,
            None => Id::Shared(s),
        }
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Id {
        Id::inline(s).unwrap_or_else(|| Id::Shared(Arc::from(s)))
    }
}

impl Borrow<[u8]> for Id {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Exactly `<[u8]>::hash`: lookups by `&[u8]` must find the key (`Borrow`'s contract).
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Id {}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn short_ids_are_inline_long_ones_shared_and_all_behave_as_their_bytes() {
        assert_eq!(std::mem::size_of::<Id>(), 24);
        let ids = [
            "",
            "a",
            "user-0000001",
            "é-ü",
            &"x".repeat(INLINE),
            &"y".repeat(INLINE + 1),
        ];
        let s = foldhash::fast::RandomState::default();
        for id in ids {
            let a = Id::from(id);
            let b = Id::from(Arc::<str>::from(id));
            assert_eq!(matches!(a, Id::Inline { .. }), id.len() <= INLINE, "{id}");
            assert_eq!((a.as_str(), b.as_str()), (id, id));
            assert!(a == b && a.as_bytes() == id.as_bytes());
            assert_eq!(s.hash_one(&a), s.hash_one(id.as_bytes()), "{id}");
        }
        let mut sorted: Vec<Id> = ["b", "B", "é", "a0", "a", &"a".repeat(30)]
            .into_iter()
            .map(Id::from)
            .collect();
        sorted.sort();
        let order: Vec<&str> = sorted.iter().map(Id::as_str).collect();
        assert_eq!(order, ["B", "a", "a0", &"a".repeat(30), "b", "é"]);
    }
}
