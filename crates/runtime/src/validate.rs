//! Checks on values more than one service accepts.

/// Strict E.164: `+`, a non-zero digit, then 7 to 14 more digits (no spaces
/// or other separators).
pub fn is_e164(value: &str) -> bool {
    let Some(digits) = value.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_is_plus_then_8_to_15_digits_not_starting_with_0() {
        for good in ["+12345678", "+573001234567", "+123456789012345"] {
            assert!(is_e164(good), "{good} should pass");
        }
        for bad in [
            "",
            "+",
            "573001234567",
            "+0573001234567",
            "+1234567",
            "+1234567890123456",
            "+57300abc4567",
            "++573001234567",
            "+57 300 123 4567",
        ] {
            assert!(!is_e164(bad), "{bad} should be refused");
        }
    }
}
