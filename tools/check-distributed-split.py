#!/usr/bin/env python3
"""Check by hand that a split written by convert-weight loads in the real frameworks and merges back to the source
(never run by CI).

MindSpore auto-parallel (oracle venv, MindSpore 2.7: `mindspore.transform_checkpoints` with no destination
strategy merges the ranks):

    /work/oracle-venv/bin/python tools/check-distributed-split.py ms SPLIT_ROOT STRATEGY SOURCE.ckpt

(STRATEGY: the strategy file; for pipeline stages the file `mindspore.merge_pipeline_strategys` made.)

MindFormers 2.x (mindformers 2.1.0 venv: its own `get_metadata_of_checkpoint` + `ReshardLoader`, one rank on CPU,
full tensors as the destination):

    /work/mf-venv/bin/python tools/check-distributed-split.py mf ITERATION_DIR SOURCE.ckpt

Exits non-zero on any difference.
"""
import os
import sys
import tempfile

import numpy as np
import mindspore as ms


def source_of(path):
    fmt = "safetensors" if path.endswith(".safetensors") else "ckpt"
    return {n: p.asnumpy() for n, p in ms.load_checkpoint(path, format=fmt).items()}


def compare(got, want, what):
    if set(got) != set(want):
        sys.exit(f"{what}: names differ: {sorted(set(got) ^ set(want))}")
    for n, a in want.items():
        g = got[n].asnumpy() if hasattr(got[n], "asnumpy") else np.asarray(got[n])
        if g.shape != a.shape or not np.array_equal(g, a):
            sys.exit(f"{what}: {n} differs")
    print(f"{what}: {len(want)} tensors equal the source")


def check_ms(root, strategy, source):
    with tempfile.TemporaryDirectory() as tmp:
        ms.transform_checkpoints(root, tmp, "m", src_strategy_file=strategy, dst_strategy_file=None)
        d = os.path.join(tmp, "rank_0")
        got = ms.load_checkpoint(os.path.join(d, sorted(os.listdir(d))[0]))
    compare(got, source_of(source), f"transform_checkpoints({root})")


def check_mf(it_dir, source):
    from mindformers.checkpoint.metadata import get_metadata_of_checkpoint
    from mindformers.checkpoint.sharded_tensor import build_sharded_tensor
    from mindformers.checkpoint.reshard import ReshardLoader
    src_metas, mappings = get_metadata_of_checkpoint(it_dir)
    dst = {}
    for name, shards in src_metas.items():
        s = shards[0]
        dst[name] = build_sharded_tensor(param_name=name, param_dtype=s.dtype, local_shape=s.global_shape,
                                         global_shape=s.global_shape, global_offset=(0,) * len(s.global_shape),
                                         axis_fragmentations=(1,) * len(s.global_shape))
    got = ReshardLoader(checkpoint_dir=it_dir, dst_sharded_tensor_metas=dst, src_sharded_tensor_metas=src_metas,
                        param_file_mappings=mappings, reshard_worker_num=1, template=None).load()
    compare(got, source_of(source), f"mindformers ReshardLoader({it_dir})")


if __name__ == "__main__":
    ms.set_context(device_target="CPU")
    if sys.argv[1:2] == ["ms"] and len(sys.argv) == 5:
        check_ms(*sys.argv[2:])
    elif sys.argv[1:2] == ["mf"] and len(sys.argv) == 4:
        check_mf(*sys.argv[2:])
    else:
        sys.exit(__doc__)
