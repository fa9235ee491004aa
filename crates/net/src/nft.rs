//! The node's nftables table, rendered declaratively from persisted state.
//!
//! Every change replaces the whole table in one `nft` transaction (add,
//! delete, re-add): there are no rule handles to track, a restarted agent
//! converges by re-rendering, and a crash between two changes never leaves a
//! half-applied table. Existing connections keep their NAT bindings (those
//! live in conntrack, not in the rules).
//!
//! ```text
//! table ip flotilla {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump published }
//!   chain output      { type nat hook output priority -100; ip daddr != 127.0.0.0/8 fib daddr type local jump published }
//!   chain published   { [ip daddr H] tcp dport P dnat to C:Q comment "<container id>" ... }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr SUBNET oifname BRIDGE ct status dnat masquerade        # hairpin
//!                       ip saddr SUBNET ip daddr != { SUBNET, extra } oifname != BRIDGE masquerade }
//! }
//! ```

use std::borrow::Cow;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::Ipv4Addr;

use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem, CT,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::error::NetError;
use crate::ports::PortMapping;
use crate::subnet::Ipv4Net;

/// One published port with the address it forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Publication {
    pub container_id: String,
    pub container_ip: Ipv4Addr,
    pub mapping: PortMapping,
}

/// Inputs of the table.
pub(crate) struct Plan<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    pub subnet: Ipv4Net,
    pub no_masquerade: &'a [Ipv4Net],
    pub masquerade: bool,
    pub publications: &'a [Publication],
}

const FAMILY: NfFamily = NfFamily::IP;
const PUBLISHED: &str = "published";

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn prefix(n: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(n.network().to_string())),
        len: u32::from(n.prefix()),
    }))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn fib_daddr_local() -> Statement<'static> {
    let mut flags = HashSet::new();
    flags.insert(FibFlag::Daddr);
    m(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags,
        })),
        Operator::EQ,
        s("local"),
    )
}

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: Cow::Owned(name.to_string()),
        handle: None,
    })
}

fn base_chain(
    table: &str,
    name: &'static str,
    hook: NfHook,
    prio: i32,
    ty: NfChainType,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: Cow::Owned(table.to_string()),
        name: Cow::Borrowed(name),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn chain(table: &str, name: &'static str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: Cow::Owned(table.to_string()),
        name: Cow::Borrowed(name),
        ..Chain::default()
    })
}

fn rule(
    table: &str,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: Option<String>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        comment: comment.map(Cow::Owned),
        ..Rule::default()
    })
}

fn add(o: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(o))
}

/// The rules that forward one published port.
fn publication_rule(table: &str, p: &Publication) -> NfListObject<'static> {
    let mut expr = Vec::new();
    if let Some(ip) = p.mapping.host_ip.filter(|ip| !ip.is_unspecified()) {
        expr.push(m(payload("ip", "daddr"), Operator::EQ, s(ip.to_string())));
    }
    expr.push(m(
        payload(p.mapping.protocol.as_str(), "dport"),
        Operator::EQ,
        Expression::Number(u32::from(p.mapping.host_port)),
    ));
    expr.push(Statement::DNAT(Some(NAT {
        addr: Some(s(p.container_ip.to_string())),
        family: None,
        port: Some(Expression::Number(u32::from(p.mapping.container_port))),
        flags: None,
    })));
    rule(table, PUBLISHED, expr, Some(p.container_id.clone()))
}

/// The whole table, replacing any previous version atomically.
pub(crate) fn render(plan: &Plan<'_>) -> Nftables<'static> {
    let t = plan.table;
    let mut o = vec![
        add(table(t)),
        NfObject::CmdObject(NfCmd::Delete(table(t))),
        add(table(t)),
        add(base_chain(
            t,
            "prerouting",
            NfHook::Prerouting,
            -100,
            NfChainType::NAT,
        )),
        add(base_chain(
            t,
            "output",
            NfHook::Output,
            -100,
            NfChainType::NAT,
        )),
        add(chain(t, PUBLISHED)),
        add(base_chain(
            t,
            "postrouting",
            NfHook::Postrouting,
            100,
            NfChainType::NAT,
        )),
        add(rule(
            t,
            "prerouting",
            vec![fib_daddr_local(), jump(PUBLISHED)],
            None,
        )),
        add(rule(
            t,
            "output",
            vec![
                m(
                    payload("ip", "daddr"),
                    Operator::NEQ,
                    prefix(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid")),
                ),
                fib_daddr_local(),
                jump(PUBLISHED),
            ],
            None,
        )),
    ];
    for p in plan.publications {
        o.push(add(publication_rule(t, p)));
    }
    // Hairpin: a container reaching a published port of the node (its own or
    // a neighbour's) is DNATed back onto the bridge; masquerade it so the
    // reply returns through the node and is un-NATed.
    o.push(add(rule(
        t,
        "postrouting",
        vec![
            m(payload("ip", "saddr"), Operator::EQ, prefix(plan.subnet)),
            m(meta(MetaKey::Oifname), Operator::EQ, s(plan.bridge)),
            m(
                Expression::Named(NamedExpression::CT(CT {
                    key: Cow::Borrowed("status"),
                    family: None,
                    dir: None,
                })),
                Operator::IN,
                s("dnat"),
            ),
            Statement::Masquerade(None),
        ],
        None,
    )));
    if plan.masquerade {
        let mut excluded = vec![SetItem::Element(prefix(plan.subnet))];
        excluded.extend(
            plan.no_masquerade
                .iter()
                .map(|n| SetItem::Element(prefix(*n))),
        );
        o.push(add(rule(
            t,
            "postrouting",
            vec![
                m(payload("ip", "saddr"), Operator::EQ, prefix(plan.subnet)),
                m(
                    payload("ip", "daddr"),
                    Operator::NEQ,
                    Expression::Named(NamedExpression::Set(excluded)),
                ),
                m(meta(MetaKey::Oifname), Operator::NEQ, s(plan.bridge)),
                Statement::Masquerade(None),
            ],
            None,
        )));
    }
    Nftables {
        objects: Cow::Owned(o),
    }
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Borrowed(target),
    })
}

/// Deletes the table if it exists (add-then-delete is idempotent).
pub(crate) fn render_delete(t: &str) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            add(table(t)),
            NfObject::CmdObject(NfCmd::Delete(table(t))),
        ]),
    }
}

/// Runs `nft -j -f -` with the document. Must be called on a thread that is
/// in the node's network namespace (the child inherits the thread's).
pub(crate) fn apply(
    program: &OsStr,
    table: &str,
    op: &'static str,
    doc: &Nftables<'_>,
) -> Result<(), NetError> {
    nftables::helper::apply_ruleset_with_args(doc, Some(program), nftables::helper::DEFAULT_ARGS)
        .map_err(|e| {
            let stderr = match &e {
                nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                    stderr.trim().to_string()
                }
                _ => String::new(),
            };
            NetError::Nft {
                table: table.to_string(),
                op,
                stderr,
                source: Some(Box::new(e)),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Protocol;

    #[test]
    fn renders_publications_and_masquerade() {
        let pubs = vec![
            Publication {
                container_id: "web-1".into(),
                container_ip: "198.19.1.2".parse().unwrap(),
                mapping: PortMapping::tcp(8080, 80),
            },
            Publication {
                container_id: "dns".into(),
                container_ip: "198.19.1.3".parse().unwrap(),
                mapping: PortMapping {
                    host_port: 53,
                    container_port: 5353,
                    protocol: Protocol::Udp,
                    host_ip: Some("198.18.0.1".parse().unwrap()),
                },
            },
        ];
        let extra = ["198.19.0.0/16".parse().unwrap()];
        let doc = render(&Plan {
            table: "flotilla",
            bridge: "flbr0",
            subnet: "198.19.1.0/24".parse().unwrap(),
            no_masquerade: &extra,
            masquerade: true,
            publications: &pubs,
        });
        let j = serde_json::to_string(&doc).unwrap();
        // Replace-the-table transaction.
        assert!(j.starts_with(r#"{"nftables":[{"add":{"table":{"family":"ip","name":"flotilla"}}},{"delete":{"table":{"family":"ip","name":"flotilla"}}}"#), "{j}");
        assert!(j.contains(r#"{"match":{"left":{"payload":{"protocol":"tcp","field":"dport"}},"right":8080,"op":"=="}},{"dnat":{"addr":"198.19.1.2","port":80}}],"comment":"web-1""#), "{j}");
        assert!(j.contains(r#"{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"198.18.0.1","op":"=="}},{"match":{"left":{"payload":{"protocol":"udp","field":"dport"}},"right":53"#), "{j}");
        assert!(j.contains(r#"{"match":{"left":{"ct":{"key":"status"}},"right":"dnat","op":"in"}},{"masquerade":null}"#), "{j}");
        assert!(j.contains(r#"{"set":[{"prefix":{"addr":"198.19.1.0","len":24}},{"prefix":{"addr":"198.19.0.0","len":16}}]}"#), "{j}");
        let no_masq = render(&Plan {
            table: "flotilla",
            bridge: "flbr0",
            subnet: "198.19.1.0/24".parse().unwrap(),
            no_masquerade: &[],
            masquerade: false,
            publications: &[],
        });
        let j = serde_json::to_string(&no_masq).unwrap();
        assert_eq!(j.matches("masquerade").count(), 1, "{j}");
    }
}
