//! The rule language every family is written in.
//!
//! A family is a table of [`Rule`]s. A [`Rule::Map`] pairs one HF/torch name pattern with one or more MindSpore name
//! patterns and a typed [`Op`]; the same rule drives both directions, because each op knows its inverse
//! (`Split` ⇄ concat, `Transpose` ⇄ itself, `HeadInterleaved` ⇄ re-interleave, `WithZeros` ⇄ drop the zeros). A
//! [`Rule::Drop`] names a rule under which an input is deliberately not converted. Anything that matches no rule is an
//! error ([`ModelError::Unmapped`], listing every such name): the tables fail closed.
//!
//! Patterns are literal text with placeholders:
//! - `{i}`: a layer number (decimal digits);
//! - `{s}`: `weight` or `bias`;
//! - `{*}`: any non-empty text;
//! - `{name:a|b|c}`: one of the listed alternatives (an alternative may be empty, e.g. `{p:|transformer.}`).
//!
//! A placeholder in the output pattern takes the value it captured in the input; one that the input side does not
//! have (e.g. an optional prefix accepted only on the HF side) renders as its first alternative.
//!
//! Rules are tried in table order and the first match wins. Outputs are emitted in input order (a split expands in
//! place); reverse fusions are appended at the end in order of first appearance, as the reference does.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::models::{HyperParams, ModelError};
use crate::ops::{Dropped, Expr, Plan, PlanItem};
use crate::tensor::{DType, TensorInfo};

/// Which axis a [`Op::Split`] cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Dimension 0 (rows).
    First,
    /// The last dimension (Conv1D output columns; dimension 0 of a 1-D bias).
    Last,
}

/// A typed tensor op between the HF side (one tensor) and the MindSpore side (one tensor per target name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Same tensor under another name.
    Copy,
    /// 2-D transpose (its own inverse).
    Transpose,
    /// Cut into equal parts along `axis`, one per target (inverse: concatenate along the same axis). With
    /// `transpose`, each part is transposed after the cut (inverse: transposed back before concatenating). With
    /// `hidden_part`, each part's extent must equal the hidden size when it is known.
    Split {
        axis: Axis,
        transpose: bool,
        hidden_part: bool,
    },
    /// Rows `[hidden | kv | kv]` of a multi-/grouped-query fused q/k/v (wizardcoder): q has `hidden` rows, k and v
    /// share the rest equally. Needs [`Ctx::hidden`]; checks kv rows against `n_kv_head·head_dim` when known.
    QkvRows,
    /// Bloom's head-interleaved fused q/k/v `[3H, …]`: rows grouped per head as `(n_head, 3, head_dim)`. Part k is
    /// `reshape(nh,3,hd,…) → narrow(1,k,1) → reshape(H,…)`; the inverse reshapes each part to `(nh,1,hd,…)`,
    /// concatenates on dim 1 and reshapes to `[3H, …]`. Needs `n_head`.
    HeadInterleaved,
    /// Two targets: the tensor itself, and zeros of its shape and dtype (blip's missing k-bias). Inverse: the first
    /// target comes back; the second is dropped.
    WithZeros,
}

/// Directions a [`Rule::Drop`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Forward,
    Reverse,
    Both,
}

/// One table row.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// HF pattern ⇄ MindSpore pattern(s), with the op between them. `pin`: the forward output is this dtype, fixed
    /// (cast when the floating source differs; `--dtype` leaves it alone).
    Map {
        hf: &'static str,
        ms: &'static [&'static str],
        op: Op,
        pin: Option<DType>,
    },
    /// Inputs matching `pattern` (in the given direction) are dropped, under the rule name `rule`.
    Drop {
        dir: Dir,
        pattern: &'static str,
        rule: &'static str,
    },
}

/// A one-to-one rename.
pub const fn map(hf: &'static str, ms: &'static [&'static str]) -> Rule {
    Rule::Map {
        hf,
        ms,
        op: Op::Copy,
        pin: None,
    }
}

/// A rule with an op.
pub const fn op(hf: &'static str, ms: &'static [&'static str], op: Op) -> Rule {
    Rule::Map {
        hf,
        ms,
        op,
        pin: None,
    }
}

/// A one-to-one rename whose forward output is pinned to `dtype`.
pub const fn pinned(hf: &'static str, ms: &'static [&'static str], dtype: DType) -> Rule {
    Rule::Map {
        hf,
        ms,
        op: Op::Copy,
        pin: Some(dtype),
    }
}

/// A drop rule.
pub const fn drop(dir: Dir, pattern: &'static str, rule: &'static str) -> Rule {
    Rule::Drop { dir, pattern, rule }
}

/// MindSpore training state that a reverse conversion drops: optimizer moments and step/scale scalars are not
/// weights of the HF model.
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

/// What the ops may consult: the family name (for errors) and the hyper-parameters.
#[derive(Clone, Debug)]
pub struct Ctx<'a> {
    pub family: &'static str,
    pub hp: &'a HyperParams,
    /// Hidden size, when known (from `hp` or derived by the family from shapes).
    pub hidden: Option<usize>,
}

impl<'a> Ctx<'a> {
    /// A context whose hidden size is the hyper-parameter's.
    pub fn new(family: &'static str, hp: &'a HyperParams) -> Self {
        Ctx {
            family,
            hp,
            hidden: hp.hidden_size,
        }
    }

    fn tensor_err(&self, tensor: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            family: self.family.to_string(),
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    fn rule_err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::Other {
            family: self.family.to_string(),
            msg: format!("internal rule error: {}", msg.into()),
        }
    }
}

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
    fn alts_agree(&self, other: &Pattern) -> bool {
        self.segs.iter().all(|a| match a {
            Seg::Alt(n, alts) => other.segs.iter().all(|b| match b {
                Seg::Alt(m, others) if m == n => alts == others,
                _ => true,
            }),
            _ => true,
        })
    }

    /// Names of the placeholders that cannot default when rendering (`{i}`, `{*}`): the other side must capture them.
    fn required(&self) -> BTreeSet<&str> {
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

// ------------------------------------------------------------------------------------------------------------------
// Compiled tables

enum CRule {
    Map {
        hf: Pattern,
        ms: Vec<Pattern>,
        op: Op,
        pin: Option<DType>,
    },
    Drop {
        dir: Dir,
        pattern: Pattern,
        rule: &'static str,
    },
}

/// A table compiled for planning.
pub struct Table {
    rules: Vec<CRule>,
}

/// A plan plus what the table saw, for family-level checks.
#[derive(Debug, Default)]
pub struct Planned {
    pub plan: Plan,
    /// Every `{i}` layer number captured from an input name.
    pub layers: BTreeSet<usize>,
}

impl Table {
    /// Compile a table; a malformed pattern is reported as an internal rule error.
    pub fn new(family: &'static str, rules: &[Rule]) -> Result<Table, ModelError> {
        let bad = |e: String| ModelError::Other {
            family: family.to_string(),
            msg: format!("internal rule error: {e}"),
        };
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            out.push(match *r {
                Rule::Map { hf, ms, op, pin } => {
                    let want = match op {
                        Op::Copy | Op::Transpose => Some(1),
                        Op::QkvRows | Op::HeadInterleaved => Some(3),
                        Op::WithZeros => Some(2),
                        Op::Split { .. } => None,
                    };
                    if ms.is_empty() || want.is_some_and(|w| w != ms.len()) {
                        return Err(bad(format!("rule '{hf}': {} targets for {op:?}", ms.len())));
                    }
                    let hf_pat = Pattern::parse(hf).map_err(bad)?;
                    let ms_pats: Vec<Pattern> = ms
                        .iter()
                        .map(|m| Pattern::parse(m))
                        .collect::<Result<_, _>>()
                        .map_err(bad)?;
                    // Both directions must be able to render: the MindSpore patterns of a rule share one set of
                    // required placeholders, the same as the HF side's (optional ones may differ).
                    for m in &ms_pats {
                        if m.required() != hf_pat.required() || !m.alts_agree(&hf_pat) {
                            return Err(bad(format!(
                                "rule '{hf}': '{}' has other required placeholders",
                                m.src()
                            )));
                        }
                    }
                    CRule::Map {
                        hf: hf_pat,
                        ms: ms_pats,
                        op,
                        pin,
                    }
                }
                Rule::Drop { dir, pattern, rule } => CRule::Drop {
                    dir,
                    pattern: Pattern::parse(pattern).map_err(bad)?,
                    rule,
                },
            });
        }
        Ok(Table { rules: out })
    }

    /// HF → MindSpore.
    pub fn forward(&self, inputs: &[TensorInfo], ctx: &Ctx) -> Result<Planned, ModelError> {
        let mut matched = Vec::with_capacity(inputs.len());
        let mut unmapped = Vec::new();
        for t in inputs {
            let m = self.rules.iter().enumerate().find_map(|(k, r)| match r {
                CRule::Map { hf, .. } => hf.matches(&t.name).map(|c| (k, c, 0)),
                CRule::Drop { dir, pattern, .. } if *dir != Dir::Reverse => {
                    pattern.matches(&t.name).map(|c| (k, c, 0))
                }
                CRule::Drop { .. } => None,
            });
            match m {
                Some(m) => matched.push(m),
                None => unmapped.push(t.name.clone()),
            }
        }
        if !unmapped.is_empty() {
            return Err(ModelError::Unmapped {
                family: ctx.family.to_string(),
                names: unmapped,
            });
        }
        let mut out = Planned::default();
        for (j, (k, caps, _)) in matched.into_iter().enumerate() {
            note_layer(&caps, &mut out.layers);
            match &self.rules[k] {
                CRule::Drop { rule, .. } => out.plan.dropped.push(Dropped {
                    name: inputs[j].name.clone(),
                    rule: (*rule).to_string(),
                }),
                CRule::Map { ms, op, pin, .. } => {
                    let exprs = split_exprs(*op, j, inputs, ms.len(), ctx)?;
                    for (pat, expr) in ms.iter().zip(exprs) {
                        let name = pat.render(&caps).map_err(|e| ctx.rule_err(e))?;
                        let (expr, pinned) = apply_pin(expr, *pin, inputs, &inputs[j].name, ctx)?;
                        out.plan.items.push(PlanItem {
                            name,
                            expr,
                            pinned_dtype: pinned,
                        });
                    }
                }
            }
        }
        finish(&mut out.plan, inputs, ctx)?;
        Ok(out)
    }

    /// MindSpore → HF.
    pub fn reverse(&self, inputs: &[TensorInfo], ctx: &Ctx) -> Result<Planned, ModelError> {
        // (rule, captures, part) per input
        let mut matched = Vec::with_capacity(inputs.len());
        let mut unmapped = Vec::new();
        for t in inputs {
            let m = self.rules.iter().enumerate().find_map(|(k, r)| match r {
                CRule::Map { ms, .. } => ms
                    .iter()
                    .enumerate()
                    .find_map(|(p, pat)| pat.matches(&t.name).map(|c| (k, c, p))),
                CRule::Drop { dir, pattern, .. } if *dir != Dir::Forward => {
                    pattern.matches(&t.name).map(|c| (k, c, 0))
                }
                CRule::Drop { .. } => None,
            });
            match m {
                Some(m) => matched.push(m),
                None => unmapped.push(t.name.clone()),
            }
        }
        if !unmapped.is_empty() {
            return Err(ModelError::Unmapped {
                family: ctx.family.to_string(),
                names: unmapped,
            });
        }
        let mut out = Planned::default();
        // fused groups: hf name -> (rule, parts)
        let mut groups: Vec<(String, usize, Vec<Option<usize>>)> = Vec::new();
        let mut group_ix: HashMap<String, usize> = HashMap::new();
        for (j, (k, caps, part)) in matched.into_iter().enumerate() {
            note_layer(&caps, &mut out.layers);
            match &self.rules[k] {
                CRule::Drop { rule, .. } => out.plan.dropped.push(Dropped {
                    name: inputs[j].name.clone(),
                    rule: (*rule).to_string(),
                }),
                CRule::Map { hf, ms, op, .. } => {
                    let name = hf.render(&caps).map_err(|e| ctx.rule_err(e))?;
                    if ms.len() == 1 {
                        let expr = match op {
                            Op::Transpose => Expr::input(j).transpose(),
                            _ => Expr::input(j),
                        };
                        out.plan.items.push(PlanItem::new(name, expr));
                        continue;
                    }
                    let g = *group_ix.entry(name.clone()).or_insert_with(|| {
                        groups.push((name.clone(), k, vec![None; ms.len()]));
                        groups.len() - 1
                    });
                    let slot = &mut groups[g].2[part];
                    if let Some(prev) = slot {
                        return Err(ctx.tensor_err(
                            &inputs[j].name,
                            format!("same part of '{name}' as '{}'", inputs[*prev].name),
                        ));
                    }
                    *slot = Some(j);
                }
            }
        }
        for (name, k, parts) in groups {
            let CRule::Map { ms, op, .. } = &self.rules[k] else {
                return Err(ctx.rule_err("group of a drop rule"));
            };
            // The names the missing parts would have, rendered from a present part's name.
            let present = parts.iter().flatten().next().copied();
            let caps = present
                .and_then(|j| parts.iter().position(|p| *p == Some(j)).map(|p| (j, p)))
                .and_then(|(j, p)| ms[p].matches(&inputs[j].name))
                .unwrap_or_default();
            let required: &[usize] = match op {
                Op::WithZeros => &[0],
                _ => &[],
            };
            let missing: Vec<String> = parts
                .iter()
                .enumerate()
                .filter(|(p, v)| v.is_none() && (required.is_empty() || required.contains(p)))
                .map(|(p, _)| {
                    ms[p]
                        .render(&caps)
                        .unwrap_or_else(|_| ms[p].src().to_string())
                })
                .collect();
            if !missing.is_empty() {
                return Err(ctx.tensor_err(
                    &name,
                    format!("cannot fuse: missing part(s) {}", missing.join(", ")),
                ));
            }
            if *op == Op::WithZeros {
                let (Some(first), rest) = (parts[0], &parts[1..]) else {
                    return Err(ctx.rule_err("zero-twin group without its first part"));
                };
                out.plan.items.push(PlanItem::new(name, Expr::input(first)));
                for j in rest.iter().flatten() {
                    out.plan.dropped.push(Dropped {
                        name: inputs[*j].name.clone(),
                        rule: "zero-k-bias (synthesised by the forward pass)".into(),
                    });
                }
                continue;
            }
            let idx: Vec<usize> = parts.into_iter().flatten().collect();
            let expr = fuse_expr(*op, &idx, inputs, &name, ctx)?;
            out.plan.items.push(PlanItem::new(name, expr));
        }
        finish(&mut out.plan, inputs, ctx)?;
        Ok(out)
    }
}

fn note_layer(caps: &Captures, layers: &mut BTreeSet<usize>) {
    if let Some(n) = caps
        .iter()
        .find(|(k, _)| k == "i")
        .and_then(|(_, v)| v.parse().ok())
    {
        layers.insert(n);
    }
}

fn apply_pin(
    expr: Expr,
    pin: Option<DType>,
    inputs: &[TensorInfo],
    src: &str,
    ctx: &Ctx,
) -> Result<(Expr, bool), ModelError> {
    let Some(to) = pin else {
        return Ok((expr, false));
    };
    let (d, _) = expr.infer(inputs).map_err(|e| ctx.tensor_err(src, e.0))?;
    if !d.is_float() {
        return Ok((expr, false));
    }
    if d == to {
        Ok((expr, true))
    } else {
        Ok((expr.cast(to), true))
    }
}

/// Check every item against the headers and that output names are unique.
fn finish(plan: &mut Plan, inputs: &[TensorInfo], ctx: &Ctx) -> Result<(), ModelError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, it) in plan.items.iter().enumerate() {
        if let Err(e) = it.expr.infer(inputs) {
            let mut src = Vec::new();
            it.expr.inputs(&mut src);
            let from: Vec<&str> = src
                .iter()
                .filter_map(|&i| inputs.get(i).map(|t| t.name.as_str()))
                .collect();
            return Err(ctx.tensor_err(&it.name, format!("from {}: {}", from.join(" + "), e.0)));
        }
        if let Some(prev) = seen.insert(it.name.as_str(), k) {
            let srcs = |i: usize| {
                let mut v = Vec::new();
                plan.items[i].expr.inputs(&mut v);
                v.iter()
                    .filter_map(|&x| inputs.get(x).map(|t| t.name.clone()))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            return Err(ctx.tensor_err(
                &it.name,
                format!("produced twice: from {} and from {}", srcs(prev), srcs(k)),
            ));
        }
    }
    Ok(())
}

fn axis_dim(axis: Axis, rank: usize) -> usize {
    match axis {
        Axis::First => 0,
        Axis::Last => rank.saturating_sub(1),
    }
}

/// The forward expressions of one rule: one per target.
fn split_exprs(
    op: Op,
    j: usize,
    inputs: &[TensorInfo],
    n: usize,
    ctx: &Ctx,
) -> Result<Vec<Expr>, ModelError> {
    let t = &inputs[j];
    let err = |msg: String| ctx.tensor_err(&t.name, msg);
    let x = Expr::input(j);
    Ok(match op {
        Op::Copy => vec![x],
        Op::Transpose => vec![x.transpose()],
        Op::WithZeros => vec![x, Expr::Zeros(t.shape.clone(), t.dtype)],
        Op::Split {
            axis,
            transpose,
            hidden_part,
        } => {
            if t.shape.is_empty() {
                return Err(err("cannot split a scalar".into()));
            }
            let dim = axis_dim(axis, t.shape.len());
            let len = t.shape[dim];
            if n == 0 || len % n != 0 {
                return Err(err(format!(
                    "dim {dim} of shape {:?} does not split into {n} equal parts",
                    t.shape
                )));
            }
            let part = len / n;
            if hidden_part {
                if let Some(h) = ctx.hidden {
                    if part != h {
                        return Err(err(format!(
                            "dim {dim} of shape {:?} is {len}, expected {n}·hidden_size = {}",
                            t.shape,
                            n.saturating_mul(h)
                        )));
                    }
                }
            }
            (0..n)
                .map(|k| {
                    let p = x.clone().narrow(dim, k * part, part);
                    if transpose {
                        p.transpose()
                    } else {
                        p
                    }
                })
                .collect()
        }
        Op::QkvRows => {
            let hidden = ctx.hidden.ok_or_else(|| ModelError::Hyper {
                name: "hidden_size".into(),
                msg: format!("{} needs it to split '{}'", ctx.family, t.name),
            })?;
            let rows = *t
                .shape
                .first()
                .ok_or_else(|| err("cannot split a scalar".into()))?;
            let kv2 = rows.checked_sub(hidden).filter(|r| *r > 0 && r % 2 == 0).ok_or_else(|| {
                err(format!(
                    "{rows} rows do not hold q (hidden_size {hidden} rows) plus two equal k/v blocks"
                ))
            })?;
            let kv = kv2 / 2;
            if let Some(want) = kv_rows(ctx.hp, hidden) {
                if want != kv {
                    return Err(err(format!(
                        "k/v blocks have {kv} rows, but n_kv_head·head_dim = {want} (rows should be {})",
                        hidden.saturating_add(want.saturating_mul(2))
                    )));
                }
            }
            vec![
                x.clone().narrow(0, 0, hidden),
                x.clone().narrow(0, hidden, kv),
                x.narrow(0, hidden + kv, kv),
            ]
        }
        Op::HeadInterleaved => {
            let nh = ctx.hp.need_heads(ctx.family)?;
            let (rows, rest) = t
                .shape
                .split_first()
                .ok_or_else(|| err("cannot split a scalar".into()))?;
            let per = nh
                .checked_mul(3)
                .filter(|p| *p > 0 && rows % p == 0)
                .ok_or_else(|| {
                    err(format!(
                        "{rows} rows are not divisible by 3·n_head = 3·{nh}"
                    ))
                })?;
            let hd = rows / per;
            let h = nh * hd;
            if let Some(want) = ctx.hidden {
                if want != h {
                    return Err(err(format!(
                        "{rows} rows, expected 3·hidden_size = {}",
                        want.saturating_mul(3)
                    )));
                }
            }
            let mut grouped = vec![nh, 3, hd];
            grouped.extend_from_slice(rest);
            let mut flat = vec![h];
            flat.extend_from_slice(rest);
            (0..3)
                .map(|k| {
                    x.clone()
                        .reshape(grouped.clone())
                        .narrow(1, k, 1)
                        .reshape(flat.clone())
                })
                .collect()
        }
    })
}

/// `n_kv_head·head_dim` when both are known (head_dim from `hp`, else hidden / n_head).
fn kv_rows(hp: &HyperParams, hidden: usize) -> Option<usize> {
    let kv = hp.n_kv_head?;
    let hd = hp.head_dim.or_else(|| {
        hp.n_head
            .filter(|n| *n > 0 && hidden % n == 0)
            .map(|n| hidden / n)
    })?;
    kv.checked_mul(hd)
}

/// The reverse (fusing) expression of a multi-target rule, from its parts in target order.
fn fuse_expr(
    op: Op,
    idx: &[usize],
    inputs: &[TensorInfo],
    name: &str,
    ctx: &Ctx,
) -> Result<Expr, ModelError> {
    let err = |msg: String| ctx.tensor_err(name, msg);
    let first = &inputs[idx[0]];
    let same_shape = |what: &str| -> Result<(), ModelError> {
        for &j in &idx[1..] {
            if inputs[j].shape != first.shape {
                return Err(err(format!(
                    "{what}: part '{}' has shape {:?} but '{}' has {:?}",
                    inputs[j].name, inputs[j].shape, first.name, first.shape
                )));
            }
        }
        Ok(())
    };
    Ok(match op {
        Op::Copy | Op::Transpose | Op::WithZeros => {
            return Err(ctx.rule_err(format!("{op:?} does not fuse")))
        }
        Op::Split {
            axis,
            transpose,
            hidden_part,
        } => {
            same_shape("parts must be equal")?;
            let parts: Vec<Expr> = idx
                .iter()
                .map(|&j| {
                    if transpose {
                        Expr::input(j).transpose()
                    } else {
                        Expr::input(j)
                    }
                })
                .collect();
            let (_, pshape) = parts[0].infer(inputs).map_err(|e| err(e.0))?;
            if pshape.is_empty() {
                return Err(err(format!("part '{}' is a scalar", first.name)));
            }
            let dim = axis_dim(axis, pshape.len());
            if hidden_part {
                if let Some(h) = ctx.hidden {
                    if pshape[dim] != h {
                        return Err(err(format!(
                            "part '{}' has {} along dim {dim}, expected hidden_size {h}",
                            first.name, pshape[dim]
                        )));
                    }
                }
            }
            Expr::Concat(parts, dim)
        }
        Op::QkvRows => {
            if let [_, k, v] = idx {
                if inputs[*k].shape != inputs[*v].shape {
                    return Err(err(format!(
                        "k part '{}' {:?} and v part '{}' {:?} differ",
                        inputs[*k].name, inputs[*k].shape, inputs[*v].name, inputs[*v].shape
                    )));
                }
            }
            if let Some(h) = ctx.hidden {
                if first.shape.first() != Some(&h) {
                    return Err(err(format!(
                        "q part '{}' has shape {:?}, expected {h} rows (hidden_size)",
                        first.name, first.shape
                    )));
                }
            }
            Expr::Concat(idx.iter().map(|&j| Expr::input(j)).collect(), 0)
        }
        Op::HeadInterleaved => {
            same_shape("q/k/v parts must be equal")?;
            let nh = ctx.hp.need_heads(ctx.family)?;
            let (h, rest) = first
                .shape
                .split_first()
                .ok_or_else(|| err(format!("part '{}' is a scalar", first.name)))?;
            if nh == 0 || h % nh != 0 {
                return Err(err(format!(
                    "part '{}' has {h} rows, not divisible by n_head {nh}",
                    first.name
                )));
            }
            if let Some(want) = ctx.hidden {
                if want != *h {
                    return Err(err(format!(
                        "part '{}' has {h} rows, expected hidden_size {want}",
                        first.name
                    )));
                }
            }
            let hd = h / nh;
            let mut grouped = vec![nh, 1, hd];
            grouped.extend_from_slice(rest);
            let rows = h
                .checked_mul(3)
                .ok_or_else(|| err(format!("{h} rows ×3 overflows")))?;
            let mut fused = vec![rows];
            fused.extend_from_slice(rest);
            Expr::Concat(
                idx.iter()
                    .map(|&j| Expr::input(j).reshape(grouped.clone()))
                    .collect(),
                1,
            )
            .reshape(fused)
        }
    })
}

/// Plan one direction with the given rule slices (tried in order); a reverse plan also drops MindSpore
/// [`TRAINING_STATE`].
pub fn plan(
    parts: &[&[Rule]],
    inputs: &[TensorInfo],
    ctx: &Ctx,
    reversed: bool,
) -> Result<Planned, ModelError> {
    let mut rules: Vec<Rule> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    if reversed {
        rules.extend_from_slice(TRAINING_STATE);
    }
    let table = Table::new(ctx.family, &rules)?;
    if reversed {
        table.reverse(inputs, ctx)
    } else {
        table.forward(inputs, ctx)
    }
}

/// [`plan`] for families whose ops need only the hyper-parameters as given, followed by [`check_layers`] (a
/// checkpoint missing layers, e.g. one shard of several, is an error rather than half a model).
pub fn plan_table(
    family: &'static str,
    parts: &[&[Rule]],
    inputs: &[TensorInfo],
    hp: &HyperParams,
    reversed: bool,
) -> Result<Plan, ModelError> {
    let planned = plan(parts, inputs, &Ctx::new(family, hp), reversed)?;
    check_layers(family, hp, &planned.layers)?;
    check_hidden(hp, inputs)?;
    Ok(planned.plan)
}

/// Names of word-embedding tables (HF and MindSpore spellings): their width is the hidden size.
const EMBEDDING_SUFFIXES: &[&str] = &[
    "embed_tokens.weight",
    "tok_embeddings.embedding_weight",
    "wte.weight",
    "wte.embedding_weight",
    "word_embeddings.weight",
    "word_embeddings.embedding_table",
    "word_embedding.embedding_table",
];

/// The hidden size and head count the hyper-parameters claim must fit the weights: the word embedding's width is
/// the hidden size, and (without an explicit head_dim) the heads must divide it.
pub fn check_hidden(hp: &HyperParams, inputs: &[TensorInfo]) -> Result<(), ModelError> {
    let Some(emb) = inputs
        .iter()
        .find(|t| t.shape.len() == 2 && EMBEDDING_SUFFIXES.iter().any(|s| t.name.ends_with(s)))
    else {
        return Ok(());
    };
    let width = emb.shape[1];
    if let Some(h) = hp.hidden_size {
        if h != width {
            return Err(ModelError::Hyper {
                name: "hidden_size".into(),
                msg: format!(
                    "{h} given, but '{}' is {:?} (hidden size {width})",
                    emb.name, emb.shape
                ),
            });
        }
    }
    if let (Some(n), None) = (hp.n_head, hp.head_dim) {
        if n == 0 || width % n != 0 {
            return Err(ModelError::Hyper {
                name: "n_head".into(),
                msg: format!(
                    "{n} heads do not divide the hidden size {width} of '{}'",
                    emb.name
                ),
            });
        }
    }
    Ok(())
}

/// A layer-count check for families that convert every layer present: `layers`, when given, must equal the number
/// of distinct layer numbers found, and those must be `0..n`.
pub fn check_layers(
    family: &'static str,
    hp: &HyperParams,
    seen: &BTreeSet<usize>,
) -> Result<(), ModelError> {
    let n = seen.len();
    if let Some(last) = seen.iter().next_back() {
        if last + 1 != n {
            let missing: Vec<String> = (0..*last)
                .filter(|i| !seen.contains(i))
                .map(|i| i.to_string())
                .collect();
            return Err(ModelError::Other {
                family: family.to_string(),
                msg: format!(
                    "layers {} are missing (found layer numbers up to {last})",
                    missing.join(", ")
                ),
            });
        }
    }
    match hp.layers {
        Some(l) if l != n => Err(ModelError::Hyper {
            name: "layers".into(),
            msg: format!("{l} given, but the checkpoint holds {n} layer(s)"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
        assert!(Pattern::parse("a.{foo}").is_err());
        assert!(Pattern::parse("a.{i}.{i}").is_err());
        assert!(Pattern::parse("a.{i").is_err());
    }

    /// A tiny evaluator over element indices: every input element is `(input, flat index)`.
    pub(crate) fn eval(
        expr: &Expr,
        inputs: &[TensorInfo],
    ) -> (Vec<usize>, Vec<Option<(usize, usize)>>) {
        match expr {
            Expr::Input(i) => {
                let t = &inputs[*i];
                (
                    t.shape.clone(),
                    (0..t.numel()).map(|k| Some((*i, k))).collect(),
                )
            }
            Expr::Reshape(s, shape) => (shape.clone(), eval(s, inputs).1),
            Expr::Cast(s, _) => eval(s, inputs),
            Expr::Dequant { weight, .. } => eval(weight, inputs),
            Expr::Zeros(shape, _) => (shape.clone(), vec![None; shape.iter().product()]),
            Expr::Transpose(s) => {
                let (sh, v) = eval(s, inputs);
                let (r, c) = (sh[0], sh[1]);
                let mut out = Vec::with_capacity(v.len());
                for j in 0..c {
                    for i in 0..r {
                        out.push(v[i * c + j]);
                    }
                }
                (vec![c, r], out)
            }
            Expr::Narrow {
                src,
                dim,
                start,
                len,
            } => {
                let (mut sh, v) = eval(src, inputs);
                let outer: usize = sh[..*dim].iter().product();
                let inner: usize = sh[dim + 1..].iter().product();
                let n = sh[*dim];
                let mut out = Vec::new();
                for o in 0..outer {
                    for d in *start..start + len {
                        let b = (o * n + d) * inner;
                        out.extend_from_slice(&v[b..b + inner]);
                    }
                }
                sh[*dim] = *len;
                (sh, out)
            }
            Expr::Concat(parts, dim) => {
                let ev: Vec<_> = parts.iter().map(|p| eval(p, inputs)).collect();
                let mut sh = ev[0].0.clone();
                let outer: usize = sh[..*dim].iter().product();
                let mut out = Vec::new();
                for o in 0..outer {
                    for (ps, pv) in &ev {
                        let chunk: usize = ps[*dim..].iter().product();
                        out.extend_from_slice(&pv[o * chunk..(o + 1) * chunk]);
                    }
                }
                sh[*dim] = ev.iter().map(|(s, _)| s[*dim]).sum();
                (sh, out)
            }
        }
    }

    fn hps(nh: usize, hidden: usize) -> HyperParams {
        HyperParams {
            n_head: Some(nh),
            hidden_size: Some(hidden),
            ..Default::default()
        }
    }

    #[test]
    fn head_interleaved_follows_the_spec_index_map() {
        // nh=2, hd=3, H=6, last dim 5; bias too.
        let (nh, hd, cols) = (2usize, 3usize, 5usize);
        let h = nh * hd;
        let inputs = vec![
            TensorInfo::new("w", DType::F32, vec![3 * h, cols]),
            TensorInfo::new("b", DType::F32, vec![3 * h]),
        ];
        let hp = hps(nh, h);
        let ctx = Ctx::new("t", &hp);
        for (j, width) in [(0usize, cols), (1, 1)] {
            let parts = split_exprs(Op::HeadInterleaved, j, &inputs, 3, &ctx).unwrap();
            for (kind, e) in parts.iter().enumerate() {
                let (_, v) = eval(e, &inputs);
                for head in 0..nh {
                    for r in 0..hd {
                        for c in 0..width {
                            let out_row = head * hd + r;
                            let fused_row = head * 3 * hd + kind * hd + r;
                            assert_eq!(v[out_row * width + c], Some((j, fused_row * width + c)));
                        }
                    }
                }
            }
        }
        // inverse restores the fused order
        let parts_in: Vec<TensorInfo> = ["q", "k", "v"]
            .iter()
            .map(|n| TensorInfo::new(*n, DType::F32, vec![h, cols]))
            .collect();
        let fused = fuse_expr(Op::HeadInterleaved, &[0, 1, 2], &parts_in, "w", &ctx).unwrap();
        let (sh, v) = eval(&fused, &parts_in);
        assert_eq!(sh, vec![3 * h, cols]);
        for head in 0..nh {
            for kind in 0..3 {
                for r in 0..hd {
                    let fused_row = head * 3 * hd + kind * hd + r;
                    assert_eq!(v[fused_row * cols], Some((kind, (head * hd + r) * cols)));
                }
            }
        }
        // wrong n_head / hidden / unknown n_head
        let bad = hps(5, h);
        assert!(split_exprs(Op::HeadInterleaved, 0, &inputs, 3, &Ctx::new("t", &bad)).is_err());
        let bad = hps(nh, h + 1);
        assert!(split_exprs(Op::HeadInterleaved, 0, &inputs, 3, &Ctx::new("t", &bad)).is_err());
        let none = HyperParams::default();
        assert!(matches!(
            split_exprs(Op::HeadInterleaved, 0, &inputs, 3, &Ctx::new("t", &none)),
            Err(ModelError::Hyper { .. })
        ));
    }

    #[test]
    fn conv1d_split_takes_column_blocks_transposed() {
        let inputs = vec![TensorInfo::new("w", DType::F32, vec![4, 12])];
        let hp = hps(1, 4);
        let ctx = Ctx::new("t", &hp);
        let op = Op::Split {
            axis: Axis::Last,
            transpose: true,
            hidden_part: true,
        };
        let parts = split_exprs(op, 0, &inputs, 3, &ctx).unwrap();
        for (k, e) in parts.iter().enumerate() {
            let (sh, v) = eval(e, &inputs);
            assert_eq!(sh, vec![4, 4]);
            // dense_k[r][c] = W[c][k*4 + r]
            for r in 0..4 {
                for c in 0..4 {
                    assert_eq!(v[r * 4 + c], Some((0, c * 12 + k * 4 + r)));
                }
            }
        }
        let bad = hps(1, 5);
        assert!(split_exprs(op, 0, &inputs, 3, &Ctx::new("t", &bad)).is_err());
    }

    #[test]
    fn malformed_tables_are_rejected() {
        let bad: &[&[Rule]] = &[
            &[map("a.{i}.w", &["b.w"])],
            &[map("a.w", &["b.{i}.w"])],
            &[map("a.{s}", &["b.{s:weight|bias|x}"])],
            &[op("a.w", &["b.w", "c.w"], Op::Copy)],
            &[op("a.w", &["b.w"], Op::HeadInterleaved)],
            &[map("a.{bad}", &["b"])],
        ];
        for rules in bad {
            assert!(Table::new("t", rules).is_err(), "{rules:?}");
        }
        assert!(Table::new("t", &[map("{p:|x.}a.{i}.{s}", &["b.{i}.{s}"])]).is_ok());
    }

    #[test]
    fn check_layers_wants_all_layers_and_agreement() {
        let seen: BTreeSet<usize> = [0, 1, 2].into_iter().collect();
        assert!(check_layers("t", &HyperParams::default(), &seen).is_ok());
        let mut h = HyperParams {
            layers: Some(3),
            ..Default::default()
        };
        assert!(check_layers("t", &h, &seen).is_ok());
        h.layers = Some(2);
        assert!(matches!(
            check_layers("t", &h, &seen),
            Err(ModelError::Hyper { .. })
        ));
        let gap: BTreeSet<usize> = [0, 2].into_iter().collect();
        assert!(check_layers("t", &HyperParams::default(), &gap).is_err());
    }
}
