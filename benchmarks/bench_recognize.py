"""What recognising a checkpoint's architecture costs, beside reading the file and converting it.

For each architecture: save a randomly initialised checkpoint (mmaction2-style keys: ``backbone.`` and
``cls_head.fc_cls.``), then time, in one fresh process per architecture so the first recognition pays the imports
and the meta-device builds a user's run pays:

* import: vared, torchvision and pytorchvideo (which building the network imports in any case);
* read: ``read_raw_checkpoint`` (``torch.load(weights_only=True)``);
* recognise (first): ``recognise`` on the weights, building the signatures it tries (meta device);
* recognise (again): the same call with the signatures cached;
* no match: the weights without their classifier, which match nothing, so every signature is built (cold);
* convert: ``vared convert CKPT --out OUT`` end to end without ``--arch`` (at a small clip), for scale.

    python benchmarks/bench_recognize.py [torchvision:r3d_18 pytorchvideo:x3d_m ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ["torchvision:r3d_18", "pytorchvideo:i3d_r50", "pytorchvideo:x3d_m", "pytorchvideo:slowfast_r50"]
CLIP = {"pytorchvideo:slowfast_r50": "3,8,64,64"}

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
from vared_convert.checkpoint import extract_state_dict, read_raw_checkpoint
from vared_convert.recognize import recognise, signature
import torchvision.models.video, pytorchvideo.models.hub  # what building the network imports anyway
t1 = time.perf_counter()
raw = read_raw_checkpoint(sys.argv[1])
sd, _ = extract_state_dict(raw.content)
t2 = time.perf_counter()
found = recognise(sd, file_name=sys.argv[1])
t3 = time.perf_counter()
recognise(sd, file_name=sys.argv[1])
t4 = time.perf_counter()
signature.cache_clear()
unknown = {k: v for k, v in sd.items() if "cls_head" not in k}  # no classifier: matches nothing, tries all
try:
    recognise(unknown)
except Exception:
    pass
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "read": t2 - t1, "first": t3 - t2, "again": t4 - t3, "none": t5 - t4,
                  "keys": len(sd), "found": found.describe()}))
"""


def main(archs: list[str]) -> None:
    import torch

    from vared_convert.arch import ArchSpec, build_model

    print(f"{'architecture':28} {'keys':>5} {'MB':>6} {'import s':>8} {'read s':>7} {'recognise s (first)':>20} "
          f"{'(again)':>8} {'no match s':>10} {'convert s':>10}  recognised")
    with tempfile.TemporaryDirectory() as tmp:
        for name in archs:
            sd = build_model(ArchSpec(name, 400)).state_dict()
            head = [k for k, v in sd.items() if v.shape[:1] == (400,)]
            mm = {(f"cls_head.fc_cls.{k.rsplit('.', 1)[1]}" if k in head else f"backbone.{k}"): v
                  for k, v in sd.items()}
            ckpt = Path(tmp) / f"{name.split(':')[1]}_mmaction2.pth"
            torch.save({"meta": {"epoch": 1}, "state_dict": mm}, ckpt)
            child = subprocess.run([sys.executable, "-c", CHILD, str(ckpt)], capture_output=True, text=True,
                                   check=True)
            got = json.loads(child.stdout)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vared_convert", "convert", str(ckpt), "--out",
                            str(Path(tmp) / "out.pth"), "--force", "--input-shape", CLIP.get(name, "3,8,64,64")],
                           capture_output=True, text=True, check=True)
            convert_s = time.perf_counter() - t
            print(f"{name:28} {got['keys']:5d} {ckpt.stat().st_size / 1e6:6.0f} {got['import']:8.2f} "
                  f"{got['read']:7.2f} "
                  f"{got['first']:20.2f} {got['again']:8.2f} {got['none']:10.2f} {convert_s:10.1f}  {got['found']}")


if __name__ == "__main__":
    main(sys.argv[1:] or ARCHS)
