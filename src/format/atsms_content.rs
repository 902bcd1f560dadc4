//! The AT-SMS client's message content, version 2 (its `format/content.ts`; spec/message-format.md;
//! what this project read of them: docs/research/atsms-client-sending.md §4): a CBOR array of
//! twelve, `[v=2, salt(16), convoId(33), createdAt, replaces, topicId, inReplyTo, expires,
//! ephemeral, fallback, extensions{…}, body[parts]]`, a text part `[1, [0, {"text": …}]]`, the
//! recipients in extension 1.
//!
//! Read under the client's strict profile (definite lengths, shortest heads, no negative
//! integers, floats or tags, integers below 2^53, map keys unsigned or text in the byte order
//! of their encodings, depth ≤ 16) by
//! a small reader of its own: a general CBOR decoder takes more than the client writes or
//! reads, and DAG-CBOR (the crate at hand) allows text map keys only.

use crate::format::sealed::head;

/// The extension holding the recipient DIDs.
pub const EXT_RECIPIENTS: u64 = 1;
/// The part kind of text.
pub const PART_TEXT: u64 = 1;

/// A CBOR item of the client's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Uint(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Bool(bool),
    Null,
}

/// What `open` and a receiver read of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Milliseconds since the epoch, by the sender's clock.
    pub created_at: u64,
    pub convo_id: Vec<u8>,
    pub ephemeral: bool,
    /// Extension 1: every recipient DID (the sender not among them).
    pub recipients: Option<Vec<String>>,
    /// The text parts, joined by a new line.
    pub text: Option<String>,
}

fn item(bytes: &[u8], at: &mut usize, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    let start = *at;
    let (major, arg) = head(bytes, at)?;
    let len = |arg: u64| usize::try_from(arg).ok();
    Some(match major {
        // JavaScript's safe integers: the client refuses larger ones.
        0 if arg > (1 << 53) - 1 => return None,
        0 => Value::Uint(arg),
        2 | 3 => {
            let end = at.checked_add(len(arg)?)?;
            let raw = bytes.get(*at..end)?.to_vec();
            *at = end;
            if major == 2 {
                Value::Bytes(raw)
            } else {
                Value::Text(String::from_utf8(raw).ok()?)
            }
        }
        4 => {
            let n = len(arg)?;
            // Each item takes at least a byte: no count past what is left.
            (n <= bytes.len() - *at).then_some(())?;
            Value::Array(
                (0..n)
                    .map(|_| item(bytes, at, depth + 1))
                    .collect::<Option<_>>()?,
            )
        }
        5 => {
            let n = len(arg)?;
            (n <= bytes.len() - *at).then_some(())?;
            let mut entries = Vec::with_capacity(n.min(64));
            let mut previous: Option<&[u8]> = None;
            for _ in 0..n {
                let key_start = *at;
                let key = item(bytes, at, depth + 1)?;
                matches!(key, Value::Uint(_) | Value::Text(_)).then_some(())?;
                let encoded = &bytes[key_start..*at];
                // Keys in the byte order of their encodings, none twice (the client's
                // `compareBytes`).
                if let Some(previous) = previous {
                    (previous < encoded).then_some(())?;
                }
                previous = Some(encoded);
                entries.push((key, item(bytes, at, depth + 1)?));
            }
            Value::Map(entries)
        }
        7 => match bytes[start] {
            0xf4 => Value::Bool(false),
            0xf5 => Value::Bool(true),
            0xf6 => Value::Null,
            _ => return None,
        },
        _ => return None,
    })
}

/// One CBOR item of the profile, the whole of `bytes`.
pub fn decode(bytes: &[u8]) -> Option<Value> {
    let mut at = 0;
    let value = item(bytes, &mut at, 0)?;
    (at == bytes.len()).then_some(value)
}

/// Reads a version 2 content as the client's receiving path checks it (arity, version, salt,
/// conversation id, types of the fixed fields, each part's shape).
pub fn parse(bytes: &[u8]) -> Option<Content> {
    let Value::Array(fields) = decode(bytes)? else {
        return None;
    };
    let [
        Value::Uint(2),
        Value::Bytes(salt),
        Value::Bytes(convo_id),
        Value::Uint(created_at),
        _replaces,
        _topic,
        _in_reply_to,
        _expires,
        Value::Bool(ephemeral),
        Value::Text(_fallback),
        Value::Map(extensions),
        body,
    ] = fields.as_slice()
    else {
        return None;
    };
    (salt.len() == 16 && convo_id.len() == 33 && matches!(convo_id[0], 1 | 2)).then_some(())?;
    let recipients = match extensions
        .iter()
        .find(|(k, _)| *k == Value::Uint(EXT_RECIPIENTS))
    {
        None => None,
        Some((_, Value::Array(dids))) => Some(
            dids.iter()
                .map(|d| match d {
                    Value::Text(did) => Some(did.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        Some(_) => return None,
    };
    let parts = match body {
        Value::Null => Vec::new(),
        Value::Array(parts) => parts.clone(),
        _ => return None,
    };
    let mut texts = Vec::new();
    for part in &parts {
        let Value::Array(part) = part else {
            return None;
        };
        let [Value::Uint(kind), Value::Array(content)] = part.as_slice() else {
            return None;
        };
        if let (PART_TEXT, [Value::Uint(0), Value::Map(inline)]) = (*kind, content.as_slice())
            && let Some((_, Value::Text(text))) = inline
                .iter()
                .find(|(k, _)| *k == Value::Text("text".into()))
        {
            texts.push(text.clone());
        }
    }
    Some(Content {
        created_at: *created_at,
        convo_id: convo_id.clone(),
        ephemeral: *ephemeral,
        recipients,
        text: (!texts.is_empty()).then(|| texts.join("\n")),
    })
}

/// The conversation id of a one-shot message among `participants` (the sender and every
/// recipient): `0x01 ‖ SHA-256("atsms/convo/oneshot/v2" ‖ for each DID, sorted and without
/// repeats: its length (u16, big-endian) ‖ it)` (the client's `oneShotConvoIdV2`).
pub fn one_shot_convo_id(participants: &[&str]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut dids: Vec<&str> = participants.to_vec();
    dids.sort_unstable();
    dids.dedup();
    let mut hash = Sha256::new();
    hash.update(b"atsms/convo/oneshot/v2");
    for did in dids {
        hash.update((did.len() as u16).to_be_bytes());
        hash.update(did.as_bytes());
    }
    let mut out = vec![0x01];
    out.extend_from_slice(&hash.finalize());
    out
}

/// A one-shot text message from `sender` to `recipients`, as the client encodes one: version
/// 2, a random salt, the conversation id of all of them, the recipients extension (every
/// recipient sees the whole list: the signature binds it), one text part.
pub fn encode_text(
    sender: &str,
    recipients: &[String],
    text: &str,
    created_at_ms: u64,
    salt: [u8; 16],
) -> Vec<u8> {
    use crate::format::sealed::write_head;
    let mut participants: Vec<&str> = vec![sender];
    participants.extend(recipients.iter().map(String::as_str));
    let convo = one_shot_convo_id(&participants);
    let mut out = Vec::with_capacity(128 + text.len() + recipients.len() * 40);
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        write_head(out, 2, b.len() as u64);
        out.extend_from_slice(b);
    };
    let string = |out: &mut Vec<u8>, t: &str| {
        write_head(out, 3, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    };
    write_head(&mut out, 4, 12);
    write_head(&mut out, 0, 2);
    bytes(&mut out, &salt);
    bytes(&mut out, &convo);
    write_head(&mut out, 0, created_at_ms);
    out.extend([0xf6, 0xf6, 0xf6, 0xf6]); // replaces, topicId, inReplyTo, expires
    out.push(0xf4); // ephemeral: false
    string(&mut out, ""); // fallback
    write_head(&mut out, 5, 1);
    write_head(&mut out, 0, EXT_RECIPIENTS);
    write_head(&mut out, 4, recipients.len() as u64);
    for did in recipients {
        string(&mut out, did);
    }
    write_head(&mut out, 4, 1); // body: one part
    write_head(&mut out, 4, 2);
    write_head(&mut out, 0, PART_TEXT);
    write_head(&mut out, 4, 2);
    write_head(&mut out, 0, 0); // inline
    write_head(&mut out, 5, 1);
    string(&mut out, "text");
    string(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &[u8] = include_bytes!("../../tests/data/atsms-client/content.cbor");
    const ONESHOT_CONTENT: &[u8] = include_bytes!("../../tests/data/atsms-client/oneshot.content");

    #[test]
    fn the_clients_content_reads_as_its_receiving_path_reads_it() {
        for (name, bytes) in [
            ("content.cbor", CONTENT),
            ("oneshot.content", ONESHOT_CONTENT),
        ] {
            let content = parse(bytes).unwrap_or_else(|| panic!("{name}"));
            assert!(content.text.is_some(), "{name}: {content:?}");
            assert_eq!(content.convo_id.len(), 33);
            assert!(!content.recipients.unwrap_or_default().is_empty(), "{name}");
        }
        let content = parse(ONESHOT_CONTENT).unwrap();
        assert_eq!(
            content.text.as_deref(),
            Some("hello from the real ATSMS client code")
        );
    }

    #[test]
    fn the_clients_conversation_id_is_made_again_and_what_is_encoded_reads_back() {
        // The client's own message: its conversation id from its sender and recipients.
        let content = parse(ONESHOT_CONTENT).unwrap();
        let sender = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
        let mut participants = vec![sender.to_string()];
        participants.extend(content.recipients.clone().unwrap());
        let refs: Vec<&str> = participants.iter().map(String::as_str).collect();
        assert_eq!(one_shot_convo_id(&refs), content.convo_id);
        let recipients = vec!["did:plc:bbb".to_string(), "did:web:x.example".to_string()];
        let encoded = encode_text(sender, &recipients, "héllo", 1_765_000_000_000, [9; 16]);
        let read = parse(&encoded).unwrap();
        assert_eq!(read.text.as_deref(), Some("héllo"));
        assert_eq!(read.recipients, Some(recipients));
        assert_eq!(read.created_at, 1_765_000_000_000);
        assert!(!read.ephemeral);
    }

    #[test]
    fn what_the_profile_refuses_is_refused_and_nothing_panics() {
        // A negative integer, a float, a tag, an indefinite array, keys out of order.
        for bad in [
            &[0x20][..],
            &[0xfa, 0, 0, 0, 0],
            &[0xc0, 0x00],
            &[0x9f, 0xff],
            &[0xa2, 0x61, 0x62, 0x00, 0x61, 0x61, 0x00],
            // Text before a number: 0x61 > 0x19 in byte order.
            &[0xa2, 0x61, 0x61, 0x00, 0x19, 0x01, 0x00, 0x00],
            &[0x1b, 0x00, 0x20, 0, 0, 0, 0, 0, 0],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert_eq!(decode(bad), None, "{bad:02x?}");
        }
        let good = CONTENT;
        for cut in 0..good.len() {
            assert!(parse(&good[..cut]).is_none());
        }
        // A number key of three bytes before a text key of two: byte order, as the client.
        assert!(decode(&[0xa2, 0x19, 0x01, 0x00, 0x00, 0x61, 0x61, 0x00]).is_some());
        let deep: Vec<u8> = std::iter::repeat_n(0x81, 64).chain([0x00]).collect();
        assert_eq!(decode(&deep), None);
    }
}
