//! Pure logic of zael, the Envoy rate limit service on the zae-limiter table format.
//!
//! * [`acquire`]: the acquire engine every store decides entity acquires with;
//! * [`charges`]: a YAML rule's ordered charges on one bucket;
//! * [`bucket`]: millitoken token-bucket arithmetic of the table format;
//! * [`config`]: the envoyproxy/ratelimit YAML config and its matcher;
//! * [`decision`]: descriptors in, bucket charges out, statuses back;
//! * [`entities`]: the `--entities` file: namespaces, entities and stored limits for the
//!   embedded store;
//! * [`keys`]: bucket identity as zae-limiter entity and resource ids;
//! * [`lease`]: leases of the native API, their authenticated ids and state;
//! * [`levels`]: the config levels: stored limits, resolution and access;
//! * [`limit_spec`]: the `name:rate[/period][:burst]` limit syntax of the CLI and the
//!   entities file;
//! * [`pressure`]: which buckets a store bounded in memory forgets first;
//! * [`store`]: the trait every bucket store implements, and [`memory`], the embedded one.
//!
//! ```
//! use zael_core::{config::parse_domain, decision::{plan, Descriptor, Request, Code}, memory::MemoryStore};
//! use zael_core::bucket::EpochMillis;
//!
//! let config = parse_domain("demo.yaml", "domain: demo\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n").unwrap();
//! let store = MemoryStore::new();
//! let request = Request { domain: "demo", descriptors: vec![Descriptor { entries: vec![("user", "alice")], ..Default::default() }], hits_addend: 0 };
//! let now = EpochMillis(0);
//! for expected in [Code::Ok, Code::OverLimit] {
//!     let plan = plan(&config, &request).unwrap();
//!     let outcomes: Vec<_> = plan.bucket_requests().iter().map(|r| store.charge_bucket(r, now)).collect();
//!     assert_eq!(plan.decide(&outcomes, &[], now, Default::default()).overall, expected);
//! }
//! ```

pub mod acquire;
pub mod bucket;
pub mod charges;
pub mod config;
pub mod decision;
pub mod entities;
pub mod judge;
pub mod keys;
pub mod lease;
pub mod levels;
pub mod limit_spec;
pub mod memory;
pub mod pressure;
pub mod reserve;
pub mod reserve_set;
pub mod store;
