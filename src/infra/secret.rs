//! Reading a file of secrets (device keys, prekeys): refused when others may read it or its
//! group or others may write it, as OpenSSH and OpenDKIM refuse such keys. A leaf.

use std::path::Path;

/// The bytes of the secret file `path`, or why it is refused.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "{} is readable by others (chmod o-r; mode 0600 or 0640)",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by its group or others (chmod go-w)",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}
