//! Text from a peer or a server made safe to print on a terminal.
//!
//! A user code, a consent page, a user ID or an error description can come from a hostile
//! new device or server. Printed as is, an escape sequence in it could rewrite what the
//! person sees (move the cursor, recolour, hide a line, retitle the window, forge a
//! hyperlink), and a bidirectional override could show a link other than the one opened.
//! Every such text goes through [`printable`] before a plain-text print; JSON output needs
//! no help, since JSON strings escape control characters.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1, which includes ESC and CSI) and every
/// bidirectional formatting character shown as a visible `\u{…}` escape instead.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// C0, DEL and C1 (`char::is_control`), and the bidirectional embeddings, overrides and
/// isolates that reorder the text around them.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(printable("ABCD-1234"), "ABCD-1234");
        assert_eq!(
            printable("https://account.example.org/link?code=Ä"),
            "https://account.example.org/link?code=Ä"
        );
        assert_eq!(printable("\u{1b}[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(printable("a\nb\tc\rd"), "a\\u{a}b\\u{9}c\\u{d}d");
        assert_eq!(printable("del\u{7f}"), "del\\u{7f}");
        // C1: the single-character CSI and OSC.
        assert_eq!(printable("\u{9b}31m\u{9d}"), "\\u{9b}31m\\u{9d}");
        assert_eq!(printable("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(
            printable("\u{1b}]8;;https://evil.test\u{7}x"),
            "\\u{1b}]8;;https://evil.test\\u{7}x"
        );
    }

    #[test]
    fn nothing_unsafe_is_left() {
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let text = c.to_string();
            let shown = printable(&text);
            assert!(
                !shown.chars().any(|c| c.is_control()),
                "U+{:04X} printed as {shown:?}",
                c as u32
            );
        }
    }
}
