//! Planning an operator's reset or top-up of one (entity, resource): the library's
//! `bucket_ops.plan_operation` (zae-limiter 0.17.0, ADR-149) for dripping limits. Pure: given
//! every shard as read and one clock reading, what one `rf`-locked, zero-consumption pass
//! writes on each shard. No I/O (`commands/bucket_ops.rs` reads, writes and retries).
//!
//! Each shard is first **materialised** as an acquire's slow path would: every configured
//! limit on it (and `wcu`) refilled to `now` with the shard's share (`cp // shard_count`,
//! `ra // shard_count`; `wcu` is never divided), clamped at that share. Then the operation
//! applies to the named limits, and each shard's write is the difference from what was read,
//! as a **delta** (`ADD b_{name}_tk`), never a set, so a debit landing between the read and
//! the write is kept. The balance arithmetic is core's ([`zael_core::bucket`]).
//!
//! Quotas, calendar resets, duration windows and schedules (`_apply_reset_edge`,
//! `_apply_window_roll`, `split_weighted`, `tu`/`gc`) are not planned here: the caller refuses
//! an operation that would meet them (see `commands/bucket_ops.rs`).

use std::collections::BTreeMap;
use zael_core::bucket::{BucketLimit, BucketState, EpochMillis, Millitokens};
use zael_table::keys::WCU;

/// One limit on a shard as read: `b_{name}_{tk,cp,ra,rp}` (millitokens, ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLimit {
    pub name: String,
    pub tk: i64,
    pub cp: i64,
    pub ra: i64,
    pub rp: i64,
}

/// One shard of the bucket as read (strongly consistent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRead {
    pub shard_id: i64,
    pub shard_count: i64,
    /// Whether the item stores `shard_count` (the write's pin is `attribute_not_exists`
    /// when it does not).
    pub shard_count_stored: bool,
    pub rf: i64,
    pub limits: Vec<StoredLimit>,
}

/// What one shard's pass writes (ADR-149 §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardWrite {
    pub shard_id: i64,
    pub shard_count: i64,
    pub shard_count_stored: bool,
    /// The `rf` read, which the write is conditioned on.
    pub expected_rf: i64,
    /// `max(now, expected_rf + 1)`: never backward, strictly past the `rf` read.
    pub written_rf: i64,
    /// `ADD b_{name}_tk` per limit, millitokens; zero deltas are omitted.
    pub deltas: BTreeMap<String, i64>,
}

/// What the operation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Restore the named limits to their full share.
    Reset(Vec<String>),
    /// Add whole tokens to the named limits, in the order given.
    TopUp(Vec<(String, i64)>),
}

/// Every shard's write, and per named limit the whole tokens restored or granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<ShardWrite>,
    pub amounts: BTreeMap<String, i64>,
}

/// A limit on one shard after materialisation.
struct Working {
    read: i64,
    tokens: i64,
    ceiling: i64,
}

/// Splits up to `total` in proportion to each key's `headroom`, never above it: the library's
/// `split_by_headroom`. The remainder of the proportional split goes lowest key first, each
/// still within its headroom.
pub fn split_by_headroom(total: i64, headroom: &BTreeMap<usize, i64>) -> BTreeMap<usize, i64> {
    let capacity: i128 = headroom.values().map(|&h| i128::from(h)).sum();
    let total = i128::from(total).min(capacity);
    if total <= 0 {
        return headroom.keys().map(|&k| (k, 0)).collect();
    }
    let mut portions: BTreeMap<usize, i128> =
        headroom.iter().map(|(&k, &room)| (k, (total * i128::from(room)).div_euclid(capacity))).collect();
    let mut remainder = total - portions.values().sum::<i128>();
    for (key, room) in headroom {
        let portion = portions.get_mut(key).expect("every key has a portion");
        let add = remainder.min(i128::from(*room) - *portion);
        *portion += add;
        remainder -= add;
    }
    // Each portion is at most its headroom, an i64.
    portions.into_iter().map(|(k, p)| (k, p as i64)).collect()
}

/// Materialises every configured limit (and `wcu`) of `shard` at `now`; limits no longer
/// configured are left exactly as an acquire leaves them.
fn materialise(shard: &ShardRead, configured: &[String], now: i64) -> BTreeMap<String, Working> {
    shard
        .limits
        .iter()
        .filter(|l| l.name == WCU || configured.contains(&l.name))
        .map(|l| {
            let shards = if l.name == WCU { 1 } else { shard.shard_count.max(1) };
            let share = BucketLimit {
                capacity: Millitokens(l.cp.div_euclid(shards)),
                refill_amount: Millitokens(l.ra.div_euclid(shards)),
                refill_period_ms: l.rp,
            };
            let read = BucketState { tokens: Millitokens(l.tk), refilled_at: EpochMillis(shard.rf) };
            let tokens = read.refilled(&share, EpochMillis(now)).tokens.0;
            (l.name.clone(), Working { read: l.tk, tokens, ceiling: share.capacity.0 })
        })
        .collect()
}

/// Plans a reset or top-up over every shard of one (entity, resource), all at one
/// `shard_count`. `configured` names the limits resolved from config for the pair; every
/// name in `operation` is one of them. `Err` is the library's message for a top-up of a limit
/// that no shard carries yet.
pub fn plan(operation: &Operation, configured: &[String], shards: &[ShardRead], now: i64) -> Result<Plan, String> {
    let mut working: Vec<BTreeMap<String, Working>> = shards.iter().map(|s| materialise(s, configured, now)).collect();
    let mut amounts = BTreeMap::new();
    match operation {
        Operation::Reset(names) => {
            for name in names {
                let mut restored: i128 = 0;
                for limit in working.iter_mut().filter_map(|w| w.get_mut(name)) {
                    // Debt is forgiven; the ceiling is the share.
                    restored += i128::from(limit.ceiling) - i128::from(limit.tokens);
                    limit.tokens = limit.ceiling;
                }
                amounts.insert(name.clone(), saturate(restored.div_euclid(1000)));
            }
        }
        Operation::TopUp(requested) => {
            for (name, amount) in requested {
                let headroom: BTreeMap<usize, i64> = working
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| w.get(name).map(|l| (i, (l.ceiling - l.tokens).div_euclid(1000).max(0))))
                    .collect();
                if headroom.is_empty() {
                    return Err(format!(
                        "Invalid amounts: limit '{name}' is configured but not yet on this bucket; acquire once to seed it, then top up"
                    ));
                }
                let portions = split_by_headroom(*amount, &headroom);
                for (&i, &portion) in &portions {
                    if let Some(limit) = working[i].get_mut(name) {
                        limit.tokens = limit.tokens.saturating_add(portion.saturating_mul(1000));
                    }
                }
                amounts.insert(name.clone(), portions.values().sum());
            }
        }
    }
    let writes = shards
        .iter()
        .zip(&working)
        .map(|(shard, work)| ShardWrite {
            shard_id: shard.shard_id,
            shard_count: shard.shard_count,
            shard_count_stored: shard.shard_count_stored,
            expected_rf: shard.rf,
            written_rf: now.max(shard.rf.saturating_add(1)),
            deltas: work
                .iter()
                .filter(|(_, l)| l.tokens != l.read)
                .map(|(name, l)| (name.clone(), l.tokens - l.read))
                .collect(),
        })
        .collect();
    Ok(Plan { writes, amounts })
}

fn saturate(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, tk: i64, cp: i64, ra: i64, rp: i64) -> StoredLimit {
        StoredLimit { name: name.into(), tk, cp, ra, rp }
    }

    fn shard(id: i64, count: i64, rf: i64, limits: Vec<StoredLimit>) -> ShardRead {
        ShardRead { shard_id: id, shard_count: count, shard_count_stored: true, rf, limits }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn headroom_split_is_proportional_then_lowest_first_and_never_above_the_room() {
        let rooms = BTreeMap::from([(0, 3), (1, 1), (2, 0)]);
        assert_eq!(split_by_headroom(2, &rooms), BTreeMap::from([(0, 2), (1, 0), (2, 0)]));
        assert_eq!(split_by_headroom(9, &rooms), BTreeMap::from([(0, 3), (1, 1), (2, 0)]));
        assert_eq!(split_by_headroom(5, &BTreeMap::from([(0, 0), (1, 0)])), BTreeMap::from([(0, 0), (1, 0)]));
        // 3 of 10 + 10: floor(3 × 10/20) = 1 each, the remainder to the lowest key.
        assert_eq!(split_by_headroom(3, &BTreeMap::from([(0, 10), (1, 10)])), BTreeMap::from([(0, 2), (1, 1)]));
    }

    #[test]
    fn a_reset_restores_the_share_forgives_debt_and_refills_wcu() {
        // 10/min (10_000 per 60_000 ms), read at rf = 0 holding -2 tokens; now = 6 s: +1 token.
        let shards = [shard(
            0,
            1,
            0,
            vec![limit("rpm", -2000, 10_000, 10_000, 60_000), limit("wcu", 999_000, 1_000_000, 1_000_000, 1000)],
        )];
        let p = plan(&Operation::Reset(names(&["rpm"])), &names(&["rpm"]), &shards, 6000).unwrap();
        assert_eq!(p.amounts, BTreeMap::from([("rpm".into(), 11)]));
        let w = &p.writes[0];
        assert_eq!((w.expected_rf, w.written_rf), (0, 6000));
        assert_eq!(w.deltas, BTreeMap::from([("rpm".into(), 12_000), ("wcu".into(), 1000)]));
    }

    #[test]
    fn limits_no_longer_configured_are_left_alone() {
        let shards =
            [shard(0, 1, 100, vec![limit("old", 0, 5000, 5000, 1000), limit("rpm", 1000, 5000, 5000, 60_000)])];
        let p = plan(&Operation::Reset(names(&["rpm"])), &names(&["rpm"]), &shards, 50).unwrap();
        // rf never moves backward and always past the one read.
        assert_eq!(p.writes[0].written_rf, 101);
        assert_eq!(p.writes[0].deltas, BTreeMap::from([("rpm".into(), 4000)]));
        assert_eq!(p.amounts["rpm"], 4);
    }

    #[test]
    fn a_sharded_reset_uses_each_shards_share() {
        // cp 10 over 2 shards: 5 each; 2.5 and 0.5 tokens held.
        let shards = [
            shard(0, 2, 1000, vec![limit("tpm", 2500, 10_000, 10_000, 86_400_000)]),
            shard(1, 2, 1000, vec![limit("tpm", 500, 10_000, 10_000, 86_400_000)]),
        ];
        let p = plan(&Operation::Reset(names(&["tpm"])), &names(&["tpm"]), &shards, 1000).unwrap();
        assert_eq!(p.amounts["tpm"], 7, "floor(7000 / 1000)");
        assert_eq!(p.writes[0].deltas["tpm"], 2500);
        assert_eq!(p.writes[1].deltas["tpm"], 4500);
    }

    #[test]
    fn a_dripping_top_up_is_bounded_by_the_ceiling() {
        let shards = [
            shard(0, 2, 0, vec![limit("tpm", 1500, 10_000, 10_000, 86_400_000)]),
            shard(1, 2, 0, vec![limit("tpm", 4000, 10_000, 10_000, 86_400_000)]),
        ];
        let top_up = Operation::TopUp(vec![("tpm".into(), 100)]);
        let p = plan(&top_up, &names(&["tpm"]), &shards, 0).unwrap();
        // Headroom floor(3.5) = 3 and 1 tokens: 4 granted of 100.
        assert_eq!(p.amounts["tpm"], 4);
        assert_eq!(p.writes[0].deltas["tpm"], 3000);
        assert_eq!(p.writes[1].deltas["tpm"], 1000);
        let small = Operation::TopUp(vec![("tpm".into(), 2)]);
        let p = plan(&small, &names(&["tpm"]), &shards, 0).unwrap();
        // floor(2 × 3/4) = 1 and floor(2 × 1/4) = 0; the remainder to shard 0, within its room.
        assert_eq!((p.writes[0].deltas["tpm"], p.writes[1].deltas.get("tpm")), (2000, None));
    }

    #[test]
    fn a_top_up_of_a_limit_no_shard_carries_is_refused() {
        let shards = [shard(0, 1, 0, vec![limit("rpm", 0, 5000, 5000, 60_000)])];
        let top_up = Operation::TopUp(vec![("tpm".into(), 1)]);
        assert_eq!(
            plan(&top_up, &names(&["rpm", "tpm"]), &shards, 0).unwrap_err(),
            "Invalid amounts: limit 'tpm' is configured but not yet on this bucket; acquire once to seed it, then top up"
        );
    }
}
