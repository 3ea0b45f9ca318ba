"""Report stage at zoo scale: wall time and peak RSS of `write_reports` (every analyst table,
the correlations with their bootstrap intervals, the zoo plots and index.html) over a finished
scan of 300 and 1,000 synthetic models written table by table without Ray (pipeline/testing/scanned_zoo.py
`zoo_of`: 5 families, 4 pre-training tags, 3x3/5x5/7x7 layers, 12 depthwise layers of 400
kernels per model, so 4.8M kernels at 1,000 models). No per-model plot, as by default; the
timed code runs in a fresh child process after its imports. Also the page's size, the number
of images and the widest of them (target: the stage within 30 s at 1,000 models, no image wider
than 2,400 px)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks._common import timed_in_child

MODELS = (300, 1000)
LAYERS = 12
CHANNELS = 400
TARGET_SECONDS = 30.0
MAX_WIDTH_PX = 2400

_SETUP = """\
from pathlib import Path
from dwscan.stages.report import write_reports
from dwscan.io.storage import OutputLayout"""

_TIMED = """\
write_reports(OutputLayout(Path(sys.argv[1])), accuracy_csv=sys.argv[2], pretrain_csv=sys.argv[3])"""


def run() -> list[dict]:
    import matplotlib.image

    from dwscan.testing.scanned_zoo import ZOO_LABELS, write_scanned_zoo, zoo_of

    rows = []
    for n in MODELS:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            results, pretrain = write_scanned_zoo(root, zoo_of(n), layers=LAYERS,
                                                  channels=CHANNELS, labels=ZOO_LABELS)
            child = timed_in_child(_SETUP, _TIMED, root, results, pretrain)
            images = sorted((root / "reports").glob("*.png"))
            widest = max(matplotlib.image.imread(p).shape[1] for p in images)
            page_mb = (root / "reports" / "index.html").stat().st_size / 1e6
        rows.append({"models": n, "kernels": n * LAYERS * CHANNELS, "report s": child.seconds,
                     f"<= {TARGET_SECONDS:g} s": "yes" if child.seconds <= TARGET_SECONDS else "no",
                     "peak RSS GiB": child.peak_rss / 2**30, "index.html MB": page_mb,
                     "images": len(images), "widest image px": widest,
                     f"<= {MAX_WIDTH_PX} px": "yes" if widest <= MAX_WIDTH_PX else "no"})
        print(rows[-1], flush=True)
    return rows
