//! Object keys: what both backends accept, so that a key valid on one is valid on the other.

use crate::StoreError;

/// Names the directory backend keeps for itself.
pub const RESERVED_PREFIX: &str = ".keel-";

/// Checks `key`: `/`-separated, non-empty segments, no `.` or `..`, no NUL, at most 1024 bytes, no
/// segment starting with `.keel-`.
pub fn check(key: &str) -> Result<(), StoreError> {
    let bad = |why: &'static str| Err(StoreError::InvalidKey { key: key.to_owned(), why });
    if key.is_empty() || key.len() > 1024 {
        return bad("a key is 1 to 1024 bytes long");
    }
    if key.contains('\0') {
        return bad("a key may not contain NUL");
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return bad("empty path segment (leading, trailing or doubled '/')");
        }
        if seg == "." || seg == ".." {
            return bad("'.' and '..' segments are not allowed");
        }
        if seg.starts_with(RESERVED_PREFIX) {
            return bad("segments starting with '.keel-' are reserved");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "a/b/c", "segments/00000000000000000001.kseg", "x.y"] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", ".keel-tmp", "a\0b"] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
