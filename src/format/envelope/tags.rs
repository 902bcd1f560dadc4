//! The `AT-SMS-Signature` tag list (spec section 2; syntax as DKIM's, RFC 6376 §3.2).

/// The three tags AT-SMS v1 uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList {
    pub d: String,
    /// The JWS compact serialization with all folding whitespace removed.
    pub t: String,
}

/// What is wrong with a tag list (always `permerror`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagProblem {
    #[error("empty tag in tag list")]
    EmptyTag,
    #[error("tag without '=' in tag list")]
    NoEquals,
    #[error("invalid tag name in tag list")]
    BadName,
    #[error("repeated tag {0}=")]
    Repeated(String),
    #[error("missing d= tag")]
    MissingD,
    #[error("whitespace inside d= tag")]
    WhitespaceInD,
    #[error("d= tag is not UTF-8")]
    DNotUtf8,
    #[error("missing v= tag")]
    MissingV,
    #[error("whitespace inside v= tag")]
    WhitespaceInV,
    #[error("unsupported version (v= must be 1)")]
    UnsupportedVersion,
    #[error("missing t= tag")]
    MissingT,
    #[error("token longer than 16 KiB")]
    TokenTooLong,
    #[error("t= tag is not ASCII")]
    TNotAscii,
}

/// Why a tag list was rejected, with the `d=` value when one was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct TagError {
    pub problem: TagProblem,
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
    let unreadable = |problem| TagError { problem, d: None };
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
            return Err(unreadable(TagProblem::EmptyTag));
        }
        let Some(eq) = part.iter().position(|b| *b == b'=') else {
            return Err(unreadable(TagProblem::NoEquals));
        };
        let name = trim_fws(&part[..eq]);
        let tag_value = trim_fws(&part[eq + 1..]);
        let name_ok = name.first().is_some_and(u8::is_ascii_alphabetic)
            && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !name_ok {
            return Err(unreadable(TagProblem::BadName));
        }
        // RFC 6376 §3.2: a tag-list with a repeated tag name is invalid as a whole.
        if seen.contains(&name) {
            let name = String::from_utf8_lossy(name).into_owned();
            return Err(unreadable(TagProblem::Repeated(name)));
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
        None => return Err(unreadable(TagProblem::MissingD)),
        Some(d) if d.iter().any(|b| is_fws(*b)) => {
            return Err(unreadable(TagProblem::WhitespaceInD));
        }
        Some(d) => match std::str::from_utf8(d) {
            Ok(d) => d.to_string(),
            Err(_) => return Err(unreadable(TagProblem::DNotUtf8)),
        },
    };
    let fail = |problem| TagError {
        problem,
        d: Some(d.clone()),
    };
    match v {
        None => return Err(fail(TagProblem::MissingV)),
        Some(v) if v.iter().any(|b| is_fws(*b)) => return Err(fail(TagProblem::WhitespaceInV)),
        Some(b"1") => {}
        Some(_) => return Err(fail(TagProblem::UnsupportedVersion)),
    }
    let Some(t) = t else {
        return Err(fail(TagProblem::MissingT));
    };
    let token: Vec<u8> = t.iter().copied().filter(|b| !is_fws(*b)).collect();
    if token.len() > MAX_TOKEN_LEN {
        return Err(fail(TagProblem::TokenTooLong));
    }
    let Ok(t) = String::from_utf8(token) else {
        return Err(fail(TagProblem::TNotAscii));
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
        assert_eq!(e.problem, TagProblem::UnsupportedVersion);
        assert_eq!(
            parse(b"v=1; d=did:plc:abc; d=did:plc:abc; t=x")
                .unwrap_err()
                .problem,
            TagProblem::Repeated("d".into())
        );
        assert_eq!(
            parse(b"v=1; d=did:plc: abc; t=x").unwrap_err().problem,
            TagProblem::WhitespaceInD
        );
        assert!(parse(b"v= 1 ; d=x; t=x").is_ok());
        assert_eq!(
            parse(b"v=1 1; d=x; t=x").unwrap_err().problem,
            TagProblem::WhitespaceInV
        );
        assert!(
            parse(b"V=1; d=x; t=x").is_err(),
            "tag names are case-sensitive"
        );
        assert!(parse(b"v=1; d=x; t=x; x=unknown").is_ok());
        assert_eq!(
            parse(b"v=1;; d=x; t=x").unwrap_err().problem,
            TagProblem::EmptyTag
        );
        assert_eq!(parse(b"").unwrap_err().problem, TagProblem::EmptyTag);
    }
}
