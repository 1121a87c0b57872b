"""Command line: ``detassign train | val | predict | show | iou-figure | demo`` (also ``python -m detassign``)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["main", "build_parser"]

ASSIGNER_HELP = ("label assigner: TaskAlignedAssigner (default; alias tal), ATSSAssigner (atss), SimOTAAssigner "
                 "(simota), DynamicSoftLabelAssigner (dsl), or any registered name (detassign.available_assigners())")


def _size(text: str):
    """An int, 'native' (None: native resolution padded to a multiple of 32) or 'auto'."""
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("native", "none", "0"):
        return None
    return int(text)


def _add_data_args(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--data", default=None, metavar="PATH",
                   help=f"dataset: a COCO .json, a Pascal VOC folder of .xml, a YOLO images folder, or a small "
                        f"YAML/JSON spec (format, names, train, val). {default_help}")
    p.add_argument("--format", dest="data_format", choices=("coco", "voc", "yolo"), default=None,
                   help="format of --data when it is not a spec file")
    p.add_argument("--names", default=None, metavar="A,B,...",
                   help="class names, comma separated (needed for YOLO txt labels; fixes the order for VOC)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detassign",
        description="Train, evaluate and inspect YOLO11 detectors with any label assigner. Without --data the "
                    "commands use the NEON aerial tree-crown set (downloaded once, about 21 MB).",
        epilog="Run 'detassign COMMAND --help' for the options of one command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # ---------------------------------------------------------------- train
    p = sub.add_parser("train", help="train a YOLO11 on your dataset or the NEON tree crowns",
                       description="Train a YOLO11 detector. Writes last.pt / best.pt (EMA weights, written "
                                   "atomically), loss_curves.png and config.json to --out.",
                       epilog="examples:\n  detassign train --epochs 30 --img-size 416 --out runs/trees\n"
                              "  detassign train --data coco/instances_train.json --format coco --val-data "
                              "coco/instances_val.json --epochs 100\n"
                              "  detassign train --data data.yaml --assigner atss --scale s\n"
                              "  detassign train --out runs/trees --resume          # continue a killed run\n"
                              "  torchrun --nproc_per_node=2 -m detassign train ...   # data-parallel",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_args(p, "Default: NEON tree-crown tiles, validated on the held-out NEON image.")
    p.add_argument("--val-data", default=None, metavar="PATH", help="validation set (same format as --data)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="JSON or YAML file of TrainConfig fields; command-line options override it")
    p.add_argument("--scale", default=None, help="model size: n, s, m, l, x (ultralytics) or p (pico, CPU demos)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="images per optimiser batch, all processes together")
    p.add_argument("--nominal-batch", type=int, default=None,
                   help="gradients are accumulated up to this many images per step (64)")
    p.add_argument("--img-size", type=int, default=None, help="training input side (letterboxed square)")
    p.add_argument("--crop", type=int, default=None, help="random crop side applied before letterboxing")
    p.add_argument("--val-img-size", type=_size, default=argparse.SUPPRESS,
                   help="validation input side, 'native' (full resolution, padded to 32) or 'auto' (default: "
                        "native for NEON, else --img-size)")
    p.add_argument("--optimizer", default=None, help="auto (AdamW for short runs, else SGD), SGD, Adam, AdamW")
    p.add_argument("--lr0", type=float, default=None, help="initial learning rate (ignored by optimizer=auto)")
    p.add_argument("--lrf", type=float, default=None, help="final learning rate as a fraction of lr0 (0.01)")
    p.add_argument("--cos-lr", action="store_true", default=None, help="cosine instead of linear decay")
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--ema-tau", type=float, default=None, help="EMA ramp time constant in steps (2000)")
    p.add_argument("--assigner", default=None, help=ASSIGNER_HELP)
    p.add_argument("--weights", default=None, metavar="CKPT", help="initialise from a checkpoint")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no flips / rotations / crops / colour changes")
    p.add_argument("--no-rot90", dest="rot90", action="store_false", default=None,
                   help="no 90-degree turns (use for street scenes; they suit aerial views)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, default=None, help="data-loader worker processes (0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="run folder (runs/train)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue the run in --out (or from CKPT) exactly where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    # ---------------------------------------------------------------- val
    p = sub.add_parser("val", help="evaluate a checkpoint: mAP50 and mAP50-95 (COCO protocol)",
                       description="Evaluate a checkpoint on a labelled set and print a results table "
                                   "(COCO mAP with up to --max-det detections per image).",
                       epilog="example:  detassign val runs/trees/best.pt --img-size native")
    p.add_argument("checkpoint", help="a last.pt / best.pt written by 'detassign train'")
    _add_data_args(p, "Default: the held-out NEON image (or the checkpoint's own validation data).")
    p.add_argument("--split", default="val", help="split name inside a spec file (val)")
    p.add_argument("--img-size", type=_size, default=argparse.SUPPRESS,
                   help="input side, or 'native' (default: the checkpoint's validation size)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold (0.001 for mAP)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (COCO maxDets uses >= 300)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")

    # ---------------------------------------------------------------- predict
    p = sub.add_parser("predict", help="detect objects in images; write COCO JSON and overlay PNGs",
                       description="Run a checkpoint on an image or a folder of images. Writes predictions.json "
                                   "(COCO results: image_id, category_id, bbox [x, y, w, h], score) and one "
                                   "overlay PNG per image into --out.",
                       epilog="example:  detassign predict runs/trees/best.pt photos/ --conf 0.3 --out preds")
    p.add_argument("checkpoint")
    p.add_argument("source", help="an image file or a folder of images")
    p.add_argument("--img-size", type=_size, default=None, help="input side or 'native' (default: native)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/predict")

    # ---------------------------------------------------------------- show
    p = sub.add_parser("show", help="draw which priors an assigner makes positive for an image's boxes",
                       description="Draw an image with its GT boxes and the positive priors of an assigner, one "
                                   "panel per pyramid level (P3/P4/P5), coloured by GT, with per-GT counts. "
                                   "Score-based assigners use a model: --weights, else an untrained YOLO11.",
                       epilog="example:  detassign show --assigner ATSSAssigner --out atss.png")
    _add_data_args(p, "Default: a NEON tree-crown training tile.")
    p.add_argument("--index", type=int, default=0, help="which image of the dataset (0)")
    p.add_argument("--assigner", default="TaskAlignedAssigner", help=ASSIGNER_HELP)
    p.add_argument("--weights", default=None, metavar="CKPT", help="score with a trained model")
    p.add_argument("--scale", default="n", help="untrained model scale when no --weights (n)")
    p.add_argument("--img-size", type=int, default=None, help="letterbox side (default: the image, padded to 32)")
    p.add_argument("--out", default="assignment.png")

    # ---------------------------------------------------------------- iou-figure
    p = sub.add_parser("iou-figure", help="plot IoU / GIoU / DIoU / CIoU against the offset of a sliding box",
                       description="Plot IoU, GIoU, DIoU and CIoU between a fixed box and a box sliding past it "
                                   "(same size, and 2:1), computed with detassign.boxes.")
    p.add_argument("--out", default="iou_variants.png")
    p.add_argument("--span", type=float, default=25.0, help="largest offset in pixels (boxes are 10 px)")

    # ---------------------------------------------------------------- demo
    p = sub.add_parser("demo", help="fetch the NEON tree crowns, train a small YOLO11 on CPU, evaluate, draw",
                       description="The end-to-end demo behind 'make demo': downloads the NEON tree-crown data "
                                   "(once), trains a YOLO11 on tiles of one image for a few minutes, evaluates "
                                   "on a held-out image 13 km away, prints a table and writes pictures.")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    p.add_argument("--scale", default=None, help="override the demo's model scale")
    p.add_argument("--assigner", default=None, help=ASSIGNER_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------- commands


def _names(text: Optional[str]) -> Optional[List[str]]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _load_config_file(path: str) -> dict:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def cmd_train(args) -> int:
    from .yolo.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = _load_config_file(args.config) if args.config else {}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise SystemExit(f"{args.config}: unknown TrainConfig field(s) {unknown}")
    cli = {"data": args.data, "data_format": args.data_format, "val_data": args.val_data,
           "class_names": _names(args.names), "scale": args.scale, "epochs": args.epochs, "batch": args.batch,
           "nominal_batch": args.nominal_batch, "img_size": args.img_size, "crop": args.crop,
           "optimizer": args.optimizer, "lr0": args.lr0, "lrf": args.lrf, "cos_lr": args.cos_lr,
           "warmup_epochs": args.warmup_epochs, "ema_tau": args.ema_tau, "assigner": args.assigner,
           "weights": args.weights, "augment": args.augment, "rot90": args.rot90, "max_steps": args.max_steps,
           "device": args.device, "workers": args.workers, "seed": args.seed, "out_dir": args.out,
           "resume": args.resume}
    values.update({k: v for k, v in cli.items() if v is not None})
    if hasattr(args, "val_img_size"):
        values["val_img_size"] = args.val_img_size
    if args.quiet:
        values["progress"] = False
    try:
        result = train(TrainConfig(**values))
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # started by train() under torchrun
            dist.destroy_process_group()
    if result.metrics:
        _print_table({"mAP50": result.metrics.get("map50", 0.0), "mAP50-95": result.metrics.get("map", 0.0)},
                     title=f"validation after {result.epochs_run} epoch(s), {result.seconds:.0f} s")
    if result.best or result.last:
        print(f"checkpoints: {result.best or '-'} (best), {result.last or '-'} (last)")
    return 0


def _print_table(metrics: dict, title: str = "") -> None:
    if title:
        print(title)
    width = max(len(k) for k in metrics)
    print(f"  {'metric':<{width}}  value")
    print(f"  {'-' * width}  ------")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def _device(text: str):
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(text)


def _eval_set(args, ckpt_config: dict):
    """The dataset ``val`` evaluates: --data, else the checkpoint's validation data, else NEON val."""
    from .data import read_dataset
    from .data.neon import load_neon

    if args.data is not None and args.data.lower() != "neon":
        return read_dataset(args.data, args.data_format, _names(args.names), split=args.split), False
    if args.data is None and ckpt_config.get("data") not in (None, "neon"):
        src = ckpt_config.get("val_data") or ckpt_config["data"]
        fmt = ckpt_config.get("data_format")
        return read_dataset(src, fmt, ckpt_config.get("class_names"), split="val"), False
    return load_neon("val"), True


def cmd_val(args) -> int:
    import torch

    from .data import DetectionDataset, EvalTransform, collate
    from .yolo.train import model_from_checkpoint, resolve_val_size, validate

    device = _device(args.device)
    model, class_names, ckpt = model_from_checkpoint(args.checkpoint)
    model.to(device)
    data, is_neon = _eval_set(args, ckpt.get("config", {}))
    if hasattr(args, "img_size"):
        size = args.img_size
    else:
        saved = ckpt.get("config", {})
        size = resolve_val_size(saved.get("val_img_size", "auto"), saved.get("img_size", 640), is_neon)
    loader = torch.utils.data.DataLoader(DetectionDataset(data, EvalTransform(size)), batch_size=1,
                                         collate_fn=collate)
    metrics = validate(model, loader, device, args.conf, args.iou, args.max_det, progress=True)
    shown = {"images": len(data), "boxes": data.num_boxes, "input": "native" if size is None else str(size),
             "mAP50": metrics.get("map50", 0.0), "mAP50-95": metrics.get("map", 0.0)}
    for key in ("map75", "map_small", "map_medium", "map_large", "mar_300", "mar"):
        if key in metrics:
            shown[key] = metrics[key]
    _print_table(shown, title=f"{args.checkpoint} on {data.source or 'dataset'} (maxDets {max(args.max_det, 300)})")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args) -> int:
    import torch

    from .data.readers import iter_image_files, load_image
    from .data.transforms import EvalTransform
    from .viz import save_overlay
    from .yolo.predict import nms
    from .yolo.train import model_from_checkpoint

    device = _device(args.device)
    model, class_names, _ = model_from_checkpoint(args.checkpoint)
    model.to(device).eval()
    files = list(iter_image_files(args.source))
    if not files:
        raise SystemExit(f"{args.source}: no images found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    transform = EvalTransform(args.img_size)
    results, images = [], []
    for image_id, path in enumerate(files):
        import numpy as np

        image = load_image(str(path))
        net, _, _, info = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        x = torch.from_numpy(net.transpose(2, 0, 1).copy())[None].to(device).float() / 255
        with torch.no_grad():
            det = nms(model(x), args.conf, args.iou, args.max_det)[0].cpu()
        boxes = info.to_original(det[:, :4])
        for b, s, c in zip(boxes.tolist(), det[:, 4].tolist(), det[:, 5].long().tolist()):
            results.append({"image_id": image_id, "category_id": c, "score": round(s, 5),
                            "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)]})
        images.append({"id": image_id, "file_name": str(path), "width": image.shape[1], "height": image.shape[0]})
        save_overlay(image, out / f"{path.stem}_pred.png", boxes, det[:, 4], conf=args.conf)
        print(f"{path}: {len(det)} detection(s)")
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps({"images": images, "categories": [
        {"id": i, "name": n} for i, n in enumerate(class_names)]}, indent=1))
    print(f"wrote {out / 'predictions.json'} ({len(results)} boxes) and {len(files)} overlay(s) to {out}")
    return 0


def _show_record(args):
    from .data import read_dataset
    from .data.neon import load_neon

    if args.data is None or args.data.lower() == "neon":
        data = load_neon("train")
    else:
        data = read_dataset(args.data, args.data_format, _names(args.names))
    if not 0 <= args.index < len(data):
        raise SystemExit(f"--index {args.index} is out of range: the dataset has {len(data)} images")
    return data, data.records[args.index]


def cmd_show(args) -> int:
    import numpy as np
    import torch

    from .data.readers import load_image
    from .data.transforms import EvalTransform
    from .viz import assignment_figure, compute_assignment
    from .yolo.train import build_model, model_from_checkpoint, resolve_assigner

    data, rec = _show_record(args)
    image = load_image(rec.image)
    net, boxes, labels, _ = EvalTransform(args.img_size)(image, rec.boxes, rec.labels)
    if args.weights:
        model, _, _ = model_from_checkpoint(args.weights)
        source = f"model {args.weights}"
    else:
        torch.manual_seed(0)
        model = build_model(args.scale, data.num_classes)
        source = f"untrained YOLO11-{args.scale}"
    x = torch.from_numpy(net.transpose(2, 0, 1).copy())[None].float() / 255
    cfg = resolve_assigner(args.assigner) or resolve_assigner("tal")
    result = compute_assignment(cfg, torch.from_numpy(boxes), torch.from_numpy(labels), net.shape[:2],
                                data.num_classes, model=model, image=x,
                                strides=[int(s) for s in model.stride.tolist()])
    path = assignment_figure(net, boxes, result, args.out,
                             title=f"{cfg['type']} on {rec.name} ({source})")
    per_gt = np.bincount(result["gt_inds"][result["gt_inds"] > 0].numpy() - 1, minlength=len(boxes))
    print(f"{cfg['type']}: {int((result['gt_inds'] > 0).sum())} positives for {len(boxes)} GTs "
          f"(per GT min {per_gt.min() if len(per_gt) else 0}, max {per_gt.max() if len(per_gt) else 0}); wrote {path}")
    return 0


def cmd_iou_figure(args) -> int:
    from .viz import iou_figure

    print(f"wrote {iou_figure(args.out, span=args.span)}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, scale=args.scale, assigner=args.assigner, device=args.device,
             progress=not args.quiet)
    return 0


COMMANDS = {"train": cmd_train, "val": cmd_val, "predict": cmd_predict, "show": cmd_show,
            "iou-figure": cmd_iou_figure, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        from .data.readers import DatasetFormatError

        if isinstance(err, (DatasetFormatError, FileNotFoundError)) or "Could not obtain" in str(err):
            print(f"detassign {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise
