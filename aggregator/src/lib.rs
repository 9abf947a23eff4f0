//! zael-aggregator: the DynamoDB Streams Lambda of a zae-limiter 0.17.0 table
//! (`deployer-and-aggregator.md` §11), with the reference's data-loss defects fixed (D1-D5).
//!
//! Per batch ([`handler::Aggregator::process`]): audit archival first ([`archive`]; a failed
//! put is a partial-batch failure, so nothing is lost), then usage snapshots summed per item
//! ([`snapshot`]), proactive refill under the `rf` lock ([`refill`]), and shard doubling and
//! propagation ([`shard`]). Records arrive from a Lambda event or, in local mode, from the
//! stream itself ([`poll`]); [`bucket`] and [`record`] read them.

pub mod archive;
pub mod bucket;
pub mod handler;
pub mod logging;
pub mod poll;
pub mod record;
pub mod refill;
pub mod settings;
pub mod shard;
pub mod snapshot;
mod write;

pub use handler::{Aggregator, Outcome};
pub use settings::Settings;
