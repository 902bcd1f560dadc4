//! Verification: one message in, a `Verdict` out (`verify`), and the AT-SMS client's own parts
//! and its X.509 floor (`atsms_parts`). Knows nothing of recipients or transports.

pub mod atsms_parts;
pub mod verify;
