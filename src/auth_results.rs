//! Our `Authentication-Results` field (RFC 8601), written here and nowhere else.

use crate::envelope::AuthResult;
use crate::verify::Verdict;

pub const FIELD_NAME: &str = "Authentication-Results";
/// The method name registered by the spec (section 8).
pub const METHOD: &str = "atsms";

/// A quoted-string (RFC 5322 §3.2.4): `\` and `"` escaped, control characters dropped.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A value safe as an RFC 8601 `pvalue` without quotes (dot-atom or addr-spec characters).
fn plain_or_quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.@".contains(&b));
    if plain {
        value.to_string()
    } else {
        quoted(value)
    }
}

/// The field's value (without the name), one resinfo per signature on its own folded line.
/// `newline` is what folds: `"\n"` for milter and files, `"\r\n"` on the wire.
pub fn format_value(authserv_id: &str, verdict: &Verdict, newline: &str) -> String {
    let mut out = format!(" {authserv_id};");
    if verdict.signatures.is_empty() {
        out.push_str(&format!(" {METHOD}={}", AuthResult::None));
        return out;
    }
    for (index, sig) in verdict.signatures.iter().enumerate() {
        if index > 0 {
            out.push(';');
        }
        let mut parts = vec![format!("{METHOD}={}", sig.result)];
        if let Some(reason) = sig
            .reason
            .as_deref()
            .filter(|_| sig.result != AuthResult::Pass)
        {
            parts.push(format!("reason={}", quoted(reason)));
        }
        if let Some(did) = &sig.did {
            parts.push(format!("header.d={}", quoted(did)));
        }
        if sig.result == AuthResult::Pass {
            if let Some(from) = &sig.from {
                parts.push(format!("header.from={}", plain_or_quoted(from)));
            }
            if let Some(handle) = &sig.handle {
                parts.push(format!("header.handle={}", plain_or_quoted(handle)));
            }
            if let Some(aligned) = sig.aligned {
                parts.push(format!(
                    "policy.aligned={}",
                    if aligned { "yes" } else { "no" }
                ));
            }
        }
        // Fold before a part that would take the line past 78 columns (RFC 5322 §2.1.1).
        let mut column = 8;
        out.push_str(newline);
        out.push('\t');
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                if column + 1 + part.len() > 78 {
                    out.push_str(newline);
                    out.push('\t');
                    column = 8;
                } else {
                    out.push(' ');
                    column += 1;
                }
            }
            out.push_str(part);
            column += part.len();
        }
    }
    out
}

/// The authserv-id an incoming `Authentication-Results` value names (RFC 8601 §2.2), if
/// it can be read: the token before the first `;`, comments and an optional version dropped.
pub fn authserv_id(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let head = text.split(';').next()?;
    let mut depth = 0usize;
    let mut cleaned = String::new();
    for c in head.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => cleaned.push(c),
            _ => {}
        }
    }
    let id = cleaned.split_whitespace().next()?;
    Some(id.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::SignatureVerdict;

    #[test]
    fn formats_pass_and_fail() {
        let verdict = Verdict {
            signatures: vec![
                SignatureVerdict {
                    result: AuthResult::Fail,
                    did: Some("did:plc:hxdv4c2etoo2mbhg4alzhnno".into()),
                    kid: None,
                    reason: Some("signature does not \"verify\"".into()),
                    handle: None,
                    aligned: None,
                    stale: false,
                    from: None,
                    rcpt: None,
                    jti: None,
                    exp: None,
                },
                SignatureVerdict {
                    result: AuthResult::Pass,
                    did: Some("did:plc:ofurdhfyhjhgomvfygxergep".into()),
                    kid: None,
                    reason: None,
                    handle: Some("alice.example.com".into()),
                    aligned: Some(true),
                    stale: false,
                    from: Some("alice@alice.example.com".into()),
                    rcpt: None,
                    jti: None,
                    exp: None,
                },
            ],
        };
        let value = format_value("mx.example.net", &verdict, "\n");
        assert_eq!(
            value,
            " mx.example.net;\n\tatsms=fail reason=\"signature does not \\\"verify\\\"\"\n\theader.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\";\n\tatsms=pass header.d=\"did:plc:ofurdhfyhjhgomvfygxergep\"\n\theader.from=alice@alice.example.com header.handle=alice.example.com\n\tpolicy.aligned=yes"
        );
        assert_eq!(
            format_value("mx", &Verdict::default(), "\n"),
            " mx; atsms=none"
        );
    }

    #[test]
    fn reads_authserv_id() {
        assert_eq!(
            authserv_id(b" mx.example.net (comment); atsms=pass").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id(b" mx.example.net 1; none").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(authserv_id(b"  ").as_deref(), None);
    }
}
