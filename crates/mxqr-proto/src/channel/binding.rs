//! What an MSC4388 payload is bound to: its rendezvous and its place in it.
//!
//! MSC4388's associated-data layout is still moving. Every revision we know is an
//! [`AadLayout`]; the one in force is [`AAD_LAYOUT`], the single place to change when the
//! proposal settles.

/// A payload's place in a rendezvous: sealed into the HPKE associated data, so a payload
/// copied to another rendezvous, or to another point of the same one, fails to open.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The homeserver base URL string as parsed (with a trailing `/` when its path is `/`).
    pub base_url: String,
    /// The rendezvous session ID.
    pub rendezvous_id: String,
    /// The `sequence_token` the PUT carrying the payload replaces: the sender's last seen
    /// token, which is also the receiver's token before the GET that brings the payload.
    pub sequence_token: String,
}

/// Revisions of the associated-data layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AadLayout {
    /// Earliest drafts: `base_url || id || sequence_token`, no lengths.
    Concatenated,
    /// Later drafts: a u16 big-endian length before each of the three fields.
    U16Lengths,
    /// matrix-rust-sdk's MSC4388 branch tip: `u16(len(base_url)) || base_url ||
    /// u8(len(id)) || id || u8(len(sequence_token)) || sequence_token`.
    U16UrlU8IdToken,
}

/// The layout mxqr seals and opens with (newest evidence, docs/protocol.md §4b).
pub const AAD_LAYOUT: AadLayout = AadLayout::U16UrlU8IdToken;

impl Binding {
    pub fn new(
        base_url: impl Into<String>,
        rendezvous_id: impl Into<String>,
        sequence_token: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            rendezvous_id: rendezvous_id.into(),
            sequence_token: sequence_token.into(),
        }
    }

    /// The associated data in [`AAD_LAYOUT`].
    pub fn aad(&self) -> Vec<u8> {
        self.aad_in(AAD_LAYOUT)
    }

    /// The associated data in a given layout. Fields too long for their length prefix are
    /// cut at the prefix's maximum, so the encoding stays unambiguous; real IDs and tokens
    /// are far shorter than 255 bytes.
    pub fn aad_in(&self, layout: AadLayout) -> Vec<u8> {
        let url = self.base_url.as_bytes();
        let id = self.rendezvous_id.as_bytes();
        let token = self.sequence_token.as_bytes();
        let mut out = Vec::with_capacity(url.len() + id.len() + token.len() + 6);
        match layout {
            AadLayout::Concatenated => {
                out.extend_from_slice(url);
                out.extend_from_slice(id);
                out.extend_from_slice(token);
            }
            AadLayout::U16Lengths => {
                for field in [url, id, token] {
                    push_u16(&mut out, field);
                }
            }
            AadLayout::U16UrlU8IdToken => {
                push_u16(&mut out, url);
                push_u8(&mut out, id);
                push_u8(&mut out, token);
            }
        }
        out
    }
}

fn push_u16(out: &mut Vec<u8>, field: &[u8]) {
    let field = &field[..field.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

fn push_u8(out: &mut Vec<u8>, field: &[u8]) {
    let field = &field[..field.len().min(u8::MAX as usize)];
    out.push(field.len() as u8);
    out.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let b = Binding::new("https://hs/", "ab", "t1");
        assert_eq!(b.aad_in(AadLayout::Concatenated), b"https://hs/abt1");
        assert_eq!(
            b.aad_in(AadLayout::U16Lengths),
            b"\x00\x0bhttps://hs/\x00\x02ab\x00\x02t1"
        );
        assert_eq!(b.aad(), b"\x00\x0bhttps://hs/\x02ab\x02t1");
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = Binding::new("https://hs/", "ab", "c");
        let b = Binding::new("https://hs/", "a", "bc");
        assert_ne!(a.aad(), b.aad());
    }
}
