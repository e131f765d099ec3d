#!/usr/bin/env python3
"""Build the distributed-checkpoint fixtures under tests/fixtures/distributed/ (never run by CI).

Run with the oracle venv (MindSpore 2.7):

    /work/oracle-venv/bin/python tools/make-distributed-fixtures.py \
        --source tests/fixtures/distributed/source/llama.ckpt --out tests/fixtures/distributed

The source is the vendored llama fixture (MindSpore names, fp32, 23 tensors), copied to
tests/fixtures/distributed/source/llama.ckpt. For each case below the script

1. writes hand-built strategy files with MindSpore's own protobuf classes (`node_strategy_pb2`): one file, or one
   file per pipeline stage in a `strategy/` folder (plus the framework's `merge_pipeline_strategys` result, which
   `transform_checkpoints` needs, as `merged_layout.ckpt`);
2. cuts every rank's slices with numpy following the layout rules (row-major rank coordinates over the device
   matrix, tensor_map counted from the right, optimizer sharding of axis 0 by `(r // step) % size`) and saves each
   rank with `mindspore.save_checkpoint` (ckpt or safetensors), with Adam moments of two weights and a
   `global_step` scalar on every rank;
3. merges the ranks with the framework (`mindspore.transform_checkpoints(..., dst_strategy_file=None)`), checks that
   the framework's merge equals the source, and records the framework's merge as a sidecar
   (`framework_merge.tensors.json`: name, dtype, shape, sha256 of the raw bytes);
4. writes `provenance.json` (command, versions, layouts).

It also writes a MindFormers 2.x checkpoint (`mf_tp2_pp2/`: latest_checkpointed_iteration.txt,
iteration_00000010/{metadata.json, common.json, model-RRRRRRR-0000004.safetensors}) with the metadata schema of
mindformers 2.1.0 (`mindformers/checkpoint/metadata.py`: state_dict_metadata with properties/global_shape/
axis_fragmentations/layout/chunk, storage_data keyed by str((name, global_offset))); its merge reference is the
source itself.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import mindspore as ms
from mindspore.train import node_strategy_pb2 as spb

DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int32"): "I32",
          np.dtype("int64"): "I64"}


def sidecar(tensors):
    """tensors: list of (name, np.ndarray)"""
    out = []
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        out.append({"name": name, "dtype": DTYPES[a.dtype], "shape": list(a.shape),
                    "sha256": hashlib.sha256(a.tobytes()).hexdigest()})
    return out


# Which tensor axis a parameter's model-parallel split cuts (None: replicated).
def mp_axis(name):
    if any(k in name for k in ("wq.", "wk.", "wv.", "w1.", "w3.", "lm_head", "embedding_weight")):
        return 0
    if any(k in name for k in ("wo.", "w2.")):
        return 1
    return None


def stage_of(name, stages):
    if stages == 1:
        return 0
    if "layers.0." in name or "tok_embeddings" in name:
        return 0
    return 1


# Each case: ranks per stage (device matrix [dp, mp]), stages, opt sharding, rank file format.
CASES = {
    "ms_r1": dict(dev=[1], stages=1, opt=False, fmt="ckpt"),
    "ms_tp2": dict(dev=[2], stages=1, opt=False, fmt="ckpt"),
    "ms_dp2_tp2_opt": dict(dev=[2, 2], stages=1, opt=True, fmt="safetensors"),
    "ms_pp2_dp2_tp2_opt": dict(dev=[2, 2], stages=2, opt=True, fmt="ckpt"),
}

OPT_STATE = ("model.layers.0.attention.wq.weight", "model.layers.0.attention_norm.weight")


def layout(name, shape, case):
    """(dev_matrix, tensor_map, opt_step, opt_size)"""
    dev = case["dev"]
    mp = dev[-1]
    base = name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name
    ax = mp_axis(base)
    tmap = [-1] * len(shape)
    if ax is not None and mp > 1 and shape[ax] % mp == 0:
        tmap[ax] = 0  # the last device-matrix axis (mp)
    step, size = 0, 0
    if case["opt"] and len(dev) == 2 and dev[0] > 1:
        if all(k == -1 for k in tmap):
            # replicated on every device: the optimizer shards it over all of them (step 1)
            if shape[0] % (dev[0] * mp) == 0 and "inv_freq" not in name:
                step, size = 1, dev[0] * mp
        elif (shape[0] // (mp if tmap[0] == 0 else 1)) % dev[0] == 0:
            # split by mp: the optimizer shards over dp, whose ranks are mp apart
            step, size = mp, dev[0]
    return dev, tmap, step, size


def slice_for(a, dev, tmap, step, size, local):
    coord = []
    r = local
    for d in reversed(dev):
        coord.append(r % d)
        r //= d
    coord = coord[::-1]
    idx = []
    for i, k in enumerate(tmap):
        if k == -1:
            idx.append(slice(None))
        else:
            axis = len(dev) - 1 - k
            n = a.shape[i] // dev[axis]
            idx.append(slice(coord[axis] * n, (coord[axis] + 1) * n))
    s = a[tuple(idx)]
    if size > 1:
        part = (local // step) % size
        n = s.shape[0] // size
        s = s[part * n:(part + 1) * n]
    return np.ascontiguousarray(s)


def write_strategy(path, stage, items):
    m = spb.ParallelStrategyMap()
    m.current_stage = stage
    it = m.parallel_strategy_item.add()
    it.node_name = "Default/network-Dummy"
    it.parallel_strategys.stage = stage
    it.parallel_strategys.parallel_strategy.add().dim.extend([1])
    for name, (dev, tmap, step, size) in items:
        li = m.parallel_layout_item.add()
        li.param_name = name
        pl = li.parallel_layouts
        pl.dev_matrix.add().dim.extend(dev)
        pl.tensor_map.add().dim.extend(tmap)
        pl.param_split_shape.add()
        pl.indices_offset.add()
        pl.field = 0
        pl.opt_weight_shard_step = step
        pl.opt_weight_shard_size = size
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def build_ms_case(name, case, source, out):
    root = os.path.join(out, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(7)
    params = list(source.items())
    for p in OPT_STATE:
        a = source[p]
        params.append(("adam_m." + p, rng.standard_normal(a.shape).astype(np.float32)))
        params.append(("adam_v." + p, rng.standard_normal(a.shape).astype(np.float32)))
    lays = {n: layout(n, a.shape, case) for n, a in params}
    per_stage = int(np.prod(case["dev"]))
    stages = case["stages"]
    # strategy files
    if stages == 1:
        write_strategy(os.path.join(root, "strategy.ckpt"), 0, [(n, lays[n]) for n, _ in params])
        merged = os.path.join(root, "strategy.ckpt")
    else:
        sd = os.path.join(root, "strategy")
        os.makedirs(sd)
        for s in range(stages):
            items = [(n, lays[n]) for n, _ in params if stage_of(n.split(".", 1)[1] if n.startswith("adam_") else n,
                                                                  stages) == s]
            write_strategy(os.path.join(sd, f"stage{s}.ckpt"), s, items)
        merged = os.path.join(root, "merged_layout.ckpt")
        ms.parallel.merge_pipeline_strategys(sd, merged)
    # ranks
    for r in range(per_stage * stages):
        st, local = divmod(r, per_stage)
        rows = []
        for n, a in params:
            base = n.split(".", 1)[1] if n.startswith("adam_") else n
            if stage_of(base, stages) != st:
                continue
            dev, tmap, step, size = lays[n]
            rows.append({"name": n, "data": ms.Tensor(slice_for(a, dev, tmap, step, size, local))})
        rows.append({"name": "global_step", "data": ms.Tensor(np.array([1000], dtype=np.int32))})
        rd = os.path.join(root, f"rank_{r}")
        os.makedirs(rd)
        ext = case["fmt"]
        ms.save_checkpoint(rows, os.path.join(rd, f"checkpoint_{r}.{ext}"), format=ext)
    # the framework's merge
    with tempfile.TemporaryDirectory() as tmp:
        ms.transform_checkpoints(root, tmp, "merged", src_strategy_file=merged, dst_strategy_file=None,
                                 output_format="ckpt")
        files = sorted(os.listdir(os.path.join(tmp, "rank_0")))
        merged_ck = ms.load_checkpoint(os.path.join(tmp, "rank_0", files[0]))
    got = [(n, merged_ck[n].asnumpy()) for n in merged_ck]
    for n, a in params:
        if n in merged_ck:
            assert np.array_equal(merged_ck[n].asnumpy(), a), f"{name}: framework merge of {n} != source"
        else:
            print(f"{name}: framework merge lacks {n}", file=sys.stderr)
    with open(os.path.join(root, "framework_merge.tensors.json"), "w") as f:
        json.dump({"producer": "mindspore.transform_checkpoints(dst_strategy_file=None)",
                   "tensors": sidecar(got)}, f, indent=1)
    with open(os.path.join(root, "source.tensors.json"), "w") as f:
        json.dump({"producer": "the source plus generated Adam moments", "tensors": sidecar(params)}, f, indent=1)
    return {"case": name, "ranks": per_stage * stages, "stages": stages, "device_matrix": case["dev"],
            "optimizer_sharding": case["opt"], "rank_format": case["fmt"],
            "layouts": {n: {"dev_matrix": l[0], "tensor_map": l[1], "opt_weight_shard_step": l[2],
                            "opt_weight_shard_size": l[3]} for n, l in lays.items()}}


def build_mf_case(source, out):
    """MindFormers 2.x: tp=2 (axis as above), pp=2 (stage_of), 4 ranks, rank = stage*2 + tp."""
    from safetensors.numpy import save_file
    name = "mf_tp2_pp2"
    root = os.path.join(out, name)
    shutil.rmtree(root, ignore_errors=True)
    it = os.path.join(root, "iteration_00000010")
    os.makedirs(it)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("10\n")
    tp, pp = 2, 2
    world = tp * pp
    files = {r: {} for r in range(world)}
    sdm = {}
    storage = {}
    for n, a in source.items():
        st = stage_of(n, pp)
        ax = mp_axis(n)
        frag = [1] * a.ndim
        if ax is not None and a.shape[ax] % tp == 0:
            frag[ax] = tp
        chunks = []
        seen = set()
        for t in range(tp):
            r = st * tp + t
            off = [0] * a.ndim
            idx = [slice(None)] * a.ndim
            local = list(a.shape)
            if frag != [1] * a.ndim:
                n_ = a.shape[ax] // tp
                off[ax] = t * n_
                idx[ax] = slice(t * n_, (t + 1) * n_)
                local[ax] = n_
            key = str((n, tuple(off)))
            ckname = f"model-{r:07d}-{world:07d}.safetensors"
            if tuple(off) not in seen:
                # the first rank of a replica group stores it (remove_redundancy)
                seen.add(tuple(off))
                chunks.append({"global_offset": off, "local_shape": local})
                files[r][n] = np.ascontiguousarray(a[tuple(idx)])
                storage[key] = [{"file_name": ckname, "storage_rank": r,
                                 "rank_group": [st * tp + k for k in range(tp)] if frag == [1] * a.ndim else [r]}]
        sdm[n] = {"properties": {"dtype": "Float32", "replica_id": 0, "allow_shape_mismatch": False,
                                 "allow_to_save": True},
                  "global_shape": list(a.shape), "axis_fragmentations": frag, "chunk": chunks,
                  # the loader (ReshardLoader) cuts sharded sources by this layout (Layout.to_dict(): device
                  # matrix, tensor map counted from the right, alias names, the stage's rank list)
                  "layout": None if frag == [1] * a.ndim else {
                      "device_matrix": [tp], "tensor_map": [0 if k > 1 else -1 for k in frag],
                      "interleaved_parallel": False, "alias_name": ["tp"],
                      "rank_list": [st * tp + k for k in range(tp)]}}
    for r in range(world):
        save_file(files[r], os.path.join(it, f"model-{r:07d}-{world:07d}.safetensors"), metadata={"format": "ms"})
    with open(os.path.join(it, "metadata.json"), "w") as f:
        json.dump({"state_dict_metadata": sdm, "storage_data": storage}, f, ensure_ascii=False,
                  separators=(",", ":"))
    with open(os.path.join(it, "common.json"), "w") as f:
        json.dump({"epoch_num": 1, "step_num": 10, "global_step": 10, "loss_scale": 1.0,
                   "global_batch_size": 8, "consumed_samples": 80, "ckpt_status": 0}, f, indent=4)
    with open(os.path.join(root, "source.tensors.json"), "w") as f:
        json.dump({"producer": "the source (MindFormers merge reference)", "tensors": sidecar(list(source.items()))},
                  f, indent=1)
    return {"case": name, "ranks": world, "tp": tp, "pp": pp,
            "schema": "mindformers 2.1.0 mindformers/checkpoint/metadata.py save_metadata"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="tests/fixtures/distributed/source/llama.ckpt")
    ap.add_argument("--out", default="tests/fixtures/distributed")
    args = ap.parse_args()
    ms.set_context(device_target="CPU")
    ck = ms.load_checkpoint(args.source)
    source = {n: p.asnumpy() for n, p in ck.items()}
    prov = {"command": "/work/oracle-venv/bin/python tools/make-distributed-fixtures.py --source "
                       f"{args.source} --out {args.out}",
            "versions": {"mindspore": ms.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
            "source": args.source,
            "source_sha256": hashlib.sha256(open(args.source, "rb").read()).hexdigest(),
            "cases": []}
    for name, case in CASES.items():
        prov["cases"].append(build_ms_case(name, case, source, args.out))
        print("built", name)
    prov["cases"].append(build_mf_case(source, args.out))
    print("built mf_tp2_pp2")
    with open(os.path.join(args.out, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=1)


if __name__ == "__main__":
    main()
