//! Secure channels. OWNER: lead.
