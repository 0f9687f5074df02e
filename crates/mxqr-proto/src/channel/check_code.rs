//! The two-digit check code S shows and the user types on G.

use subtle::ConstantTimeEq;

use super::{APP_INFO, hpke};

/// How two derived bytes become two digits; the generations differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigitRule {
    /// MSC4108 2024: `(b0 % 10) * 10 + b1 % 10`, `00`–`99`.
    AllowLeadingZero,
    /// MSC4388: `((b0 % 9) + 1) * 10 + b1 % 10`, `10`–`99`, so no code starts with zero.
    NoLeadingZero,
}

/// A check code: the two derived bytes and the rule that turns them into digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CheckCode {
    bytes: [u8; 2],
    rule: DigitRule,
}

impl CheckCode {
    pub const fn new(bytes: [u8; 2], rule: DigitRule) -> Self {
        Self { bytes, rule }
    }

    pub const fn as_bytes(&self) -> &[u8; 2] {
        &self.bytes
    }

    pub const fn rule(&self) -> DigitRule {
        self.rule
    }

    /// The number shown to the user, 0–99.
    pub const fn digits(&self) -> u8 {
        let first = match self.rule {
            DigitRule::AllowLeadingZero => self.bytes[0] % 10,
            DigitRule::NoLeadingZero => (self.bytes[0] % 9) + 1,
        };
        first * 10 + self.bytes[1] % 10
    }

    /// Constant-time comparison with what the user typed.
    pub fn matches(&self, entered: u8) -> bool {
        self.digits().ct_eq(&entered).into()
    }
}

impl std::fmt::Display for CheckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}", self.digits())
    }
}

impl std::fmt::Debug for CheckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckCode({self})")
    }
}

/// MSC4388: two bytes exported from the S→G context with info
/// `MATRIX_QR_CODE_LOGIN_CHECKCODE || Gp || enc` (raw keys; vodozemac 0.11.1).
pub(super) fn hpke(ctx: &hpke::Context, g_public: &[u8; 32], enc: &[u8; 32]) -> CheckCode {
    let info = [APP_INFO.as_bytes(), b"_CHECKCODE", g_public, enc].concat();
    let mut bytes = [0u8; 2];
    ctx.export(&info, &mut bytes);
    CheckCode::new(bytes, DigitRule::NoLeadingZero)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_rules() {
        assert_eq!(
            CheckCode::new([0, 0], DigitRule::AllowLeadingZero).to_string(),
            "00"
        );
        assert_eq!(
            CheckCode::new([0xff, 0xff], DigitRule::AllowLeadingZero).digits(),
            55
        );
        assert_eq!(
            CheckCode::new([0, 0], DigitRule::NoLeadingZero).digits(),
            10
        );
        assert_eq!(
            CheckCode::new([8, 9], DigitRule::NoLeadingZero).digits(),
            99
        );
        for b0 in 0..=255u8 {
            for b1 in [0u8, 9, 255] {
                let d = CheckCode::new([b0, b1], DigitRule::NoLeadingZero).digits();
                assert!((10..=99).contains(&d));
                assert!(CheckCode::new([b0, b1], DigitRule::AllowLeadingZero).digits() <= 99);
            }
        }
    }

    #[test]
    fn matches_only_its_own_digits() {
        let code = CheckCode::new([3, 4], DigitRule::AllowLeadingZero);
        assert!(code.matches(34));
        assert!(!code.matches(43));
    }
}
