//! Envelope addresses and where their mail goes: the `maildir` template, the optional
//! recipients list and `user+Folder` detail delivery.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::infra::config::LmtpConfig;

/// An accepted RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as given in RCPT TO (replies and Delivered-To name it).
    pub address: String,
    /// The address without detail, lower-cased: the mailbox.
    pub mailbox: String,
    /// `Folder` of `user+Folder@domain`, as given.
    pub detail: Option<String>,
    /// The mailbox's Maildir (INBOX).
    pub maildir: PathBuf,
    /// The part of `maildir` the operator's template fixes (before the first `%`): symlinks
    /// may be there. Below it, every directory is the mailbox's and symlinks are refused.
    pub base: PathBuf,
}

impl Recipient {
    /// `folder` (the Maildir or one below it) relative to `base`.
    pub fn relative(&self, folder: &std::path::Path) -> PathBuf {
        folder
            .strip_prefix(&self.base)
            .map(PathBuf::from)
            .unwrap_or_else(|_| folder.to_path_buf())
    }
}

/// Why RCPT was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientError {
    /// 550 5.1.1
    Unknown,
    /// 550 5.1.3: unusable in a path, or not an address.
    BadAddress,
}

/// What the LMTP side needs to place mail.
#[derive(Debug, Clone)]
pub struct Mailboxes {
    template: String,
    delimiter: String,
    known: Option<HashSet<String>>,
}

/// A value that may stand in a path: no `/`, no NUL, no `..`, not starting with a dot.
fn path_safe(value: &str) -> bool {
    !value.is_empty()
        && !value.contains('/')
        && !value.contains('\0')
        && !value.contains("..")
        && !value.starts_with('.')
}

impl Mailboxes {
    pub fn new(config: &LmtpConfig) -> Result<Mailboxes, String> {
        let known = match &config.recipients {
            Some(path) => Some(load_recipients(path)?),
            None => None,
        };
        Ok(Mailboxes {
            template: config.maildir.clone(),
            delimiter: config.recipient_delimiter.clone(),
            known,
        })
    }

    /// Where mail for `address` goes. The mailbox is `address::fold`'s (ASCII case folding
    /// only, `did!` read as `did.`, the detail removed): one rule for paths and replays.
    pub fn resolve(&self, address: &str) -> Result<Recipient, RecipientError> {
        let folded = crate::format::address::fold(address, &self.delimiter)
            .ok_or(RecipientError::BadAddress)?;
        let (user, domain) = (&folded.user, &folded.domain);
        if !path_safe(user) || !path_safe(domain) {
            return Err(RecipientError::BadAddress);
        }
        let mailbox = folded.mailbox();
        if let Some(known) = &self.known
            && !known.contains(&mailbox)
        {
            return Err(RecipientError::Unknown);
        }
        let detail = folded.detail.filter(|d| path_safe(d));
        Ok(Recipient {
            address: address.to_string(),
            maildir: self.expand(&mailbox, user, domain),
            base: self.base(),
            mailbox,
            detail,
        })
    }

    /// The template's fixed directory: everything before the first `%`, up to its last `/`.
    fn base(&self) -> PathBuf {
        let fixed = self.template.split('%').next().unwrap_or_default();
        match fixed.rfind('/') {
            Some(0) => PathBuf::from("/"),
            Some(slash) => PathBuf::from(&fixed[..slash]),
            None => PathBuf::from("."),
        }
    }

    fn expand(&self, address: &str, local: &str, domain: &str) -> PathBuf {
        let mut out = String::new();
        let mut chars = self.template.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('u') => out.push_str(address),
                Some('n') => out.push_str(local),
                Some('d') => out.push_str(domain),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        PathBuf::from(out)
    }

    /// Every known mailbox's Maildir (when a recipients list is configured).
    pub fn known_maildirs(&self) -> Vec<PathBuf> {
        let Some(known) = &self.known else {
            return Vec::new();
        };
        known
            .iter()
            .filter_map(|a| self.resolve(a).ok())
            .map(|r| r.maildir)
            .collect()
    }
}

fn load_recipients(path: &str) -> Result<HashSet<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("lmtp.recipients: {path}: {e}"))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| crate::format::address::fold(l, "").map(|f| f.mailbox()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailboxes(recipients: Option<&str>) -> (Mailboxes, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LmtpConfig {
            maildir: "/m/%d/%n/%u/%%/Maildir".into(),
            ..Default::default()
        };
        if let Some(list) = recipients {
            let path = dir.path().join("recipients");
            std::fs::write(&path, list).unwrap();
            config.recipients = Some(path.display().to_string());
        }
        (Mailboxes::new(&config).unwrap(), dir)
    }

    #[test]
    fn template_detail_and_sanitising() {
        let (m, _d) = mailboxes(None);
        let r = m.resolve("Bob+Lists@MX.Example.net").unwrap();
        assert_eq!(
            r.maildir,
            PathBuf::from("/m/mx.example.net/bob/bob@mx.example.net/%/Maildir")
        );
        assert_eq!(r.detail.as_deref(), Some("Lists"));
        assert_eq!(r.mailbox, "bob@mx.example.net");
        assert_eq!(r.base, PathBuf::from("/m"));
        assert_eq!(
            r.relative(&r.maildir.join(".Junk")),
            PathBuf::from("mx.example.net/bob/bob@mx.example.net/%/Maildir/.Junk")
        );
        assert_eq!(
            m.resolve("../etc@x").unwrap_err(),
            RecipientError::BadAddress
        );
        assert_eq!(
            m.resolve("a@../../etc").unwrap_err(),
            RecipientError::BadAddress
        );
        assert_eq!(m.resolve("a/b@x").unwrap_err(), RecipientError::BadAddress);
        assert_eq!(
            m.resolve("nodomain").unwrap_err(),
            RecipientError::BadAddress
        );
        assert_eq!(m.resolve("bob+../x@y").unwrap().detail, None);
        // ASCII folding only: the Kelvin sign keeps its own (distinct) mailbox.
        assert_eq!(
            m.resolve("\u{212A}evin@x").unwrap().mailbox,
            "\u{212A}evin@x"
        );
        assert_eq!(
            m.resolve("did!plc!ofurdhfyhjhgomvfygxergep@MX")
                .unwrap()
                .mailbox,
            "did.plc.ofurdhfyhjhgomvfygxergep@mx"
        );
    }

    #[test]
    fn recipients_list() {
        let (m, _d) = mailboxes(Some(
            "# users\nbob@mx.example.net\n  Alice@MX.example.net # admin\n",
        ));
        assert!(m.resolve("bob+x@mx.example.net").is_ok());
        assert!(m.resolve("alice@mx.example.net").is_ok());
        assert_eq!(
            m.resolve("eve@mx.example.net").unwrap_err(),
            RecipientError::Unknown
        );
        assert_eq!(m.known_maildirs().len(), 2);
    }
}
