#!/usr/bin/env python3
"""Regenerates tests/fixtures/mcore/: tiny random HF models of the ten MindFormers 2.x ("mcore") families, converted
HF -> MF and back by the real MindFormers 2.1.0 reference code. Never run by CI.

    tools/setup-mindformers-venv.sh /work/mf-venv
    /work/mf-venv/bin/python tools/make-mcore-fixtures.py [--out tests/fixtures/mcore] [--only FAMILY ...]

Run it from any directory: mindformers writes its log under ./output/log of the current directory, so the script
chdirs to a temporary directory first.

How each output is produced (also recorded per file in index.json, "provenance"):
  * template families (qwen3, qwen3_moe, deepseek4): the model's own `weight_converters` in a
    `WeightTemplate`, configured with `set_model_config(<TransformerConfig from the family's config converter>)`,
    fed tensor by tensor the way `load_hf_checkpoint` does on one card: q/k/v and routed-expert tensors through
    `WeightTemplate.preprocess_hf_weights` (the ReshardLoader step), everything else through
    `WeightTemplate.add_hf_weight`. The final `_cast_weight_to_dtype` (params_dtype float32) is not applied: the
    fixtures keep the source dtype (see docs/mcore-reference.md section 5). Reverse: `WeightTemplate.get_hf_state_dict`.
  * families without a template: names from the reference's `ModelMixin.convert_name` with the family's
    `weight_mapping`; fused tensors from the reference's op classes configured as a template would be
    (`QKVConvertOp`, `ConcatConvertOp`, `ExpertsConvertOp` through `preprocess_hf_weights`), the q/k/v bias from
    `TrainModelMixin.concat_qkv_interleaved` (the legacy training conversion; `QKVBiasConvertOp` fails for GQA).
    Reverse: the same ops' `mf_to_hf`, names inverted.
  * spec choices where the reference has no behaviour to copy (MTP layers of deepseek3 / telechat3_moe, FP8 block
    dequantisation with partial edge blocks, glm4_moe q/k norms) are marked "spec" in the provenance and described
    in docs/mcore-reference.md.
Checks recorded in index.json per variant: `spec_check` (every fused tensor recomputed from the doc's formulas in
plain numpy; the inference loader's MF readers give the HF parts back), `infer_loader_check` (the reference's
inference network on CPU loads hf/ and ms/expected*.safetensors; parameters compared), `full_loader_check`
(the reference's `load_hf_checkpoint` into the training network on CPU, and its legacy `convert_weight_dict`).
Tensors are carried as raw storage (bf16 as uint16, fp8 as uint8): every op used only rearranges, so the outputs
are bit-exact rearrangements of the inputs.
"""
import argparse
import collections
import copy
import hashlib
import importlib
import json
import os
import struct
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20261129

# --------------------------------------------------------------------------------------------------------------
# safetensors, raw (any dtype string; bf16 / fp8 kept as their bit patterns)
# --------------------------------------------------------------------------------------------------------------
ST_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
         "I8": "i1", "U8": "u1", "BOOL": "u1", "F8_E4M3": "u1", "F8_E5M2": "u1", "F8_E8M0": "u1"}


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = collections.OrderedDict()
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=ST_NP[info["dtype"]]).reshape(info["shape"]).copy()
        out[name] = (info["dtype"], arr)
    return meta, out


def st_dtype(arr):
    """safetensors dtype of an array carried as raw storage (bf16 travels as uint16; no U16 tensors here)."""
    return {"float32": "F32", "float16": "F16", "uint16": "BF16", "int32": "I32", "int64": "I64",
            "float64": "F64"}[arr.dtype.name]


def write_st(path, tensors, metadata):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header, off, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    for name, (dt, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).astype(ST_NP[dt], copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def sidecar(path, loaded_with, extra=None):
    """<file>.tensors.json in the format of the existing fixtures (see tests/fixtures/README or shared/fixtures)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    tensors = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = info["data_offsets"]
        tensors.append({"name": name, "shape": info["shape"], "dtype": info["dtype"], "nbytes": b - a,
                        "sha256": hashlib.sha256(blob[base + a:base + b]).hexdigest(), "data_offsets": [a, b]})
    doc = {"file": os.path.basename(path), "format": "safetensors", "loaded_with": loaded_with}
    if meta is not None:
        doc["metadata"] = meta
    doc.update({"header_len": n, "file_size": len(blob), "file_sha256": hashlib.sha256(blob).hexdigest(),
                "tensors": tensors})
    if extra:
        extra = dict(extra)
        if "provenance" in extra:  # {how: [tensor names]} keeps the sidecar small
            grouped = collections.OrderedDict()
            for name, how in extra["provenance"].items():
                grouped.setdefault(how, []).append(name)
            extra["provenance"] = grouped
        doc.update(extra)
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if k == "tensors":
            body = ",\n".join("  " + json.dumps(t) for t in v)
            lines.append(f' "tensors": [\n{body}\n ]{comma}')
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}{comma}")
    lines.append("}")
    with open(path + ".tensors.json", "w") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------------
# dtype helpers (torch only for rounding f32 -> bf16 / fp8, round-to-nearest-even)
# --------------------------------------------------------------------------------------------------------------
def to_bf16_bits(f32):
    import torch
    return torch.from_numpy(np.ascontiguousarray(f32, dtype=np.float32)).to(torch.bfloat16).view(torch.int16) \
        .numpy().view(np.uint16).copy()


def bf16_bits_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def torch_state_to_raw(sd):
    import torch
    out = collections.OrderedDict()
    for k, v in sd.items():
        v = v.detach().contiguous()
        if v.dtype == torch.bfloat16:
            out[k] = ("BF16", v.view(torch.int16).numpy().view(np.uint16).copy())
        elif v.dtype == torch.float32:
            out[k] = ("F32", v.numpy().copy())
        elif v.dtype == torch.float16:
            out[k] = ("F16", v.numpy().copy())
        else:
            raise ValueError(f"{k}: unexpected dtype {v.dtype}")
    return out


# --------------------------------------------------------------------------------------------------------------
# reference imports
# --------------------------------------------------------------------------------------------------------------
def ref():
    import mindformers.parallel_core.utils.model_mixin as mm
    # convert_name refuses to run unless the global MindFormers context says use_legacy: False (what every mcore
    # model's YAML sets). We only answer that question; the method itself is the reference's.
    mm.is_legacy_model = lambda: False
    from mindformers.checkpoint.converter import convert_op, template
    from mindformers.checkpoint import safetensors_utils
    return mm, convert_op, template, safetensors_utils


def versions():
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for p in ["mindformers", "mindspore", "transformers", "torch", "numpy", "safetensors"]:
        out[p] = md.version(p)
    return out


def mf_config_object(family, cfg):
    return mf_config(family, cfg, return_object=True)


def mf_config(family, cfg, return_object=False):
    """TransformerConfig from the family's own MindFormers config class and converter (config.json keys -> mcore)."""
    mod, cls = {
        "qwen2": ("mindformers.models.qwen2.configuration_qwen2", "Qwen2Config"),
        "qwen3": ("mindformers.models.qwen3.configuration_qwen3", "Qwen3Config"),
        "qwen3_moe": ("mindformers.models.qwen3_moe.configuration_qwen3_moe", "Qwen3MoeConfig"),
        "glm4": ("mindformers.models.glm4.configuration_glm4", "Glm4Config"),
        "glm4_moe": ("mindformers.models.glm4_moe.configuration_glm4_moe", "Glm4MoeConfig"),
        "deepseek3": ("mindformers.models.deepseek3.configuration_deepseek_v3", "DeepseekV3Config"),
        "deepseek4": ("mindformers.models.deepseek4.configuration_deepseek_v4", "DeepseekV4Config"),
        "telechat2": ("mindformers.models.telechat2.configuration_telechat2", "Telechat2Config"),
        "telechat3": ("mindformers.models.telechat3.configuration_telechat3", "TeleChat3Config"),
        "telechat3_moe": ("mindformers.models.telechat3_moe.configuration_telechat3_moe", "TeleChat3MoeConfig"),
    }[family]
    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype",
                                                      "transformers_version", "quantization_config")}
    c = getattr(importlib.import_module(mod), cls)(**keep)
    if return_object:
        return c
    if hasattr(c, "convert_to_transformer_config"):
        return c.convert_to_transformer_config()
    from mindformers.parallel_core.transformer_config_utils import convert_to_transformer_config
    return convert_to_transformer_config(c)


def model_class(family):
    mod, cls = {
        "qwen2": ("mindformers.models.qwen2.utils", "Qwen2PreTrainedModel"),
        "qwen3": ("mindformers.models.qwen3.utils", "Qwen3PreTrainedModel"),
        "qwen3_moe": ("mindformers.models.qwen3_moe.utils", "Qwen3MoePreTrainedModel"),
        "glm4": ("mindformers.models.glm4.utils", "Glm4PreTrainedModel"),
        "glm4_moe": ("mindformers.models.glm4_moe.utils", "Glm4MoePreTrainedModel"),
        "deepseek3": ("mindformers.models.deepseek3.utils", "DeepseekV3PreTrainedModel"),
        "deepseek4": ("mindformers.models.deepseek4.utils", "DeepseekV4PreTrainedModel"),
        "telechat2": ("mindformers.models.telechat2.utils", "Telechat2PreTrainedModel"),
        "telechat3": ("mindformers.models.telechat3.utils", "TeleChat3PreTrainedModel"),
        "telechat3_moe": ("mindformers.models.telechat3_moe.utils", "TeleChat3MoePreTrainedModel"),
    }[family]
    return getattr(importlib.import_module(mod), cls)


def with_layout(tc, interleaved):
    tc = copy.copy(tc)
    tc.use_interleaved_weight_layout_mlp = interleaved
    return tc


# --------------------------------------------------------------------------------------------------------------
# tiny HF models
# --------------------------------------------------------------------------------------------------------------
DIMS = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, moe_intermediate_size=16, max_position_embeddings=64)


def hf_from_transformers(cls_name, cfg_cls_name, cfg, dtype="bfloat16", seed=SEED):
    import torch
    import transformers
    torch.manual_seed(seed)
    c = getattr(transformers, cfg_cls_name)(**cfg)
    m = getattr(transformers, cls_name)(c)
    with torch.no_grad():  # make every tensor non-trivial (norms init to 1, biases to 0)
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    m = m.to(getattr(torch, dtype))
    sd = collections.OrderedDict()
    tied = getattr(c, "tie_word_embeddings", False)
    for k, v in m.state_dict().items():
        if tied and k == "lm_head.weight":
            continue  # save_pretrained drops the tied copy
        sd[k] = v
    conf = c.to_dict()
    keep = {"tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id", "model_type"}
    for k in set(transformers.PretrainedConfig().to_dict()) - keep:  # generic generation/pipeline keys
        conf.pop(k, None)
    conf["architectures"] = [cls_name]
    conf["torch_dtype"] = dtype
    raw = torch_state_to_raw(sd)
    r = Rand(seed + 7)
    for k in list(raw):
        if k.endswith("e_score_correction_bias"):  # a zero buffer in transformers; F32 in real checkpoints
            raw[k] = r.f32(*raw[k][1].shape)
    return raw, conf


class Rand:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def bf16(self, *shape):
        return ("BF16", to_bf16_bits(self.rng.standard_normal(shape).astype(np.float32) * 0.5))

    def f32(self, *shape):
        return ("F32", (self.rng.standard_normal(shape).astype(np.float32) * 0.5))


def deepseek_like(cfg, mtp, seed):
    """DeepSeek-V3 HF tensors from transformers' DeepseekV3ForCausalLM; the MTP layer (which transformers does not
    build) is the last layer of a model one layer deeper, plus the MTP-only tensors, named as in DeepSeek-V3."""
    L = cfg["num_hidden_layers"]
    build = dict(cfg, num_hidden_layers=L + (1 if mtp else 0))
    build.pop("num_nextn_predict_layers", None)
    sd, conf = hf_from_transformers("DeepseekV3ForCausalLM", "DeepseekV3Config", build, seed=seed)
    conf["num_hidden_layers"] = L
    conf["num_nextn_predict_layers"] = 1 if mtp else 0
    if not mtp:
        return sd, conf
    r = Rand(seed + 1)
    H = cfg["hidden_size"]
    p = f"model.layers.{L}."
    extra = collections.OrderedDict()
    extra[p + "enorm.weight"] = r.bf16(H)
    extra[p + "hnorm.weight"] = r.bf16(H)
    extra[p + "eh_proj.weight"] = r.bf16(H, 2 * H)
    extra[p + "embed_tokens.weight"] = sd["model.embed_tokens.weight"]          # copies, as in DeepSeek-V3
    extra[p + "shared_head.norm.weight"] = r.bf16(H)
    extra[p + "shared_head.head.weight"] = sd["lm_head.weight"]
    sd.update(extra)
    return sd, conf


# --------------------------------------------------------------------------------------------------------------
# FP8 (DeepSeek-V3 style): e4m3 weights with 128x128 block scales, partial edge blocks
# --------------------------------------------------------------------------------------------------------------
FP8_SKIP = ("embed_tokens", "lm_head", "norm", "layernorm", "mlp.gate.weight", "e_score_correction_bias",
            "enorm", "hnorm", "eh_proj", "shared_head")


def quantise_fp8(sd, scale_kind):
    """bf16 HF state -> DeepSeek-V3 FP8 state: every 2-D linear weight of the decoder layers becomes F8_E4M3 plus
    `<name>_scale_inv` [ceil(M/128), ceil(N/128)] (F32, or F8_E8M0 for scale_kind 'e8m0')."""
    import torch
    out = collections.OrderedDict()
    for name, (dt, arr) in sd.items():
        if dt != "BF16" or arr.ndim != 2 or not name.startswith("model.layers.") or any(s in name for s in FP8_SKIP):
            out[name] = (dt, arr)
            continue
        w = bf16_bits_to_f32(arr)
        M, N = w.shape
        mb, nb = -(-M // 128), -(-N // 128)
        scale = np.zeros((mb, nb), np.float32)
        for i in range(mb):
            for j in range(nb):
                amax = float(np.abs(w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]).max())
                s = max(amax, 1e-12) / 448.0
                if scale_kind == "e8m0":
                    s = float(2.0 ** np.ceil(np.log2(s)))
                scale[i, j] = s
        full = np.repeat(np.repeat(scale, 128, 0), 128, 1)[:M, :N]
        q = torch.from_numpy(w / full).to(torch.float8_e4m3fn).view(torch.uint8).numpy().copy()
        out[name] = ("F8_E4M3", q)
        if scale_kind == "e8m0":
            e = (np.log2(scale).astype(np.int32) + 127).astype(np.uint8)
            out[name + "_scale_inv"] = ("F8_E8M0", e)
        else:
            out[name + "_scale_inv"] = ("F32", scale)
    return out


def dequantise_fp8(sd, su):
    """Reference decode (`safetensors_utils._convert_special_dtype`) x published 128x128 block broadcast (partial
    edge blocks) in f32, rounded to bf16 (RNE). Returns (state, notes)."""
    out, notes = collections.OrderedDict(), {}
    for name, (dt, arr) in sd.items():
        if name.endswith("_scale_inv"):
            continue
        if dt not in ("F8_E4M3", "F8_E5M2"):
            out[name] = (dt, arr)
            continue
        sdt, sarr = sd[name + "_scale_inv"]
        w = su._convert_special_dtype(arr, dt).astype(np.float32)
        s = su._convert_special_dtype(sarr, sdt).astype(np.float32) if sdt.startswith("F8") else sarr
        M, N = w.shape
        full = np.repeat(np.repeat(s, 128, 0), 128, 1)[:M, :N]
        prod = (w * full).astype(np.float32)
        out[name] = ("BF16", to_bf16_bits(prod))
        # what the reference's own block dequantiser gives (it derives the block size from the shapes)
        try:
            theirs = su._dequantize_blockwise(w, s)
            same = bool(np.array_equal(theirs.view(np.uint32), prod.view(np.uint32)))
            notes[name] = "reference _dequantize_blockwise: " + ("same f32 values" if same else "DIFFERENT values")
        except Exception as e:  # noqa: BLE001 - recorded, it is the point
            notes[name] = f"reference _dequantize_blockwise fails: {type(e).__name__}: {e}"
    return out, notes


# --------------------------------------------------------------------------------------------------------------
# reference conversions
# --------------------------------------------------------------------------------------------------------------
class Converter:
    """HF -> MF and back for one family and one fc1 layout, with provenance per output tensor."""

    def __init__(self, family, cfg, interleaved):
        self.family = family
        self.cfg = cfg
        self.mm, self.ops, self.tpl, self.su = ref()
        self.model = model_class(family)
        self.tc = with_layout(mf_config(family, cfg), interleaved)
        self.interleaved = interleaved
        self.L = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        self.log = []

    # ---------- shared helpers
    def new_template(self, converters):
        t = self.tpl.WeightTemplate(weight_converters=copy.deepcopy(converters))
        t.set_model_config(self.tc)
        return t

    def convert_name(self, name):
        return self.mm.ModelMixin.convert_name(self, name)  # uses self.weight_mapping, as the reference does

    @property
    def weight_mapping(self):
        return self.model.weight_mapping

    def num_experts(self):
        return self.tc.num_moe_experts or 0

    # ---------- template families
    def template_forward(self, hf, converters, note):
        t = self.new_template(converters)
        ew, qw = {}, {}
        out, prov, dropped = collections.OrderedDict(), {}, []
        for name, (dt, arr) in hf.items():
            if t.check_weights_for_experts(name) or t.check_weights_for_qkv(name):
                n2, w2 = t.preprocess_hf_weights(name, arr, ew, qw, self.num_experts())
                if w2 is None:
                    continue
                if t.get_convert_op(n2, t.mf_name_to_converter) is None:
                    raise RuntimeError(f"{n2}: preprocessed but unknown to the template")
                if ".experts.weight" in n2:  # the loader builds 3-D; the network parameter is 2-D, same bytes
                    w2 = w2.reshape(-1, w2.shape[-1])
                    how = "WeightTemplate.preprocess_hf_weights (expert stacking), 3-D result viewed 2-D"
                else:
                    how = "WeightTemplate.preprocess_hf_weights (QKV per query group)"
                out[n2] = (dt, np.ascontiguousarray(w2))
                prov[n2] = how
                continue
            res = t.add_hf_weight(name, arr)
            if res is None:
                if name not in t.name_to_weight:
                    dropped.append(name)
                continue
            op = t.get_convert_op(name, t.hf_name_to_converter)
            for k, v in res.items():
                odt = dt
                if "tid2eid" in k:  # the template's _cast_weight_to_dtype forces int32
                    v, odt = v.astype(np.int32), "I32"
                out[k] = (odt, np.ascontiguousarray(v))
                prov[k] = f"WeightTemplate.add_hf_weight -> {type(op).__name__}" + \
                    (f" (interleaved={op.interleaved})" if isinstance(op, self.ops.ConcatConvertOp) else "")
        pending = list(t.name_to_weight)
        if pending:
            dropped += pending
        if ew:
            dropped += [f"incomplete expert stack {k}" for k in ew]
        t.name_to_weight.clear()
        self.log.append(f"{note}: template forward dropped {len(dropped)}: {dropped}")
        return out, prov, dropped

    def template_reverse(self, mf, converters):
        t = self.new_template(converters)
        try:
            back = t.get_hf_state_dict({k: v for k, (_, v) in mf.items()})
            crash = None
        except Exception as e:  # noqa: BLE001
            crash = f"{type(e).__name__}: {e}"
            t = self.new_template(converters)
            for op in t.weight_converters:  # what add_hf_weight does on one card; a fresh template keeps -1
                op.optimizer_parallel_size = 1
                if isinstance(op, self.ops.ExpertsConvertOp):
                    op.expert_parallel_size = 1
            back = t.get_hf_state_dict({k: v for k, (_, v) in mf.items()})
        t = self.new_template(converters)
        for op in t.weight_converters:
            op.optimizer_parallel_size = 1
            if isinstance(op, self.ops.ExpertsConvertOp):
                op.expert_parallel_size = 1
        self.sources = {k: [n for n in t.get_hf_names_for_mf(k) if n in back] for k in mf}
        out = collections.OrderedDict((k, (st_dtype(v), np.ascontiguousarray(v))) for k, v in back.items())
        return out, crash

    # ---------- families without a template: the loader's names + the reference ops
    def loader_forward(self, hf):
        ops, L = self.ops, self.L
        out, prov, inverse = collections.OrderedDict(), {}, {}
        groups = collections.OrderedDict()
        experts = []
        mtp_rows = {}
        for name, (dt, arr) in hf.items():
            mtp = self.mtp_index(name)
            if mtp is not None:
                k, rest = mtp
                special = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight",
                           "eh_proj.weight": "eh_proj.weight", "shared_head.norm.weight": "final_layernorm.weight"}
                if rest in special:
                    mf = f"mtp.layers.{k}.{special[rest]}"
                    out[mf], prov[mf], inverse[mf] = (dt, arr), "spec (docs 2.7): MTP rename", ("rename", name)
                    continue
                if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                    main = "model.embed_tokens.weight" if rest.startswith("embed") else "lm_head.weight"
                    if not np.array_equal(hf[main][1], arr):
                        raise RuntimeError(f"{name} differs from {main}")
                    mtp_rows[name] = main
                    continue
            mf = self.convert_name(name)
            fixed = None
            for frag, repl in SPEC_FIXES.get(self.family, ()):
                if frag in mf:
                    mf, fixed = mf.replace(frag, repl), f"spec fix (docs R13): {frag} -> {repl}"
            if fixed:
                out[mf], prov[mf], inverse[mf] = (dt, arr), fixed, ("rename", name)
                continue
            for frag, fused, part in [(".linear_q.", ".linear_qkv.", "q"), (".linear_k.", ".linear_qkv.", "k"),
                                      (".linear_v.", ".linear_qkv.", "v"),
                                      (".mlp.shared_experts.gating.", ".mlp.shared_experts.linear_fc1.", "gate"),
                                      (".mlp.shared_experts.hidden.", ".mlp.shared_experts.linear_fc1.", "up"),
                                      (".mlp.gating.", ".mlp.linear_fc1.", "gate"),
                                      (".mlp.hidden.", ".mlp.linear_fc1.", "up")]:
                if frag in mf:
                    groups.setdefault(mf.replace(frag, fused), {})[part] = (name, dt, arr)
                    break
            else:
                if ".experts." in mf and ".shared_experts." not in mf:
                    experts.append((name, dt, arr))
                elif mf.endswith(".mlp.linear_fc1.weight"):  # glm4: HF gate_up_proj, already [gate ; up]
                    if self.interleaved:
                        half = arr.shape[0] // 2
                        op = ops.ConcatConvertOp(hf_names=["gate", "up"], mf_names=[mf], dim=0)
                        op.set_model_config(self.tc)
                        v = op.hf_to_mf({"gate": arr[:half], "up": arr[half:]})[mf]
                        out[mf] = (dt, v)
                        prov[mf] = "HF gate_up_proj split in halves, ConcatConvertOp(interleaved=True)"
                        inverse[mf] = ("fused_fc1", name, op)
                    else:
                        out[mf], prov[mf] = (dt, arr), "ModelMixin.convert_name (rename only)"
                        inverse[mf] = ("rename", name)
                else:
                    out[mf], inverse[mf] = (dt, arr), ("rename", name)
                    prov[mf] = "ModelMixin.convert_name (rename only)"
        for mf, parts in groups.items():
            if set(parts) == {"q", "k", "v"}:
                (qn, dt, q), (kn, _, k), (vn, _, v) = parts["q"], parts["k"], parts["v"]
                if mf.endswith(".bias"):
                    got = self.mm.TrainModelMixin.concat_qkv_interleaved(
                        self, q, k, v, "x.linear_q.bias", self.tc.kv_channels, self.tc.num_query_groups,
                        self.tc.num_attention_heads)
                    out[mf] = (dt, next(iter(got.values())).reshape(-1))
                    prov[mf] = "TrainModelMixin.concat_qkv_interleaved (bias, per query group)"
                    inverse[mf] = ("qkv_bias", (qn, kn, vn))
                else:
                    op = ops.QKVConvertOp(hf_names=[qn, kn, vn], mf_names=[mf])
                    op.set_model_config(self.tc)
                    op.optimizer_parallel_size = 1  # as add_hf_weight sets it on one card
                    out[mf] = (dt, op.hf_to_mf({qn: q, kn: k, vn: v})[mf])
                    prov[mf] = "QKVConvertOp.hf_to_mf"
                    inverse[mf] = ("op", op)
            elif set(parts) == {"gate", "up"}:
                (gn, dt, g), (un, _, u) = parts["gate"], parts["up"]
                op = ops.ConcatConvertOp(hf_names=[gn, un], mf_names=[mf], dim=0)
                op.set_model_config(self.tc)
                out[mf] = (dt, op.hf_to_mf({gn: g, un: u})[mf])
                prov[mf] = f"ConcatConvertOp.hf_to_mf (interleaved={op.interleaved})"
                inverse[mf] = ("op", op)
            else:
                raise RuntimeError(f"{mf}: incomplete fusion group {sorted(parts)}")
        if experts:
            convs = self.expert_converters([n for n, _, _ in experts])
            t = self.new_template(convs)
            ew = {}
            for name, dt, arr in experts:
                n2, w2 = t.preprocess_hf_weights(name, arr, ew, {}, self.num_experts())
                if w2 is None:
                    continue
                out[n2] = (dt, np.ascontiguousarray(w2.reshape(-1, w2.shape[-1])))
                prov[n2] = "WeightTemplate.preprocess_hf_weights with ExpertsConvertOp(s) declared as the loader's " \
                           "expert mapping, 3-D result viewed 2-D"
                inverse[n2] = ("experts", convs)
            if ew:
                raise RuntimeError(f"incomplete expert stacks {list(ew)}")
        # MTP transformer layer: decoder.layers.{M}. -> mtp.layers.{k}.transformer_layer. (spec, docs 2.7)
        final = collections.OrderedDict()
        for mf, v in out.items():
            new = mf
            for m in range(L, L + 8):
                pre = f"decoder.layers.{m}."
                if mf.startswith(pre):
                    new = f"mtp.layers.{m - L}.transformer_layer." + mf[len(pre):]
                    prov[new] = prov.pop(mf) + " + spec MTP prefix (docs 2.7)"
                    inverse[new] = inverse.pop(mf) + (("mtp_prefix", pre),)
            final[new] = v
        self.mtp_copies = mtp_rows
        return final, prov, inverse

    def mtp_index(self, name):
        pre = "model.layers."
        if not name.startswith(pre):
            return None
        idx, rest = name[len(pre):].split(".", 1)
        if int(idx) >= self.L:
            return int(idx) - self.L, rest
        return None

    def expert_converters(self, names):
        """ExpertsConvertOp declarations matching the HF expert names (as the qwen3_moe / deepseek4 templates
        declare them), layer and expert index as placeholders."""
        import re
        pats = collections.OrderedDict()
        for n in names:
            m = re.match(r"(.*?\.)(\d+)(\..*\.experts\.)(\d+)(\..*)", n)
            pats[m.group(1) + "{}" + m.group(3) + "{}" + m.group(5)] = m.group(1)
        gate = [p for p in pats if p.endswith(".gate_proj.weight")]
        up = [p for p in pats if p.endswith(".up_proj.weight")]
        down = [p for p in pats if p.endswith(".down_proj.weight")]
        if not (len(gate) == len(up) == len(down) == 1):
            raise RuntimeError(f"unexpected expert names {list(pats)}")
        probe = gate[0].replace("{}", "7", 1).replace("{}", "0", 1)
        mf_layer = self.convert_name(probe)
        mf_prefix = mf_layer.split(".experts.")[0].replace(".7.", ".{}.")
        return [self.ops.ExpertsConvertOp(hf_names=[gate[0], up[0]], mf_names=[mf_prefix + ".experts.weight1"]),
                self.ops.ExpertsConvertOp(hf_names=[down[0]], mf_names=[mf_prefix + ".experts.weight2"])]

    def loader_reverse(self, mf, inverse, hf_order):
        back, prov = {}, {}
        self.sources = {}
        for name, (dt, arr) in mf.items():
            before = set(back)
            self._reverse_one(name, dt, arr, inverse, back, prov)
            self.sources[name] = [n for n in back if n not in before]
        for copy_name, main in self.mtp_copies.items():
            back[copy_name] = back[main]
            prov[copy_name] = f"spec (docs 2.7): re-created from {main}"
            for srcs in self.sources.values():
                if main in srcs:
                    srcs.append(copy_name)
        missing = [n for n in hf_order if n not in back]
        extra = [n for n in back if n not in hf_order]
        order = [n for n in hf_order if n in back] + extra
        return collections.OrderedDict((n, back[n]) for n in order), prov, missing

    def _reverse_one(self, name, dt, arr, inverse, back, prov):
        """Inverts one MF tensor into `back` (HF name -> (dtype, array)) and records how in `prov`."""
        how = inverse[name]
        mtp_pre = None
        if how and isinstance(how[-1], tuple) and how[-1] and how[-1][0] == "mtp_prefix":
            mtp_pre = how[-1][1]
            how = how[:-1]
        kind = how[0]
        if kind == "rename":
            back[how[1]] = (dt, arr)
            prov[how[1]] = "inverse rename"
        elif kind == "fused_fc1":
            op = how[2]
            g, u = op.mf_to_hf({name: arr}).values()
            back[how[1]] = (dt, np.concatenate([g, u], 0))
            prov[how[1]] = "ConcatConvertOp.mf_to_hf, halves re-joined as gate_up_proj"
        elif kind == "qkv_bias":
            from mindformers.parallel_core.inference import weights_utils as wu
            flat = wu.deal_training_qkv_weight(arr, self.tc)  # the loader's MF reader -> [q ; k ; v]
            nq = self.tc.num_attention_heads * self.tc.kv_channels
            nk = self.tc.num_query_groups * self.tc.kv_channels
            for hn, part in zip(how[1], (flat[:nq], flat[nq:nq + nk], flat[nq + nk:])):
                back[hn] = (dt, np.ascontiguousarray(part))
                prov[hn] = "inference loader's deal_training_qkv_weight (MF layout -> q|k|v), split"
        elif kind == "op":
            op = how[1]
            mfn = name if mtp_pre is None else op.mf_names[0]
            for hn, v in op.mf_to_hf({mfn: arr}).items():
                back[hn] = (dt, v)
                prov[hn] = f"{type(op).__name__}.mf_to_hf"
        elif kind == "experts":
            convs = how[1]
            t = self.new_template(convs)
            for op in t.weight_converters:
                op.optimizer_parallel_size = 1
                op.expert_parallel_size = 1
            mfn = name if mtp_pre is None else mtp_pre + name.split(".transformer_layer.", 1)[1]
            for hn, v in t.get_hf_state_dict({mfn: arr}).items():
                back[hn] = (dt, np.ascontiguousarray(v))
                prov[hn] = "ExpertsConvertOp.mf_to_hf (via WeightTemplate.get_hf_state_dict)"
        else:
            raise RuntimeError(kind)


# --------------------------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------------------------
def variants():
    D = DIMS
    base = dict(vocab_size=D["vocab_size"], hidden_size=D["hidden_size"], intermediate_size=D["intermediate_size"],
                num_hidden_layers=2, num_attention_heads=D["num_attention_heads"],
                num_key_value_heads=D["num_key_value_heads"], max_position_embeddings=D["max_position_embeddings"],
                rms_norm_eps=1e-6, pad_token_id=0)
    moe = dict(moe_intermediate_size=D["moe_intermediate_size"], num_experts_per_tok=2)
    ds = dict(base, **moe, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
              n_group=1, topk_group=1, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=D["head_dim"],
              qk_rope_head_dim=8, v_head_dim=D["head_dim"], tie_word_embeddings=False, rope_scaling=None)
    v = []
    v.append(dict(family="qwen2", variant="bf16_tied", kind="transformers", cls=("Qwen2ForCausalLM", "Qwen2Config"),
                  cfg=dict(base, tie_word_embeddings=True),
                  about="GQA 4q/2kv heads, q/k/v bias, tied embeddings (no lm_head in the file)"))
    v.append(dict(family="qwen3", variant="bf16", kind="transformers", cls=("Qwen3ForCausalLM", "Qwen3Config"),
                  cfg=dict(base, head_dim=D["head_dim"], tie_word_embeddings=False),
                  about="GQA, q/k norm, untied embeddings; template family"))
    v.append(dict(family="qwen3", variant="f16_tied", kind="transformers", cls=("Qwen3ForCausalLM", "Qwen3Config"),
                  cfg=dict(base, head_dim=D["head_dim"], tie_word_embeddings=True, num_hidden_layers=1),
                  dtype="float16",
                  about="one layer, float16, tied embeddings; template family"))
    v.append(dict(family="qwen3_moe", variant="bf16", kind="transformers",
                  cls=("Qwen3MoeForCausalLM", "Qwen3MoeConfig"),
                  cfg=dict(base, **moe, head_dim=D["head_dim"], num_experts=4, decoder_sparse_step=1,
                           mlp_only_layers=[1], tie_word_embeddings=False),
                  sharded=True,
                  about="layer 0 MoE (4 experts, no shared expert), layer 1 dense via mlp_only_layers (reference "
                        "template drops it: R2); hf_sharded/ holds the same tensors as two shards + index"))
    v.append(dict(family="glm4", variant="bf16", kind="transformers", cls=("Glm4ForCausalLM", "Glm4Config"),
                  cfg=dict(base, head_dim=D["head_dim"], attention_bias=True, partial_rotary_factor=0.5,
                           tie_word_embeddings=False),
                  about="GQA, q/k/v bias, fused HF gate_up_proj, post_self_attn/post_mlp layernorms"))
    v.append(dict(family="glm4_moe", variant="bf16", kind="transformers",
                  cls=("Glm4MoeForCausalLM", "Glm4MoeConfig"),
                  cfg=dict(base, **moe, head_dim=D["head_dim"], n_routed_experts=4, n_shared_experts=1,
                           first_k_dense_replace=1, n_group=1, topk_group=1, use_qk_norm=True, attention_bias=True,
                           partial_rotary_factor=0.5,
                           tie_word_embeddings=False),
                  about="layer 0 dense, layer 1 MoE (4 routed + 1 shared expert, e_score_correction_bias), q/k norm, "
                        "q/k/v bias"))
    v.append(dict(family="deepseek3", variant="bf16_mtp", kind="deepseek", cfg=dict(ds, num_nextn_predict_layers=1),
                  mtp=True, about="MLA (q_lora 24, kv_lora 16, nope 8, rope 8, v 8), layer 0 dense, layer 1 MoE "
                                  "(4 routed + 1 shared), one MTP layer (HF index 2)"))
    v.append(dict(family="deepseek3", variant="fp8_e4m3", kind="deepseek", fp8="f32",
                  cfg=dict(ds, intermediate_size=200, num_nextn_predict_layers=0), mtp=False,
                  about="FP8 e4m3 weights + F32 weight_scale_inv (128x128 blocks; dense MLP 200 rows -> partial "
                        "edge blocks); expected = dequantised to bf16"))
    v.append(dict(family="deepseek3", variant="fp8_e8m0", kind="deepseek", fp8="e8m0",
                  cfg=dict(ds, intermediate_size=200, num_nextn_predict_layers=0), mtp=False,
                  about="as fp8_e4m3 with F8_E8M0 (power-of-two) scales"))
    v.append(dict(family="telechat3_moe", variant="bf16_mtp", kind="deepseek",
                  cfg=dict(ds, num_nextn_predict_layers=1), mtp=True,
                  about="DeepSeek-V3-shaped HF tensors (TeleChat3-MoE uses the same names); MTP at HF index 2"))
    v.append(dict(family="telechat2", variant="bf16", kind="hand",
                  cfg=dict(vocab_size=D["vocab_size"], hidden_size=D["hidden_size"], ffn_hidden_size=48, n_layer=2,
                           n_head=4, num_key_value_heads=2, layer_norm_epsilon=1e-5, tie_word_embeddings=False),
                  about="hand-written TeleChat2 names (query/key/value as the 2.1.0 mapping expects), dense bias, "
                        "down_proj bias"))
    v.append(dict(family="telechat3", variant="bf16", kind="hand",
                  cfg=dict(base, head_dim=D["head_dim"], tie_word_embeddings=False),
                  about="hand-written dense GQA TeleChat3 (llama-style names)"))
    v.append(dict(family="deepseek4", variant="bf16", kind="hand",
                  cfg=dict(vocab_size=D["vocab_size"], hidden_size=32, moe_intermediate_size=16, num_hidden_layers=2,
                           num_nextn_predict_layers=1, num_attention_heads=4, num_key_value_heads=1,
                           n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2, head_dim=16, q_lora_rank=24,
                           qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16, o_lora_rank=16, o_groups=2,
                           index_n_heads=2, index_head_dim=D["head_dim"],
                           index_topk=4, num_hash_layers=1, compress_ratios=[4, 0, 0], hc_mult=2,
                           tie_word_embeddings=False),
                  about="hand-written DeepSeek-V4 native names: MLA-V4 attention, compressor+indexer on layer 0, "
                        "hash routing (tid2eid) on layer 0, 4 routed + 1 shared experts, hyper-connections, MTP mtp.0"))
    return v


def hand_telechat2(cfg, seed):
    r, H, F, V = Rand(seed), cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["vocab_size"]
    nh, ng = cfg["n_head"], cfg["num_key_value_heads"]
    d = H // nh
    sd = collections.OrderedDict()
    sd["transformer.word_embeddings.weight"] = r.bf16(V, H)
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        sd[p + "input_layernorm.weight"] = r.bf16(H)
        sd[p + "self_attention.query.weight"] = r.bf16(nh * d, H)
        sd[p + "self_attention.key.weight"] = r.bf16(ng * d, H)
        sd[p + "self_attention.value.weight"] = r.bf16(ng * d, H)
        sd[p + "self_attention.dense.weight"] = r.bf16(H, nh * d)
        sd[p + "self_attention.dense.bias"] = r.bf16(H)
        sd[p + "post_attention_layernorm.weight"] = r.bf16(H)
        sd[p + "mlp.gate_proj.weight"] = r.bf16(F, H)
        sd[p + "mlp.up_proj.weight"] = r.bf16(F, H)
        sd[p + "mlp.down_proj.weight"] = r.bf16(H, F)
        sd[p + "mlp.down_proj.bias"] = r.bf16(H)
    sd["transformer.ln_f.weight"] = r.bf16(H)
    sd["lm_head.weight"] = r.bf16(V, H)
    return sd, dict(cfg, architectures=["Telechat2ForCausalLM"], model_type="telechat2")


def hand_telechat3(cfg, seed):
    r, H, F, V = Rand(seed), cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, ng, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    sd = collections.OrderedDict()
    sd["model.embed_tokens.weight"] = r.bf16(V, H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = r.bf16(H)
        sd[p + "self_attn.q_proj.weight"] = r.bf16(nh * d, H)
        sd[p + "self_attn.k_proj.weight"] = r.bf16(ng * d, H)
        sd[p + "self_attn.v_proj.weight"] = r.bf16(ng * d, H)
        sd[p + "self_attn.o_proj.weight"] = r.bf16(H, nh * d)
        sd[p + "post_attention_layernorm.weight"] = r.bf16(H)
        sd[p + "mlp.gate_proj.weight"] = r.bf16(F, H)
        sd[p + "mlp.up_proj.weight"] = r.bf16(F, H)
        sd[p + "mlp.down_proj.weight"] = r.bf16(H, F)
    sd["model.norm.weight"] = r.bf16(H)
    sd["lm_head.weight"] = r.bf16(V, H)
    return sd, dict(cfg, architectures=["TeleChat3ForCausalLM"], model_type="telechat3")


def hand_deepseek4(cfg, seed):
    r, H, V = Rand(seed), cfg["hidden_size"], cfg["vocab_size"]
    nh, d, ql, rope = cfg["num_attention_heads"], cfg["head_dim"], cfg["q_lora_rank"], cfg["qk_rope_head_dim"]
    E, Fm, hc = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["hc_mult"]
    og, ol = cfg["o_groups"], cfg["o_lora_rank"]
    sd = collections.OrderedDict()
    sd["embed.weight"] = r.bf16(V, H)

    def layer(p, with_csa, with_hash):
        sd[p + "attn_norm.weight"] = r.bf16(H)
        sd[p + "attn.wq_a.weight"] = r.bf16(ql, H)
        sd[p + "attn.q_norm.weight"] = r.bf16(ql)
        sd[p + "attn.wq_b.weight"] = r.bf16(nh * d, ql)
        sd[p + "attn.wkv.weight"] = r.bf16(d, H)
        sd[p + "attn.kv_norm.weight"] = r.bf16(d)
        sd[p + "attn.wo_a.weight"] = r.bf16(og * ol, nh * d // og)
        sd[p + "attn.wo_b.weight"] = r.bf16(H, og * ol)
        sd[p + "attn.attn_sink"] = r.f32(nh)
        if with_csa:
            sd[p + "attn.compressor.ape"] = r.f32(4, d)
            sd[p + "attn.compressor.wkv.weight"] = r.bf16(d, H)
            sd[p + "attn.compressor.wgate.weight"] = r.bf16(d, H)
            sd[p + "attn.compressor.norm.weight"] = r.bf16(d)
            sd[p + "attn.indexer.wq_b.weight"] = r.bf16(2 * 16, ql)
            sd[p + "attn.indexer.weights_proj.weight"] = r.bf16(2, H)
            sd[p + "attn.indexer.compressor.ape"] = r.f32(4, 16)
            sd[p + "attn.indexer.compressor.wkv.weight"] = r.bf16(16, H)
            sd[p + "attn.indexer.compressor.wgate.weight"] = r.bf16(16, H)
            sd[p + "attn.indexer.compressor.norm.weight"] = r.bf16(16)
        sd[p + "ffn_norm.weight"] = r.bf16(H)
        sd[p + "ffn.gate.weight"] = r.bf16(E, H)
        if with_hash:
            sd[p + "ffn.gate.tid2eid"] = ("I32", r.rng.integers(0, E, (V, 2)).astype(np.int32))
        else:
            sd[p + "ffn.gate.bias"] = r.f32(E)
        for e in range(E):
            sd[p + f"ffn.experts.{e}.w1.weight"] = r.bf16(Fm, H)
            sd[p + f"ffn.experts.{e}.w2.weight"] = r.bf16(H, Fm)
            sd[p + f"ffn.experts.{e}.w3.weight"] = r.bf16(Fm, H)
        sd[p + "ffn.shared_experts.w1.weight"] = r.bf16(Fm, H)
        sd[p + "ffn.shared_experts.w2.weight"] = r.bf16(H, Fm)
        sd[p + "ffn.shared_experts.w3.weight"] = r.bf16(Fm, H)
        for part in ("attn", "ffn"):
            sd[p + f"hc_{part}_base"] = r.f32((2 + hc) * hc)
            sd[p + f"hc_{part}_fn"] = r.f32((2 + hc) * hc, hc * H)
            sd[p + f"hc_{part}_scale"] = r.f32(3)

    for i in range(cfg["num_hidden_layers"]):
        layer(f"layers.{i}.", with_csa=(i == 0), with_hash=(i < cfg["num_hash_layers"]))
    sd["norm.weight"] = r.bf16(H)
    sd["head.weight"] = r.bf16(V, H)
    sd["hc_head_base"] = r.f32(hc)
    sd["hc_head_fn"] = r.f32(hc, hc * H)
    sd["hc_head_scale"] = r.f32(1)
    p = "mtp.0."
    sd[p + "enorm.weight"] = r.bf16(H)
    sd[p + "hnorm.weight"] = r.bf16(H)
    sd[p + "e_proj.weight"] = r.bf16(H, H)
    sd[p + "h_proj.weight"] = r.bf16(H, H)
    sd[p + "norm.weight"] = r.bf16(H)
    layer(p, with_csa=False, with_hash=False)
    sd[p + "hc_head_base"] = r.f32(hc)
    sd[p + "hc_head_fn"] = r.f32(hc, hc * H)
    sd[p + "hc_head_scale"] = r.f32(1)
    return sd, dict(cfg, architectures=["DeepseekV4ForCausalLM"], model_type="deepseek_v4")


def make_hf(v):
    seed = SEED + sum(map(ord, v["family"] + v["variant"]))
    if v["kind"] == "transformers":
        sd, conf = hf_from_transformers(*v["cls"], v["cfg"], dtype=v.get("dtype", "bfloat16"), seed=seed)
    elif v["kind"] == "deepseek":
        sd, conf = deepseek_like(v["cfg"], v["mtp"], seed)
        if v["family"] == "telechat3_moe":
            conf["architectures"], conf["model_type"] = ["TeleChat3MoeForCausalLM"], "telechat3_moe"
    else:
        sd, conf = {"telechat2": hand_telechat2, "telechat3": hand_telechat3,
                    "deepseek4": hand_deepseek4}[v["family"]](v["cfg"], seed)
    if v.get("fp8"):
        sd = quantise_fp8(sd, v["fp8"])
    for k in ("_name_or_path", "transformers_version", "dtype"):
        conf.pop(k, None)
    conf.setdefault("torch_dtype", "bfloat16")
    if v.get("fp8"):
        conf["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                       "weight_block_size": [128, 128]}
        if v["fp8"] == "e8m0":
            conf["quantization_config"]["scale_fmt"] = "ue8m0"
    return sd, conf


TEMPLATE_FAMILIES = ("qwen3", "qwen3_moe", "deepseek4")

# Deviations from the reference's names, where its mapping leaves a parameter of its own network unloaded
# (measured by infer_loader_check; docs R13).
SPEC_FIXES = {"glm4_moe": ((".self_attn.q_norm.", ".self_attention.q_layernorm."),
                           (".self_attn.k_norm.", ".self_attention.k_layernorm."))}


# --------------------------------------------------------------------------------------------------------------
# independent check of the reference outputs against docs/mcore-reference.md section 3 (plain numpy)
# --------------------------------------------------------------------------------------------------------------
def spec_check(family, cfg, hf, mf, interleaved):
    """Recomputes every fused tensor from the formulas of the spec and compares bytes; checks that every other MF
    tensor is a byte-identical copy of an HF tensor. Returns a summary string; raises on a mismatch."""
    L = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    nh = cfg.get("num_attention_heads", cfg.get("n_head"))
    ng = cfg.get("num_key_value_heads") or nh
    H = cfg["hidden_size"]
    d = cfg.get("head_dim") or H // nh
    checked, used, fused_names = 0, set(), set()

    def get(n):
        used.add(n)
        return hf[n][1]

    def same(mf_name, want):
        nonlocal checked
        got = mf[mf_name][1]
        if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
            raise RuntimeError(f"spec check: {family} {mf_name} differs from the spec formula")
        checked += 1
        fused_names.add(mf_name)

    from types import SimpleNamespace
    from mindformers.parallel_core.inference import weights_utils as wu
    loader_ok = 0

    def loader_reads(kind, got, want):
        """The inference loader's reader for MF-format weights must turn the file layout into its in-memory one."""
        nonlocal loader_ok
        if not np.array_equal(got, want):
            raise RuntimeError(f"loader check: {family} {kind}: deal_training_* does not read the expected layout")
        loader_ok += 1

    def qkv(mfn, q, k, v):
        c = SimpleNamespace(kv_channels=d, hidden_size=H, num_attention_heads=nh, num_query_groups=ng)
        loader_reads("qkv", wu.deal_training_qkv_weight(mf[mfn][1], c),
                     np.concatenate([q, k, v], 0).reshape(wu.deal_training_qkv_weight(mf[mfn][1], c).shape))
        r = nh // ng
        if q.ndim == 1:
            want = np.concatenate([q.reshape(ng, r * d), k.reshape(ng, d), v.reshape(ng, d)], 1).reshape(-1)
        else:
            want = np.concatenate([q.reshape(ng, r * d, -1), k.reshape(ng, d, -1), v.reshape(ng, d, -1)], 1) \
                .reshape(-1, q.shape[1])
        same(mfn, want)

    def fc1(mfn, g, u):
        if interleaved and ".shared_experts." not in mfn:
            c = SimpleNamespace(ffn_hidden_size=g.shape[0])
            loader_reads("fc1", wu.deal_training_ffn_weight(mf[mfn][1], c), np.concatenate([g, u], 0))
        want = np.stack([g, u], 1).reshape(2 * g.shape[0], -1) if interleaved else np.concatenate([g, u], 0)
        same(mfn, want)

    def experts(mfp, hfp, gate, up, down):
        E = cfg.get("num_experts") or cfg.get("n_routed_experts")
        g = [get(hfp.format(e, gate)) for e in range(E)]
        u = [get(hfp.format(e, up)) for e in range(E)]
        w = [get(hfp.format(e, down)) for e in range(E)]
        same(mfp + "experts.weight1", np.concatenate([np.concatenate([a.T, b.T], 1) for a, b in zip(g, u)], 0))
        w1 = mf[mfp + "experts.weight1"][1].reshape(E, H, -1)
        for e in range(E):
            loader_reads("experts", wu.deal_training_moe_weight(w1[e]), np.concatenate([g[e].T, u[e].T], 1))
        same(mfp + "experts.weight2", np.concatenate([a.T for a in w], 0))

    layers = [(i, f"decoder.layers.{i}.") for i in range(L)]
    if family in ("deepseek3", "telechat3_moe") and cfg.get("num_nextn_predict_layers"):
        layers.append((L, "mtp.layers.0.transformer_layer."))
    for i, mp in layers:
        if family == "telechat2":
            hp = f"transformer.h.{i}."
            qkv(mp + "self_attention.linear_qkv.weight", *(get(hp + f"self_attention.{x}.weight")
                                                           for x in ("query", "key", "value")))
            fc1(mp + "mlp.linear_fc1.weight", get(hp + "mlp.gate_proj.weight"), get(hp + "mlp.up_proj.weight"))
            continue
        if family == "deepseek4":
            continue
        hp = f"model.layers.{i}."
        if hp + "self_attn.q_proj.weight" in hf:
            qkv(mp + "self_attention.linear_qkv.weight", *(get(hp + f"self_attn.{x}_proj.weight") for x in "qkv"))
            if hp + "self_attn.q_proj.bias" in hf:
                qkv(mp + "self_attention.linear_qkv.bias", *(get(hp + f"self_attn.{x}_proj.bias") for x in "qkv"))
        if hp + "mlp.gate_up_proj.weight" in hf:
            gu = get(hp + "mlp.gate_up_proj.weight")
            fc1(mp + "mlp.linear_fc1.weight", gu[:gu.shape[0] // 2], gu[gu.shape[0] // 2:])
        if hp + "mlp.gate_proj.weight" in hf:
            fc1(mp + "mlp.linear_fc1.weight", get(hp + "mlp.gate_proj.weight"), get(hp + "mlp.up_proj.weight"))
        if hp + "mlp.shared_experts.gate_proj.weight" in hf:
            fc1(mp + "mlp.shared_experts.linear_fc1.weight", get(hp + "mlp.shared_experts.gate_proj.weight"),
                get(hp + "mlp.shared_experts.up_proj.weight"))
        if hp + "mlp.experts.0.gate_proj.weight" in hf:
            experts(mp + "mlp.", hp + "mlp.experts.{}.{}_proj.weight", "gate", "up", "down")
    if family == "deepseek4":
        for hp, mp in [(f"layers.{i}.", f"decoder.layers.{i}.") for i in range(L)] + \
                [("mtp.0.", "mtp.layers.0.transformer_layer.")]:
            fc1(mp + "mlp.shared_experts.linear_fc1.weight", get(hp + "ffn.shared_experts.w1.weight"),
                get(hp + "ffn.shared_experts.w3.weight"))
            experts(mp + "mlp.", hp + "ffn.experts.{}.{}.weight", "w1", "w3", "w2")
        same("mtp.layers.0.eh_proj.weight", np.concatenate([get("mtp.0.e_proj.weight"), get("mtp.0.h_proj.weight")], 1))
    # everything else: a byte-identical copy of exactly one unused HF tensor of the same dtype
    by_bytes = {}
    for n, (dt, a) in hf.items():
        if n not in used:
            by_bytes.setdefault((dt, a.shape, a.tobytes()), []).append(n)
    copies = 0
    fused = checked
    for n, (dt, a) in mf.items():
        if n in fused_names:
            continue
        key = (dt, a.shape, a.tobytes())
        if key in by_bytes or (dt == "I32" and "tid2eid" in n):
            copies += 1
            continue
        if family == "deepseek4" and "alpha_" in n:  # ScaleSplitConvertOp pieces of hc_*_scale
            copies += 1
            continue
        raise RuntimeError(f"spec check: {family} {n} is neither a fused tensor nor a copy of an HF tensor")
    fused_like = [n for n in mf if n not in fused_names and
                  any(k in n for k in ("linear_qkv", "linear_fc1", "experts.weight", "eh_proj"))]
    if family != "deepseek3" and family != "telechat3_moe" and any("eh_proj" not in n for n in fused_like):
        raise RuntimeError(f"spec check: {family}: fused tensors not covered by the check: {fused_like}")
    return f"ok: {fused} fused tensors equal the spec formulas, {copies} renamed tensors are byte copies, " \
           f"{loader_ok} reads by the inference loader's MF-format readers " \
           f"(deal_training_qkv/ffn/moe_weight; one per " \
           f"qkv, dense fc1, expert) give the HF parts back"


FULL_LOADER = {
    "qwen3": ("mindformers.models.qwen3.modeling_qwen3_train", "TrainingQwen3ForCausalLM"),
    "qwen3_moe": ("mindformers.models.qwen3_moe.modeling_qwen3_moe_train", "TrainingQwen3MoeForCausalLM"),
    "deepseek3": ("mindformers.models.deepseek3.modeling_deepseek_v3_train", "TrainingDeepseekV3ForCausalLM"),
    "telechat3": ("mindformers.models.telechat3.modeling_telechat3_train", "TrainingTeleChat3ForCausalLM"),
    "telechat3_moe": ("mindformers.models.telechat3_moe.modeling_telechat3_moe_train",
                      "TrainingTeleChat3MoeForCausalLM"),
}


def full_loader_check(family, d, cfg, interleaved, ms_name):
    """The whole reference path on CPU: instantiate the family's MindFormers training network from the config,
    `checkpoint.load_hf_checkpoint(hf/, network)` (ReshardLoader + template + load_parameters), then compare what the
    converter handed to `load_parameters` and, when loading succeeds, every network parameter with ms/<expected>
    (float32 in the network; the upcast of bf16/f16 is exact)."""
    if family not in FULL_LOADER:
        return None
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    import mindformers.checkpoint.checkpoint as ck
    mod, cls = FULL_LOADER[family]
    net_cls = getattr(importlib.import_module(mod), cls)
    for m in list(sys.modules.values()):  # what `use_legacy: False` in an mcore YAML answers
        if m is not None and m.__name__.startswith("mindformers") and hasattr(m, "is_legacy_model"):
            m.is_legacy_model = lambda: False
    seen = {}
    orig = ck.load_parameters

    def spy(network, state_dict, *a, **k):
        for n, prm in state_dict.items():
            seen[n] = (str(prm.dtype), prm.asnumpy().copy())
        return orig(network, state_dict, *a, **k)

    ck.load_parameters = spy
    run_cfg = dict(cfg, use_interleaved_weight_layout_mlp=interleaved)
    if "moe_intermediate_size" in cfg:
        run_cfg["moe_grouped_gemm"] = True  # the training MoE layer refuses the other setting
    call = f"{cls}(config) + mindformers.checkpoint.checkpoint.load_hf_checkpoint (PYNATIVE, CPU)"
    load_error, net = None, None
    try:
        cfg_cls = type(mf_config_object(family, run_cfg))
        net = net_cls(cfg_cls(**{k: v for k, v in run_cfg.items()
                                 if k not in ("architectures", "model_type", "torch_dtype")}))
        ck.load_hf_checkpoint(os.path.join(d, "hf"), net)
    except Exception as e:  # noqa: BLE001 - recorded
        load_error = f"{type(e).__name__}: {str(e)[:240]}"
        if not seen:
            return {"call": call, "error": load_error}
    finally:
        ck.load_parameters = orig
    _, exp = read_st(os.path.join(d, ms_name))

    def same(got, name):
        dt, e = exp[name]
        want = bf16_bits_to_f32(e) if dt == "BF16" else e.astype(np.float32)
        got = got.astype(np.float32)
        return got.size == want.size and np.array_equal(got.reshape(want.shape).view(np.uint32),
                                                        want.view(np.uint32))

    # what the converter handed to load_parameters (3-D experts compared through their 2-D view)
    res = {"call": call,
           "state_dict_tensors_equal_to_expected": sum(1 for n, (_, a) in seen.items() if n in exp and same(a, n)),
           "state_dict_tensors_differ": sorted(n for n, (_, a) in seen.items() if n in exp and not same(a, n)),
           "state_dict_not_in_expected": sorted(n for n in seen if n not in exp),
           "expected_not_in_state_dict": sorted(n for n in exp if n not in seen),
           "state_dict_dtypes_handed_to_load_parameters": sorted(set(dt for dt, _ in seen.values()))}
    if family in ("qwen3", "qwen3_moe"):  # the older dict conversion of the same training network
        import threading
        _, hf = read_st(os.path.join(d, "hf", "model.safetensors"))
        try:
            legacy = net.convert_weight_dict({k: a for k, (_, a) in hf.items()}, qkv_dict={},
                                             condition=threading.Condition())
            leg_eq = [k for k, a in legacy.items() if k in exp and np.asarray(a).size == exp[k][1].size and
                      np.array_equal(np.asarray(a).reshape(exp[k][1].shape), exp[k][1])]
            res["legacy_convert_weight_dict"] = {
                "call": f"{cls}.convert_weight_dict (TrainModelMixin concat_* path)",
                "equal_to_expected": len(leg_eq),
                "differ": sorted(k for k in legacy if k in exp and k not in leg_eq),
                "not_in_expected": sorted(k for k in legacy if k not in exp),
                "expected_not_produced": sorted(k for k in exp if k not in legacy)}
        except Exception as e:  # noqa: BLE001
            res["legacy_convert_weight_dict"] = {"error": f"{type(e).__name__}: {str(e)[:240]}"}
    if load_error:
        res["load_parameters_error"] = load_error
    else:
        params = list(net.get_parameters())
        res["network_parameters_equal_to_expected"] = sum(1 for p in params if p.name in exp and
                                                          same(p.asnumpy(), p.name))
        res["network_parameters_total"] = len(params)
    return res


INFER_LOADER = {
    "qwen2": ("mindformers.models.qwen2.modeling_qwen2_infer", "InferenceQwen2ForCausalLM", {"add_qkv_bias": True}),
    "qwen3": ("mindformers.models.qwen3.modeling_qwen3_infer", "InferenceQwen3ForCausalLM", {}),
    "qwen3_moe": ("mindformers.models.qwen3_moe.modeling_qwen3_moe_infer", "InferenceQwen3MoeForCausalLM", {}),
    "glm4": ("mindformers.models.glm4.modeling_glm4_infer", "InferenceGlm4ForCausalLM", {}),
    "glm4_moe": ("mindformers.models.glm4_moe.modeling_glm4_moe_infer", "InferenceGlm4MoeForCausalLM", {}),
    "deepseek3": ("mindformers.models.deepseek3.modeling_deepseek_v3_infer", "InferenceDeepseekV3ForCausalLM", {}),
    "telechat2": ("mindformers.models.telechat2.modeling_telechat2_infer", "InferenceTelechat2ForCausalLM", {}),
    "telechat3": ("mindformers.models.telechat3.modeling_telechat3_infer", "InferenceTelechat3ForCausalLM", {}),
}


def infer_loader_check(family, d, cfg):
    """The reference's inference loader, end to end on CPU: build the family's inference network twice, load
    hf/ (HF branch of `InferModelMixin.load_weights`) into one and each ms/expected*.safetensors (MF-weight branch)
    into the other, and compare every parameter. Also counts the parameters the HF load actually changed."""
    if family not in INFER_LOADER:
        return None
    import shutil
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    mod, cls, extra = INFER_LOADER[family]
    try:
        net_cls = getattr(importlib.import_module(mod), cls)
    except Exception as e:  # noqa: BLE001
        return {"error": f"import {cls}: {type(e).__name__}: {e}"}
    for m in list(sys.modules.values()):  # what `use_legacy: False` in an mcore YAML answers
        if m is not None and m.__name__.startswith("mindformers") and hasattr(m, "is_legacy_model"):
            m.is_legacy_model = lambda: False
    cfg_obj = type(mf_config_object(family, cfg))
    run_cfg = {k: v for k, v in dict(cfg, **extra).items() if k not in ("architectures", "model_type", "torch_dtype")}

    def load(files):
        net = net_cls(cfg_obj(**run_cfg))
        fresh = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
        tmp = tempfile.mkdtemp(prefix="mcore-infer-")
        for f in files:
            shutil.copy(f, tmp)
        net.load_weights(tmp)
        shutil.rmtree(tmp)
        return fresh, {p.name: p.asnumpy().copy() for p in net.get_parameters()}

    res = {"call": f"{cls}(config).load_weights(dir) (InferModelMixin, PYNATIVE, CPU)"}
    if extra:
        res["config_added"] = extra
    try:
        fresh, from_hf = load([os.path.join(d, "hf", "model.safetensors")])
    except Exception as e:  # noqa: BLE001
        res["error"] = f"HF load: {type(e).__name__}: {str(e)[:240]}"
        return res
    res["parameters"] = len(from_hf)
    shard_dir = os.path.join(d, "hf_sharded")
    if os.path.isdir(shard_dir):
        _, from_shards = load([os.path.join(shard_dir, f) for f in sorted(os.listdir(shard_dir))
                               if f.endswith(".safetensors")])
        res["hf_sharded_equal_to_hf"] = all(np.array_equal(from_hf[n], from_shards[n]) for n in from_hf)
    res["not_changed_by_hf_load"] = sorted(n for n in from_hf if np.array_equal(from_hf[n], fresh[n]))
    for ms_name in ("ms/expected.safetensors", "ms/expected_contiguous.safetensors"):
        if not os.path.exists(os.path.join(d, ms_name)):
            continue
        try:
            _, from_ms = load([os.path.join(d, ms_name)])
        except Exception as e:  # noqa: BLE001
            res[ms_name] = f"error: {type(e).__name__}: {str(e)[:240]}"
            continue
        differ = sorted(n for n in from_hf if not np.array_equal(from_hf[n], from_ms[n]))
        res[ms_name] = {"parameters_equal_to_hf_load": len(from_hf) - len(differ), "differ": differ}
    return res


def converters_for(fam, conv, augmented):
    ops = list(conv.model.weight_converters)
    if fam == "qwen3_moe" and augmented:
        q3 = model_class("qwen3").weight_converters
        ops += [op for op in q3 if any(".mlp.gate_proj." in n or ".mlp.down_proj." in n for n in op.hf_names)]
    return ops


def run_variant(v, out_root):
    fam, var = v["family"], v["variant"]
    d = os.path.join(out_root, fam, var)
    hf, conf = make_hf(v)
    fp8 = v.get("fp8")
    write_st(os.path.join(d, "hf", "model.safetensors"), hf, {"format": "pt"})
    with open(os.path.join(d, "hf", "config.json"), "w") as f:
        json.dump(conf, f, indent=1, sort_keys=True)
        f.write("\n")
    sidecar(os.path.join(d, "hf", "model.safetensors"), "tools/make-mcore-fixtures.py read_st (raw)")
    if v.get("sharded"):
        write_shards(os.path.join(d, "hf_sharded"), hf, conf)
    _, hf = read_st(os.path.join(d, "hf", "model.safetensors"))  # from the file, as a loader would see it
    entry = {"family": fam, "variant": var, "dir": f"{fam}/{var}", "about": v["about"], "outputs": {}, "notes": []}
    src = hf
    if fp8:
        src, notes = dequantise_fp8(hf, ref()[3])
        entry["fp8_dequant"] = {
            "how": "safetensors_utils._convert_special_dtype (reference decode of weight and scale) x "
                   "scale[i//128, j//128] (partial edge blocks) in f32, rounded to bf16 (RNE); spec, docs 6.2",
            "reference_blockwise": notes}
    cfg_for_mf = dict(v["cfg"])
    layouts = [True] if fp8 else [True, False]
    for inter in layouts:
        suffix = "" if inter else "_contiguous"
        conv = Converter(fam, cfg_for_mf, inter)
        if fam in TEMPLATE_FAMILIES:
            if fam == "qwen3_moe" and inter:
                _, _, dropped = conv.template_forward(src, converters_for(fam, conv, False), "pure template")
                entry["notes"].append(f"R2 measured: the qwen3_moe template alone drops {len(dropped)} tensors of "
                                      f"the mlp_only layer: {dropped}")
            mf, prov, dropped = conv.template_forward(src, converters_for(fam, conv, True), fam)
            if dropped:
                entry["notes"].append(f"template forward{suffix} left out: {dropped}")
            inverse = None
        else:
            mf, prov, inverse = conv.loader_forward(src)
            if conv.mtp_copies:
                entry["forward_drops"] = {n: f"byte-identical copy of {m} (docs 2.7); the reverse re-creates it"
                                          for n, m in conv.mtp_copies.items()}
        ms_name = f"ms/expected{suffix}.safetensors"
        write_st(os.path.join(d, ms_name), mf, {"format": "ms"})
        sidecar(os.path.join(d, ms_name), "tools/make-mcore-fixtures.py read_st (raw)",
                {"use_interleaved_weight_layout_mlp": inter, "provenance": prov})
        entry["outputs"][ms_name] = {"from": "hf/model.safetensors", "use_interleaved_weight_layout_mlp": inter,
                                     "producer": "reference template" if fam in TEMPLATE_FAMILIES
                                     else "reference ops as the loader configures them"}
        _, mf = read_st(os.path.join(d, ms_name))
        if fam in TEMPLATE_FAMILIES:
            back, crash = conv.template_reverse(mf, converters_for(fam, conv, True))
            if crash:
                entry["notes"].append(f"R1 measured: WeightTemplate.get_hf_state_dict on a fresh template raised "
                                      f"{crash}; rerun with optimizer/expert parallel sizes set to 1")
            rprov = {k: "WeightTemplate.get_hf_state_dict" for k in back}
            order = list(src)
            back = collections.OrderedDict([(n, back[n]) for n in order if n in back] +
                                           [(n, x) for n, x in back.items() if n not in order])
            missing = [n for n in order if n not in back]
        else:
            back, rprov, missing = conv.loader_reverse(mf, inverse, list(src))
        sidecar(os.path.join(d, ms_name), "tools/make-mcore-fixtures.py read_st (raw)",
                {"use_interleaved_weight_layout_mlp": inter, "provenance": prov,
                 "sources": {k: conv.sources.get(k, []) for k in mf}})
        if missing:
            entry["notes"].append(f"reverse{suffix} does not re-create: {missing}")
        rname = f"reversed/from_expected{suffix}.safetensors"
        rpath = os.path.join(d, rname)
        write_st(rpath, back, {"format": "pt"})
        same = all(n in src and src[n][0] == dt and np.array_equal(src[n][1], a) for n, (dt, a) in back.items())
        same = same and not missing and not fp8
        extra = {"provenance": rprov, "roundtrip_equals_input": same}
        if same:  # keep the repository small: the sidecar (every tensor's sha256) is what the tests compare
            extra["data_omitted"] = "tensor for tensor identical to hf/model.safetensors (names, dtypes, shapes, " \
                                    "sha256); only this sidecar is kept"
        sidecar(rpath, "tools/make-mcore-fixtures.py read_st (raw)", extra)
        if same:
            os.remove(rpath)
        entry["outputs"][rname] = {"from": ms_name, "roundtrip_equals_input": same, "data_file_kept": not same}
        entry["notes"] += conv.log
        entry.setdefault("spec_check", {})[ms_name] = spec_check(fam, v["cfg"], src, mf, inter)
        if not fp8:
            full = full_loader_check(fam, d, v["cfg"], inter, ms_name)
            if full is not None:
                entry.setdefault("full_loader_check", {})[ms_name] = full
    entry["notes"] = list(dict.fromkeys(entry["notes"]))
    if not fp8:
        inf = infer_loader_check(fam, d, v["cfg"])
        if inf is not None:
            entry["infer_loader_check"] = inf
    return entry


def write_shards(dirpath, hf, conf):
    """The same HF tensors as two shards + model.safetensors.index.json, split in the middle of the file order
    (which puts one layer's experts in both shards)."""
    names = list(hf)
    half = len(names) // 2
    weight_map, total = {}, 0
    for k, part in enumerate((names[:half], names[half:])):
        fn = f"model-{k + 1:05d}-of-00002.safetensors"
        write_st(os.path.join(dirpath, fn), collections.OrderedDict((n, hf[n]) for n in part), {"format": "pt"})
        sidecar(os.path.join(dirpath, fn), "tools/make-mcore-fixtures.py read_st (raw)")
        for n in part:
            weight_map[n] = fn
            total += hf[n][1].nbytes
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
        f.write("\n")
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(conf, f, indent=1, sort_keys=True)
        f.write("\n")


def fp8_decode_fixture(out_root):
    """All 256 codes of each 8-bit float format and the reference's decoding of them (f32)."""
    su = ref()[3]
    d = os.path.join(out_root, "fp8_decode")
    codes = np.arange(256, dtype=np.uint8)
    src = collections.OrderedDict([("e4m3", ("F8_E4M3", codes)), ("e5m2", ("F8_E5M2", codes)),
                                   ("e8m0", ("F8_E8M0", codes))])
    dec = collections.OrderedDict((k, ("F32", su._convert_special_dtype(a, dt).astype(np.float32)))
                                  for k, (dt, a) in src.items())
    write_st(os.path.join(d, "codes.safetensors"), src, {"format": "pt"})
    write_st(os.path.join(d, "decoded_f32.safetensors"), dec, {"format": "pt"})
    sidecar(os.path.join(d, "codes.safetensors"), "tools/make-mcore-fixtures.py read_st (raw)")
    sidecar(os.path.join(d, "decoded_f32.safetensors"), "tools/make-mcore-fixtures.py read_st (raw)",
            {"producer": "mindformers.checkpoint.safetensors_utils._convert_special_dtype"})
    # where the reference departs from the OCP formats (torch's float8_e4m3fn / float8_e5m2 / float8_e8m0fnu)
    import torch
    tdt = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "e8m0": torch.float8_e8m0fnu}
    differs = {}
    for k, (_, a) in src.items():
        ocp = torch.from_numpy(a.copy()).view(tdt[k]).to(torch.float32).numpy()
        ref_v = dec[k][1]
        bad = [int(c) for c in range(256) if not (ref_v[c] == ocp[c] or (np.isnan(ref_v[c]) and np.isnan(ocp[c])))
               or np.signbit(ref_v[c]) != np.signbit(ocp[c]) and not np.isnan(ocp[c])]
        differs[k] = {f"0x{c:02X}": {"reference": repr(float(ref_v[c])), "ocp_torch": repr(float(ocp[c]))}
                      for c in bad}
    return {"family": "fp8_decode", "variant": "", "dir": "fp8_decode",
            "reference_vs_ocp": differs,
            "about": "every code of F8_E4M3, F8_E5M2, F8_E8M0 and the reference's f32 decoding (special codes "
                     "included: see docs R6)",
            "outputs": {"decoded_f32.safetensors": {"from": "codes.safetensors",
                                                    "producer": "safetensors_utils._convert_special_dtype"}}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "mcore"))
    ap.add_argument("--only", nargs="*", help="families to (re)generate; index.json keeps the others")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.chdir(tempfile.mkdtemp(prefix="mcore-fixtures-"))  # mindformers logs to ./output
    vers = versions()
    index_path = os.path.join(out, "index.json")
    old = json.load(open(index_path)) if (a.only and os.path.exists(index_path)) else {"variants": []}
    entries = [e for e in old["variants"] if a.only and e["family"] not in a.only]
    for v in variants():
        if a.only and v["family"] not in a.only:
            continue
        print(f"== {v['family']}/{v['variant']}", flush=True)
        entries.append(run_variant(v, out))
    if not a.only or "fp8_decode" in a.only:
        entries.append(fp8_decode_fixture(out))
    entries.sort(key=lambda e: (e["family"], e["variant"]))
    index = {"reference": {"package": "mindformers", "version": vers["mindformers"], "source": "PyPI wheel",
                           "venv": "tools/setup-mindformers-venv.sh", "versions": vers},
             "generator": "tools/make-mcore-fixtures.py", "seed": SEED, "dims": DIMS,
             "layout_names": {"ms/expected.safetensors": "forward, use_interleaved_weight_layout_mlp=true (2.1.0)",
                              "ms/expected_contiguous.safetensors": "forward, use_interleaved_weight_layout_mlp=false "
                                                                    "(2.0.0 layout)",
                              "reversed/from_expected*.safetensors": "reverse of the matching ms/expected*"},
             "variants": entries}
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out) for fn in fns)
    print(f"wrote {len(entries)} variants under {out}, {total} bytes")


if __name__ == "__main__":
    main()
