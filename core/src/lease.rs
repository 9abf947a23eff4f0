//! Leases of the native API (`zael.limiter.v1`): what an admitted acquire charged, carried by
//! the client as a self-contained, authenticated id, and the changes a lease goes through.
//!
//! A lease id is `zl1.{payload}.{mac}`: the payload is the [`Lease`] as compact JSON in
//! base64url, the mac its HMAC-SHA256 under the server's lease key. It names every bucket
//! the acquire debited (entity, shard, limit) with what the lease has consumed there, so any
//! server instance holding the key can adjust, release or roll it back, after a restart too.
//!
//! The id alone cannot tell a retried call from a new one, so each lease also has a state
//! ([`LeaseState`]) that the store keeps beside the buckets and changes in the same atomic
//! write as the buckets (on DynamoDB, the `#OP#lease:{nonce}` record in the entity's shard-0
//! partition): `seq` counts the adjusts applied, `ended` says how it ended. An adjust is
//! applied only to the lease at the state's `seq` and answers the lease at `seq + 1`; so a
//! retried adjust, release or rollback is recognised and applied once.

use crate::bucket::{EpochMillis, Millitokens};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The prefix of every lease id this version writes.
const PREFIX: &str = "zl1";

/// One bucket a lease debited, and what the lease has consumed there so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// The entity owning the bucket: the requested one or, under cascade, its parent.
    #[serde(rename = "e")]
    pub entity: String,
    #[serde(rename = "s")]
    pub shard: i64,
    #[serde(rename = "l")]
    pub limit: String,
    /// Millitokens consumed (acquire plus adjusts); negative once credits exceed debits.
    #[serde(rename = "a")]
    pub amount: i64,
    /// The bucket was bypassed (`disabled = "bypass"`): changes count usage (`tc`) only.
    #[serde(rename = "b", default, skip_serializing_if = "std::ops::Not::not")]
    pub bypass: bool,
    /// The limit's capacity (millitokens, undivided) and the bucket's shard count when the
    /// lease was opened: a credit's ceiling without a read (0: unknown).
    #[serde(rename = "p", default, skip_serializing_if = "is_zero")]
    pub capacity: i64,
    #[serde(rename = "k", default, skip_serializing_if = "is_zero")]
    pub shard_count: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// What an admitted acquire handed out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(rename = "n")]
    pub namespace: String,
    #[serde(rename = "i")]
    pub entity: String,
    #[serde(rename = "r")]
    pub resource: String,
    /// Unique per lease: the caller's request id, or `@` and 32 random hex digits.
    #[serde(rename = "o")]
    pub nonce: String,
    /// Adjusts applied before this lease was handed out.
    #[serde(rename = "q")]
    pub seq: u32,
    /// After this instant the lease counts as released and every change is refused.
    #[serde(rename = "x")]
    pub expires_at: i64,
    #[serde(rename = "c")]
    pub entries: Vec<LeaseEntry>,
}

/// A change to a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Per limit name, millitokens consumed more (positive) or less (negative); applied to
    /// every bucket of the lease holding that limit (the parent's too under cascade).
    Adjust(Vec<(String, Millitokens)>),
    /// The work is done: nothing is written to the buckets.
    Release,
    /// The work failed: what the lease consumed is credited back, never above a bucket's
    /// ceiling.
    Rollback,
}

/// How a lease ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LeaseEnd {
    Released,
    RolledBack,
}

impl LeaseEnd {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEnd::Released => "released",
            LeaseEnd::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseEnd> {
        match s {
            "released" => Some(LeaseEnd::Released),
            "rolled_back" => Some(LeaseEnd::RolledBack),
            _ => None,
        }
    }
}

/// A lease's state as its store keeps it; a lease without a stored state is at `seq` 0,
/// not ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    pub seq: u32,
    pub ended: Option<LeaseEnd>,
    /// The digest ([`LeaseChange::digest`]) of the change that took the lease to `seq`.
    pub last_change: Option<String>,
}

/// What a stored state says of a change asked for with `lease`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it: write the buckets and the new state together.
    Apply,
    /// It was applied already (a retry): answer as then, write nothing.
    Done,
    /// It cannot apply; the message says why.
    Conflict(String),
}

impl LeaseChange {
    /// A short digest telling two changes apart (for recognising a retried adjust).
    pub fn digest(&self) -> String {
        let text = match self {
            LeaseChange::Adjust(deltas) => {
                let mut parts: Vec<String> = deltas.iter().map(|(n, d)| format!("{n}={}", d.0)).collect();
                parts.sort();
                format!("adjust:{}", parts.join(","))
            }
            LeaseChange::Release => "release".to_owned(),
            LeaseChange::Rollback => "rollback".to_owned(),
        };
        let digest = Sha256::digest(text.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// How the change ends the lease, if it does.
    pub fn end(&self) -> Option<LeaseEnd> {
        match self {
            LeaseChange::Adjust(_) => None,
            LeaseChange::Release => Some(LeaseEnd::Released),
            LeaseChange::Rollback => Some(LeaseEnd::RolledBack),
        }
    }
}

impl LeaseState {
    /// Whether `change`, asked for with `lease`, applies to a lease in this state.
    pub fn verdict(&self, lease: &Lease, change: &LeaseChange) -> Verdict {
        if let Some(ended) = self.ended {
            return match change.end() {
                Some(end) if end == ended && self.seq == lease.seq => Verdict::Done,
                _ => Verdict::Conflict(format!("the lease was already {}", ended.as_str().replace('_', " "))),
            };
        }
        if self.seq == lease.seq {
            return Verdict::Apply;
        }
        if change.end().is_none()
            && self.seq == lease.seq + 1
            && self.last_change.as_deref() == Some(change.digest().as_str())
        {
            return Verdict::Done;
        }
        Verdict::Conflict(format!(
            "the lease id is stale: {} adjust(s) applied, this id carries {}; use the id the last Adjust returned",
            self.seq, lease.seq
        ))
    }

    /// The state after applying `change` to `lease`.
    pub fn after(lease: &Lease, change: &LeaseChange) -> LeaseState {
        match change.end() {
            Some(end) => LeaseState { seq: lease.seq, ended: Some(end), last_change: Some(change.digest()) },
            None => LeaseState { seq: lease.seq + 1, ended: None, last_change: Some(change.digest()) },
        }
    }
}

/// A lease id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseIdError {
    #[error("the lease id is malformed")]
    Malformed,
    #[error("the lease id was not issued with this server's lease key")]
    Forged,
}

/// The server's key authenticating lease ids (`--lease-key`).
#[derive(Clone)]
pub struct LeaseKey(Vec<u8>);

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKey(..)")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl LeaseKey {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        LeaseKey(secret.into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The lease's id.
    pub fn encode(&self, lease: &Lease) -> String {
        let json = serde_json::to_vec(lease).expect("a lease serialises");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{PREFIX}.{payload}.{tag}")
    }

    /// The lease an id stands for, once its mac checks out.
    pub fn decode(&self, id: &str) -> Result<Lease, LeaseIdError> {
        let mut parts = id.split('.');
        let (Some(PREFIX), Some(payload), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LeaseIdError::Malformed);
        };
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| LeaseIdError::Malformed)?;
        let mut mac = self.mac();
        mac.update(PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag).map_err(|_| LeaseIdError::Forged)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| LeaseIdError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| LeaseIdError::Malformed)
    }
}

impl Lease {
    /// Whether the lease has run out at `now` (it then counts as released).
    pub fn expired(&self, now: EpochMillis) -> bool {
        now.0 >= self.expires_at
    }

    /// Why a change at `now` is refused when the lease has run out: every store refuses it
    /// the same way, before writing anything.
    pub fn expiry(&self, now: EpochMillis) -> Option<String> {
        self.expired(now)
            .then(|| format!("the lease expired at {} ms since the epoch; it counts as released", self.expires_at))
    }

    /// The lease after an adjust: `seq + 1`, each entry holding the limit consuming its delta.
    pub fn adjusted(&self, deltas: &[(String, Millitokens)]) -> Lease {
        let mut next = self.clone();
        next.seq += 1;
        for entry in &mut next.entries {
            if let Some((_, d)) = deltas.iter().find(|(n, _)| *n == entry.limit) {
                entry.amount = entry.amount.saturating_add(d.0);
            }
        }
        next
    }

    /// The lease a change leaves: adjusted, or as it was when the change ends it.
    pub fn after(&self, change: &LeaseChange) -> Lease {
        match change {
            LeaseChange::Adjust(deltas) => self.adjusted(deltas),
            _ => self.clone(),
        }
    }

    /// Per bucket `(entity, shard, bypass)`, the `(limit, millitokens consumed more)` a change
    /// writes: an adjust's deltas on the entries holding each limit, a rollback's credit of
    /// what each entry consumed (nothing where it consumed nothing), nothing for a release.
    pub fn writes(&self, change: &LeaseChange) -> Vec<BucketDeltas> {
        let mut out: Vec<BucketDeltas> = Vec::new();
        for entry in &self.entries {
            let delta = match change {
                LeaseChange::Adjust(deltas) => deltas.iter().find(|(n, _)| *n == entry.limit).map_or(0, |(_, d)| d.0),
                LeaseChange::Rollback => -entry.amount.max(0),
                LeaseChange::Release => 0,
            };
            if delta == 0 {
                continue;
            }
            let pin = (entry.capacity, entry.shard_count);
            match out.iter_mut().find(|b| b.entity == entry.entity && b.shard == entry.shard) {
                Some(b) => {
                    b.deltas.push((entry.limit.clone(), delta));
                    b.pins.push(pin);
                }
                None => out.push(BucketDeltas {
                    entity: entry.entity.clone(),
                    shard: entry.shard,
                    bypass: entry.bypass,
                    deltas: vec![(entry.limit.clone(), delta)],
                    pins: vec![pin],
                }),
            }
        }
        out
    }
}

/// One bucket shard's share of a lease change: per limit, millitokens consumed more
/// (`tk -= delta`, `tc += delta`; a bypassed bucket's `tc` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketDeltas {
    pub entity: String,
    pub shard: i64,
    pub bypass: bool,
    pub deltas: Vec<(String, i64)>,
    /// Per delta, the limit's `(capacity, shard_count)` as the lease recorded them.
    pub pins: Vec<(i64, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            namespace: "tenant-alpha".into(),
            entity: "key-1".into(),
            resource: "gpt-4".into(),
            nonce: "@00ff".into(),
            seq: 0,
            expires_at: 60_000,
            entries: vec![
                LeaseEntry {
                    entity: "key-1".into(),
                    shard: 0,
                    limit: "rpm".into(),
                    amount: 1000,
                    bypass: false,
                    capacity: 5000,
                    shard_count: 1,
                },
                LeaseEntry {
                    entity: "key-1".into(),
                    shard: 0,
                    limit: "tpm".into(),
                    amount: 500_000,
                    bypass: false,
                    capacity: 900_000,
                    shard_count: 1,
                },
                LeaseEntry {
                    entity: "team-a".into(),
                    shard: 1,
                    limit: "tpm".into(),
                    amount: 500_000,
                    bypass: false,
                    capacity: 900_000,
                    shard_count: 1,
                },
            ],
        }
    }

    #[test]
    fn ids_round_trip_and_reject_tampering_and_other_keys() {
        let key = LeaseKey::new("k1");
        let id = key.encode(&lease());
        assert!(id.starts_with("zl1."));
        assert_eq!(key.decode(&id), Ok(lease()));
        assert_eq!(LeaseKey::new("k2").decode(&id), Err(LeaseIdError::Forged));
        let mut other = lease();
        other.entries[0].amount = 1;
        let forged = format!("{}.{}", key.encode(&other).rsplit_once('.').unwrap().0, id.rsplit_once('.').unwrap().1);
        assert_eq!(key.decode(&forged), Err(LeaseIdError::Forged));
        assert_eq!(key.decode("zl1.abc"), Err(LeaseIdError::Malformed));
        assert_eq!(key.decode("nonsense"), Err(LeaseIdError::Malformed));
    }

    #[test]
    fn adjust_moves_every_bucket_of_the_limit_and_rollback_credits_what_was_consumed() {
        let l = lease();
        let adjust = LeaseChange::Adjust(vec![("tpm".into(), Millitokens(-200_000))]);
        assert_eq!(
            l.writes(&adjust),
            vec![
                BucketDeltas {
                    entity: "key-1".into(),
                    shard: 0,
                    bypass: false,
                    deltas: vec![("tpm".into(), -200_000)],
                    pins: vec![(900_000, 1)],
                },
                BucketDeltas {
                    entity: "team-a".into(),
                    shard: 1,
                    bypass: false,
                    deltas: vec![("tpm".into(), -200_000)],
                    pins: vec![(900_000, 1)],
                },
            ]
        );
        let next = l.after(&adjust);
        assert_eq!((next.seq, next.entries[1].amount, next.entries[2].amount), (1, 300_000, 300_000));
        assert_eq!(
            next.writes(&LeaseChange::Rollback),
            vec![
                BucketDeltas {
                    entity: "key-1".into(),
                    shard: 0,
                    bypass: false,
                    deltas: vec![("rpm".into(), -1000), ("tpm".into(), -300_000)],
                    pins: vec![(5000, 1), (900_000, 1)],
                },
                BucketDeltas {
                    entity: "team-a".into(),
                    shard: 1,
                    bypass: false,
                    deltas: vec![("tpm".into(), -300_000)],
                    pins: vec![(900_000, 1)],
                },
            ]
        );
        assert!(l.writes(&LeaseChange::Release).is_empty());
    }

    #[test]
    fn the_state_applies_each_change_once() {
        let l = lease();
        let adjust = LeaseChange::Adjust(vec![("tpm".into(), Millitokens(5))]);
        let fresh = LeaseState::default();
        assert_eq!(fresh.verdict(&l, &adjust), Verdict::Apply);
        let after = LeaseState::after(&l, &adjust);
        // The same adjust retried with the old id: done already.
        assert_eq!(after.verdict(&l, &adjust), Verdict::Done);
        // Another adjust with the old id: stale.
        let other = LeaseChange::Adjust(vec![("tpm".into(), Millitokens(6))]);
        assert!(matches!(after.verdict(&l, &other), Verdict::Conflict(m) if m.contains("stale")));
        let next = l.after(&adjust);
        assert_eq!(after.verdict(&next, &LeaseChange::Rollback), Verdict::Apply);
        let ended = LeaseState::after(&next, &LeaseChange::Rollback);
        assert_eq!(ended.verdict(&next, &LeaseChange::Rollback), Verdict::Done);
        assert_eq!(
            ended.verdict(&next, &LeaseChange::Release),
            Verdict::Conflict("the lease was already rolled back".into())
        );
        assert!(matches!(ended.verdict(&next, &adjust), Verdict::Conflict(_)));
    }

    #[test]
    fn expiry_is_inclusive_of_the_deadline() {
        let l = lease();
        assert!(!l.expired(EpochMillis(59_999)));
        assert!(l.expired(EpochMillis(60_000)));
    }
}
