"""``vision-mamba predict``: the top classes of a trained classifier for a few images.

    vision-mamba predict --checkpoint runs/vim/final.safetensors cat.jpg dog.png photos/
    vision-mamba predict --checkpoint runs/vim/last.pth --ema --top-k 3 --json predictions.json photos/

The model and its preprocessing (resolution, crop, normalisation) come from the run's configuration, found as
``vision-mamba eval`` finds it (``config.yaml`` beside the checkpoint, the one inside a ``last.pth``, ``--config``,
flags). Class names come from the checkpoint (the weights this command's training exports carry them; a
``last.pth`` keeps them too), else from the configured dataset's folders, else they are numbered. A folder given
as an image means the image files directly inside it. An image that cannot be read is reported and skipped; the
exit status is then 1. So is a broken symbolic link (its target gone), as training counts it: all of them in one
warning line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..engine.argtypes import positive_int

__all__ = ["add_arguments", "main", "predict", "load_classifier"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="weights: final.safetensors / last.pth of a training run, or its run directory (its "
                        "final.safetensors; with --ema its last.pth), or other weights with --model")
    parser.add_argument("--config", metavar="YAML", help="the run's config (default: as vision-mamba eval finds it)")
    parser.add_argument("--model", help="timm model name (default: from the config)")
    parser.add_argument("--num-classes", type=positive_int, help="classes of the weights when nothing names them "
                        "(default: read from the checkpoint's classifier)")
    parser.add_argument("--img-size", type=positive_int)
    parser.add_argument("--crop-pct", type=float)
    parser.add_argument("--top-k", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    parser.add_argument("--device")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training-config key that matters here (model_kwargs, mean, std, ...)")
    parser.add_argument("--json", metavar="PATH", help="also write the predictions as JSON")


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()  # (a loop of links, too)


def _holds_images(folder: Path, endings) -> bool:
    """Whether ``folder`` is a readable folder with an image file (by its ending) directly inside."""
    try:
        return folder.is_dir() and any(p.suffix.lower() in endings for p in folder.iterdir())
    except OSError:
        return False


def _image_paths(items: Sequence[str]) -> Tuple[List[Path], List[Path]]:
    """The image files ``items`` name (a folder: the image files directly inside it), and the broken symbolic links
    among them, which are left out. Raises FileNotFoundError when nothing is left to predict."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    paths: List[Path] = []
    broken: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
            found = [p for p in entries if p.is_file()]
            links = [p for p in entries if _is_broken_link(p)]
            if not found and not links:
                # (a dataset split's folder holds its images a class folder down: name those, or their images)
                below = sorted(d.name for d in path.iterdir() if _holds_images(d, IMG_EXTENSIONS))
                hint = (f"; its folders {', '.join(below[:5])}{', ...' if len(below) > 5 else ''} hold images: name "
                        f"them (e.g. {path / below[0]}), or {path}/*/* in the shell") if below else ""
                raise FileNotFoundError(f"no image files directly inside {path} (endings {', '.join(IMG_EXTENSIONS)})"
                                        f"{hint}")
            paths += found
            broken += links
        elif path.is_file():
            paths.append(path)
        elif _is_broken_link(path):  # e.g. named by a shell glob, which lists such links too
            broken.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    if broken and not paths:
        raise FileNotFoundError(f"nothing to predict: {_broken_links(broken)}")
    return paths, broken


def _broken_links(links: Sequence[Path]) -> str:
    """'N broken symbolic link(s) (target(s) missing): X, Y, ...', the first five named."""
    s = "s" if len(links) > 1 else ""
    shown = ", ".join(map(str, links[:5])) + (f" ... ({len(links)} in all)" if len(links) > 5 else "")
    return f"{len(links)} broken symbolic link{s} (target{s} missing): {shown}"


def _classes_in_checkpoint(path: Path) -> Optional[List[str]]:
    """Class names stored with the weights: safetensors metadata 'classes', or a training checkpoint's list."""
    from ..models.checkpoint import checkpoint_classes

    return checkpoint_classes(path)


def _classes_of_head(path: Path, use_ema: bool) -> Optional[int]:
    """Rows of the checkpoint's classifier weight (``head.weight`` / ``fc.weight`` / ``classifier.weight``)."""
    from ..models.checkpoint import extract_state_dict, read_checkpoint

    state = extract_state_dict(read_checkpoint(path), use_ema=use_ema)
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight", "last_linear.weight"):
        if key in state and state[key].dim() == 2:
            return int(state[key].shape[0])
    return None


def load_classifier(args: argparse.Namespace, checkpoint: "str | Path | None" = None) -> Tuple[Any, List[str], Any]:
    """(model in eval mode, class names, configuration) for ``args`` (only read); raises the CLI's user errors.
    ``checkpoint``: the weights file, where the caller has resolved it already (default: what ``args.checkpoint``
    names, a run directory's weights file included)."""
    from ..data import DatasetError, check_data_source
    from ..models.checkpoint import CheckpointError, load_checkpoint
    from .eval_command import NO_DATA, resolve_eval_config, run_checkpoint
    from .model import create_classifier

    checkpoint = run_checkpoint(args.checkpoint if checkpoint is None else checkpoint, args.ema)
    cfg = resolve_eval_config(args, need_data=False, checkpoint=checkpoint)
    classes = _classes_in_checkpoint(checkpoint)
    if classes is None and cfg.data != NO_DATA:  # the configured dataset's classes, if it is here
        try:
            classes = check_data_source(cfg.data, None, cfg.val_split)
        except DatasetError:
            classes = None
    if classes is None:
        count = args.num_classes or _classes_of_head(checkpoint, args.ema)
        if count is None:
            raise CheckpointError(f"{checkpoint}: no class names stored and no classifier weight found; "
                                  f"pass --num-classes")
        classes = [str(i) for i in range(count)]
    model = create_classifier(cfg.model, num_classes=len(classes), img_size=cfg.img_size,
                              model_kwargs=cfg.model_kwargs)
    load_checkpoint(model, checkpoint, strict=True, use_ema=args.ema)
    if hasattr(model, "check_finite"):
        model.check_finite = True  # user images: a NaN is worth an error
    return model.eval(), classes, cfg


def predict(model, classes: List[str], cfg, paths: Sequence[Path], *, top_k: int = 5, batch_size: int = 32,
            device=None, amp_dtype=None) -> Tuple[List[Dict[str, Any]], List[Tuple[Path, str]]]:
    """Top-k (class, probability) for each readable image, and the (path, reason) of those that were not."""
    import torch

    from ..data.folder import load_rgb
    from ..data.transforms import eval_transform
    from ..engine import autocast

    device = device or torch.device("cpu")
    transform = eval_transform(cfg.img_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
                               mean=cfg.mean, std=cfg.std)
    k = max(1, min(top_k, len(classes)))
    results: List[Dict[str, Any]] = []
    unreadable: List[Tuple[Path, str]] = []
    model.to(device)

    def flush(batch: List[Tuple[Path, Any]]) -> None:
        with torch.inference_mode(), autocast(device, amp_dtype):
            probs = model(torch.stack([x for _, x in batch]).to(device)).float().softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        for (path, _), p, i in zip(batch, top.values.tolist(), top.indices.tolist()):
            results.append(dict(image=str(path), top=[dict(index=j, label=classes[j], prob=q) for q, j in zip(p, i)]))

    batch: List[Tuple[Path, Any]] = []
    for path in paths:
        try:
            x = transform(load_rgb(str(path), exif=True))  # as a viewer shows the photo
        except Exception as e:  # PIL raises many types for a corrupt or unsupported file
            unreadable.append((path, f"{type(e).__name__}: {e}"))
            continue
        batch.append((path, x))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return results, unreadable


def main(args: argparse.Namespace) -> int:
    from ..data import DatasetError
    from ..engine import resolve_device, resolve_precision
    from ..models.checkpoint import CheckpointError
    from .config import ConfigError
    from .eval_command import run_checkpoint

    try:
        paths, broken = _image_paths(args.images)
        checkpoint = run_checkpoint(args.checkpoint, args.ema)
        model, classes, cfg = load_classifier(args, checkpoint)
        device = resolve_device(args.device or cfg.device)
        results, unreadable = predict(model, classes, cfg, paths, top_k=args.top_k, batch_size=args.batch_size,
                                      device=device, amp_dtype=resolve_precision(args.precision or cfg.precision,
                                                                                 device))
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["top"]))
    for path, reason in unreadable:
        print(f"warning: skipped {path}: cannot read the image ({reason})", file=sys.stderr)
    if broken:  # one line, however many
        print(f"warning: skipped {_broken_links(broken)}", file=sys.stderr)
    if args.json:
        from ..engine.files import write_json

        write_json(args.json, dict(checkpoint=str(checkpoint), model=cfg.model, img_size=cfg.img_size,
                                   predictions=results, unreadable=[str(p) for p, _ in unreadable] +
                                   [str(p) for p in broken]))
    if unreadable or broken:
        print(f"{len(unreadable) + len(broken)} of {len(paths) + len(broken)} image(s) could not be read",
              file=sys.stderr)
        return 1
    return 0
