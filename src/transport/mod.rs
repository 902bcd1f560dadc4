//! The transports: the protocols mail servers and clients speak to us. Each feeds the judge and
//! translates its answer into its protocol, nothing else (the socketmap, a lookup table, answers
//! from its own `Tables`; the control socket is the operator's).

pub mod control;
pub mod exim;
pub mod lmtp;
pub mod milter;
pub mod socketmap;
pub mod xrpc;
