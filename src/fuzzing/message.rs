//! A whole message: header section split, relaxed canonicalization of every field and the
//! body, step 10 (strict From, duplicates), the mailbox grammar on every field, and
//! Authentication-Results recognition (authserv-ids, fields hidden after bare line breaks).

use crate::format::auth_results;
use crate::format::envelope::{self, canon};
use crate::format::message::read_message;

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let Ok(message) = read_message(data) else {
        return;
    };
    let names: Vec<String> = message.headers.iter().map(|f| f.name.clone()).collect();
    let _ = canon::header_hash(&names, &message.headers);
    let _ = envelope::check_fields(&message.headers);
    for field in &message.headers {
        let _ = auth_results::authserv_id(&field.value);
        let _ = auth_results::hides_ours(&field.value, "mx.example.net");
        let _ = envelope::fields::parse_mailbox(&field.value);
    }
}
