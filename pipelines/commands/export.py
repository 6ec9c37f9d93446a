"""``memseg export``: a checkpoint or registered model version as ONNX files (fp32, and INT8 behind a gate)."""

from __future__ import annotations

import argparse
import json

from pipelines.commands._common import add_model_args, checkpoint_file

DESCRIPTION = """\
Export a trained MemSeg (a checkpoint file or folder, or models:/<name>@<alias> / models:/<name>/<version>)
to ONNX. The graph is the whole model: float32 (B, 3, H, W) RGB in [0, 1] at the trained size in,
the anomaly map (B, H, W) out, exactly MemSeg.anomaly_map (memory bank and map blur inside). Writes
into --out:
  model_fp32.onnx   always
  model_int8.onnx   with --int8, only if it passes the accuracy gate
  model_*.xml/.bin  with --openvino: OpenVINO IR copies (the INT8 one gated on its own figures)
With --int8 the convolutions are quantised to INT8 (the memory comparison stays float32), calibrated
on the category's normal training images; the INT8 graph's validation pixel AUROC and AUPRO may drop
at most --margin from the fp32 graph's, else it is refused and the command says by how much it
missed (exit status 0: the fp32 export stands). The dataset is read from the checkpoint's data.root
(--data-root if it moved). See docs/export.md.
"""

EPILOG = """\
Examples:
  memseg export --checkpoint runs/train --out export/
  memseg export --checkpoint models:/memseg-mvtec-bottle@champion --out export/ --int8 --test --register
  memseg export --checkpoint runs/train --out export/ --int8 --openvino
  memseg predict --backend onnx --checkpoint export/model_fp32.onnx data/new --out out/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="ONNX export (fp32, INT8 behind an accuracy gate)", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 to 23 (default: 18)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="fixed batch size (default: dynamic batch)")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="refuse unless the checkpoint was trained at this size (data.image_size)")
    parser.add_argument("--int8", action="store_true", help="also quantise to INT8, behind the accuracy gate")
    parser.add_argument("--margin", type=float, default=0.005,
                        help="INT8 gate: largest accepted drop of validation pixel AUROC and AUPRO (default: 0.005)")
    parser.add_argument("--calibration-images", type=int, default=32, metavar="N",
                        help="INT8: at most N normal training images calibrate (0 = all; default: 32)")
    parser.add_argument("--data-root", metavar="DIR", help="the dataset root, if it moved since training")
    parser.add_argument("--test", action="store_true", help="INT8: also report test figures (never decide)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch and onnxruntime CPU threads")
    parser.add_argument("--openvino", action="store_true",
                        help="also write OpenVINO IR (.xml + .bin) copies: faster to load, and the INT8 one ran "
                        "about a fifth faster in OpenVINO than its .onnx (docs/export.md)")
    parser.add_argument("--register", action="store_true",
                        help="with a models:/ checkpoint: log the files to the version's run (export/version-N/) "
                        "and tag the version with their locations and the gate's figures")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from memseg.errors import MemSegError
    from memseg.export.release import export_checkpoint
    from memseg.training.seeding import set_num_threads

    if args.register and not args.checkpoint.startswith("models:/"):
        msg = f"--register needs a registered model version (models:/...), not {args.checkpoint}"
        raise MemSegError(msg)
    set_num_threads(args.threads)
    with checkpoint_file(args) as (checkpoint, label):
        report = export_checkpoint(
            checkpoint, args.out, source=label, opset=args.opset, batch_size=args.batch_size,
            image_size=args.image_size, int8=args.int8, margin=args.margin,
            calibration_limit=args.calibration_images, data_root=args.data_root, with_test=args.test,
            threads=args.threads, openvino_ir=args.openvino,
        )
    print(f"fp32: {report.fp32}")
    if report.gate is not None:
        print(report.gate.summary())
        print(f"int8: {report.int8}" if report.int8 else "int8: not written (refused by the gate)")
        print(json.dumps(report.gate.tags(), indent=1, sort_keys=True))
    for note in report.notes:
        print(note)
    for xml in report.openvino:
        print(f"openvino: {xml} (+ {xml.with_suffix('.bin').name})")
    if args.register:
        from pipelines.commands._common import tracking_uri
        from pipelines.export_registry import attach_export

        files = [f for f in (report.fp32, report.int8) if f is not None]
        files += [f for xml in report.openvino for f in (xml, xml.with_suffix(".bin"))]
        tags = attach_export(args.checkpoint, tracking_uri(args.tracking_uri), files, report.gate)
        print(f"registered with {label}: " + ", ".join(
            f"{k}={v}" for k, v in tags.items() if k.startswith(("onnx_", "openvino_"))))
    return 0
