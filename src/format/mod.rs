//! Wire formats and their pure parsers: the AT-SMS envelope, keys and signatures, MIME,
//! messages, addresses, syntax, SMTP replies and `Authentication-Results`; the AT-SMS client's
//! sealed envelope.

pub mod address;
pub mod atsms_content;
pub mod auth_results;
pub mod ber;
pub mod crypto;
pub mod envelope;
pub mod enveloped;
pub mod hex;
pub mod hpke;
pub mod message;
pub mod mime;
pub mod one_shot;
pub mod reply;
pub mod sealed;
pub mod signed;
pub mod syntax;
