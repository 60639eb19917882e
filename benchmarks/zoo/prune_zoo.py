"""Channel pruning on real model zoos (torchvision and timm): does every model prune and run?

Not a test: a survey that is slow (minutes to an hour on a CPU). For each classification model
it builds the model with random weights (nothing is downloaded), prunes it with L1 at
``--amount`` (30 % by default), runs a forward pass of the pruned model and records:

* ``status``: ``ok`` (pruned, output shape unchanged), ``short`` (pruned, but fewer than half
  of the asked output channels went), ``unpruned`` (nothing removed and no error: the silent
  no-op this survey exists to catch), ``untraceable`` (torch.fx cannot trace it: the
  UntraceableModelError names the module), ``blocked`` (netshrink raised an error that names
  what stopped it) or ``error`` (anything else, with the message);
* the fraction of conv / linear output channels, parameters and MACs removed.

    python benchmarks/zoo/prune_zoo.py --source torchvision --out results/zoo
    python benchmarks/zoo/prune_zoo.py --source timm --models 'convnext*' 'ghostnet*'

Results go to ``OUT/zoo.jsonl`` (one JSON object per model, appended as it runs, so a long
run can be watched and resumed with ``--resume``) and ``OUT/zoo.md`` (a table and the counts).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import json
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.core import count_macs
from netshrink.prune import (
    ChannelPruneConfig,
    PruningBlockedError,
    PruningBlockedWarning,
    UntraceableModelError,
    find_pruner,
    plan_channels,
)
from netshrink.prune.surgery import apply_plan_

#: torchvision classifiers that are transformers, not convolutional (run with --all-kinds).
TV_TRANSFORMERS = ("vit_*", "swin_*", "maxvit_*")

#: One small model per timm family of convolutional (or conv-hybrid) classifiers.
TIMM_MODELS = (
    "resnet18", "resnet26d", "resnext26ts", "seresnext26d_32x4d", "ecaresnet26t",
    "skresnet18", "res2net50_14w_8s", "resnest14d", "regnetx_002", "regnety_002",
    "regnetz_005", "efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0",
    "efficientnetv2_rw_t", "tf_efficientnetv2_b0", "mobilenetv2_050", "mobilenetv3_small_050",
    "tf_mobilenetv3_small_100", "mobilenetv4_conv_small", "mnasnet_050", "fbnetc_100",
    "spnasnet_100", "mixnet_s", "tf_mixnet_s", "tinynet_e", "lcnet_050", "hardcorenas_a",
    "rexnet_100", "ghostnet_050", "ghostnetv2_100", "repghostnet_050", "convnext_atto",
    "convnextv2_atto", "edgenext_xx_small", "mobilevit_xxs", "mobilevitv2_050",
    "efficientvit_b0", "fastvit_t8", "mobileone_s0", "repvgg_a0", "hgnet_tiny", "hgnetv2_b0",
    "dla34", "dpn48b", "densenet121", "vgg11", "cspresnet50", "cspdarknet53", "darknet17",
    "selecsls42b", "xception41", "inception_v3", "gernet_s", "ese_vovnet19b_slim",
    "nf_resnet26", "dm_nfnet_f0", "hrnet_w18_small", "tresnet_m", "resnetv2_50",
    "vovnet39a", "sedarknet21", "bat_resnext26ts", "halonet26t", "lambda_resnet26t",
    "botnet26t_256", "poolformer_s12", "inception_next_tiny", "rdnet_tiny", "mambaout_femto",
    "starnet_s1", "fasternet_t0", "repvit_m0_9", "levit_128s", "coat_lite_tiny",
)


def _torchvision_models(patterns: list[str], all_kinds: bool) -> list[tuple[str, Callable]]:
    import torchvision

    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if not all_kinds and any(fnmatch.fnmatch(name, p) for p in TV_TRANSFORMERS):
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        out.append((f"tv:{name}", lambda n=name: torchvision.models.get_model(n, weights=None)))
    return out


def _timm_models(patterns: list[str], all_kinds: bool) -> list[tuple[str, Callable]]:
    import timm

    names = timm.list_models() if all_kinds else list(TIMM_MODELS)
    known = set(timm.list_models())
    out = []
    for name in names:
        if name not in known:
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        out.append((f"timm:{name}", lambda n=name: timm.create_model(n, pretrained=False)))
    return out


#: models whose pooling needs a larger input than 64 x 64 and that do not say so
MIN_SIZE = {"Inception3": 80, "InceptionV3": 80}


def _input_size(model: nn.Module, size: int) -> tuple[int, int, int, int]:
    """``size`` x ``size``, unless the model states a larger minimum or a fixed input."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    fixed = getattr(model, "image_size", None)  # torchvision ViT
    if isinstance(fixed, int):
        return (2, 3, fixed, fixed)
    low = cfg.get("min_input_size")
    h = max(size, low[1] if low else 0, MIN_SIZE.get(type(model).__name__, 0))
    if cfg.get("fixed_input_size"):
        h = cfg["input_size"][1]
    return (2, 3, h, h)


def _out_channels(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        pruner = find_pruner(type(m))
        if pruner is None or pruner.per_channel:
            continue
        total += getattr(m, "out_channels", getattr(m, "out_features", 0))
    return total


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over the {seconds} s limit")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def survey_one(name: str, build: Callable[[], nn.Module], amount: float, size: int,
               limit: int, max_params: float, mode: str = "normal",
               scope: str = "global") -> dict[str, Any]:
    """Build, prune and run one model; a JSON-able record (see the module docstring)."""
    record: dict[str, Any] = {"model": name}
    start = time.perf_counter()
    try:
        with _time_limit(limit):
            try:  # counted on the meta device: no memory, no initialization
                with torch.device("meta"):
                    meta_params = _params(build())
            except (NotImplementedError, RuntimeError):  # an init that reads the weights
                meta_params = 0
            record["params"] = meta_params
            if meta_params > max_params:
                record.update(status="skipped", message=f"{meta_params / 1e6:.0f}M parameters")
                return record
            torch.manual_seed(0)
            model = build().eval()
            shape = _input_size(model, size)
            x = torch.randn(shape)
            with torch.no_grad():
                ref = model(x)
            record["input"] = list(shape)
            macs = count_macs(model, x)
            config = ChannelPruneConfig(criterion="l1", amount=amount, mode=mode, scope=scope)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PruningBlockedWarning)
                plan = plan_channels(model, x, config)
            if plan.blocked:
                record["blocked"] = dict(list(plan.blocked.items())[:5])
            pruned = apply_plan_(copy.deepcopy(model), plan).eval()
            with torch.no_grad():
                out = pruned(x)
            if out.shape != ref.shape:
                raise RuntimeError(f"output shape changed: {tuple(ref.shape)} -> "
                                   f"{tuple(out.shape)}")
            channels = 1 - _out_channels(pruned) / _out_channels(model)
            record.update(channels=round(channels, 4),
                          params_removed=round(1 - _params(pruned) / _params(model), 4),
                          macs_removed=round(1 - count_macs(pruned, x) / macs, 4))
            if plan.removed_channels == 0:
                record["status"] = "unpruned"
            elif channels < amount / 2:
                record["status"] = "short"
            else:
                record["status"] = "ok"
    except UntraceableModelError as err:
        record.update(status="untraceable", message=str(err)[:600])
    except (TypeError, ValueError, RuntimeError) as err:
        text = f"{type(err).__name__}: {err}"
        blocked = isinstance(err, PruningBlockedError) or "cannot prune" in text
        record.update(status="blocked" if blocked else "error", message=text[:600])
        if not blocked:
            record["where"] = traceback.format_exc(limit=-3)[-900:]
    except Exception as err:  # noqa: BLE001 - a survey records every failure and goes on
        record.update(status="error", message=f"{type(err).__name__}: {err}"[:600],
                      where=traceback.format_exc(limit=-3)[-900:])
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def write_markdown(records: list[dict[str, Any]], path: Path, amount: float) -> None:
    """The results table and the counts per source and status."""
    lines = [f"# Channel pruning on model zoos (L1, {amount:.0%})", "",
             "| model | status | channels | params | MACs | input | note |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        def pct(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]:.1%}" if key in r else ""
        note = (r.get("message") or "").replace("|", "/").replace("\n", " ")[:160]
        size = "x".join(str(d) for d in r.get("input", [])[2:])
        lines.append(f"| {r['model']} | {r['status']} | {pct('channels')} | "
                     f"{pct('params_removed')} | {pct('macs_removed')} | {size} | {note} |")
    lines += ["", "| source | " + " | ".join(STATUSES) + " | total |",
              "|---|" + "---|" * (len(STATUSES) + 1)]
    for source in ("tv", "timm"):
        count = Counter(r["status"] for r in records if r["model"].startswith(source + ":"))
        if count:
            lines.append(f"| {source} | " + " | ".join(str(count[s]) for s in STATUSES)
                         + f" | {sum(count.values())} |")
    path.write_text("\n".join(lines) + "\n")


STATUSES = ("ok", "short", "unpruned", "blocked", "untraceable", "error", "skipped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("torchvision", "timm", "all"), default="all")
    parser.add_argument("--models", nargs="*", default=[], help="fnmatch patterns of names")
    parser.add_argument("--all-kinds", action="store_true",
                        help="torchvision transformers too; every timm model, not one a family")
    parser.add_argument("--amount", type=float, default=0.3)
    parser.add_argument("--mode", choices=("normal", "group"), default="normal",
                        help="group: also prune grouped convs, shuffles and chunks")
    parser.add_argument("--scope", choices=("global", "per_layer"), default="global")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--limit", type=int, default=300, help="seconds per model")
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("--out", type=Path, default=Path("results/zoo"))
    parser.add_argument("--resume", action="store_true", help="skip models already in OUT")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models: list[tuple[str, Callable]] = []
    if args.source in ("torchvision", "all"):
        models += _torchvision_models(args.models, args.all_kinds)
    if args.source in ("timm", "all"):
        models += _timm_models(args.models, args.all_kinds)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "zoo.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if args.resume and jsonl.exists():
        for line in jsonl.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["model"]] = rec
    elif jsonl.exists():
        jsonl.unlink()
    with jsonl.open("a") as sink:
        for name, build in models:
            if name in done:
                continue
            record = survey_one(name, build, args.amount, args.size, args.limit,
                                args.max_params, args.mode, args.scope)
            done[name] = record
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            print(f"{record['status']:12s} {name:40s} {record.get('channels', '')!s:8s} "
                  f"{record.get('message', '')[:120]}", flush=True)
    records = [done[name] for name, _ in models if name in done]
    write_markdown(records, args.out / "zoo.md", args.amount)
    print((args.out / "zoo.md").read_text().split("\n\n")[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
