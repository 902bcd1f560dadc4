//! The `AT-SMS-Signature` tag list (spec section 2; syntax as DKIM's, RFC 6376 §3.2).

/// The three tags AT-SMS v1 uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList {
    pub d: String,
    /// The JWS compact serialization with all folding whitespace removed.
    pub t: String,
}

/// Why a tag list was rejected (always `permerror`), with the `d=` value when one was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagError {
    pub reason: String,
    pub d: Option<String>,
}

/// Longest token accepted: real tokens are well under 2 KiB; this bounds the JSON parsed.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

fn is_fws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_fws(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_fws(*b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_fws(*b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Parses a field value (folded with CRLF or bare LF, as a milter receives it).
pub fn parse(value: &[u8]) -> Result<TagList, TagError> {
    let unreadable = |reason: &str| TagError {
        reason: reason.to_string(),
        d: None,
    };
    let mut v = None;
    let mut d = None;
    let mut t = None;
    let mut seen: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = value.split(|b| *b == b';').collect();
    for (index, part) in parts.iter().enumerate() {
        let part = trim_fws(part);
        if part.is_empty() {
            // RFC 6376 §3.2: a trailing ';' is allowed; an empty tag-spec elsewhere is not.
            if index + 1 == parts.len() && index > 0 {
                continue;
            }
            return Err(unreadable("empty tag in tag list"));
        }
        let Some(eq) = part.iter().position(|b| *b == b'=') else {
            return Err(unreadable("tag without '=' in tag list"));
        };
        let name = trim_fws(&part[..eq]);
        let tag_value = trim_fws(&part[eq + 1..]);
        let name_ok = name.first().is_some_and(u8::is_ascii_alphabetic)
            && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !name_ok {
            return Err(unreadable("invalid tag name in tag list"));
        }
        // RFC 6376 §3.2: a tag-list with a repeated tag name is invalid as a whole.
        if seen.contains(&name) {
            let reason = format!("repeated tag {}=", String::from_utf8_lossy(name));
            return Err(TagError { reason, d: None });
        }
        seen.push(name);
        match name {
            b"v" => v = Some(tag_value),
            b"d" => d = Some(tag_value),
            b"t" => t = Some(tag_value),
            _ => {} // unknown tags are ignored (spec section 2)
        }
    }
    let d = match d {
        None => return Err(unreadable("missing d= tag")),
        Some(d) if d.iter().any(|b| is_fws(*b)) => {
            return Err(unreadable("whitespace inside d= tag"));
        }
        Some(d) => match std::str::from_utf8(d) {
            Ok(d) => d.to_string(),
            Err(_) => return Err(unreadable("d= tag is not UTF-8")),
        },
    };
    let fail = |reason: &str| TagError {
        reason: reason.to_string(),
        d: Some(d.clone()),
    };
    match v {
        None => return Err(fail("missing v= tag")),
        Some(v) if v.iter().any(|b| is_fws(*b)) => return Err(fail("whitespace inside v= tag")),
        Some(b"1") => {}
        Some(_) => return Err(fail("unsupported version (v= must be 1)")),
    }
    let Some(t) = t else {
        return Err(fail("missing t= tag"));
    };
    let token: Vec<u8> = t.iter().copied().filter(|b| !is_fws(*b)).collect();
    if token.len() > MAX_TOKEN_LEN {
        return Err(fail("token longer than 16 KiB"));
    }
    let Ok(t) = String::from_utf8(token) else {
        return Err(fail("t= tag is not ASCII"));
    };
    Ok(TagList { d, t })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_with_lf_or_crlf() {
        let lf = parse(b" v=1; d=did:plc:abc;\n\tt=aa\n\t bb.cc.dd ;").unwrap();
        let crlf = parse(b" v=1; d=did:plc:abc;\r\n\tt=aa\r\n\t bb.cc.dd").unwrap();
        assert_eq!(lf, crlf);
        assert_eq!(lf.t, "aabb.cc.dd");
        assert_eq!(lf.d, "did:plc:abc");
    }

    #[test]
    fn errors_keep_d_when_readable() {
        let e = parse(b"v=2; d=did:plc:abc; t=x").unwrap_err();
        assert_eq!(e.d.as_deref(), Some("did:plc:abc"));
        assert!(parse(b"v=1; d=did:plc:abc; d=did:plc:abc; t=x").is_err());
        assert!(parse(b"v=1; d=did:plc: abc; t=x").is_err());
        assert!(parse(b"v= 1 ; d=x; t=x").is_ok());
        assert!(parse(b"v=1 1; d=x; t=x").is_err());
        assert!(
            parse(b"V=1; d=x; t=x").is_err(),
            "tag names are case-sensitive"
        );
        assert!(parse(b"v=1; d=x; t=x; x=unknown").is_ok());
        assert!(parse(b"v=1;; d=x; t=x").is_err());
        assert!(parse(b"").is_err());
    }
}
