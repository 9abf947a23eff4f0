//! The slow path's write of one bucket shard as a type ([`ShardWrite`]), and its one
//! renderer into a conditional `UpdateItem` (§11.6 b): the YAML-rule path and the entity path
//! both say *what* changes (each limit's delta, guard and pins, the stamps, the owner) and
//! [`ShardWrite::render`] says it in one expression scheme, under the `rf` lock.

use aws_sdk_dynamodb::types::AttributeValue;
use zael_core::bucket::BucketLimit;

use super::expr::Ex;
use crate::db::UpdateReq;
use crate::item::s;
use crate::keys;

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
        for (i, st) in self.stamps.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
