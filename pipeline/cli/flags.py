"""The flag groups several commands share, and what they become: RunOptions, model specs,
the Ray session a command runs in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from dwscan.io.accuracy import TIMM_PRETRAIN_URL, TIMM_RESULTS_URL
from dwscan.io.storage import check_model_ids
from dwscan.io.template_index import DEFAULT_THRESHOLD
from dwscan.io.zoo import ModelSpec, demo_zoo, hub_spec, local_checkpoint_spec
from dwscan.method.autoencoder_config import (
    CONSENSUS_EPOCHS,
    LONE_SEED_STEP_CAP,
    AutoencoderConfig,
)


class _CheckpointAction(argparse.Action):
    """--checkpoint PATH appends a [path, None] pair; --model-id names the pair just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        pairs = getattr(namespace, "checkpoints", None) or []
        if option_string == "--checkpoint":
            pairs.append([value, None])
        elif not pairs or pairs[-1][1] is not None:
            parser.error("--model-id must follow the --checkpoint it names")
        else:
            pairs[-1][1] = value
        namespace.checkpoints = pairs


_OUT_HELP = ("output folder, or a URI every node can reach, e.g. s3://bucket/dwscan-out "
             "(default: ./dwscan-out)")


_ADDRESS_HELP = "Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"


def add_out(command: argparse.ArgumentParser, address: bool = False) -> None:
    """Where a command writes, and (for commands that run on Ray) which cluster runs it."""
    command.add_argument("--out", default="dwscan-out", metavar="DIR|URI", help=_OUT_HELP)
    if address:
        command.add_argument("--address", default=None, help=_ADDRESS_HELP)


def add_method_options(command: argparse.ArgumentParser) -> None:
    """How templates are trained and kernels assigned (run, rescan, train)."""
    command.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                         help=f"cosine at or above which a kernel is clustered "
                              f"(default: {DEFAULT_THRESHOLD})")
    defaults = AutoencoderConfig()
    command.add_argument("--epochs", type=int, default=None,
                         help=f"train the autoencoders for exactly this many passes over the "
                              f"kernels (default: until the templates stop moving and the loss "
                              f"plateaus, checked every {defaults.check_every} steps, from "
                              f"{defaults.min_steps:,} steps to at most {defaults.step_cap():,} "
                              f"steps or {CONSENSUS_EPOCHS:g} passes, whichever is more, for "
                              f"each of several seeds; a lone seed, --seeds 1, up to "
                              f"{LONE_SEED_STEP_CAP:,} steps)")
    command.add_argument("--seed", type=int, default=defaults.seed,
                         help="training seed (default: 0)")
    command.add_argument("--train-workers", type=int, default=1,
                         help="training workers (default: 1, one Ray task using every CPU "
                              "of its node; on a small CPU machine a second rank costs more in "
                              "all-reduce than it gains, see BENCHMARKS.md); 2 or more: Ray "
                              "Train DDP ranks, one per GPU or node; with --gpu the number of "
                              "GPUs, one worker on each")
    command.add_argument("--gpu", action="store_true",
                         help="train the autoencoders on CUDA GPUs: --train-workers workers of "
                              "one GPU each, DDP over NCCL (on a cluster, gpu_worker nodes)")
    command.add_argument("--templates", choices=["autoencoder", "kmeans"], default="autoencoder",
                         help="how templates are found: the paper's 1-D autoencoder (default) "
                              "or spherical k-means, the paper's fallback for patterns the 1-D "
                              "code cannot reach")
    command.add_argument("--n-clusters", type=int, default=16,
                         help="k-means clusters before merging, with --templates kmeans "
                              "(default: 16)")
    command.add_argument("--sign-invariant", action="store_true",
                         help="count a kernel and its negative as one pattern (default, as the "
                              "paper: on- and off-centre are different patterns)")
    command.add_argument("--seeds", type=_at_least_one, default=defaults.seeds,
                         help=f"autoencoders (or k-means runs) per kernel size, each of its own "
                              f"seed, trained together; the templates are their consensus and "
                              f"every headline figure gets its range over the seeds' own sets "
                              f"(default: {defaults.seeds}; 1: the paper's single run)")


def add_family_yardstick(command: argparse.ArgumentParser) -> None:
    command.add_argument("--family-yardstick", action="store_true",
                         help="also find each kernel's closest member of the fitted families "
                              "(clusterability.family_fraction: a share no seed moves; about 2 s "
                              "per 10,000 kernels on a core, so off by default)")


def _at_least_one(text: str) -> int:
    """A count of at least 1 (argparse: a usage error, exit code 2, before any work)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run_options(args: argparse.Namespace):
    """RunOptions from whichever of the method, accuracy and scheduling flags a command has."""
    from dwscan.run import RunOptions
    from dwscan.stages.templates import TemplateConfig

    options = RunOptions(out=args.out, max_in_flight=getattr(args, "concurrency", None))
    if hasattr(args, "max_kernels"):
        options.limits = read_limits(args)
        options.model_timeout = args.model_timeout or None
    if hasattr(args, "threshold"):
        options.threshold, options.train_workers, options.use_gpu = (
            args.threshold, args.train_workers, args.gpu)
        options.autoencoder = AutoencoderConfig(epochs=args.epochs, seed=args.seed,
                                                seeds=args.seeds)
        options.templates = TemplateConfig(sign_invariant=args.sign_invariant,
                                           method=args.templates, n_clusters=args.n_clusters)
    options.family_yardstick = getattr(args, "family_yardstick", False)
    if hasattr(args, "accuracy_csv"):
        options.accuracy_csv, options.pretrain_csv = accuracy_sources(args)
    return options


def read_limits(args: argparse.Namespace):
    from dwscan.io.checkpoints import ReadLimits

    return ReadLimits(max_kernels=args.max_kernels, max_torch_bytes=args.max_torch_mb << 20)


def add_accuracy_sources(command: argparse.ArgumentParser, remembered: bool = False) -> None:
    """--accuracy-csv and --pretrain-csv; `remembered`: for a command over an existing OUT,
    whose default is what OUT's last report read (None here, resolved by accuracy_sources)."""
    last = "what OUT's last report read, else " if remembered else ""
    command.add_argument("--accuracy-csv", default=None if remembered else TIMM_RESULTS_URL,
                         metavar="PATH|URL",
                         help="timm's results-imagenet.csv (top-1, top-5, params per model and "
                              f"image size); a URL is cached after its first read (default: {last}"
                              "the file in timm's repository; offline, the demo zoo's rows)")
    command.add_argument("--pretrain-csv", default=None if remembered else TIMM_PRETRAIN_URL,
                         metavar="PATH|URL",
                         help="timm's model_metadata-in1k.csv (pre-training data per model; "
                              f"default: {last}the file in timm's repository)")


def accuracy_sources(args: argparse.Namespace) -> tuple[str, str]:
    """The two tables a command joins: its flags, or (where they default to None) what the last
    report of its OUT read."""
    from dwscan.io.accuracy import remembered_sources
    from dwscan.io.storage import OutputLayout

    return remembered_sources(OutputLayout(args.out).accuracy_sources_path,
                              args.accuracy_csv, args.pretrain_csv)


def add_model_selection(command: argparse.ArgumentParser, hub_only: bool = False) -> None:
    """Which models a command reads, where it writes, and where it runs."""
    if not hub_only:
        command.add_argument("--checkpoint", action=_CheckpointAction, metavar="PATH",
                             dest="checkpoints",
                             help="a .safetensors, .pth/.pt/.bin file or a Hugging Face style "
                                  "folder; repeat for several models")
        command.add_argument("--model-id", action=_CheckpointAction, metavar="ID",
                             dest="checkpoints",
                             help="name of the --checkpoint just before it (default: the file "
                                  "stem)")
    command.add_argument("--model", action="append", dest="hub_models", metavar="REPO_ID",
                         help="a Hugging Face Hub model repo, e.g. timm/convnext_tiny.fb_in1k; "
                              "repeat for several")
    command.add_argument("--hub", action="store_true",
                         help="scan the hub models that match --author/--filter/--search")
    command.add_argument("--author", default=None, help="with --hub: repos of this owner")
    command.add_argument("--filter", default=None, help="with --hub: repos with this tag")
    command.add_argument("--search", default=None, help="with --hub: repo ids containing this")
    command.add_argument("--limit", type=int, default=None, help="with --hub: at most N repos")
    command.add_argument("--concurrency", type=int, default=None,
                         help="models read at once (default: one local checkpoint per CPU; "
                              "16 hub models per CPU, read side by side in one worker each; "
                              "both as the cluster grows)")
    add_read_limits(command)
    add_out(command, address=True)


def add_read_limits(command: argparse.ArgumentParser) -> None:
    """What one model may cost; over it, that model fails with the reason (README: Safety)."""
    from dwscan.io.checkpoints import DEFAULT_MODEL_TIMEOUT, ReadLimits

    limits = ReadLimits()
    command.add_argument("--model-timeout", type=float, default=DEFAULT_MODEL_TIMEOUT,
                         metavar="SECONDS",
                         help="cancel a model still being read after this long and record it "
                              f"as failed; 0: no limit (default: {DEFAULT_MODEL_TIMEOUT:g})")
    command.add_argument("--max-kernels", type=int, default=limits.max_kernels, metavar="N",
                         help=f"depthwise kernels one model may have (default: "
                              f"{limits.max_kernels})")
    command.add_argument("--max-torch-mb", type=int, default=limits.max_torch_bytes >> 20,
                         metavar="MB",
                         help="memory a torch file may take when loaded: its pickle and "
                              "compressed storages, or all of a legacy non-zip file (default: "
                              f"{limits.max_torch_bytes >> 20})")


def specs_from_args(args: argparse.Namespace) -> list[ModelSpec]:
    """The models named on the command line; none at all means the demo zoo."""
    checkpoints = getattr(args, "checkpoints", None) or []
    hub_models = list(getattr(args, "hub_models", None) or [])
    if getattr(args, "hub", False):
        from dwscan.io.hub import list_hub_models

        hub_models += list_hub_models(author=args.author, filter=args.filter,
                                      search=args.search, limit=args.limit)
        if not hub_models:
            raise SystemExit("dwscan: error: no hub model matches the --hub filters")
    if not checkpoints and not hub_models:
        return demo_zoo()
    specs = [local_checkpoint_spec(path, model_id) for path, model_id in checkpoints]
    specs += [hub_spec(repo_id) for repo_id in dict.fromkeys(hub_models)]
    ids = [s.model_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"dwscan: error: model ids must be unique, repeated: "
                         f"{', '.join(duplicates)} (name them with --model-id)")
    check_model_ids(ids)  # ModelIdError: main prints it
    return specs


def finished_layout(out: str, needs_templates: bool = True):
    """The layout of `out`, which must hold a scan (and templates): else exit with what to run."""
    from dwscan.io.storage import OutputLayout

    layout = OutputLayout(out)
    missing = [p.name for p in (layout.models_path, layout.templates_path)[:1 + needs_templates]
               if not p.exists()]
    if missing:
        raise SystemExit(f"dwscan: error: {out} holds no finished run (no "
                         f"{' or '.join(missing)}); run `dwscan run --out {out}` first")
    return layout


@contextmanager
def ray_session() -> Iterator[None]:
    """Shut Ray down however the command ends (a local Ray would outlive a crashed driver); a
    cluster that cannot run the command (join failed, --out not shared) is one line, exit 2."""
    from dwscan.executor.ray_executor import ClusterError

    try:
        yield
    except ClusterError as error:
        print(f"dwscan: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        import ray

        ray.shutdown()
