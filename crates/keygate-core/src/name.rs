//! A permission's resource or action name (`invoices`, `read`), kept inline when short.
//!
//! Every request the method + path rule maps derives a permission from its path, so a name
//! that needed a heap allocation would cost two per request. Names of up to
//! [`INLINE_LEN`] bytes (nearly all) are stored in the value itself; longer ones (up to
//! [`crate::permission::MAX_NAME_LEN`]) on the heap. A `Name` is as large as a `String`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Longest name kept without a heap allocation.
pub const INLINE_LEN: usize = 22;

/// A resource or action name, in ASCII lowercase. Compares and orders as its text.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is the name.
    Inline {
        len: u8,
        bytes: [u8; INLINE_LEN],
    },
    Heap(Box<str>),
}

impl Name {
    /// `text` with its ASCII letters in lowercase.
    pub fn lowercase(text: &str) -> Name {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_LEN => {
                // Lowercased as copied, the name's bytes only: a copy then a pass over the
                // whole array took as long as the rest of deriving a permission.
                let mut bytes = [0; INLINE_LEN];
                for (to, from) in bytes.iter_mut().zip(text.bytes()) {
                    *to = from.to_ascii_lowercase();
                }
                Name(Repr::Inline { len, bytes })
            }
            _ => Name(Repr::Heap(text.to_ascii_lowercase().into_boxed_str())),
        }
    }

    /// A name fixed at compile time, such as the actions the method rule gives (`read`),
    /// so a request copies it instead of checking and lowercasing it again. `text` must be
    /// ASCII lowercase letters of at most [`INLINE_LEN`] bytes (checked when compiled).
    pub const fn from_static(text: &'static str) -> Name {
        let text = text.as_bytes();
        assert!(text.len() <= INLINE_LEN, "a static name is kept inline");
        let mut bytes = [0; INLINE_LEN];
        let mut i = 0;
        while i < text.len() {
            assert!(
                text[i].is_ascii_lowercase(),
                "a static name is lowercase letters"
            );
            bytes[i] = text[i];
            i += 1;
        }
        // At most INLINE_LEN (22), so the length fits a byte.
        Name(Repr::Inline {
            len: text.len() as u8,
            bytes,
        })
    }

    /// The name's bytes, read without the UTF-8 check that [`Name::as_str`] makes: what
    /// matching a permission on every verification compares.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(text) => text.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // A copy of a whole `str` with only ASCII bytes changed: still UTF-8, so the
            // fallback is never taken.
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Heap(text) => text,
        }
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        // Byte order is `str` order.
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_read_back_lowercased() {
        for text in [
            "",
            "read",
            "Invoices",
            &"x".repeat(INLINE_LEN),
            &"AbC".repeat(21),
        ] {
            let name = Name::lowercase(text);
            assert_eq!(name.as_str(), text.to_ascii_lowercase());
            assert_eq!(name.clone(), name);
        }
        assert!(matches!(Name::lowercase("invoices").0, Repr::Inline { .. }));
        assert!(matches!(
            Name::lowercase(&"x".repeat(INLINE_LEN + 1)).0,
            Repr::Heap(_)
        ));
        const READ: Name = Name::from_static("read");
        assert_eq!(READ, Name::lowercase("read"));
        assert_eq!(READ.as_str(), "read");
        // As large as the `String` it replaces.
        assert_eq!(std::mem::size_of::<Name>(), std::mem::size_of::<String>());
    }

    #[test]
    fn names_compare_and_order_as_their_text() {
        let long = "a".repeat(40);
        let mut names: Vec<Name> = ["b", "a", long.as_str(), "ab"]
            .into_iter()
            .map(Name::lowercase)
            .collect();
        names.sort();
        let texts: Vec<&str> = names.iter().map(Name::as_str).collect();
        assert_eq!(texts, ["a", long.as_str(), "ab", "b"]);
        assert_eq!(Name::lowercase("Read"), "read");
        assert_ne!(Name::lowercase("read"), Name::lowercase("reads"));
    }
}
