//! This host's name (the default authserv-id, the LMTP greeting, the default `inbox.hosts`
//! and service DID) and its own addresses (mail sent there is mail to itself). Read from the
//! system (gethostname, getifaddrs) here, in one place. A leaf.

/// The name of this host, the default authserv-id.
pub fn name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Whether `ip` is an address of one of this host's interfaces (getifaddrs): mail an MTA
/// would send there is mail to itself. `false` when the interfaces cannot be read.
pub fn is_own_address(ip: std::net::IpAddr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return false;
    }
    let mut found = false;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs made; its `ifa_addr`, when not
        // null, points at a sockaddr of the family it names.
        let (addr, next) = unsafe { ((*entry).ifa_addr, (*entry).ifa_next) };
        if !addr.is_null() {
            // SAFETY: as above; the family says which sockaddr it is.
            let this = unsafe {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        Some(std::net::IpAddr::from(
                            u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                        ))
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        Some(std::net::IpAddr::from(v6.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            if this == Some(ip) {
                found = true;
                break;
            }
        }
        entry = next;
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_this_hosts_own_address() {
        assert!(super::is_own_address("127.0.0.1".parse().unwrap()));
        assert!(!super::is_own_address("192.0.2.77".parse().unwrap()));
    }
}
