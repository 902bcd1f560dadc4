//! Lists of senders, one validated kind for every place that names them: the deny and allow
//! files of reputation (`reputation.deny`, `reputation.allow`: one entry a line, `#`
//! comments, reloaded on SIGHUP) and the `allow` lists of inbox rules. An entry is a DID
//! (did:plc or did:web), a handle, or `*.domain` (any handle below the domain, not the domain
//! itself); anything else is an error naming the entry (and the file's line).

use std::collections::HashSet;
use std::path::Path;

/// One list, read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SenderList {
    dids: HashSet<String>,
    handles: HashSet<String>,
    /// `*.example.com` as `.example.com`: any handle below it (not the domain itself).
    suffixes: Vec<String>,
}

impl SenderList {
    /// Reads a list file.
    pub fn load(path: &Path) -> Result<SenderList, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        SenderList::parse(&text)
            .map_err(|(line, why)| format!("{}, line {line}: {why}", path.display()))
    }

    /// Parses a list file's text: `Err((line number, why))` for the first bad line.
    pub fn parse(text: &str) -> Result<SenderList, (usize, String)> {
        SenderList::from_entries(
            text.lines()
                .map(|line| line.split('#').next().unwrap_or_default()),
        )
    }

    /// A list of `entries` (blank ones skipped): `Err((position from 1, why))` for the first
    /// that is not a DID, a handle or `*.domain`.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<SenderList, (usize, String)> {
        let mut list = SenderList::default();
        for (i, entry) in entries.into_iter().enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            list.add(entry)
                .map_err(|why| (i + 1, format!("{entry:?} {why}")))?;
        }
        Ok(list)
    }

    fn add(&mut self, entry: &str) -> Result<(), &'static str> {
        if entry.starts_with("did:") {
            if crate::format::syntax::supported_did_method(entry).is_none() {
                return Err("is not a did:plc or did:web DID");
            }
            self.dids.insert(entry.to_string());
        } else if let Some(domain) = entry.strip_prefix("*.") {
            let domain = crate::format::syntax::ascii_domain(domain)
                .ok_or("is not *. followed by a domain")?;
            self.suffixes.push(format!(".{domain}"));
        } else {
            let handle = crate::format::syntax::ascii_domain(entry)
                .filter(|h| crate::format::syntax::is_valid_handle(h))
                .ok_or("is neither a DID, a handle nor *.domain")?;
            self.handles.insert(handle);
        }
        Ok(())
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
        let list = SenderList::parse(
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
        assert_eq!(SenderList::parse("did:key:zQ3sh").unwrap_err().0, 1);
        assert_eq!(
            SenderList::parse("ok.example\nnot a handle").unwrap_err().0,
            2
        );
        assert_eq!(SenderList::parse("*.").unwrap_err().0, 1);
        assert!(SenderList::parse("# nothing\n").unwrap().is_empty());
    }
}
