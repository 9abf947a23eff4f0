//! The writes of one bucket shard as types, each with its one renderer into a conditional
//! `UpdateItem`: the YAML-rule path, the entity path and the lease changes say *what* changes
//! and the renderer says it in one expression scheme.
//!
//! * [`Speculative`]: the fast path's debit (§11.2), every condition of the fast path in one
//!   `ADD`.
//! * [`ShardWrite`]: the slow path's update under the `rf` lock (§11.6 b): each limit's
//!   delta, guard and pins, the stamps, the owner.
//! * [`Credit`]: tokens given back (a refund, a rollback, a negative adjust) and usage
//!   changed, self-trimming at the shard's ceiling (§11.10).
//! * [`Consume`]: consumption alone, no refill (§11.6 c): the slow path's retry after a lost
//!   race, a rejected rule's debt, a bypassed bucket's usage.
//! * [`StampRemoval`]: expired stamps removed after a rejection, pinned as read.

use aws_sdk_dynamodb::types::AttributeValue;
use zael_core::bucket::BucketLimit;

use super::expr::Ex;
use crate::db::UpdateReq;
use crate::item::s;
use crate::keys;

/// The fast path's speculative write: every requested limit debited and counted, and a
/// write unit taken, under every condition that makes a write without a read safe (the
/// balance covers the amount or a soft stamp is live; no expired stamp, `ttl` or `vu`; not
/// disabled; a write unit left). A failure returns the item as it was (`ALL_OLD`).
pub(super) struct Speculative<'a> {
    pub now: i64,
    /// Per limit: its name, the amount (millitokens) and, for a YAML rule, its parameters,
    /// pinned so that a changed rule takes the slow path that syncs them.
    pub limits: Vec<(&'a str, i64, Option<BucketLimit>)>,
    /// Sent to a bucket known bypassed: only `tc` counted, under a live `bypass` stamp.
    pub bypass_shape: bool,
}

impl Speculative<'_> {
    pub(super) fn render(&self, pk: String) -> UpdateReq {
        let mut ex = Ex::default();
        ex.name("#byp", "bypass").name("#ttl", "ttl").name("#dis", "disabled");
        if !self.bypass_shape {
            ex.name("#vu", "vu");
        }
        ex.name("#wt", &keys::battr(keys::WCU, "tk")).name("#wc", &keys::battr(keys::WCU, "tc"));
        ex.num(":now", self.now).num(":nows", self.now.div_euclid(1000));
        ex.num(":wper", keys::WCU_PER_WRITE).num(":wd", -keys::WCU_PER_WRITE);
        let mut add = vec!["#wt :wd".to_owned(), "#wc :wper".to_owned()];
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        for (i, (name, amount, pin)) in self.limits.iter().enumerate() {
            ex.name(&format!("#c{i}"), &keys::battr(name, "tc")).num(&format!(":a{i}"), *amount);
            add.push(format!("#c{i} :a{i}"));
            if !self.bypass_shape {
                ex.name(&format!("#t{i}"), &keys::battr(name, "tk"));
                ex.name(&format!("#p{i}"), &keys::battr(name, "cp"))
                    .name(&format!("#s{i}"), &keys::battr(name, "soft"));
                ex.num(&format!(":d{i}"), -amount);
                add.push(format!("#t{i} :d{i}"));
                cond.push(format!(
                    "(#byp > :now OR (#s{i} > :now AND attribute_exists(#p{i}) AND attribute_exists(#t{i})) OR #t{i} >= :a{i})"
                ));
                cond.push(format!("(attribute_not_exists(#s{i}) OR #s{i} > :now)"));
                if let Some(limit) = pin {
                    ex.name(&format!("#a{i}"), &keys::battr(name, "ra"))
                        .name(&format!("#r{i}"), &keys::battr(name, "rp"));
                    ex.num(&format!(":pc{i}"), limit.capacity.0)
                        .num(&format!(":pa{i}"), limit.refill_amount.0)
                        .num(&format!(":pr{i}"), limit.refill_period_ms);
                    cond.push(format!("#p{i} = :pc{i} AND #a{i} = :pa{i} AND #r{i} = :pr{i}"));
                }
            }
        }
        if self.bypass_shape {
            cond.push("#byp > :now".into());
        } else {
            cond.push("(attribute_not_exists(#byp) OR #byp > :now)".into());
        }
        cond.push("#wt >= :wper".into());
        cond.push("(attribute_not_exists(#ttl) OR #ttl > :nows)".into());
        cond.push("attribute_not_exists(#dis)".into());
        if !self.bypass_shape {
            cond.push("(#byp > :now OR attribute_not_exists(#vu) OR #vu > :now)".into());
        }
        ex.req(pk, format!("ADD {}", add.join(", ")), cond)
    }
}

/// How one limit of the shard changes.
pub(super) enum Balance {
    /// `ADD tk delta, tc usage` on a limit the item holds.
    Add {
        delta: i64,
        usage: i64,
        /// The stored balance must be at least this (the admission stays valid); with
        /// `soft_escape`, a live soft stamp on the limit passes instead.
        at_least: Option<(i64, bool)>,
        /// The stored balance must be at most this (the balance read: the refill added since
        /// is not counted twice).
        at_most: Option<i64>,
    },
    /// A limit the item lacks: `SET tk, tc` and the parameters, unless another writer seeded
    /// it meanwhile.
    Seed { tk: i64, usage: i64 },
}

/// One limit's part of the write.
pub(super) struct LimitWrite<'a> {
    pub name: &'a str,
    pub balance: Balance,
    /// `SET cp, ra, rp` (a seed, or a param sync to the rule's limit).
    pub params: Option<BucketLimit>,
}

/// A stamp attribute (`b_{n}_soft`, `bypass`, `disabled`): what it becomes, pinned on the
/// value read (`None`: absent when read).
pub(super) struct StampWrite<'a> {
    pub attr: String,
    pub to: StampTo,
    pub read: Option<&'a AttributeValue>,
}

pub(super) enum StampTo {
    /// Unchanged, but pinned.
    Keep,
    Set(i64),
    Remove,
}

/// The owner stamp of an entity's bucket (§7): its parent and the META generation read.
pub(super) struct Owner<'a> {
    pub parent: Option<&'a str>,
    pub generation: Option<(i64, &'a str)>,
}

/// The rf-locked update of one shard.
pub(super) struct ShardWrite<'a> {
    /// The decision's instant (a soft stamp is live when later).
    pub now: i64,
    /// `rf` written, and as read (the lock).
    pub rf: (i64, i64),
    pub limits: Vec<LimitWrite<'a>>,
    /// `Some`: `SET ttl`; `None`: `REMOVE ttl`.
    pub ttl: Option<i64>,
    /// `vu` as read: pinned (absent when `None`) and removed.
    pub vu: Option<i64>,
    pub stamps: Vec<StampWrite<'a>>,
    /// The `cascade` flag an entity bucket carries.
    pub cascade: Option<bool>,
    pub owner: Option<Owner<'a>>,
}

impl ShardWrite<'_> {
    /// The `UpdateItem` on `pk`: one placeholder scheme, `#t{i}`/`#c{i}` for the balance and
    /// usage of the i-th limit, `#p{i}`/`#a{i}`/`#r{i}` for its parameters, `#x{i}` for the
    /// i-th stamp.
    pub(super) fn render(&self, pk: String) -> UpdateReq {
        let mut ex = Ex::default();
        ex.name("#rf", "rf").name("#ttl", "ttl").name("#vu", "vu");
        ex.num(":rf", self.rf.0).num(":rf_read", self.rf.1);
        let mut set = vec!["#rf = :rf".to_owned()];
        let mut add = Vec::new();
        let mut remove = Vec::new();
        let mut cond = vec!["#rf = :rf_read".to_owned()];
        for (i, l) in self.limits.iter().enumerate() {
            let (t, c) = (format!("#t{i}"), format!("#c{i}"));
            ex.name(&t, &keys::battr(l.name, "tk")).name(&c, &keys::battr(l.name, "tc"));
            match l.balance {
                Balance::Add { delta, usage, at_least, at_most } => {
                    ex.num(&format!(":d{i}"), delta).num(&format!(":u{i}"), usage);
                    add.push(format!("{t} :d{i}"));
                    add.push(format!("{c} :u{i}"));
                    if let Some((floor, soft_escape)) = at_least {
                        ex.num(&format!(":g{i}"), floor);
                        if soft_escape {
                            ex.name(&format!("#s{i}"), &keys::battr(l.name, "soft")).num(":now", self.now);
                            cond.push(format!("(#s{i} > :now OR {t} >= :g{i})"));
                        } else {
                            cond.push(format!("{t} >= :g{i}"));
                        }
                    }
                    if let Some(read) = at_most {
                        ex.num(&format!(":k{i}"), read);
                        cond.push(format!("{t} <= :k{i}"));
                    }
                }
                Balance::Seed { tk, usage } => {
                    ex.name(&format!("#p{i}"), &keys::battr(l.name, "cp"));
                    ex.num(&format!(":st{i}"), tk).num(&format!(":u{i}"), usage);
                    set.push(format!("{t} = :st{i}"));
                    set.push(format!("{c} = :u{i}"));
                    cond.push(format!("(attribute_not_exists(#p{i}) OR attribute_not_exists({t}))"));
                }
            }
            if let Some(limit) = l.params {
                ex.name(&format!("#p{i}"), &keys::battr(l.name, "cp"))
                    .name(&format!("#a{i}"), &keys::battr(l.name, "ra"))
                    .name(&format!("#r{i}"), &keys::battr(l.name, "rp"));
                ex.num(&format!(":p{i}"), limit.capacity.0)
                    .num(&format!(":a{i}"), limit.refill_amount.0)
                    .num(&format!(":r{i}"), limit.refill_period_ms);
                set.extend([format!("#p{i} = :p{i}"), format!("#a{i} = :a{i}"), format!("#r{i} = :r{i}")]);
            }
        }
        render_stamps(&mut ex, &self.stamps, &mut set, &mut remove, &mut cond);
        match self.ttl {
            Some(ttl) => {
                ex.num(":ttl", ttl);
                set.push("#ttl = :ttl".into());
            }
            None => remove.push("#ttl".into()),
        }
        match self.vu {
            None => cond.push("attribute_not_exists(#vu)".into()),
            Some(v) => {
                ex.num(":vur", v);
                cond.push("#vu = :vur".into());
                remove.push("#vu".into());
            }
        }
        if let Some(cascade) = self.cascade {
            ex.name("#cas", "cascade").val(":cas", AttributeValue::Bool(cascade));
            set.push("#cas = :cas".into());
        }
        if let Some(owner) = &self.owner {
            ex.name("#par", "parent_id");
            match owner.parent {
                Some(parent) => {
                    ex.val(":par", s(parent));
                    set.push("#par = :par".into());
                }
                None => remove.push("#par".into()),
            }
            if let Some((pgen, pinc)) = owner.generation {
                ex.name("#pg", "pgen").name("#pi", "pinc").num(":pg", pgen).val(":pi", s(pinc));
                set.push("#pg = :pg".into());
                set.push("#pi = :pi".into());
                cond.push(
                    "(attribute_not_exists(#pi) OR (#pi = :pi AND (attribute_not_exists(#pg) OR #pg <= :pg)))".into(),
                );
            }
        }
        let mut update = format!("SET {}", set.join(", "));
        if !add.is_empty() {
            update.push_str(&format!(" ADD {}", add.join(", ")));
        }
        if !remove.is_empty() {
            update.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        ex.req(pk, update, cond)
    }
}

/// One limit's part of a [`Credit`].
pub(super) struct Delta<'a> {
    pub name: &'a str,
    /// Added to `tk` (a credit is positive); `None`: the balance is untouched (bypass).
    pub tk: Option<i64>,
    /// Added to `tc`.
    pub tc: Option<i64>,
    /// The limit's stored `cp` and the bucket's `shard_count` a credit was computed from: the
    /// credited balance must stay at or below the shard's ceiling, `cp // shard_count`.
    pub ceiling: Option<(i64, i64)>,
}

/// Tokens given back and usage changed, in one `ADD` (the library's `build_composite_adjust`).
/// A credit that would lift a balance above its ceiling fails its condition; it is then sent
/// again with `trim`, unconditioned, with `SET vu = 0`, which sends the next acquire to the
/// slow path, whose refill clamps the balance to the ceiling.
pub(super) struct Credit<'a> {
    pub limits: Vec<Delta<'a>>,
    /// `vu` as read, pinned (`Some(None)`: absent); `None`: not pinned.
    pub vu: Option<Option<i64>>,
    pub trim: bool,
}

impl Credit<'_> {
    /// The `UpdateItem` on `pk`, or `None` when it changes nothing.
    pub(super) fn render(&self, pk: String) -> Option<UpdateReq> {
        let mut ex = Ex::default();
        let mut add = Vec::new();
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        let mut pinned_count = None;
        for (i, d) in self.limits.iter().enumerate() {
            if let Some(tk) = d.tk {
                ex.name(&format!("#t{i}"), &keys::battr(d.name, "tk")).num(&format!(":d{i}"), tk);
                add.push(format!("#t{i} :d{i}"));
                if let Some((cp, shard_count)) = d.ceiling.filter(|_| tk > 0 && !self.trim) {
                    let ceiling = cp.div_euclid(shard_count.max(1));
                    ex.name(&format!("#p{i}"), &keys::battr(d.name, "cp"));
                    ex.num(&format!(":m{i}"), ceiling.saturating_sub(tk)).num(&format!(":p{i}"), cp);
                    cond.push(format!("#t{i} <= :m{i}"));
                    cond.push(format!("#p{i} = :p{i}"));
                    pinned_count = Some(shard_count);
                }
            }
            if let Some(tc) = d.tc {
                ex.name(&format!("#c{i}"), &keys::battr(d.name, "tc")).num(&format!(":u{i}"), tc);
                add.push(format!("#c{i} :u{i}"));
            }
        }
        if add.is_empty() {
            return None;
        }
        if let Some(shard_count) = pinned_count {
            ex.name("#sc", "shard_count").num(":sc", shard_count);
            cond.push(if shard_count == 1 {
                "(attribute_not_exists(#sc) OR #sc = :sc)".to_owned()
            } else {
                "#sc = :sc".to_owned()
            });
        }
        let mut update = format!("ADD {}", add.join(", "));
        if self.trim {
            ex.name("#vu", "vu").num(":vuz", 0);
            update = format!("SET #vu = :vuz {update}");
        } else if let Some(vu) = self.vu {
            ex.name("#vu", "vu");
            match vu {
                None => cond.push("attribute_not_exists(#vu)".into()),
                Some(v) => {
                    ex.num(":vur", v);
                    cond.push("#vu = :vur".into());
                }
            }
        }
        Some(ex.req(pk, update, cond))
    }
}

/// The stamps' clauses (`#x{i}`): each set or removed, pinned on its value as read.
fn render_stamps(
    ex: &mut Ex,
    stamps: &[StampWrite<'_>],
    set: &mut Vec<String>,
    remove: &mut Vec<String>,
    cond: &mut Vec<String>,
) {
    for (i, st) in stamps.iter().enumerate() {
        let x = format!("#x{i}");
        ex.name(&x, &st.attr);
        match st.to {
            StampTo::Keep => {}
            StampTo::Set(deadline) => {
                ex.num(&format!(":xs{i}"), deadline);
                set.push(format!("{x} = :xs{i}"));
            }
            StampTo::Remove => remove.push(x.clone()),
        }
        match st.read {
            Some(v) => {
                ex.val(&format!(":xr{i}"), v.clone());
                cond.push(format!("{x} = :xr{i}"));
            }
            None => cond.push(format!("attribute_not_exists({x})")),
        }
    }
}

/// Expired stamps removed, nothing else: what a rejected pass owes the stamps it read
/// expired (the library's clean-up), pinned on each as read.
pub(super) struct StampRemoval<'a> {
    /// Each stamp's attribute and its value as read.
    pub stamps: Vec<(String, &'a AttributeValue)>,
}

impl StampRemoval<'_> {
    /// The `UpdateItem` on `pk`, or `None` without a stamp to remove.
    pub(super) fn render(&self, pk: String) -> Option<UpdateReq> {
        if self.stamps.is_empty() {
            return None;
        }
        let stamps: Vec<StampWrite<'_>> = (self.stamps.iter())
            .map(|(attr, read)| StampWrite { attr: attr.clone(), to: StampTo::Remove, read: Some(read) })
            .collect();
        let mut ex = Ex::default();
        let (mut set, mut remove) = (Vec::new(), Vec::new());
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        render_stamps(&mut ex, &stamps, &mut set, &mut remove, &mut cond);
        Some(ex.req(pk, format!("REMOVE {}", remove.join(", ")), cond))
    }
}

/// How a [`Consume`] keeps one limit's take valid without a read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Guard {
    /// The item holds the limit (a soft limit, a debt, a bypassed bucket's usage).
    Held,
    /// The stored balance is at least `floor`; with `soft_escape`, a live soft stamp on a held
    /// limit passes instead.
    Covers { floor: i64, soft_escape: bool },
    /// The item may lack the limit: then it is seeded at `start` with `limit`'s parameters
    /// before the take; when it holds it, its balance is at least `floor`.
    Seed { start: i64, limit: BucketLimit, floor: Option<i64> },
}

/// One limit's part of a [`Consume`].
pub(super) struct Take<'a> {
    pub name: &'a str,
    /// Millitokens off `tk` (0: `tk` untouched).
    pub debit: i64,
    /// Millitokens onto `tc`.
    pub usage: i64,
    pub guard: Guard,
}

/// Consumption alone, in one `ADD`: no refill, no stamp change, `rf` unpinned.
pub(super) struct Consume<'a> {
    /// The decision's instant (a stamp is live when later).
    pub now: i64,
    pub limits: Vec<Take<'a>>,
    /// Only while the bucket's `bypass` stamp is live.
    pub under_bypass: bool,
}

impl Consume<'_> {
    /// The `UpdateItem` on `pk`, or `None` when it changes nothing; the same `#t{i}`/`#c{i}`/
    /// `#p{i}` scheme as [`ShardWrite`].
    pub(super) fn render(&self, pk: String) -> Option<UpdateReq> {
        let mut ex = Ex::default();
        let (mut set, mut add) = (Vec::new(), Vec::new());
        let mut cond = vec!["attribute_exists(PK)".to_owned()];
        for (i, l) in self.limits.iter().enumerate().filter(|(_, l)| l.debit != 0 || l.usage != 0) {
            let (t, c, p) = (format!("#t{i}"), format!("#c{i}"), format!("#p{i}"));
            ex.name(&t, &keys::battr(l.name, "tk")).name(&c, &keys::battr(l.name, "tc"));
            ex.num(&format!(":u{i}"), l.usage);
            add.push(format!("{c} :u{i}"));
            // `#p{i}` is declared only where an expression uses it (DynamoDB refuses unused names).
            if !matches!(l.guard, Guard::Covers { soft_escape: false, .. }) {
                ex.name(&p, &keys::battr(l.name, "cp"));
            }
            match l.guard {
                Guard::Seed { start, limit, floor } => {
                    ex.name(&format!("#a{i}"), &keys::battr(l.name, "ra"))
                        .name(&format!("#r{i}"), &keys::battr(l.name, "rp"));
                    ex.num(&format!(":st{i}"), start).num(&format!(":d{i}"), l.debit);
                    ex.num(&format!(":p{i}"), limit.capacity.0)
                        .num(&format!(":a{i}"), limit.refill_amount.0)
                        .num(&format!(":r{i}"), limit.refill_period_ms);
                    set.push(format!("{t} = if_not_exists({t}, :st{i}) - :d{i}"));
                    for x in ["p", "a", "r"] {
                        set.push(format!("#{x}{i} = if_not_exists(#{x}{i}, :{x}{i})"));
                    }
                    if let Some(floor) = floor {
                        ex.num(&format!(":g{i}"), floor);
                        cond.push(format!("(attribute_not_exists({t}) OR {t} >= :g{i})"));
                    }
                    continue;
                }
                Guard::Held => cond.push(format!("attribute_exists({p}) AND attribute_exists({t})")),
                Guard::Covers { floor, soft_escape } => {
                    ex.num(&format!(":g{i}"), floor);
                    if soft_escape {
                        ex.name(&format!("#s{i}"), &keys::battr(l.name, "soft")).num(":now", self.now);
                        cond.push(format!(
                            "({t} >= :g{i} OR (#s{i} > :now AND attribute_exists({p}) AND attribute_exists({t})))"
                        ));
                    } else {
                        cond.push(format!("{t} >= :g{i}"));
                    }
                }
            }
            if l.debit != 0 {
                ex.num(&format!(":d{i}"), -l.debit);
                add.push(format!("{t} :d{i}"));
            }
        }
        if add.is_empty() {
            return None;
        }
        if self.under_bypass {
            ex.name("#byp", "bypass").num(":now", self.now);
            cond.push("#byp > :now".into());
        }
        let mut update = String::new();
        if !set.is_empty() {
            update = format!("SET {} ", set.join(", "));
        }
        update.push_str(&format!("ADD {}", add.join(", ")));
        Some(ex.req(pk, update, cond))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::n;

    /// DynamoDB refuses a request that declares a name or value no expression uses.
    fn assert_all_used(req: &UpdateReq) {
        let text = format!("{} {}", req.update, req.condition.as_deref().unwrap_or(""));
        let used = |key: &str| {
            text.match_indices(key)
                .any(|(at, _)| !text[at + key.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        };
        for key in req.names.keys().chain(req.values.keys()) {
            assert!(used(key), "{key} is declared but unused in {text}");
        }
    }

    #[test]
    fn one_scheme_for_limits_stamps_ttl_and_owner() {
        let read = AttributeValue::N("99".into());
        let write = ShardWrite {
            now: 10,
            rf: (10, 7),
            limits: vec![
                LimitWrite {
                    name: "hits",
                    balance: Balance::Add {
                        delta: -2000,
                        usage: 2000,
                        at_least: Some((1500, true)),
                        at_most: Some(300),
                    },
                    params: Some(BucketLimit::from_table(5000, 5000, 60_000)),
                },
                LimitWrite { name: "tpm", balance: Balance::Seed { tk: 9000, usage: 1000 }, params: None },
            ],
            ttl: None,
            vu: Some(0),
            stamps: vec![StampWrite { attr: "bypass".into(), to: StampTo::Remove, read: Some(&read) }],
            cascade: Some(false),
            owner: Some(Owner { parent: None, generation: None }),
        };
        let req = write.render("ns/BUCKET#e#r#0".into());
        assert_all_used(&req);
        assert_eq!(
            req.update,
            "SET #rf = :rf, #p0 = :p0, #a0 = :a0, #r0 = :r0, #t1 = :st1, #c1 = :u1, #cas = :cas \
             ADD #t0 :d0, #c0 :u0 REMOVE #x0, #ttl, #vu, #par"
        );
        assert_eq!(
            req.condition.as_deref(),
            Some(
                "#rf = :rf_read AND (#s0 > :now OR #t0 >= :g0) AND #t0 <= :k0 AND \
                 (attribute_not_exists(#p1) OR attribute_not_exists(#t1)) AND #x0 = :xr0 AND #vu = :vur"
            )
        );
        assert_eq!(req.names["#t0"], "b_hits_tk");
        assert_eq!(req.names["#s0"], "b_hits_soft");
        assert_eq!(req.names["#x0"], "bypass");
        assert_eq!(req.values[":g0"], AttributeValue::N("1500".into()));
        assert_eq!(req.values[":p0"], AttributeValue::N("5000".into()));
    }

    #[test]
    fn a_speculative_write_pins_a_rule_and_a_bypass_shape_counts_only() {
        let limit = BucketLimit::from_table(5000, 5000, 60_000);
        let write = Speculative { now: 1500, limits: vec![("hits", 2000, Some(limit))], bypass_shape: false };
        let req = write.render("pk".into());
        assert_all_used(&req);
        assert_eq!(req.update, "ADD #wt :wd, #wc :wper, #c0 :a0, #t0 :d0");
        let cond = req.condition.expect("conditions");
        assert!(cond.contains("#t0 >= :a0") && cond.contains("#p0 = :pc0 AND #a0 = :pa0 AND #r0 = :pr0"), "{cond}");
        assert_eq!((req.values[":d0"].clone(), req.values[":nows"].clone()), (n(-2000), n(1)));
        let bypass = Speculative { bypass_shape: true, ..write }.render("pk".into());
        assert_all_used(&bypass);
        assert_eq!(bypass.update, "ADD #wt :wd, #wc :wper, #c0 :a0");
        assert_eq!(
            bypass.condition.as_deref(),
            Some(
                "attribute_exists(PK) AND #byp > :now AND #wt >= :wper AND \
                 (attribute_not_exists(#ttl) OR #ttl > :nows) AND attribute_not_exists(#dis)"
            )
        );
    }

    #[test]
    fn a_credit_stays_under_the_ceiling_until_it_is_trimmed() {
        let delta = |tk, tc| Delta { name: "rpm", tk, tc, ceiling: Some((10_000, 2)) };
        let credit = Credit { limits: vec![delta(Some(3000), Some(-3000))], vu: Some(None), trim: false };
        let req = credit.render("pk".into()).expect("a write");
        assert_all_used(&req);
        assert_eq!(req.update, "ADD #t0 :d0, #c0 :u0");
        assert_eq!(
            req.condition.as_deref(),
            Some("attribute_exists(PK) AND #t0 <= :m0 AND #p0 = :p0 AND #sc = :sc AND attribute_not_exists(#vu)")
        );
        assert_eq!(req.values[":m0"], AttributeValue::N("2000".into()));
        let trimmed = Credit { trim: true, ..credit }.render("pk".into()).expect("a write");
        assert_all_used(&trimmed);
        assert_eq!(trimmed.update, "SET #vu = :vuz ADD #t0 :d0, #c0 :u0");
        assert_eq!(trimmed.condition.as_deref(), Some("attribute_exists(PK)"));
        // A debit (an adjust consuming more) is never held to the ceiling; bypass leaves tk.
        let debit = Credit { limits: vec![delta(Some(-500), Some(500)), delta(None, Some(1))], vu: None, trim: false };
        let req = debit.render("pk".into()).expect("a write");
        assert_all_used(&req);
        assert_eq!(req.update, "ADD #t0 :d0, #c0 :u0, #c1 :u1");
        assert_eq!(req.condition.as_deref(), Some("attribute_exists(PK)"));
        assert!(Credit { limits: vec![delta(None, None)], vu: None, trim: false }.render("pk".into()).is_none());
    }

    #[test]
    fn a_stamp_removal_removes_each_stamp_as_read_and_nothing_without_one() {
        let (bypass, soft) = (n(900), n(1200));
        let removal = StampRemoval { stamps: vec![("bypass".into(), &bypass), ("b_rpm_soft".into(), &soft)] };
        let req = removal.render("pk".into()).expect("a write");
        assert_all_used(&req);
        assert_eq!(req.update, "REMOVE #x0, #x1");
        assert_eq!(req.condition.as_deref(), Some("attribute_exists(PK) AND #x0 = :xr0 AND #x1 = :xr1"));
        assert_eq!((req.names["#x0"].as_str(), req.names["#x1"].as_str()), ("bypass", "b_rpm_soft"));
        assert_eq!((req.values[":xr0"].clone(), req.values[":xr1"].clone()), (n(900), n(1200)));
        assert_eq!(req.names.len() + req.values.len(), 4);
        assert!(StampRemoval { stamps: Vec::new() }.render("pk".into()).is_none());
    }

    #[test]
    fn a_consumption_is_guarded_per_limit_and_seeds_a_missing_one() {
        let take = |name, debit, usage, guard| Take { name, debit, usage, guard };
        let write = Consume {
            now: 77,
            limits: vec![
                take("rpm", 2000, 2000, Guard::Covers { floor: 2000, soft_escape: false }),
                take("tpm", 500, 500, Guard::Held),
                take("hits", 1000, 1000, Guard::Covers { floor: 1500, soft_escape: true }),
                take("idle", 0, 0, Guard::Held),
            ],
            under_bypass: false,
        };
        let req = write.render("pk".into()).expect("a write");
        assert_all_used(&req);
        assert_eq!(req.update, "ADD #c0 :u0, #t0 :d0, #c1 :u1, #t1 :d1, #c2 :u2, #t2 :d2");
        assert_eq!(
            req.condition.as_deref(),
            Some(
                "attribute_exists(PK) AND #t0 >= :g0 AND attribute_exists(#p1) AND attribute_exists(#t1) AND \
                 (#t2 >= :g2 OR (#s2 > :now AND attribute_exists(#p2) AND attribute_exists(#t2)))"
            )
        );
        assert_eq!((req.values[":d0"].clone(), req.values[":g2"].clone()), (n(-2000), n(1500)));
        assert_eq!(req.names["#s2"], "b_hits_soft");
        let limit = BucketLimit::from_table(5000, 5000, 60_000);
        let seed = Consume {
            now: 77,
            limits: vec![take("hits", 1000, 1000, Guard::Seed { start: 5000, limit, floor: Some(1000) })],
            under_bypass: false,
        };
        let req = seed.render("pk".into()).expect("a write");
        assert_all_used(&req);
        assert_eq!(
            req.update,
            "SET #t0 = if_not_exists(#t0, :st0) - :d0, #p0 = if_not_exists(#p0, :p0), \
             #a0 = if_not_exists(#a0, :a0), #r0 = if_not_exists(#r0, :r0) ADD #c0 :u0"
        );
        assert_eq!(
            req.condition.as_deref(),
            Some("attribute_exists(PK) AND (attribute_not_exists(#t0) OR #t0 >= :g0)")
        );
        assert_eq!(req.values[":d0"], n(1000));
        let bypassed = Consume { now: 77, limits: vec![take("hits", 0, 3000, Guard::Held)], under_bypass: true };
        let req = bypassed.render("pk".into()).expect("a write");
        assert_all_used(&req);
        assert_eq!(req.update, "ADD #c0 :u0");
        assert_eq!(
            req.condition.as_deref(),
            Some("attribute_exists(PK) AND attribute_exists(#p0) AND attribute_exists(#t0) AND #byp > :now")
        );
        let nothing = Consume { now: 77, limits: vec![take("hits", 0, 0, Guard::Held)], under_bypass: true };
        assert!(nothing.render("pk".into()).is_none());
    }
}
