"""``memseg predict``: anomaly maps, heat-map overlays and image scores for image files and folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.commands._common import add_model_args, checkpoint_file

if TYPE_CHECKING:
    from torch import nn

    from memseg.config import MemSegConfig
    from memseg.export.runtime import ExportedAnomalyModel
    from memseg.export.torch_adapter import OnnxBackedModel

DESCRIPTION = """\
Score images with a trained MemSeg checkpoint (a file or folder, or a registered model version
models:/<name>@<alias> / models:/<name>/<version>) and write, per image, into --out:
  <name>_map.png       the anomaly map at the image's own size, 16-bit grayscale (value / 65535 = score)
  <name>_overlay.png   the image with a JET heat map on a fixed [0, 1] scale (a clean image stays clean)
  <name>_panel.png     with --panels: labelled image | anomaly map | overlay and a colour bar, stretched
                       to the map's own range, which is printed on it
and one scores.csv (path, name, score[, is_anomalous]). The image score is the mean of the
eval.top_k highest pixels, computed at the model's input size (data.image_size), as in evaluation.

Folders are searched recursively (png, jpg, jpeg, bmp, tif, tiff); a file found in a folder is named
by its relative path (good/000.png -> good__000). Inputs are checked before the model is loaded:
an input that does not exist, or no image file at all, fails the command at once. Unreadable
images are reported (one line each) and skipped; the command fails when none could be read.
"""

EPILOG = """\
Examples:
  memseg predict --checkpoint runs/train/best_model.pt data/mvtec/bottle/test --out predictions/
  memseg predict --checkpoint runs/train photo1.png photo2.jpg --out out/ --threshold 0.35
  memseg predict --checkpoint models:/memseg-mvtec-bottle@champion data/new --out out/
  memseg predict --backend openvino --checkpoint export/model_int8.onnx data/new --out out/

--threshold T adds is_anomalous = (score >= T) to scores.csv. Choose T on validation data, never on
the images you want to judge: `memseg evaluate --checkpoint PATH --split val` prints the threshold
of the best image F1 there.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="anomaly maps, overlays and scores for images",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--threshold", type=float, metavar="T", help="mark images with score >= T as anomalous")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (eval.batch_size)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: $MEMSEG_NUM_THREADS)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="fp32 (default, as evaluation) or bf16: bfloat16 autocast of the trainable head, ~1.7x faster "
        "on CPUs with AVX512-BF16/AMX and on GPUs; scores move by a few 1e-3",
    )
    parser.add_argument(
        "--backend", choices=("torch", "onnx", "openvino"), default="torch",
        help="torch (default), onnx (onnxruntime) or openvino, both on the CPU: they run --checkpoint if it is an "
        ".onnx file from `memseg export` (fp32 or INT8; openvino also its .xml IR), else the checkpoint is "
        "exported first (same files; see docs/export.md)",
    )
    parser.add_argument(
        "--panels", action="store_true",
        help="also write <name>_panel.png, a labelled panel to look at (a few hundred KB per image)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from memseg.errors import MemSegError
    from memseg.inference import collect_images, load_checkpoint, predict_paths
    from memseg.training import resolve_device
    from memseg.training.seeding import set_num_threads

    collect_images(args.inputs, exclude=Path(args.out))  # a missing input fails before the model loads
    set_num_threads(args.threads)
    device = resolve_device(args.device)
    model: nn.Module
    if args.backend != "torch":
        if args.precision != "fp32":
            msg = (
                f"--precision {args.precision} is a torch setting; --backend {args.backend} runs the exported graph "
                "as it is (export with --int8 for a lower precision)"
            )
            raise MemSegError(msg)
        model, cfg = _onnx_model(args)
        device = resolve_device("cpu")
    else:
        with checkpoint_file(args) as (checkpoint, _):
            model, cfg = load_checkpoint(checkpoint, device)
    if args.batch_size:
        cfg = cfg.with_overrides({"eval.batch_size": args.batch_size})
    report = predict_paths(
        model, cfg, args.inputs, args.out, threshold=args.threshold, device=device, precision=args.precision,
        panels=args.panels,
    )
    for path, reason in report.skipped:
        # read errors name their file already; a path printed twice reads as two files
        print(f"skipped {reason}" if str(path) in reason else f"skipped {path}: {reason}")
    if not report.scores:
        msg = f"none of the {len(report.skipped)} image(s) could be read"
        raise MemSegError(msg)
    flagged = ""
    if args.threshold is not None:
        n = sum(score >= args.threshold for _, score in report.scores)
        flagged = f", {n} at or above threshold {args.threshold}"
    print(f"{len(report.scores)} image(s) scored{flagged}; maps, overlays and {report.scores_csv} in {report.out_dir}")
    print("highest scores:")
    for path, score in sorted(report.scores, key=lambda item: -item[1])[:5]:
        print(f"  {score:.4f}  {path}")
    return 0


def _open_graph(backend: str, path: str | Path, threads: int | None) -> ExportedAnomalyModel:
    from memseg.export.runtime import OnnxAnomalyModel

    if backend == "onnx":
        return OnnxAnomalyModel(path, threads=threads)
    from memseg.export.openvino_runtime import OpenVinoAnomalyModel

    return OpenVinoAnomalyModel(path, threads=threads)


def _onnx_model(args: argparse.Namespace) -> tuple[OnnxBackedModel, MemSegConfig]:
    """The exported graph --checkpoint names (an .onnx file), or one exported from the checkpoint now,
    opened in the --backend runtime."""
    import tempfile

    from memseg.export.onnx_graph import export_onnx
    from memseg.export.torch_adapter import OnnxBackedModel
    from memseg.inference import load_checkpoint

    if args.checkpoint.endswith((".onnx", ".xml")):  # .xml: OpenVINO IR from `memseg export --openvino`
        runtime = _open_graph(args.backend, args.checkpoint, args.threads)
    else:
        with checkpoint_file(args) as (checkpoint, label), tempfile.TemporaryDirectory(prefix="memseg-onnx-") as tmp:
            model, cfg = load_checkpoint(checkpoint)
            path = export_onnx(model, cfg, Path(tmp) / "model.onnx", source=label)
            runtime = _open_graph(args.backend, path, args.threads)  # the runtime holds the graph in memory
    return OnnxBackedModel(runtime), runtime.config
