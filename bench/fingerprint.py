"""Time to fingerprint a model folder (bioinstruct.runs.identity.model_fingerprint): cold (every
byte hashed) and warm (the sha256 cache: a stat per file), on a synthetic folder shaped like a
sharded save_pretrained checkpoint (config.json, safetensors shards with a valid header).

    python bench/fingerprint.py                  # 3 GB in 2 shards under /tmp, removed afterwards
    python bench/fingerprint.py --gb 13 --shards 3 --dir /scratch/$USER   # LLaMA-2-7B fp16 size

The folder is written with random bytes (os.urandom), then dropped from the page cache where
the OS lets us (posix_fadvise DONTNEED), so "cold" includes reading the disk. Prints wall and
CPU seconds and GB/s for each, and deletes the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def write_model(folder: Path, gb: float, shards: int) -> int:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    per_shard = int(gb * 1e9 / shards) // 4 * 4
    block = os.urandom(1 << 24)
    for s in range(shards):
        header = json.dumps({f"model.layers.{s}.weight": {"dtype": "F32", "shape": [per_shard // 4],
                                                         "data_offsets": [0, per_shard]}})
        header += " " * (-len(header) % 8)
        with open(folder / f"model-{s + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header.encode())
            left = per_shard
            while left:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return per_shard * shards


def timed(fn):
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    cpu1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return out, t1 - t0, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=3.0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bioinstruct-fp-", dir=args.dir))
    os.environ["BIOINSTRUCT_HASH_CACHE"] = str(work / "sha256.json")
    from bioinstruct.runs import identity

    try:
        size = write_model(work / "model", args.gb, args.shards)
        fp, cold, cold_cpu = timed(lambda: identity.model_fingerprint(str(work / "model")))
        identity._memory.clear()  # warm = a new process: the JSON cache, not this one's memory
        fp2, warm, warm_cpu = timed(lambda: identity.model_fingerprint(str(work / "model")))
        assert fp == fp2
        print(f"model folder: {size / 1e9:.2f} GB in {args.shards} safetensors shards, load {os.getloadavg()[0]:.2f}")
        print(f"{'':6} {'wall s':>8} {'CPU s':>8} {'GB/s':>6}")
        print(f"{'cold':6} {cold:8.2f} {cold_cpu:8.2f} {size / 1e9 / cold:6.2f}")
        print(f"{'warm':6} {warm:8.4f} {warm_cpu:8.4f} {'-':>6}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
