//! The judge and what it weighs: the judge room itself (`judge`), the site's inbox rules,
//! reputation, replays, consent and routing, sender lists, the action words, and the signer's
//! key table (who may sign what).

pub mod action;
pub mod inbox;
pub mod judge;
pub mod replay;
pub mod reputation;
pub mod routing;
pub mod senders;
pub mod signer;
