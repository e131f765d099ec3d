//! The generic planner: every [`Family`] is planned here, from its declarative value only. It knows no family by
//! name; what differs between families is in their tables (patterns, ops, experts), their hyper-parameters and
//! their declared embeddings, pins, tied head and checks.
//!
//! Steps, both directions alike (the "source" side is HF going forward and MindSpore going back):
//! 1. compile the tables (plus [`TRAINING_STATE`] in reverse): malformed rules are internal errors;
//! 2. the needed hyper-parameters, and the embedding check ([`Check::Hidden`]);
//! 3. match every input to its first rule (fail closed: all unmatched names in one error);
//! 4. a rule with one source pattern (and no stacked experts on the source side) emits in input order; other rules
//!    gather their parts (and experts) by their captures and emit at the end, in order of first appearance;
//! 5. every item is checked against the headers, names are unique; then the layer and MoE checks and the pins.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::models::rules::{
    Axis, Captures, Dir, Experts, Layout, Op, Pattern, Rule, Sizes, SYNTHESISED_ZEROS,
    TRAINING_STATE,
};
use crate::models::{Check, Family, Hyper, HyperParams, ModelError};
use crate::ops::{Dropped, Expr, Plan, PlanItem};
use crate::tensor::{DType, TensorInfo};

/// The rule under which an FP8 weight's block scale is dropped (it is consumed by dequantising the weight).
pub const FP8_SCALE: &str = "fp8-block-scale (consumed by dequantising its weight to bf16)";
/// The rule under which an MTP layer's copy of a main-model tensor is dropped.
pub const MTP_COPY: &str =
    "mtp-copy (the MTP layer's copy of a main-model tensor; the reverse re-creates it)";

/// Plan one direction of `family` over `inputs`: the family's rules over the decoder (and, with [`Family::mtp`],
/// its MTP layers planned as decoder layers and renamed), FP8 weights with block scales dequantised (forward).
pub fn plan(
    family: &Family,
    inputs: &[TensorInfo],
    hp: &HyperParams,
    reversed: bool,
) -> Result<Plan, ModelError> {
    // FP8 weights with `<name>_scale_inv` block scales (forward only): the scales are consumed.
    let mut scales: HashMap<usize, usize> = HashMap::new();
    if !reversed {
        let by_name: HashMap<&str, usize> = inputs
            .iter()
            .enumerate()
            .map(|(j, t)| (t.name.as_str(), j))
            .collect();
        for (j, t) in inputs.iter().enumerate() {
            if t.dtype.is_fp8() {
                if let Some(&s) = by_name.get(format!("{}_scale_inv", t.name).as_str()) {
                    scales.insert(j, s);
                }
            }
        }
    }
    let scale_set: BTreeSet<usize> = scales.values().copied().collect();
    let mut out = Plan::default();
    for &s in &scale_set {
        out.dropped.push(Dropped {
            name: inputs[s].name.clone(),
            rule: FP8_SCALE.to_string(),
        });
    }
    let visible: Vec<usize> = (0..inputs.len())
        .filter(|j| !scale_set.contains(j))
        .collect();

    let mtp = match (family.mtp, hp.layers) {
        (Some(m), Some(l)) => Some((m, l)),
        _ => None,
    };
    let Some((m, l)) = mtp else {
        let sub: Vec<(usize, TensorInfo)> =
            visible.iter().map(|&j| (j, inputs[j].clone())).collect();
        let p = plan_subset(family, &sub, hp, reversed)?;
        out.items.extend(p.items);
        out.dropped.extend(p.dropped);
        return dequantise(out, inputs, &scales, hp, family);
    };

    // Split the inputs: main model, MTP layer k's decoder tensors (renamed to decoder layer k), MTP own tensors.
    let mut main: Vec<(usize, TensorInfo)> = Vec::new();
    let mut per_k: BTreeMap<usize, Vec<(usize, TensorInfo)>> = BTreeMap::new();
    for &j in &visible {
        let t = &inputs[j];
        let name = t.name.as_str();
        if reversed {
            let Some((k, rest)) = strip_index(name, m.ms_mtp) else {
                main.push((j, t.clone()));
                continue;
            };
            if let Some(inner) = rest.strip_prefix(m.ms_inner) {
                let mut v = t.clone();
                v.name = format!("{}{k}.{inner}", m.ms_layer);
                per_k.entry(k).or_default().push((j, v));
            } else if let Some((hf, _)) = m.own.iter().find(|(_, ms)| *ms == rest) {
                out.items.push(PlanItem::new(
                    format!("{}{}.{hf}", m.hf_layer, l + k),
                    Expr::input(j),
                ));
            } else {
                return Err(ModelError::Tensor {
                    family: family.name.to_string(),
                    tensor: name.to_string(),
                    msg: format!("an MTP tensor that no rule names (under {}{k}.)", m.ms_mtp),
                });
            }
        } else {
            match strip_index(name, m.hf_layer) {
                Some((mi, rest)) if mi >= l => {
                    let k = mi - l;
                    if let Some(n) = hp.mtp_layers.filter(|n| k >= *n) {
                        return Err(ModelError::Tensor {
                            family: family.name.to_string(),
                            tensor: name.to_string(),
                            msg: format!(
                                "layer {mi} is past the {l} decoder layers and the {n} MTP layer(s) of config.json"
                            ),
                        });
                    }
                    if m.copies.iter().any(|(leaf, _)| *leaf == rest) {
                        out.dropped.push(Dropped {
                            name: name.to_string(),
                            rule: MTP_COPY.to_string(),
                        });
                    } else if let Some((_, ms)) = m.own.iter().find(|(hf, _)| *hf == rest) {
                        out.items.push(PlanItem::new(
                            format!("{}{k}.{ms}", m.ms_mtp),
                            Expr::input(j),
                        ));
                    } else {
                        let mut v = t.clone();
                        v.name = format!("{}{k}.{rest}", m.hf_layer);
                        per_k.entry(k).or_default().push((j, v));
                    }
                }
                _ => main.push((j, t.clone())),
            }
        }
    }
    let main_plan = plan_subset(family, &main, hp, reversed)?;
    // The MTP layers: the family's rules without its checks (one layer, numbered k), outputs renamed.
    let mut layer_family = *family;
    layer_family.checks = &[];
    layer_family.mtp = None;
    let mut layer_hp = hp.clone();
    layer_hp.layers = None;
    let mut mtp_items = Vec::new();
    for (k, sub) in &per_k {
        let p = plan_subset(&layer_family, sub, &layer_hp, reversed)?;
        let (from, to) = if reversed {
            (
                format!("{}{k}.", m.hf_layer),
                format!("{}{}.", m.hf_layer, l + k),
            )
        } else {
            (
                format!("{}{k}.", m.ms_layer),
                format!("{}{k}.{}", m.ms_mtp, m.ms_inner),
            )
        };
        for mut item in p.items {
            let Some(rest) = item.name.strip_prefix(&from) else {
                return Err(ModelError::Other {
                    family: family.name.to_string(),
                    msg: format!(
                        "internal rule error: MTP output '{}' is not under {from}",
                        item.name
                    ),
                });
            };
            item.name = format!("{to}{rest}");
            mtp_items.push(item);
        }
        out.dropped.extend(p.dropped);
        if reversed {
            // Re-create the MTP layer's copies of main-model tensors.
            for (leaf, main_name) in m.copies {
                if let Some(src) = main_plan.items.iter().find(|i| i.name == *main_name) {
                    mtp_items.push(PlanItem::new(
                        format!("{}{}.{leaf}", m.hf_layer, l + k),
                        src.expr.clone(),
                    ));
                }
            }
        }
    }
    let own = std::mem::take(&mut out.items);
    out.items = main_plan.items;
    out.items.extend(mtp_items);
    out.items.extend(own);
    out.dropped.extend(main_plan.dropped);
    dequantise(out, inputs, &scales, hp, family)
}

/// `prefix` + decimal index + `.` + rest → (index, rest).
fn strip_index<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let r = name.strip_prefix(prefix)?;
    let (num, rest) = r.split_once('.')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, rest))
}

/// Plan a subset of the inputs (each with its index in the full input list and, possibly, a new name); the plan's
/// inputs are numbered as in the full list.
fn plan_subset(
    family: &Family,
    sub: &[(usize, TensorInfo)],
    hp: &HyperParams,
    reversed: bool,
) -> Result<Plan, ModelError> {
    let infos: Vec<TensorInfo> = sub.iter().map(|(_, t)| t.clone()).collect();
    let mut p = plan_one(family, &infos, hp, reversed)?;
    let orig: Vec<usize> = sub.iter().map(|(j, _)| *j).collect();
    let identity = orig.iter().enumerate().all(|(a, b)| a == *b);
    if !identity {
        for item in &mut p.items {
            item.expr = item.expr.map_inputs(&|i| Expr::input(orig[i]));
        }
    }
    Ok(p)
}

/// Replace every FP8 weight that has a block scale by its dequantisation to bf16, and check the plan again.
fn dequantise(
    mut plan: Plan,
    inputs: &[TensorInfo],
    scales: &HashMap<usize, usize>,
    hp: &HyperParams,
    family: &Family,
) -> Result<Plan, ModelError> {
    if scales.is_empty() {
        return Ok(plan);
    }
    let mut blocks: HashMap<usize, [usize; 2]> = HashMap::new();
    for (&w, &s) in scales {
        let b = crate::fp8::block_size(&inputs[w].shape, &inputs[s].shape, hp.fp8_block).map_err(
            |m| ModelError::Tensor {
                family: family.name.to_string(),
                tensor: inputs[w].name.clone(),
                msg: format!("{m} ({})", inputs[s].name),
            },
        )?;
        blocks.insert(w, b);
    }
    for item in &mut plan.items {
        item.expr = item
            .expr
            .map_inputs(&|i| match (scales.get(&i), blocks.get(&i)) {
                (Some(&s), Some(&b)) => Expr::input(i).dequant(Expr::input(s), b, DType::BF16),
                _ => Expr::input(i),
            });
        item.expr.infer(inputs).map_err(|e| ModelError::Tensor {
            family: family.name.to_string(),
            tensor: item.name.clone(),
            msg: e.0,
        })?;
    }
    Ok(plan)
}

/// Plan one direction of `family` over `inputs` (no MTP split, no FP8).
fn plan_one(
    family: &Family,
    inputs: &[TensorInfo],
    hp: &HyperParams,
    reversed: bool,
) -> Result<Plan, ModelError> {
    let rules = compile(family, reversed)?;
    let mut ctx = Ctx {
        family: family.name,
        hp,
        hidden: hp.hidden_size,
        inputs,
        reversed,
    };
    if !inputs.is_empty() {
        for h in family.needs {
            hp.require(*h, family.name)?;
        }
    }
    let embedding = find_embedding(family, inputs);
    if family.checks.contains(&Check::Hidden) {
        check_hidden(hp, embedding)?;
    }

    // Sources: the inputs, plus (forward) a tied head that the input lacks, read from its embedding.
    let mut sources: Vec<(&str, usize)> = inputs
        .iter()
        .enumerate()
        .map(|(j, t)| (t.name.as_str(), j))
        .collect();
    if let (false, Some(tied)) = (reversed, family.tied_head) {
        if !inputs.iter().any(|t| t.name == tied.head) {
            if let Some(j) = inputs.iter().position(|t| t.name == tied.embedding) {
                sources.push((tied.head, j));
            }
        }
    }

    // Match.
    let mut matched = Vec::with_capacity(sources.len());
    let mut unmapped = Vec::new();
    for (k, &(name, _)) in sources.iter().enumerate() {
        match match_rule(&rules, name, reversed) {
            Some(m) => matched.push((k, m)),
            None if k < inputs.len() => unmapped.push(name.to_string()),
            None => return Err(ctx.rule_err(format!("tied head '{name}' matches no rule"))),
        }
    }
    if !unmapped.is_empty() {
        return Err(ModelError::Unmapped {
            family: family.name.to_string(),
            names: unmapped,
        });
    }

    ctx.hidden = ctx
        .hidden
        .or(embedding.and_then(|t| t.shape.get(1).copied()))
        .or_else(|| qkv_columns(&rules, &matched, &sources, inputs, reversed));

    // Emit.
    let mut out = Plan::default();
    let mut layers = BTreeSet::new();
    let mut expert_layers = BTreeSet::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_ix: HashMap<String, usize> = HashMap::new();
    for (k, (r, caps, part)) in matched {
        let (name, j) = sources[k];
        let layer = capture(&caps, "i").and_then(|v| v.parse::<usize>().ok());
        if let Some(l) = layer {
            layers.insert(l);
        }
        match &rules[r] {
            CRule::Drop { rule, .. } => out.dropped.push(Dropped {
                name: name.to_string(),
                rule: (*rule).to_string(),
            }),
            CRule::Map { hf, ms, .. } => {
                let (src, _) = sides(hf, ms, reversed);
                let src_e = has_e(&src[0]);
                if let (Some(l), true) = (layer, has_e(&hf[0]) || has_e(&ms[0])) {
                    expert_layers.insert(l);
                }
                let e = if src_e {
                    capture(&caps, "e").and_then(|v| v.parse::<usize>().ok())
                } else {
                    None
                };
                if src.len() == 1 && !src_e {
                    let mut parts = BTreeMap::new();
                    parts.insert(0, vec![Some(j)]);
                    emit(&ctx, &rules[r], &caps, &parts, &mut out)?;
                    continue;
                }
                let key_caps: Captures = caps.iter().filter(|(n, _)| n != "e").cloned().collect();
                let key = format!("{r}|{key_caps:?}");
                let g = *group_ix.entry(key).or_insert_with(|| {
                    groups.push(Group {
                        rule: r,
                        caps: key_caps,
                        parts: BTreeMap::new(),
                    });
                    groups.len() - 1
                });
                let slots = groups[g]
                    .parts
                    .entry(e.unwrap_or(0))
                    .or_insert_with(|| vec![None; src.len()]);
                if let Some(prev) = slots[part] {
                    return Err(ctx.tensor_err(
                        name,
                        format!("the same part of a fused tensor as '{}'", inputs[prev].name),
                    ));
                }
                slots[part] = Some(j);
            }
        }
    }
    for g in &groups {
        emit(&ctx, &rules[g.rule], &g.caps, &g.parts, &mut out)?;
    }

    finish(&mut out, &ctx)?;
    if family.checks.contains(&Check::Layers) {
        check_layers(family.name, hp, &layers)?;
    }
    if family.checks.contains(&Check::MoeLayers) {
        check_moe_layers(family.name, hp, &layers, &expert_layers)?;
    }
    if !reversed {
        pin(family, &mut out, inputs)?;
    }
    Ok(out)
}

/// How many of `inputs` some rule of `family` accepts in a direction (renamed, fused or dropped): a cheap score of
/// how well a family fits a checkpoint, for hints when names do not match.
pub fn matched(family: &Family, inputs: &[TensorInfo], reversed: bool) -> usize {
    let Ok(rules) = compile(family, reversed) else {
        return 0;
    };
    inputs
        .iter()
        .filter(|t| match_rule(&rules, &t.name, reversed).is_some())
        .count()
}

// ------------------------------------------------------------------------------------------------------------------
// Context

/// What the ops may consult while planning.
struct Ctx<'a> {
    family: &'static str,
    hp: &'a HyperParams,
    /// Hidden size: the hyper-parameter, else the embedding's width, else a fused q/k/v's columns.
    hidden: Option<usize>,
    inputs: &'a [TensorInfo],
    reversed: bool,
}

impl Ctx<'_> {
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

    fn shape(&self, e: &Expr, name: &str) -> Result<(DType, Vec<usize>), ModelError> {
        e.infer(self.inputs).map_err(|x| self.tensor_err(name, x.0))
    }

    fn need(&self, h: Hyper) -> Result<usize, ModelError> {
        self.hp.require(h, self.family)
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Compiled tables

enum CRule {
    Map {
        hf: Vec<Pattern>,
        ms: Vec<Pattern>,
        op: Op,
        experts: Experts,
    },
    Drop {
        dir: Dir,
        pattern: Pattern,
        rule: &'static str,
    },
}

fn compile(family: &Family, reversed: bool) -> Result<Vec<CRule>, ModelError> {
    let bad = |e: String| ModelError::Other {
        family: family.name.to_string(),
        msg: format!("internal rule error: {e}"),
    };
    let mut rules: Vec<&Rule> = family.rules.iter().flat_map(|t| t.iter()).collect();
    if reversed {
        rules.extend(TRAINING_STATE.iter());
    }
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        out.push(match *r {
            Rule::Map { hf, ms, op, experts } => {
                let (hf, ms) = (hf.patterns(), ms.patterns());
                let first = hf.first().copied().unwrap_or("?");
                if hf.is_empty() || ms.is_empty() || (hf.len() > 1 && ms.len() > 1) {
                    return Err(bad(format!(
                        "rule '{first}': {} HF and {} MindSpore patterns (one side must have exactly one)",
                        hf.len(),
                        ms.len()
                    )));
                }
                if op.zeros && hf.len().max(ms.len()) < 2 {
                    return Err(bad(format!("rule '{first}': zeros need two or more parts")));
                }
                let parse = |v: &[&'static str]| -> Result<Vec<Pattern>, ModelError> {
                    v.iter()
                        .map(|p| Pattern::parse(p).map_err(bad))
                        .collect()
                };
                let (hf, ms) = (parse(hf)?, parse(ms)?);
                // Both directions must render: every pattern of a rule needs the same placeholders (a stacked
                // `{e}` aside: it must be on every pattern of one side or of none), and alternatives agree.
                let req = |p: &Pattern| -> BTreeSet<String> {
                    p.required()
                        .into_iter()
                        .filter(|n| *n != "e")
                        .map(String::from)
                        .collect()
                };
                let want = req(&hf[0]);
                for side in [&hf, &ms] {
                    let e0 = has_e(&side[0]);
                    for p in side.iter() {
                        if req(p) != want || has_e(p) != e0 || !p.alts_agree(&hf[0]) {
                            return Err(bad(format!(
                                "rule '{first}': '{}' has other placeholders than '{}'",
                                p.src(),
                                hf[0].src()
                            )));
                        }
                    }
                }
                CRule::Map { hf, ms, op, experts }
            }
            Rule::Drop { dir, pattern, rule } => CRule::Drop {
                dir,
                pattern: Pattern::parse(pattern).map_err(bad)?,
                rule,
            },
        });
    }
    Ok(out)
}

fn has_e(p: &Pattern) -> bool {
    p.required().contains("e")
}

fn capture<'c>(caps: &'c Captures, name: &str) -> Option<&'c str> {
    caps.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn with_capture(caps: &Captures, name: &str, value: String) -> Captures {
    let mut c: Captures = caps.iter().filter(|(k, _)| k != name).cloned().collect();
    c.push((name.to_string(), value));
    c
}

/// (source patterns, destination patterns) of a rule in a direction.
fn sides<'r>(
    hf: &'r [Pattern],
    ms: &'r [Pattern],
    reversed: bool,
) -> (&'r [Pattern], &'r [Pattern]) {
    if reversed {
        (ms, hf)
    } else {
        (hf, ms)
    }
}

/// The first rule matching `name` in a direction: (rule, captures, part).
fn match_rule(rules: &[CRule], name: &str, reversed: bool) -> Option<(usize, Captures, usize)> {
    rules.iter().enumerate().find_map(|(k, r)| match r {
        CRule::Map { hf, ms, .. } => {
            let (src, _) = sides(hf, ms, reversed);
            src.iter()
                .enumerate()
                .find_map(|(p, pat)| pat.matches(name).map(|c| (k, c, p)))
        }
        CRule::Drop { dir, pattern, .. } => {
            let applies = match dir {
                Dir::Both => true,
                Dir::Forward => !reversed,
                Dir::Reverse => reversed,
            };
            if applies {
                pattern.matches(name).map(|c| (k, c, 0))
            } else {
                None
            }
        }
    })
}

/// Columns of the first 2-D fused q/k/v source ([`Sizes::Qkv`], forward): a projection's input width is the
/// hidden size.
fn qkv_columns(
    rules: &[CRule],
    matched: &[(usize, (usize, Captures, usize))],
    sources: &[(&str, usize)],
    inputs: &[TensorInfo],
    reversed: bool,
) -> Option<usize> {
    if reversed {
        return None;
    }
    matched.iter().find_map(|(k, (r, _, _))| match &rules[*r] {
        CRule::Map { hf, op, .. } if hf.len() == 1 && op.sizes == Sizes::Qkv => {
            let t = &inputs[sources[*k].1];
            (t.shape.len() == 2).then(|| t.shape[1])
        }
        _ => None,
    })
}

/// One fused tensor's parts being gathered: per expert (0 without experts), the source index of each part.
struct Group {
    rule: usize,
    caps: Captures,
    parts: BTreeMap<usize, Vec<Option<usize>>>,
}

// ------------------------------------------------------------------------------------------------------------------
// Emitting one rule application

fn emit(
    ctx: &Ctx,
    rule: &CRule,
    caps: &Captures,
    parts: &BTreeMap<usize, Vec<Option<usize>>>,
    out: &mut Plan,
) -> Result<(), ModelError> {
    let CRule::Map {
        hf,
        ms,
        op,
        experts,
    } = rule
    else {
        return Err(ctx.rule_err("emit of a drop rule"));
    };
    let (src, dst) = sides(hf, ms, ctx.reversed);
    let (src_e, dst_e) = (has_e(&src[0]), has_e(&dst[0]));
    let stacking = src_e != dst_e;
    let render = |p: &Pattern, caps: &Captures| p.render(caps).map_err(|e| ctx.rule_err(e));
    let dst_name = if dst_e {
        render(&dst[0], &with_capture(caps, "e", "0".into()))?
    } else {
        render(&dst[0], caps)?
    };

    // The parts each expert (one pseudo-expert without experts) has, as expressions.
    let mut per_expert: Vec<Vec<Option<Expr>>> = Vec::new();
    if stacking && src_e {
        let n = parts.len();
        if parts.keys().copied().ne(0..n) {
            let have: Vec<String> = parts.keys().map(|e| e.to_string()).collect();
            return Err(ctx.tensor_err(
                &dst_name,
                format!("experts must be numbered 0..{n}, found {}", have.join(", ")),
            ));
        }
        if let Some(want) = ctx.hp.n_experts {
            if want != n {
                return Err(ctx.tensor_err(
                    &dst_name,
                    format!("{n} expert(s) found, but n_experts is {want}"),
                ));
            }
        }
        for v in parts.values() {
            per_expert.push(v.iter().map(|j| j.map(Expr::input)).collect());
        }
    } else {
        let Some(v) = parts.get(&0) else {
            return Err(ctx.rule_err("a group without parts"));
        };
        let base: Vec<Option<Expr>> = v.iter().map(|j| j.map(Expr::input)).collect();
        if stacking {
            // Unstack: the source holds every expert.
            let [Some(x)] = base.as_slice() else {
                return Err(ctx.rule_err("stacked experts on a multi-part side"));
            };
            let src_name = render(&src[0], caps)?;
            let (_, shape) = ctx.shape(x, &src_name)?;
            let Some((&rows, rest)) = shape.split_first() else {
                return Err(ctx.tensor_err(&src_name, "a scalar cannot hold experts"));
            };
            let n = match experts {
                Experts::Stacked => {
                    if let Some(want) = ctx.hp.n_experts.filter(|w| *w != rows) {
                        return Err(ctx.tensor_err(
                            &src_name,
                            format!(
                                "holds {rows} experts (shape {shape:?}), but n_experts is {want}"
                            ),
                        ));
                    }
                    rows
                }
                Experts::Flat => ctx.need(Hyper::Experts)?,
            };
            if n == 0 || rows % n != 0 {
                return Err(ctx.tensor_err(
                    &src_name,
                    format!("shape {shape:?} does not hold n_experts = {n} equal blocks"),
                ));
            }
            for e in 0..n {
                let one = match experts {
                    Experts::Stacked => x.clone().narrow(0, e, 1).reshape(rest.to_vec()),
                    Experts::Flat => x.clone().narrow(0, e * (rows / n), rows / n),
                };
                per_expert.push(vec![Some(one)]);
            }
        } else {
            per_expert.push(base);
        }
    }

    // Apply the op per expert.
    let mut results: Vec<Vec<Expr>> = Vec::with_capacity(per_expert.len());
    for (e, srcs) in per_expert.into_iter().enumerate() {
        let caps_e = if src_e || dst_e {
            with_capture(caps, "e", e.to_string())
        } else {
            caps.clone()
        };
        let missing: Vec<String> = srcs
            .iter()
            .enumerate()
            .filter(|(p, x)| x.is_none() && !(op.zeros && *p > 0))
            .map(|(p, _)| {
                src[p]
                    .render(&caps_e)
                    .unwrap_or_else(|_| src[p].src().into())
            })
            .collect();
        if !missing.is_empty() {
            let name = render(&dst[0], &caps_e)?;
            return Err(ctx.tensor_err(
                &name,
                format!("cannot fuse: missing part(s) {}", missing.join(", ")),
            ));
        }
        let names: Vec<String> = src
            .iter()
            .map(|p| p.render(&caps_e).unwrap_or_else(|_| p.src().into()))
            .collect();
        results.push(apply(
            ctx,
            *op,
            srcs,
            dst.len(),
            &names,
            &render(&dst[0], &caps_e)?,
            out,
        )?);
    }

    // Name the results (per expert, or stacked).
    if stacking && src_e {
        for (q, pat) in dst.iter().enumerate() {
            let name = render(pat, caps)?;
            let pieces: Vec<Expr> = results.iter().map(|r| r[q].clone()).collect();
            let expr = match experts {
                Experts::Flat => {
                    let (_, s) = ctx.shape(&pieces[0], &name)?;
                    if s.len() != 2 {
                        return Err(ctx.tensor_err(
                            &name,
                            format!("flat experts need 2-D pieces, got {s:?}"),
                        ));
                    }
                    Expr::Concat(pieces, 0)
                }
                Experts::Stacked => {
                    let (_, s) = ctx.shape(&pieces[0], &name)?;
                    let mut one = vec![1];
                    one.extend_from_slice(&s);
                    Expr::Concat(
                        pieces.into_iter().map(|p| p.reshape(one.clone())).collect(),
                        0,
                    )
                }
            };
            out.items.push(PlanItem::new(name, expr));
        }
    } else {
        for (q, pat) in dst.iter().enumerate() {
            for (e, r) in results.iter().enumerate() {
                let caps_e = if dst_e {
                    with_capture(caps, "e", e.to_string())
                } else {
                    caps.clone()
                };
                out.items
                    .push(PlanItem::new(render(pat, &caps_e)?, r[q].clone()));
            }
        }
    }
    Ok(())
}

/// One application of an op: source expressions (one side of the rule) → destination expressions.
fn apply(
    ctx: &Ctx,
    op: Op,
    srcs: Vec<Option<Expr>>,
    n_dst: usize,
    names: &[String],
    dst_name: &str,
    out: &mut Plan,
) -> Result<Vec<Expr>, ModelError> {
    let tr = |x: Expr| if op.transpose { x.transpose() } else { x };
    if srcs.len() == 1 {
        let Some(x) = srcs.into_iter().next().flatten() else {
            return Err(ctx.rule_err("missing source"));
        };
        if n_dst == 1 {
            if let Some((hf_layout, n)) = op.relayout {
                // Re-lay the parts out: split by the source side's layout, fuse by the destination's.
                let ms_layout = resolve_layout(ctx, op.layout)?;
                let (from, to) = if ctx.reversed {
                    (ms_layout, hf_layout)
                } else {
                    (hf_layout, ms_layout)
                };
                let name = &names[0];
                let (_, shape) = ctx.shape(&x, name)?;
                let extents = split_extents(ctx, Op::COPY, from, &shape, n, name)?;
                let parts = from
                    .split(&x, &shape, &extents)
                    .map_err(|e| ctx.tensor_err(name, e.0))?;
                let shapes = parts
                    .iter()
                    .map(|p| ctx.shape(p, name).map(|s| s.1))
                    .collect::<Result<Vec<_>, _>>()?;
                let fused = to
                    .fuse(&parts, &shapes)
                    .map_err(|e| ctx.tensor_err(dst_name, e.0))?;
                return Ok(vec![tr(fused)]);
            }
            return Ok(vec![tr(x)]);
        }
        // Split.
        let name = &names[0];
        let (dtype, shape) = ctx.shape(&x, name)?;
        if op.zeros {
            let mut v = vec![x];
            v.extend((1..n_dst).map(|_| Expr::Zeros(shape.clone(), dtype)));
            return Ok(v);
        }
        let layout = resolve_layout(ctx, op.layout)?;
        let extents = split_extents(ctx, op, layout, &shape, n_dst, name)?;
        let parts = layout
            .split(&x, &shape, &extents)
            .map_err(|e| ctx.tensor_err(name, e.0))?;
        return Ok(parts.into_iter().map(tr).collect());
    }
    // Fuse.
    if n_dst != 1 {
        return Err(ctx.rule_err("many-to-many rule"));
    }
    if op.zeros {
        let mut it = srcs.into_iter().enumerate();
        let Some((_, Some(first))) = it.next() else {
            return Err(ctx.rule_err("zeros without their tensor"));
        };
        for (p, x) in it {
            if x.is_some() {
                out.dropped.push(Dropped {
                    name: names[p].clone(),
                    rule: SYNTHESISED_ZEROS.to_string(),
                });
            }
        }
        return Ok(vec![first]);
    }
    let parts: Vec<Expr> = srcs.into_iter().flatten().map(tr).collect();
    let mut shapes = Vec::with_capacity(parts.len());
    for (p, x) in parts.iter().enumerate() {
        shapes.push(ctx.shape(x, &names[p])?.1);
    }
    let layout = resolve_layout(ctx, op.layout)?;
    check_fuse(ctx, op, layout, &shapes, names, dst_name)?;
    let fused = layout
        .fuse(&parts, &shapes)
        .map_err(|e| ctx.tensor_err(dst_name, e.0))?;
    Ok(vec![fused])
}

/// Fill in the hyper-parameters a layout needs.
fn resolve_layout(ctx: &Ctx, layout: Layout) -> Result<Layout, ModelError> {
    Ok(match layout {
        Layout::GroupedHeads { .. } => Layout::GroupedHeads {
            groups: heads(ctx)?.1,
        },
        Layout::GatedMlp => {
            if ctx.hp.mlp_interleaved.unwrap_or(true) {
                Layout::InterleaveRows
            } else {
                Layout::Concat(Axis::First)
            }
        }
        l => l,
    })
}

/// (n_head, KV groups): groups = n_kv_head, else n_head (multi-head attention).
fn heads(ctx: &Ctx) -> Result<(usize, usize), ModelError> {
    let nh = ctx.need(Hyper::NHead)?;
    let g = ctx.hp.n_kv_head.unwrap_or(nh);
    if nh == 0 || g == 0 || nh % g != 0 {
        return Err(ModelError::Hyper {
            name: "n_kv_head".into(),
            msg: format!("n_head {nh} is not a multiple of n_kv_head {g}"),
        });
    }
    Ok((nh, g))
}

/// Part extents of a split.
fn split_extents(
    ctx: &Ctx,
    op: Op,
    layout: Layout,
    shape: &[usize],
    n: usize,
    name: &str,
) -> Result<Vec<usize>, ModelError> {
    let err = |msg: String| ctx.tensor_err(name, msg);
    match layout {
        Layout::Concat(axis) => {
            let dim = axis.dim(shape.len());
            let len = *shape
                .get(dim)
                .ok_or_else(|| err("cannot split a scalar".into()))?;
            match op.sizes {
                Sizes::Equal | Sizes::Hidden => {
                    if n == 0 || len % n != 0 {
                        return Err(err(format!(
                            "dim {dim} of shape {shape:?} does not split into {n} equal parts"
                        )));
                    }
                    let part = len / n;
                    if let (Sizes::Hidden, Some(h)) = (op.sizes, ctx.hidden) {
                        if part != h {
                            return Err(err(format!(
                                "dim {dim} of shape {shape:?} is {len}, expected {n}·hidden_size = {}",
                                n.saturating_mul(h)
                            )));
                        }
                    }
                    Ok(vec![part; n])
                }
                Sizes::Leading(hs) => {
                    if hs.len() + 1 != n {
                        return Err(
                            ctx.rule_err(format!("{} leading sizes for {n} parts", hs.len()))
                        );
                    }
                    let mut v = Vec::with_capacity(n);
                    for h in hs {
                        v.push(ctx.need(*h)?);
                    }
                    let lead: usize = v.iter().sum();
                    let rest = len.checked_sub(lead).filter(|r| *r > 0).ok_or_else(|| {
                        err(format!(
                            "dim {dim} of shape {shape:?} is {len}, not more than the leading parts {v:?} ({})",
                            hs.iter().map(|h| h.flag()).collect::<Vec<_>>().join(" + ")
                        ))
                    })?;
                    v.push(rest);
                    Ok(v)
                }
                Sizes::Qkv => {
                    let q = q_rows(ctx).ok_or_else(|| ModelError::Hyper {
                        name: "hidden_size".into(),
                        msg: format!("{} needs it to split '{name}'", ctx.family),
                    })?;
                    let rest = len
                        .checked_sub(q)
                        .filter(|r| n > 1 && *r > 0 && r % (n - 1) == 0)
                        .ok_or_else(|| {
                            err(format!(
                                "{len} rows do not hold q ({q} rows: hidden_size or n_head·head_dim) plus {} equal k/v blocks",
                                n.saturating_sub(1)
                            ))
                        })?;
                    let kv = rest / (n - 1);
                    if let Some(want) = kv_rows(ctx) {
                        if want != kv {
                            return Err(err(format!(
                                "k/v blocks have {kv} rows, but n_kv_head·head_dim = {want} (rows should be {})",
                                q.saturating_add(want.saturating_mul(n - 1))
                            )));
                        }
                    }
                    let mut v = vec![q];
                    v.extend(std::iter::repeat_n(kv, n - 1));
                    Ok(v)
                }
            }
        }
        Layout::GroupedHeads { groups } => {
            let (nh, _) = heads(ctx)?;
            let rows = *shape
                .first()
                .ok_or_else(|| err("cannot split a scalar".into()))?;
            let heads_total = nh + (n - 1) * groups;
            let hd = match ctx.hp.head_dim {
                Some(d) => d,
                None => {
                    if rows % heads_total != 0 {
                        return Err(err(format!(
                            "{rows} rows are not divisible by n_head + {}·n_kv_head = {heads_total} (n_head {nh}, {groups} KV group(s))",
                            n - 1
                        )));
                    }
                    rows / heads_total
                }
            };
            if rows != heads_total * hd {
                return Err(err(format!(
                    "{rows} rows, expected (n_head {nh} + {}·{groups} KV heads)·head_dim {hd} = {}",
                    n - 1,
                    heads_total * hd
                )));
            }
            if let (None, Some(h)) = (ctx.hp.head_dim, ctx.hidden) {
                if nh * hd != h {
                    return Err(err(format!(
                        "{rows} rows give head_dim {hd}, so n_head·head_dim = {}, but hidden_size is {h}",
                        nh * hd
                    )));
                }
            }
            let mut v = vec![nh / groups * hd];
            v.extend(std::iter::repeat_n(hd, n - 1));
            Ok(v)
        }
        Layout::InterleaveRows | Layout::Stack | Layout::GatedMlp => Ok(vec![0; n]),
    }
}

/// Rows of q in a fused q/k/v: n_head·head_dim when both are known (head_dim from the hyper-parameter, else
/// hidden / n_head), else the hidden size.
fn q_rows(ctx: &Ctx) -> Option<usize> {
    match (ctx.hp.n_head, ctx.hp.head_dim) {
        (Some(n), Some(d)) => n.checked_mul(d),
        _ => ctx.hidden,
    }
}

/// `n_kv_head·head_dim` when known (head_dim from the hyper-parameter, else hidden / n_head).
fn kv_rows(ctx: &Ctx) -> Option<usize> {
    let kv = ctx.hp.n_kv_head?;
    let hd = ctx.hp.head_dim.or_else(|| {
        let h = ctx.hidden?;
        ctx.hp
            .n_head
            .filter(|n| *n > 0 && h % n == 0)
            .map(|n| h / n)
    })?;
    kv.checked_mul(hd)
}

/// What fusing checks beyond the layout's own shape rules: the parts agree with the hyper-parameters.
fn check_fuse(
    ctx: &Ctx,
    op: Op,
    layout: Layout,
    shapes: &[Vec<usize>],
    names: &[String],
    dst_name: &str,
) -> Result<(), ModelError> {
    let err = |msg: String| ctx.tensor_err(dst_name, msg);
    let first = &shapes[0];
    let equal_from = |k: usize, what: &str| -> Result<(), ModelError> {
        for (p, s) in shapes.iter().enumerate().skip(k + 1) {
            if s != &shapes[k] {
                return Err(err(format!(
                    "{what}: part '{}' has shape {s:?} but '{}' has {:?}",
                    names[p], names[k], shapes[k]
                )));
            }
        }
        Ok(())
    };
    match layout {
        Layout::Concat(axis) => {
            let dim = axis.dim(first.len());
            if first.is_empty() {
                return Err(err(format!("part '{}' is a scalar", names[0])));
            }
            match op.sizes {
                Sizes::Equal | Sizes::Hidden => {
                    equal_from(0, "parts must be equal")?;
                    if let (Sizes::Hidden, Some(h)) = (op.sizes, ctx.hidden) {
                        if first[dim] != h {
                            return Err(err(format!(
                                "part '{}' has {} along dim {dim}, expected hidden_size {h}",
                                names[0], first[dim]
                            )));
                        }
                    }
                }
                Sizes::Leading(hs) => {
                    for ((p, s), h) in shapes.iter().enumerate().zip(hs.iter()) {
                        let want = ctx.need(*h)?;
                        if s.get(dim) != Some(&want) {
                            return Err(err(format!(
                                "part '{}' has shape {s:?}, expected {want} ({}) along dim {dim}",
                                names[p],
                                h.flag()
                            )));
                        }
                    }
                }
                Sizes::Qkv => {
                    equal_from(1, "k/v parts must be equal")?;
                    if let Some(q) = q_rows(ctx) {
                        if first[dim] != q {
                            return Err(err(format!(
                                "q part '{}' has shape {first:?}, expected {q} rows (hidden_size or n_head·head_dim)",
                                names[0]
                            )));
                        }
                    }
                }
            }
        }
        Layout::GroupedHeads { groups } => {
            let (nh, _) = heads(ctx)?;
            let q = first[0];
            if q % nh != 0 {
                return Err(err(format!(
                    "q part '{}' has {q} rows, not divisible by n_head {nh}",
                    names[0]
                )));
            }
            let hd = q / nh;
            if let Some(d) = ctx.hp.head_dim.filter(|d| *d != hd) {
                return Err(err(format!(
                    "q part '{}' has {q} rows, expected n_head·head_dim = {}",
                    names[0],
                    nh * d
                )));
            }
            if let (None, Some(h)) = (ctx.hp.head_dim, ctx.hidden) {
                if q != h {
                    return Err(err(format!(
                        "q part '{}' has {q} rows, expected hidden_size {h}",
                        names[0]
                    )));
                }
            }
            for (p, s) in shapes.iter().enumerate().skip(1) {
                if s.first() != Some(&(groups * hd)) || s[1..] != first[1..] {
                    return Err(err(format!(
                        "part '{}' has shape {s:?}, expected {} rows ({groups} KV head(s) of head_dim {hd})",
                        names[p],
                        groups * hd
                    )));
                }
            }
        }
        Layout::InterleaveRows | Layout::Stack | Layout::GatedMlp => {
            equal_from(0, "parts must be equal")?
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------------
// Checks

/// Every item against the headers, and output names unique.
fn finish(plan: &mut Plan, ctx: &Ctx) -> Result<(), ModelError> {
    let inputs = ctx.inputs;
    let srcs = |e: &Expr| {
        let mut v = Vec::new();
        e.inputs(&mut v);
        v.iter()
            .filter_map(|&x| inputs.get(x).map(|t| t.name.clone()))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, it) in plan.items.iter().enumerate() {
        if let Err(e) = it.expr.infer(inputs) {
            return Err(ctx.tensor_err(&it.name, format!("from {}: {}", srcs(&it.expr), e.0)));
        }
        if let Some(prev) = seen.insert(it.name.as_str(), k) {
            return Err(ctx.tensor_err(
                &it.name,
                format!(
                    "produced twice: from {} and from {}",
                    srcs(&plan.items[prev].expr),
                    srcs(&it.expr)
                ),
            ));
        }
    }
    Ok(())
}

/// The first 2-D input named like one of the family's embeddings.
fn find_embedding<'a>(family: &Family, inputs: &'a [TensorInfo]) -> Option<&'a TensorInfo> {
    let pats: Vec<Pattern> = family
        .embeddings
        .iter()
        .filter_map(|p| Pattern::parse(p).ok())
        .collect();
    inputs
        .iter()
        .find(|t| t.shape.len() == 2 && pats.iter().any(|p| p.matches(&t.name).is_some()))
}

/// The hidden size and head count the hyper-parameters claim must fit the weights: the word embedding's width is
/// the hidden size, and (without an explicit head_dim) the heads must divide it.
pub fn check_hidden(hp: &HyperParams, emb: Option<&TensorInfo>) -> Result<(), ModelError> {
    let Some(emb) = emb else {
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

/// `layers`, when given, must equal the number of distinct layer numbers found, and those must be `0..n`.
pub fn check_layers(
    family: &str,
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

/// Expert tensors must sit in exactly the MoE layers of the pattern, when it is known.
fn check_moe_layers(
    family: &str,
    hp: &HyperParams,
    layers: &BTreeSet<usize>,
    expert_layers: &BTreeSet<usize>,
) -> Result<(), ModelError> {
    if expert_layers.is_empty() {
        return Ok(());
    }
    let want: BTreeSet<usize> = layers
        .iter()
        .copied()
        .filter(|i| hp.is_moe_layer(*i) == Some(true))
        .collect();
    if layers.iter().any(|i| hp.is_moe_layer(*i).is_none()) || want == *expert_layers {
        return Ok(());
    }
    let list = |s: &BTreeSet<usize>| {
        s.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(ModelError::Other {
        family: family.to_string(),
        msg: format!(
            "experts found in layers [{}], but the MoE layer pattern (first_k_dense_replace {}, moe_layer_freq {}) names [{}]",
            list(expert_layers),
            hp.first_k_dense.unwrap_or(0),
            hp.moe_layer_freq.unwrap_or(1),
            list(&want)
        ),
    })
}

/// Mark the forward outputs whose dtype the family pins (floating tensors only).
fn pin(family: &Family, plan: &mut Plan, inputs: &[TensorInfo]) -> Result<(), ModelError> {
    if family.dtype_pins.is_empty() {
        return Ok(());
    }
    let pins: Vec<(Pattern, DType)> = family
        .dtype_pins
        .iter()
        .map(|(p, d)| {
            Pattern::parse(p)
                .map(|p| (p, *d))
                .map_err(|e| ModelError::Other {
                    family: family.name.to_string(),
                    msg: format!("internal rule error: {e}"),
                })
        })
        .collect::<Result<_, _>>()?;
    for it in &mut plan.items {
        if let Some((_, d)) = pins.iter().find(|(p, _)| p.matches(&it.name).is_some()) {
            let is_float = it.expr.infer(inputs).is_ok_and(|(t, _)| t.is_float());
            if is_float {
                it.pin = Some(*d);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::rules::{fuse, map, one, split, stacked, Axis};

    /// A tiny evaluator over element indices: every element is `Some((input, flat index))`, zeros are `None`.
    type Elems = Vec<Option<(usize, usize)>>;

    fn eval(expr: &Expr, inputs: &[TensorInfo]) -> (Vec<usize>, Elems) {
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

    fn t(name: &str, shape: &[usize]) -> TensorInfo {
        TensorInfo::new(name, DType::F32, shape.to_vec())
    }

    fn item<'p>(plan: &'p Plan, name: &str) -> &'p PlanItem {
        plan.items
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", plan.items))
    }

    /// Forward then reverse: every input comes back bit for bit (as element indices) under its own name.
    fn round_trip(f: &Family, inputs: &[TensorInfo], hp: &HyperParams) -> Plan {
        let fwd = f.forward(inputs, hp).unwrap();
        let outs: Vec<(TensorInfo, Elems)> = fwd
            .items
            .iter()
            .map(|it| {
                let (s, v) = eval(&it.expr, inputs);
                (t(&it.name, &s), v)
            })
            .collect();
        let infos: Vec<TensorInfo> = outs.iter().map(|(i, _)| i.clone()).collect();
        let rev = f.reverse(&infos, hp).unwrap();
        assert_eq!(rev.items.len(), inputs.len(), "{:?}", rev.items);
        for it in &rev.items {
            let (s, v) = eval(&it.expr, &infos);
            // map back through the forward outputs to input element indices
            let back: Elems = v
                .iter()
                .map(|x| x.and_then(|(o, k)| outs[o].1[k]))
                .collect();
            let j = inputs.iter().position(|x| x.name == it.name).unwrap();
            assert_eq!(s, inputs[j].shape, "{}", it.name);
            let want: Elems = (0..inputs[j].numel()).map(|k| Some((j, k))).collect();
            assert_eq!(back, want, "round trip of {}", it.name);
        }
        fwd
    }

    fn hp(nh: usize, nkv: Option<usize>, hd: Option<usize>) -> HyperParams {
        HyperParams {
            n_head: Some(nh),
            n_kv_head: nkv,
            head_dim: hd,
            ..Default::default()
        }
    }

    const QKV: Family = Family {
        name: "t-qkv",
        rules: &[&[fuse(
            &["l.{i}.q.{s}", "l.{i}.k.{s}", "l.{i}.v.{s}"],
            "l.{i}.qkv.{s}",
            Op::GROUPED_HEADS,
        )]],
        ..Family::BASE
    };

    #[test]
    fn grouped_heads_follow_the_mcore_layout() {
        // n_head 4, 2 KV groups, head_dim 3, 5 columns: per group, its 2 q heads, then its k head, then its v head
        let (nh, g, hd, cols) = (4usize, 2usize, 3usize, 5usize);
        let inputs = vec![
            t("l.0.q.weight", &[nh * hd, cols]),
            t("l.0.k.weight", &[g * hd, cols]),
            t("l.0.v.weight", &[g * hd, cols]),
            t("l.0.q.bias", &[nh * hd]),
            t("l.0.k.bias", &[g * hd]),
            t("l.0.v.bias", &[g * hd]),
        ];
        for h in [hp(nh, Some(g), None), hp(nh, Some(g), Some(hd))] {
            let fwd = round_trip(&QKV, &inputs, &h);
            let (sh, v) = eval(&item(&fwd, "l.0.qkv.weight").expr, &inputs);
            assert_eq!(sh, vec![(nh + 2 * g) * hd, cols]);
            let qpg = nh / g;
            for grp in 0..g {
                let base = grp * (qpg + 2) * hd;
                for r in 0..qpg * hd {
                    assert_eq!(v[(base + r) * cols], Some((0, (grp * qpg * hd + r) * cols)));
                }
                for r in 0..hd {
                    assert_eq!(
                        v[(base + qpg * hd + r) * cols],
                        Some((1, (grp * hd + r) * cols))
                    );
                    assert_eq!(
                        v[(base + (qpg + 1) * hd + r) * cols],
                        Some((2, (grp * hd + r) * cols))
                    );
                }
            }
        }
        // wrong or missing hyper-parameters
        assert!(QKV.forward(&inputs, &hp(nh, Some(3), None)).is_err());
        assert!(QKV.forward(&inputs, &hp(nh, Some(g), Some(2))).is_err());
        assert!(matches!(
            QKV.forward(&inputs, &HyperParams::default()),
            Err(ModelError::Hyper { .. })
        ));
        // a missing part is named
        let e = QKV
            .forward(&inputs[..2], &hp(nh, Some(g), None))
            .unwrap_err();
        assert!(e.to_string().contains("l.0.v.weight"), "{e}");
    }

    const BLOOMISH: Family = Family {
        name: "t-bloom",
        rules: &[&[split(
            "h.{i}.qkv.{s}",
            &["b.{i}.d1.{s}", "b.{i}.d2.{s}", "b.{i}.d3.{s}"],
            Op::GROUPED_HEADS,
        )]],
        ..Family::BASE
    };

    #[test]
    fn grouped_heads_with_one_group_per_head_is_blooms_layout() {
        let (nh, hd, cols) = (2usize, 3usize, 5usize);
        let h = nh * hd;
        let inputs = vec![
            t("h.0.qkv.weight", &[3 * h, cols]),
            t("h.0.qkv.bias", &[3 * h]),
        ];
        let hparams = HyperParams {
            hidden_size: Some(h),
            ..hp(nh, None, None)
        };
        let fwd = round_trip(&BLOOMISH, &inputs, &hparams);
        for (kind, name) in ["b.0.d1.weight", "b.0.d2.weight", "b.0.d3.weight"]
            .iter()
            .enumerate()
        {
            let (_, v) = eval(&item(&fwd, name).expr, &inputs);
            for head in 0..nh {
                for r in 0..hd {
                    for c in 0..cols {
                        let fused_row = head * 3 * hd + kind * hd + r;
                        assert_eq!(
                            v[(head * hd + r) * cols + c],
                            Some((0, fused_row * cols + c))
                        );
                    }
                }
            }
        }
        let bad = HyperParams {
            hidden_size: Some(h + 1),
            ..hp(nh, None, None)
        };
        assert!(BLOOMISH.forward(&inputs, &bad).is_err());
        assert!(BLOOMISH.forward(&inputs, &hp(5, None, None)).is_err());
    }

    const GATE_UP: Family = Family {
        name: "t-fc1",
        rules: &[&[fuse(
            &["l.{i}.gate.weight", "l.{i}.up.weight"],
            "l.{i}.fc1.weight",
            Op::INTERLEAVE_ROWS,
        )]],
        ..Family::BASE
    };

    #[test]
    fn interleaved_rows_alternate_gate_and_up() {
        let (r, c) = (4usize, 3usize);
        let inputs = vec![t("l.0.gate.weight", &[r, c]), t("l.0.up.weight", &[r, c])];
        let fwd = round_trip(&GATE_UP, &inputs, &HyperParams::default());
        let (sh, v) = eval(&item(&fwd, "l.0.fc1.weight").expr, &inputs);
        assert_eq!(sh, vec![2 * r, c]);
        for row in 0..r {
            for col in 0..c {
                assert_eq!(v[(2 * row) * c + col], Some((0, row * c + col)));
                assert_eq!(v[(2 * row + 1) * c + col], Some((1, row * c + col)));
            }
        }
        let uneven = vec![
            t("l.0.gate.weight", &[r, c]),
            t("l.0.up.weight", &[r + 1, c]),
        ];
        assert!(GATE_UP.forward(&uneven, &HyperParams::default()).is_err());
    }

    const EXPERTS: Family = Family {
        name: "t-moe",
        rules: &[&[
            stacked(
                &[
                    "l.{i}.experts.{e}.gate.weight",
                    "l.{i}.experts.{e}.up.weight",
                ],
                "l.{i}.experts.weight1",
                Op::concat(Axis::Last).transposed(),
                Experts::Flat,
            ),
            stacked(
                &["l.{i}.experts.{e}.down.weight"],
                "l.{i}.experts.weight2",
                Op::TRANSPOSE,
                Experts::Flat,
            ),
            one("l.{i}.router.{e}.w", "l.{i}.router.w", Op::COPY),
            map("l.{i}.norm", "l.{i}.norm"),
        ]],
        ..Family::BASE
    };

    #[test]
    fn experts_stack_flat_like_mindformers_grouped_gemm() {
        let (n, hidden, ffn) = (3usize, 4usize, 2usize);
        let mut inputs = Vec::new();
        for e in 0..n {
            inputs.push(t(&format!("l.0.experts.{e}.gate.weight"), &[ffn, hidden]));
            inputs.push(t(&format!("l.0.experts.{e}.up.weight"), &[ffn, hidden]));
            inputs.push(t(&format!("l.0.experts.{e}.down.weight"), &[hidden, ffn]));
            inputs.push(t(&format!("l.0.router.{e}.w"), &[hidden]));
        }
        inputs.push(t("l.0.norm", &[hidden]));
        let h = HyperParams {
            n_experts: Some(n),
            ..Default::default()
        };
        let fwd = round_trip(&EXPERTS, &inputs, &h);
        let idx = |name: &str| inputs.iter().position(|x| x.name == name).unwrap();
        // weight1 as (E, hidden, 2·ffn): [e, h, f] = gate_e[f, h], [e, h, ffn + f] = up_e[f, h]
        let (sh, v) = eval(&item(&fwd, "l.0.experts.weight1").expr, &inputs);
        assert_eq!(sh, vec![n * hidden, 2 * ffn]);
        for e in 0..n {
            let (g, u) = (
                idx(&format!("l.0.experts.{e}.gate.weight")),
                idx(&format!("l.0.experts.{e}.up.weight")),
            );
            for hh in 0..hidden {
                for f in 0..ffn {
                    let row = (e * hidden + hh) * 2 * ffn;
                    assert_eq!(v[row + f], Some((g, f * hidden + hh)));
                    assert_eq!(v[row + ffn + f], Some((u, f * hidden + hh)));
                }
            }
        }
        // weight2 as (E, ffn, hidden): [e, f, h] = down_e[h, f]
        let (sh, v) = eval(&item(&fwd, "l.0.experts.weight2").expr, &inputs);
        assert_eq!(sh, vec![n * ffn, hidden]);
        let d1 = idx("l.0.experts.1.down.weight");
        assert_eq!(v[(ffn + 1) * hidden + 2], Some((d1, 2 * ffn + 1)));
        // stacked (not flat) on a new axis
        let (sh, _) = eval(&item(&fwd, "l.0.router.w").expr, &inputs);
        assert_eq!(sh, vec![n, hidden]);
        // a missing expert, a wrong count, an unknown count (flat reverse needs it)
        let gap: Vec<TensorInfo> = inputs
            .iter()
            .filter(|x| !x.name.starts_with("l.0.experts.1.up"))
            .cloned()
            .collect();
        let e = EXPERTS.forward(&gap, &h).unwrap_err().to_string();
        assert!(e.contains("l.0.experts.1.up.weight"), "{e}");
        let four = HyperParams {
            n_experts: Some(4),
            ..Default::default()
        };
        assert!(EXPERTS.forward(&inputs, &four).is_err());
        let outs: Vec<TensorInfo> = fwd
            .items
            .iter()
            .map(|it| {
                let (d, s) = it.expr.infer(&inputs).unwrap();
                TensorInfo::new(it.name.clone(), d, s)
            })
            .collect();
        assert!(matches!(
            EXPERTS.reverse(&outs, &HyperParams::default()),
            Err(ModelError::Hyper { .. })
        ));
    }

    #[test]
    fn moe_layer_pattern_is_checked() {
        let mut inputs = Vec::new();
        for l in 0..3 {
            inputs.push(t(&format!("l.{l}.norm"), &[2]));
        }
        for l in [1, 2] {
            for e in 0..2 {
                inputs.push(t(&format!("l.{l}.router.{e}.w"), &[2]));
            }
        }
        let mut h = HyperParams {
            n_experts: Some(2),
            first_k_dense: Some(1),
            ..Default::default()
        };
        assert!(EXPERTS.forward(&inputs, &h).is_ok());
        h.first_k_dense = Some(2);
        let e = EXPERTS.forward(&inputs, &h).unwrap_err().to_string();
        assert!(e.contains("MoE layer pattern"), "{e}");
    }

    const ZEROS: Family = Family {
        name: "t-zeros",
        rules: &[&[split(
            "a.q_bias",
            &["b.d1.bias", "b.d2.bias"],
            Op::WITH_ZEROS,
        )]],
        ..Family::BASE
    };

    #[test]
    fn zeros_are_written_forward_and_dropped_back() {
        let inputs = vec![t("a.q_bias", &[4])];
        let fwd = ZEROS.forward(&inputs, &HyperParams::default()).unwrap();
        assert_eq!(
            item(&fwd, "b.d2.bias").expr,
            Expr::Zeros(vec![4], DType::F32)
        );
        let outs = vec![t("b.d1.bias", &[4]), t("b.d2.bias", &[4])];
        let rev = ZEROS.reverse(&outs, &HyperParams::default()).unwrap();
        assert_eq!(rev.items, vec![PlanItem::new("a.q_bias", Expr::input(0))]);
        assert_eq!(rev.dropped[0].rule, SYNTHESISED_ZEROS);
    }

    #[test]
    fn qkv_sizes_take_q_from_hidden_and_share_the_rest() {
        const F: Family = Family {
            name: "t-mqa",
            rules: &[&[split(
                "c.{s}",
                &["d1.{s}", "d2.{s}", "d3.{s}"],
                Op::concat(Axis::First).sized(Sizes::Qkv),
            )]],
            ..Family::BASE
        };
        let inputs = vec![t("c.weight", &[12, 8]), t("c.bias", &[12])];
        // nothing known: hidden from the weight's columns
        let fwd = round_trip(&F, &inputs, &HyperParams::default());
        assert_eq!(item(&fwd, "d2.bias").expr, Expr::input(1).narrow(0, 8, 2));
        let kv = HyperParams {
            n_head: Some(4),
            n_kv_head: Some(2),
            ..Default::default()
        };
        let e = F.forward(&inputs, &kv).unwrap_err().to_string();
        assert!(e.contains("n_kv_head"), "{e}");
    }

    #[test]
    fn leading_sizes_come_from_config_keys() {
        const F: Family = Family {
            name: "t-lead",
            rules: &[&[fuse(
                &["q_a.weight", "kv_a.weight"],
                "qkv_down.weight",
                Op::concat(Axis::First).sized(Sizes::Leading(&[Hyper::Key("q_lora_rank")])),
            )]],
            ..Family::BASE
        };
        let inputs = vec![t("q_a.weight", &[3, 4]), t("kv_a.weight", &[5, 4])];
        let cfg = serde_json::json!({"q_lora_rank": 3, "hidden_size": 4});
        let h = HyperParams::from_config(&cfg);
        let fwd = round_trip(&F, &inputs, &h);
        assert_eq!(
            item(&fwd, "qkv_down.weight").expr,
            Expr::Concat(vec![Expr::input(0), Expr::input(1)], 0)
        );
        // the split needs the key; a fuse checks it
        let outs = vec![t("qkv_down.weight", &[8, 4])];
        let e = F.reverse(&outs, &HyperParams::default()).unwrap_err();
        assert!(
            matches!(e, ModelError::Hyper { ref name, .. } if name == "q_lora_rank"),
            "{e}"
        );
        let wrong = HyperParams::from_config(&serde_json::json!({"q_lora_rank": 2}));
        assert!(F.forward(&inputs, &wrong).is_err());
    }

    #[test]
    fn malformed_tables_are_rejected() {
        const BAD: &[&[Rule]] = &[
            &[map("a.{i}.w", "b.w")],
            &[map("a.w", "b.{i}.w")],
            &[map("a.{s}", "b.{s:weight|bias|x}")],
            &[map("a.{bad}", "b")],
            &[Rule::Map {
                hf: crate::models::rules::Names::Many(&["a", "b"]),
                ms: crate::models::rules::Names::Many(&["c", "d"]),
                op: Op::COPY,
                experts: Experts::Stacked,
            }],
            &[fuse(&["a.{e}.w", "b.w"], "c.w", Op::COPY)],
            &[one("a.w", "b.w", Op::WITH_ZEROS)],
        ];
        for rules in BAD {
            let f = Family {
                name: "t",
                rules: std::slice::from_ref(rules),
                ..Family::BASE
            };
            assert!(compile(&f, false).is_err(), "{rules:?}");
        }
        const OK: &[Rule] = &[map("{p:|x.}a.{i}.{s}", "b.{i}.{s}")];
        let f = Family {
            name: "t",
            rules: &[OK],
            ..Family::BASE
        };
        assert!(compile(&f, true).is_ok());
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
