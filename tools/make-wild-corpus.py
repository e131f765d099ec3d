#!/usr/bin/env python3
"""Make the "wild" corpus of issue 14 (tests/fixtures/wild/): checkpoints as real tools write them.

Run with the oracle venv (torch 2.15, safetensors 0.8, MindSpore 2.7):

    /work/oracle-venv/bin/python tools/make-wild-corpus.py tests/fixtures/wild

Every readable file gets a `<file>.tensors.json` sidecar written from what the real library loads
(`torch.load(weights_only=True)`, `safetensors.safe_open`, `mindspore.load_checkpoint`): name, dtype, shape, nbytes,
sha256 of the raw little-endian bytes. Files that must be refused are listed in `refused.json` with what the real
library says about them. Old forms torch 2.15 cannot write (torch 0.3's `_rebuild_tensor`, storage views, the
pre-0.1.10 tar container) are built with Python's own pickler following torch 0.3's `_save` layout: the same
pickles (magic, protocol version, sys_info, object, sorted keys) and raw storages, and the same persistent ids;
torch 2.15 then reads each back for its sidecar.
"""

import collections
import hashlib
import io
import json
import os
import pickle
import random
import struct
import sys
import tarfile
import types

import numpy as np
import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/wild"
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(14)

ST_DTYPE = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
REFUSED = {}


def raw(t):
    t = t.detach().contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def entry(name, t):
    b = raw(t)
    return {"name": name, "dtype": ST_DTYPE[t.dtype], "shape": list(t.shape), "nbytes": len(b),
            "sha256": hashlib.sha256(b).hexdigest()}


def flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            yield prefix + k, v
        elif isinstance(v, dict):
            yield from flat(v, prefix + k + ".")


def sidecar(fname, fmt, loaded_with, tensors, key=None, notes=None):
    doc = {"file": fname, "format": fmt, "loaded_with": loaded_with, "container_key": key,
           "file_size": os.path.getsize(os.path.join(OUT, fname)), "tensors": tensors}
    if notes:
        doc["notes"] = notes
    with open(os.path.join(OUT, fname + ".tensors.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def torch_sidecar(fname, fmt, key=None, notes=None):
    obj = torch.load(os.path.join(OUT, fname), map_location="cpu", weights_only=True)
    sd = obj
    for k in (key.split("/") if key else []):
        sd = sd[k]
    tensors = [entry(n, t) for n, t in flat(sd)]
    sidecar(fname, fmt, f"torch.load(weights_only=True){'[' + key + ']' if key else ''}", tensors, key, notes)


def refused(fname, why, torch_says=None):
    REFUSED[fname] = {"why": why}
    if torch_says is not None:
        REFUSED[fname]["torch.load(weights_only=True)"] = torch_says


def torch_verdict(fname):
    try:
        torch.load(os.path.join(OUT, fname), map_location="cpu", weights_only=True)
        return "loads"
    except Exception as e:  # noqa: BLE001 - we record whatever torch says
        lines = str(e).splitlines()
        line = next((x for x in lines if "Unsupported global" in x or "GLOBAL" in x), lines[0])
        return f"{type(e).__name__}: {line.strip()[:240]}"


def small_state_dict():
    base = torch.randn(4, 6)
    sd = collections.OrderedDict()
    sd["embed.weight"] = base
    sd["lm_head.weight"] = base  # tied: the same tensor object
    sd["layer.0.w"] = torch.randn(3, 5).to(torch.float16)
    sd["layer.0.b"] = torch.randn(5).to(torch.bfloat16)
    sd["layer.0.view"] = base[1:3, 2:5]  # a strided view with an offset
    sd["layer.0.t"] = torch.randn(2, 3).t()  # a transpose
    sd["steps"] = torch.tensor(7, dtype=torch.int64)
    sd["mask"] = torch.tensor([True, False, True])
    return sd


# ---------------------------------------------------------------------------------------------------------------
# 1. torch zips under several stems (stem 21 is the one the zip crate mis-read), and saved to a file object

SD = small_state_dict()
for stem in ["a", "checkpoint_epoch_0010", "checkpoint_epoch_00100", "x" * 20, "s" * 64]:
    fname = f"{stem}.pt"
    torch.save(SD, os.path.join(OUT, fname))
    torch_sidecar(fname, "torch_zip")
buf = io.BytesIO()
torch.save(SD, buf)  # root folder "archive/"
with open(os.path.join(OUT, "saved_to_buffer.bin"), "wb") as f:
    f.write(buf.getvalue())
torch_sidecar("saved_to_buffer.bin", "torch_zip")

# ---------------------------------------------------------------------------------------------------------------
# 2. legacy files: torch 2.15's own legacy writer (_rebuild_tensor_v2), and torch 0.3's layout (_rebuild_tensor v1,
#    storage views), built with the pickler as torch 0.3's torch.save did

torch.save(SD, os.path.join(OUT, "legacy_v2.pt"), _use_new_zipfile_serialization=False)
torch_sidecar("legacy_v2.pt", "torch_legacy_pickle")

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class FakeStorage:
    """A storage as torch 0.3 saw it: a root storage (its own key) or a view into one."""

    def __init__(self, cls, data, key, root=None, offset=0):
        self.cls, self.data, self.key, self.root, self.offset = cls, data, key, root, offset


class FakeTensor:
    """A tensor as torch 0.3 reduced it: _rebuild_tensor(storage, storage_offset, size, stride)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride))

    def __reduce__(self):
        return (torch._utils._rebuild_tensor, self.args)


def save_v1(path, obj, storages):
    """torch 0.3's _save: five pickles, then per sorted root key an i64 element count and the raw bytes."""
    roots = {}

    def persistent_id(o):
        if isinstance(o, FakeStorage):
            root = o.root or o
            roots[root.key] = root
            view = None if o.root is None else (o.key, o.offset, len(o.data) // o.cls_size)
            return ("storage", root.cls, root.key, "cpu", len(root.data) // root.cls_size, view)
        return None

    with open(path, "wb") as f:
        pickle.dump(MAGIC_NUMBER, f, protocol=2)
        pickle.dump(PROTOCOL_VERSION, f, protocol=2)
        pickle.dump({"protocol_version": PROTOCOL_VERSION, "little_endian": sys.byteorder == "little",
                     "type_sizes": {"short": 2, "int": 4, "long": 8}}, f, protocol=2)
        p = pickle.Pickler(f, protocol=2)
        p.persistent_id = persistent_id
        p.dump(obj)
        keys = sorted(roots.keys())
        pickle.dump(keys, f, protocol=2)
        f.flush()
        for k in keys:
            r = roots[k]
            f.write(struct.pack("<q", len(r.data) // r.cls_size))
            f.write(r.data)


def storage_of(t, key):
    cls = {torch.float32: torch.FloatStorage, torch.float16: torch.HalfStorage, torch.int64: torch.LongStorage,
           torch.uint8: torch.ByteStorage}[t.dtype]
    s = FakeStorage(cls, raw(t), key)
    s.cls_size = t.element_size()
    return s


w = torch.randn(3, 4)
h = torch.randn(6).to(torch.float16)
ids = torch.arange(10, dtype=torch.int64)
s_w, s_h, s_ids = storage_of(w, "140241872"), storage_of(h, "140241880"), storage_of(ids, "140241888")
# a view of ids' storage (elements 2..8), as `storage[2:8]` made in torch 0.3
s_view = FakeStorage(torch.LongStorage, raw(ids[2:8]), "140241999", root=s_ids, offset=2)
s_view.cls_size = 8
v1 = collections.OrderedDict()
v1["fc.weight"] = FakeTensor(s_w, 0, (3, 4), (4, 1))
v1["fc.weight_t"] = FakeTensor(s_w, 0, (4, 3), (1, 4))
v1["fc.half"] = FakeTensor(s_h, 2, (2, 2), (2, 1))
v1["ids"] = FakeTensor(s_ids, 0, (10,), (1,))
v1["ids_window"] = FakeTensor(s_view, 1, (3,), (1,))
save_v1(os.path.join(OUT, "legacy_v1_torch03.pt"), v1, None)
torch_sidecar("legacy_v1_torch03.pt", "torch_legacy_pickle")

# the pre-0.1.10 tar container (members storages, tensors, pickle): torch 2.15 refuses it with weights_only=True
tar_path = os.path.join(OUT, "torch_0_1_tar.pt")
with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
    for name, data in [("sys_info", pickle.dumps({"protocol_version": 1000}, protocol=2)),
                       ("pickle", pickle.dumps({"w": 0}, protocol=2)),
                       ("tensors", pickle.dumps(0, protocol=2)), ("storages", pickle.dumps(0, protocol=2))]:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = 0
        tar.addfile(ti, io.BytesIO(data))
refused("torch_0_1_tar.pt", "tar container of torch < 0.1.10", torch_verdict("torch_0_1_tar.pt"))

# ---------------------------------------------------------------------------------------------------------------
# 3. training checkpoints


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 3)
        self.fc2 = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


TinyNet.__module__ = "__main__"
net = TinyNet()
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
loss = net(torch.randn(5, 4)).pow(2).mean()
loss.backward()
opt.step()

tutorial = {"epoch": 3, "model_state_dict": net.state_dict(), "optim_state_dict": opt.state_dict(),
            "loss": torch.tensor(0.12)}
torch.save(tutorial, os.path.join(OUT, "tutorial_checkpoint.pt"))
torch_sidecar("tutorial_checkpoint.pt", "torch_zip", "model_state_dict",
              ["left out: epoch, optim_state_dict, loss"])

lightning = {
    "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.5.0",
    "state_dict": collections.OrderedDict(("model." + k, v) for k, v in net.state_dict().items()),
    "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
    "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
    "optimizer_states": [opt.state_dict()],
    "lr_schedulers": [{"last_epoch": 1, "_step_count": 2}],
    "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.001},
}
torch.save(lightning, os.path.join(OUT, "lightning.ckpt"))
torch_sidecar("lightning.ckpt", "torch_zip", "state_dict")

ema = {k: v * 0.5 for k, v in net.state_dict().items()}
with_ema = {"model": net.state_dict(), "ema": ema, "optimizer": opt.state_dict(), "step": 100}
torch.save(with_ema, os.path.join(OUT, "model_and_ema.pth"))
torch_sidecar("model_and_ema.pth", "torch_zip", "model")
with open(os.path.join(OUT, "model_and_ema.pth.ema.tensors.json"), "w") as f:
    json.dump({"file": "model_and_ema.pth", "container_key": "ema",
               "tensors": [entry(n, t) for n, t in flat(ema)]}, f, indent=1)
    f.write("\n")

# ---------------------------------------------------------------------------------------------------------------
# 5. files that are not state dicts

scripted = torch.jit.script(net)
torch.jit.save(scripted, os.path.join(OUT, "torchscript.pt"))
refused("torchscript.pt", "TorchScript module", torch_verdict("torchscript.pt"))

torch.save(net, os.path.join(OUT, "whole_module.pt"))
refused("whole_module.pt", "pickled nn.Module (class __main__.TinyNet)", torch_verdict("whole_module.pt"))

random.seed(3)
np.random.seed(3)
rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
torch.save(rng, os.path.join(OUT, "rng_state.pth"))
refused("rng_state.pth", "numpy random state (HF Trainer rng_state.pth)", torch_verdict("rng_state.pth"))

# transformers' TrainingArguments (a dataclass); transformers is not in this venv, so the class is declared under
# its real module name: the pickle (GLOBAL 'transformers.training_args TrainingArguments', NEWOBJ, BUILD) is the same.
mod_t = types.ModuleType("transformers")
mod_ta = types.ModuleType("transformers.training_args")
sys.modules["transformers"], sys.modules["transformers.training_args"] = mod_t, mod_ta


class TrainingArguments:
    def __init__(self):
        self.output_dir = "out"
        self.learning_rate = 5e-5
        self.num_train_epochs = 3.0


TrainingArguments.__module__ = "transformers.training_args"
mod_ta.TrainingArguments = TrainingArguments
torch.save(TrainingArguments(), os.path.join(OUT, "training_args.bin"))
refused("training_args.bin", "transformers TrainingArguments", torch_verdict("training_args.bin"))

with open(os.path.join(OUT, "newline.bin"), "wb") as f:
    f.write(b"\n")
refused("newline.bin", "not a checkpoint (1 byte, a newline)", torch_verdict("newline.bin"))

# ---------------------------------------------------------------------------------------------------------------
# 4. safetensors with __metadata__, and a MindSpore ckpt

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

for fname, meta in [("with_metadata.safetensors", {"format": "pt", "test": "a"}),
                    ("mergekit.safetensors", {"format": "pt", "mergekit_version": "0.1.4",
                                              "merge_method": "slerp", "total_parameters": "21"})]:
    st = {k: v.contiguous().clone() for k, v in net.state_dict().items()}
    save_file(st, os.path.join(OUT, fname), metadata=meta)
    with safe_open(os.path.join(OUT, fname), "pt") as f:
        got_meta = f.metadata()
        tensors = [entry(k, f.get_tensor(k)) for k in f.keys()]
    sidecar(fname, "safetensors", "safetensors.safe_open", tensors)
    doc = json.load(open(os.path.join(OUT, fname + ".tensors.json")))
    doc["metadata"] = got_meta
    with open(os.path.join(OUT, fname + ".tensors.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

import mindspore as ms  # noqa: E402

params = [{"name": "fc1.weight", "data": ms.Tensor(np.random.randn(3, 4).astype(np.float32))},
          {"name": "fc1.bias", "data": ms.Tensor(np.random.randn(3).astype(np.float16))}]
ms.save_checkpoint(params, os.path.join(OUT, "mindspore.ckpt"))
loaded = ms.load_checkpoint(os.path.join(OUT, "mindspore.ckpt"))
ms_dtype = {"Float32": "F32", "Float16": "F16"}
tensors = []
for k, v in loaded.items():
    b = v.asnumpy().tobytes()
    tensors.append({"name": k, "dtype": ms_dtype[str(v.dtype)], "shape": list(v.shape), "nbytes": len(b),
                    "sha256": hashlib.sha256(b).hexdigest()})
sidecar("mindspore.ckpt", "mindspore_ckpt_protobuf", "mindspore.load_checkpoint", tensors)

with open(os.path.join(OUT, "refused.json"), "w") as f:
    json.dump(REFUSED, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"wrote {len(os.listdir(OUT))} files to {OUT} with torch {torch.__version__}, mindspore {ms.__version__}")
