"""Made the files in tests/data/v0.1/ with fedinv 0.1.0 as it was before the one-shot package and
the per-method synthesis settings (commit 13e650f; run from that checkout's root with
`python tests/data/make_v0_1.py`). They are what an older fedinv left on disk: teachers, a
deepinversion store and a fast store with its generator state, each of 48 images stopped after 2
batches of 12 (as a killed run leaves them), and a run folder's config.json, all recording the flat
[synthesis] fields of then. test_compat.py checks that today's fedinv opens and
continues them. This script does not run with today's fedinv (it imports the old module names)."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from test_synthesis import random_teachers, write_teachers  # noqa: E402

from fedinv.config import SynthesisConfig  # noqa: E402
from fedinv.inversion.synthesize import synthesize  # noqa: E402
from fedinv.pipeline import RunConfig  # noqa: E402
from fedinv.store import StoreWriter  # noqa: E402

OUT = Path(__file__).parent / "v0.1"
torch.set_num_threads(1)
write_teachers(OUT / "teachers", *random_teachers(2))
common = dict(num_images=48, batch_size=12, teachers_per_step=2, device="cpu")
append = StoreWriter.append


def stopped(cfg, store):
    """Synthesize until the third batch is about to be written."""
    calls = []

    def third_is_killed(writer, *rows):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        append(writer, *rows)

    StoreWriter.append = third_is_killed
    try:
        synthesize(OUT / "teachers", OUT / store, cfg, progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        StoreWriter.append = append


stopped(SynthesisConfig(iterations=3, **common), "deepinversion.h5")
stopped(SynthesisConfig(method="fast", steps=2, generator_width=16, **common), "fast.h5")
tiny = Path(__file__).parent.parent.parent / "assets" / "configs" / "tiny.toml"
(OUT / "run-config.json").write_text(json.dumps(RunConfig.from_toml(tiny).to_dict(), indent=2) + "\n")
