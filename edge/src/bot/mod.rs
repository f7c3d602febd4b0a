//! Bot protection in the request path: who must pass a challenge, and what earns a clearance.
//!
//! - [`gate`]: the pipeline stage: decides, serves the challenge page, checks the answer, sets
//!   the clearance cookie, and feeds the triggers with what it sees;
//! - [`challenge`] (and its page script, `challenge.js`): stateless signed challenges, the proof
//!   of work, clearance cookies, replay protection;
//! - [`keyring`]: the replicated signing keys, opened;
//! - `memo`: the clearance cookies a worker verified lately, so a client's next requests skip
//!   the MAC and hashes (answering only for exactly what `verify` depends on);
//! - [`detect`]: the automatic triggers' counters in bounded memory, and the decisions they
//!   queue (written to the cluster by [`crate::jobs::decisions`]).

pub mod challenge;
pub mod detect;
pub mod gate;
pub mod keyring;
mod memo;

pub use gate::BotGate;
