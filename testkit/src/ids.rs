//! Identifiers made up for tests and benchmarks (the test kit and the load drivers share it).

/// The n-th of many distinct, valid did:plc identifiers.
pub fn plc_did(n: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let (mut id, mut x) = (String::new(), n);
    for _ in 0..24 {
        id.push(alphabet[x % 32] as char);
        x /= 32;
    }
    format!("did:plc:{id}")
}
