//! Credentials the sidecar checks: the admin token and the client token, compared in constant time (`subtle`):
//! how long a comparison takes says nothing about how much of a guess was right. A length mismatch answers at
//! once (the length is no secret).

use subtle::ConstantTimeEq;

/// Whether `given` is the `expected` secret.
pub fn matches(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_same_bytes_match() {
        assert!(super::matches(b"token-1", b"token-1"));
        assert!(!super::matches(b"token-2", b"token-1"));
        assert!(!super::matches(b"token", b"token-1"));
        assert!(!super::matches(b"", b"token-1"));
    }
}
