//! Deny and allow lists (`reputation.deny`, `reputation.allow`): files of DIDs, handles and
//! `*.domain` handle patterns, one a line, `#` comments. Read when the settings are built, so
//! a SIGHUP reloads them; a bad line is an error naming the file and the line.

use std::collections::HashSet;
use std::path::Path;

/// One list, read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct List {
    dids: HashSet<String>,
    handles: HashSet<String>,
    /// `*.example.com` as `.example.com`: any handle below it (not the domain itself).
    suffixes: Vec<String>,
}

impl List {
    /// Reads a list file.
    pub fn load(path: &Path) -> Result<List, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        List::parse(&text).map_err(|(line, why)| format!("{}, line {line}: {why}", path.display()))
    }

    /// Parses a list: `Err((line number, why))` for the first bad line.
    pub fn parse(text: &str) -> Result<List, (usize, String)> {
        let mut list = List::default();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |why: &str| Err((i + 1, format!("{entry:?} {why}")));
            if entry.starts_with("did:") {
                if crate::syntax::supported_did_method(entry).is_none() {
                    return bad("is not a did:plc or did:web DID");
                }
                list.dids.insert(entry.to_string());
            } else if let Some(domain) = entry.strip_prefix("*.") {
                let Some(domain) = crate::syntax::ascii_domain(domain) else {
                    return bad("is not *. followed by a domain");
                };
                list.suffixes.push(format!(".{domain}"));
            } else {
                let Some(handle) = crate::syntax::ascii_domain(entry)
                    .filter(|h| crate::syntax::is_valid_handle(h))
                else {
                    return bad("is neither a DID, a handle nor *.domain");
                };
                list.handles.insert(handle);
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.dids.is_empty() && self.handles.is_empty() && self.suffixes.is_empty()
    }

    /// Whether the sender — its DID, and its handle when checked both ways — is listed.
    pub fn matches(&self, did: &str, handle: Option<&str>) -> bool {
        if self.dids.contains(did) {
            return true;
        }
        let Some(handle) = handle.map(str::to_ascii_lowercase) else {
            return false;
        };
        self.handles.contains(&handle) || self.suffixes.iter().any(|s| handle.ends_with(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dids_handles_and_patterns() {
        let list = List::parse(
            "# spammers\ndid:plc:ofurdhfyhjhgomvfygxergep\n  Spammer.Example.COM  # by handle\n*.bulk.example\n\n",
        )
        .unwrap();
        assert!(list.matches("did:plc:ofurdhfyhjhgomvfygxergep", None));
        assert!(!list.matches("did:plc:hxdv4c2etoo2mbhg4alzhnno", None));
        assert!(list.matches(
            "did:plc:hxdv4c2etoo2mbhg4alzhnno",
            Some("spammer.example.com")
        ));
        assert!(list.matches("did:plc:hxdv4c2etoo2mbhg4alzhnno", Some("a.BULK.example")));
        assert!(!list.matches("did:plc:hxdv4c2etoo2mbhg4alzhnno", Some("bulk.example")));
        assert!(!list.matches("did:plc:hxdv4c2etoo2mbhg4alzhnno", Some("notbulk.example")));
        assert_eq!(List::parse("did:key:zQ3sh").unwrap_err().0, 1);
        assert_eq!(List::parse("ok.example\nnot a handle").unwrap_err().0, 2);
        assert_eq!(List::parse("*.").unwrap_err().0, 1);
        assert!(List::parse("# nothing\n").unwrap().is_empty());
    }
}
