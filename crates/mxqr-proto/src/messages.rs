//! The `m.login.*` messages (PROTOCOL.md section 5). OWNER: messages helper.
