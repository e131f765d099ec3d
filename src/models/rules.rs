//! The rule language every family is written in.
//!
//! A family's table is a list of [`Rule`]s. A [`Rule::Map`] pairs HF/torch name patterns with MindSpore name
//! patterns and an [`Op`]; the same rule drives both directions, because every op knows its inverse. A
//! [`Rule::Drop`] names a rule under which an input is deliberately not converted. Anything that matches no rule is
//! an error: the tables fail closed.
//!
//! The shape of a rule is its arity: one pattern on each side is a rename (optionally transposed); one pattern on
//! one side and N on the other is a fused tensor and its N parts, laid out by the op's [`Layout`] (split one way,
//! fused the other); an `{e}` placeholder on one side only stacks every expert's tensors (`e` = 0..n_experts) into
//! one tensor on the other side (see [`Experts`]).
//!
//! Patterns are literal text with placeholders:
//! - `{i}`: a layer number (decimal digits);
//! - `{e}`: an expert number (decimal digits); on one side only, it stacks experts;
//! - `{s}`: `weight` or `bias`;
//! - `{*}`: any non-empty text;
//! - `{name:a|b|c}`: one of the listed alternatives (an alternative may be empty, e.g. `{p:|transformer.}`).
//!
//! A placeholder in the output pattern takes the value it captured in the input; one that the input side does not
//! have (e.g. an optional prefix accepted only on the HF side) renders as its first alternative.
//!
//! Rules are tried in table order and the first match wins. Outputs of a rule with one input pattern (and no
//! stacked experts on the input side) are emitted in input order; fusions are appended at the end in order of
//! first appearance, as the reference does.

use std::collections::{BTreeSet, HashSet};

pub use crate::models::Hyper;
pub use crate::ops::{Axis, Layout};

/// How the extents of split parts are found (fusing needs no sizes: the parts have them; they are checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// Equal parts.
    Equal,
    /// Equal parts of `hidden_size` each (checked when the hidden size is known).
    Hidden,
    /// q, then equal k/v parts: q has `n_head·head_dim` rows (head_dim from the hyper-parameter, else
    /// hidden / n_head; with neither, q has `hidden_size` rows); k and v share the rest, checked against
    /// `n_kv_head·head_dim` when known (multi-/grouped-query fused q/k/v, e.g. wizardcoder's `c_attn`).
    Qkv,
    /// The leading parts have the extents of these hyper-parameters (needed), the last part the rest (non-empty):
    /// e.g. `Sizes::Leading(&[Hyper::Key("q_lora_rank")])` cuts `[q_lora_rank | rest]`. Fusing checks them.
    Leading(&'static [Hyper]),
}

/// Experts stacked into one tensor (the side of the rule without `{e}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Experts {
    /// `[n_experts, …]`: a new leading axis.
    Stacked,
    /// `[n_experts·a, b]`: the stack reshaped to 2-D (MindFormers mcore grouped-GEMM weights); needs n_experts.
    Flat,
}

/// The op of a [`Rule::Map`]: how the one tensor on one side relates to the tensors on the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// How N parts sit in the fused tensor (ignored by 1 ⇄ 1 rules).
    pub layout: Layout,
    /// Sizes of the parts when splitting.
    pub sizes: Sizes,
    /// Each part is the transpose of its slice of the fused tensor: split, then transpose each part; transpose
    /// the parts back, then fuse. On a 1 ⇄ 1 rule: a 2-D transpose (its own inverse).
    pub transpose: bool,
    /// Zeros: only the first part is real; the others are written as zeros of its shape and dtype, and dropped
    /// (named rule [`SYNTHESISED_ZEROS`]) when fusing.
    pub zeros: bool,
    /// On a 1 ⇄ 1 rule: the tensor holds this many equal parts, laid out by the given layout on the HF side and by
    /// `layout` on the MindSpore side (split by one, fused by the other). E.g. GLM-4's HF `gate_up_proj` (`[gate;
    /// up]` halves) ⇄ mcore `linear_fc1` ([`Layout::GatedMlp`]).
    pub relayout: Option<(Layout, usize)>,
}

/// The rule name under which the zero parts of an [`Op::with_zeros`] rule are dropped when fusing.
pub const SYNTHESISED_ZEROS: &str = "synthesised-zeros (written as zeros by the forward direction)";

impl Op {
    /// Same tensor under another name.
    pub const COPY: Op = Op {
        layout: Layout::Concat(Axis::First),
        sizes: Sizes::Equal,
        transpose: false,
        zeros: false,
        relayout: None,
    };
    /// A 2-D transpose (1 ⇄ 1), or parts transposed (1 ⇄ N).
    pub const TRANSPOSE: Op = Op::COPY.transposed();
    /// Parts concatenated along `axis`, equal.
    pub const fn concat(axis: Axis) -> Op {
        Op {
            layout: Layout::Concat(axis),
            ..Op::COPY
        }
    }
    /// Rows alternate between the parts.
    pub const INTERLEAVE_ROWS: Op = Op {
        layout: Layout::InterleaveRows,
        ..Op::COPY
    };
    /// q/k/v heads by KV group (groups = n_kv_head, else n_head; part extents from n_head, n_kv_head, head_dim).
    pub const GROUPED_HEADS: Op = Op {
        layout: Layout::GroupedHeads { groups: 0 },
        ..Op::COPY
    };
    /// A gated MLP's gate and up, laid out as the model's MLP layout says ([`Layout::GatedMlp`]).
    pub const GATED_MLP: Op = Op {
        layout: Layout::GatedMlp,
        ..Op::COPY
    };
    /// 1 ⇄ 1: HF's `[gate; up]` halves ⇄ the model's MLP layout.
    pub const GATED_MLP_FROM_HALVES: Op = Op {
        layout: Layout::GatedMlp,
        relayout: Some((Layout::Concat(Axis::First), 2)),
        ..Op::COPY
    };
    /// Parts stacked on a new leading axis.
    pub const STACK: Op = Op {
        layout: Layout::Stack,
        ..Op::COPY
    };
    /// The first part is the tensor; the other parts are zeros of its shape (dropped when fusing).
    pub const WITH_ZEROS: Op = Op {
        zeros: true,
        ..Op::COPY
    };
    /// This op with parts transposed.
    pub const fn transposed(self) -> Op {
        Op {
            transpose: true,
            ..self
        }
    }
    /// This op with the given part sizes.
    pub const fn sized(self, sizes: Sizes) -> Op {
        Op { sizes, ..self }
    }
}

/// Directions a [`Rule::Drop`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Forward,
    Reverse,
    Both,
}

/// The names on one side of a rule: one pattern, or several (the parts, in order).
#[derive(Clone, Copy, Debug)]
pub enum Names {
    One(&'static str),
    Many(&'static [&'static str]),
}

impl Names {
    /// The patterns, in order.
    pub fn patterns(&self) -> &[&'static str] {
        match self {
            Names::One(s) => std::slice::from_ref(s),
            Names::Many(v) => v,
        }
    }
}

/// One table row.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// HF pattern(s) ⇄ MindSpore pattern(s), with the op between them. At least one side has exactly one pattern.
    Map {
        hf: Names,
        ms: Names,
        op: Op,
        /// How the side without `{e}` holds the experts, when the other side has `{e}`.
        experts: Experts,
    },
    /// Inputs matching `pattern` (in the given direction) are dropped, under the rule name `rule`.
    Drop {
        dir: Dir,
        pattern: &'static str,
        rule: &'static str,
    },
}

/// A one-to-one rename.
pub const fn map(hf: &'static str, ms: &'static str) -> Rule {
    one(hf, ms, Op::COPY)
}

/// A one-to-one rename whose tensor is transposed (2-D) on the way, both ways.
pub const fn transpose(hf: &'static str, ms: &'static str) -> Rule {
    one(hf, ms, Op::TRANSPOSE)
}

/// A one-to-one rule with an op (e.g. per-expert transposes with `{e}` on one side: see [`stacked`]).
pub const fn one(hf: &'static str, ms: &'static str, op: Op) -> Rule {
    Rule::Map {
        hf: Names::One(hf),
        ms: Names::One(ms),
        op,
        experts: Experts::Stacked,
    }
}

/// One fused HF tensor ⇄ its MindSpore parts (forward splits, reverse fuses).
pub const fn split(hf: &'static str, ms: &'static [&'static str], op: Op) -> Rule {
    Rule::Map {
        hf: Names::One(hf),
        ms: Names::Many(ms),
        op,
        experts: Experts::Stacked,
    }
}

/// HF parts ⇄ one fused MindSpore tensor (forward fuses, reverse splits).
pub const fn fuse(hf: &'static [&'static str], ms: &'static str, op: Op) -> Rule {
    Rule::Map {
        hf: Names::Many(hf),
        ms: Names::One(ms),
        op,
        experts: Experts::Stacked,
    }
}

/// Per-expert HF tensors (patterns with `{e}`, one or several parts) ⇄ one MindSpore tensor holding every expert:
/// each expert's parts are fused by `op`, and the experts stacked as `experts` says.
pub const fn stacked(
    hf: &'static [&'static str],
    ms: &'static str,
    op: Op,
    experts: Experts,
) -> Rule {
    Rule::Map {
        hf: Names::Many(hf),
        ms: Names::One(ms),
        op,
        experts,
    }
}

/// A drop rule.
pub const fn drop(dir: Dir, pattern: &'static str, rule: &'static str) -> Rule {
    Rule::Drop { dir, pattern, rule }
}

/// MindSpore training state that a reverse conversion drops: optimizer moments and step/scale scalars are not
/// weights of the HF model. Every family's reverse plan ends with these rules.
pub const TRAINING_STATE: &[Rule] = &[
    drop(Dir::Reverse, "adam_m.{*}", "optimizer-state"),
    drop(Dir::Reverse, "adam_v.{*}", "optimizer-state"),
    drop(Dir::Reverse, "accu_grads.{*}", "optimizer-state"),
    drop(Dir::Reverse, "moments.{*}", "optimizer-state"),
    drop(
        Dir::Reverse,
        "{n:global_step|learning_rate|scale_sense|loss_scale|current_iterator_step|last_overflow_iterator_step|epoch_num|step_num}",
        "training-scalar",
    ),
];

// ------------------------------------------------------------------------------------------------------------------
// Patterns

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Lit(String),
    Digits(String),
    Any(String),
    Alt(String, Vec<String>),
}

/// A compiled name pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    src: &'static str,
    segs: Vec<Seg>,
}

/// Placeholder values captured by a match, by placeholder name.
pub type Captures = Vec<(String, String)>;

impl Pattern {
    /// Parse a pattern (see the module docs for the syntax).
    pub fn parse(src: &'static str) -> Result<Pattern, String> {
        let mut segs = Vec::new();
        let mut rest = src;
        let mut names = HashSet::new();
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("pattern '{src}': unclosed '{{'"))?;
                    let body = &rest[1..end];
                    let (name, seg) = match body {
                        "i" => ("i", Seg::Digits("i".into())),
                        "e" => ("e", Seg::Digits("e".into())),
                        "*" => ("*", Seg::Any("*".into())),
                        "s" => (
                            "s",
                            Seg::Alt("s".into(), vec!["weight".into(), "bias".into()]),
                        ),
                        _ => match body.split_once(':') {
                            Some((n, alts)) if !n.is_empty() => (
                                n,
                                Seg::Alt(n.into(), alts.split('|').map(String::from).collect()),
                            ),
                            _ => {
                                return Err(format!(
                                    "pattern '{src}': bad placeholder '{{{body}}}'"
                                ))
                            }
                        },
                    };
                    if !names.insert(name) {
                        return Err(format!("pattern '{src}': placeholder '{name}' repeated"));
                    }
                    segs.push(seg);
                    rest = &rest[end + 1..];
                }
                Some(k) => {
                    segs.push(Seg::Lit(rest[..k].to_string()));
                    rest = &rest[k..];
                }
                None => {
                    segs.push(Seg::Lit(rest.to_string()));
                    rest = "";
                }
            }
        }
        Ok(Pattern { src, segs })
    }

    /// The source text.
    pub fn src(&self) -> &'static str {
        self.src
    }

    /// Whether every alternative placeholder that both patterns have lists the same alternatives.
    pub(crate) fn alts_agree(&self, other: &Pattern) -> bool {
        self.segs.iter().all(|a| match a {
            Seg::Alt(n, alts) => other.segs.iter().all(|b| match b {
                Seg::Alt(m, others) if m == n => alts == others,
                _ => true,
            }),
            _ => true,
        })
    }

    /// Names of the placeholders that cannot default when rendering (`{i}`, `{e}`, `{*}`): the other side must
    /// capture them (except a stacked `{e}`).
    pub(crate) fn required(&self) -> BTreeSet<&str> {
        self.segs
            .iter()
            .filter_map(|s| match s {
                Seg::Digits(n) | Seg::Any(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Match a whole name; the captures on success.
    pub fn matches(&self, name: &str) -> Option<Captures> {
        let mut caps = Vec::new();
        if match_segs(&self.segs, name, &mut caps) {
            Some(caps)
        } else {
            None
        }
    }

    /// Render with captured values; a missing alternative placeholder takes its first alternative.
    pub fn render(&self, caps: &Captures) -> Result<String, String> {
        let mut out = String::new();
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Digits(n) | Seg::Any(n) | Seg::Alt(n, _) => {
                    match caps.iter().find(|(k, _)| k == n) {
                        Some((_, v)) => out.push_str(v),
                        None => match seg {
                            Seg::Alt(_, alts) if !alts.is_empty() => out.push_str(&alts[0]),
                            _ => {
                                return Err(format!(
                                    "pattern '{}': nothing captured for '{n}'",
                                    self.src
                                ))
                            }
                        },
                    }
                }
            }
        }
        Ok(out)
    }
}

fn match_segs(segs: &[Seg], s: &str, caps: &mut Captures) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return s.is_empty();
    };
    match first {
        Seg::Lit(l) => s
            .strip_prefix(l.as_str())
            .is_some_and(|t| match_segs(rest, t, caps)),
        Seg::Digits(n) => {
            let max = s.bytes().take_while(u8::is_ascii_digit).count();
            (1..=max).any(|k| try_capture(n, &s[..k], &s[k..], rest, caps))
        }
        Seg::Any(n) => {
            let ends: Vec<usize> = s
                .char_indices()
                .map(|(k, _)| k)
                .skip(1)
                .chain([s.len()])
                .collect();
            ends.into_iter()
                .any(|k| k > 0 && try_capture(n, &s[..k], &s[k..], rest, caps))
        }
        Seg::Alt(n, alts) => alts.iter().any(|a| {
            s.strip_prefix(a.as_str())
                .is_some_and(|t| try_capture(n, a, t, rest, caps))
        }),
    }
}

fn try_capture(name: &str, val: &str, tail: &str, rest: &[Seg], caps: &mut Captures) -> bool {
    caps.push((name.to_string(), val.to_string()));
    if match_segs(rest, tail, caps) {
        return true;
    }
    caps.pop();
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_and_render() {
        let p = Pattern::parse("{p:|transformer.}h.{i}.attn.{s}").unwrap();
        let c = p.matches("transformer.h.12.attn.bias").unwrap();
        assert_eq!(
            c,
            vec![
                ("p".to_string(), "transformer.".to_string()),
                ("i".to_string(), "12".to_string()),
                ("s".to_string(), "bias".to_string())
            ]
        );
        assert!(p.matches("h.1.attn.weight").is_some());
        assert!(p.matches("h.x.attn.weight").is_none());
        assert!(p.matches("h.1.attn.weights").is_none());
        let q = Pattern::parse("backbone.blocks.{i}.x.{s}").unwrap();
        assert_eq!(q.render(&c).unwrap(), "backbone.blocks.12.x.bias");
        // a missing alternative renders as its first alternative
        let r = Pattern::parse("{p:|transformer.}h.{i}").unwrap();
        assert_eq!(r.render(&vec![("i".into(), "3".into())]).unwrap(), "h.3");
        let any = Pattern::parse("{*}.rotary_emb.inv_freq").unwrap();
        assert!(any.matches("a.b.rotary_emb.inv_freq").is_some());
        assert!(any.matches(".rotary_emb.inv_freq").is_none());
        let e = Pattern::parse("layers.{i}.experts.{e}.w").unwrap();
        assert_eq!(
            e.matches("layers.3.experts.17.w").unwrap(),
            vec![("i".into(), "3".into()), ("e".into(), "17".into())]
        );
        assert!(Pattern::parse("a.{foo}").is_err());
        assert!(Pattern::parse("a.{i}.{i}").is_err());
        assert!(Pattern::parse("a.{i").is_err());
    }
}
