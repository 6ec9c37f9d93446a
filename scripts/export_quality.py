"""fp32 against INT8 on trained models: validation and test figures per runtime, and the gate's verdict.

For each category: train with the learning test's settings (LEARNING in
tests/integration/test_learning.py: 128 px generated data, 300 SGD steps, random frozen backbone),
or reuse ``<work>/runs/<category>`` once its training has finished (or ``--checkpoint``); export fp32,
quantise INT8 as ``memseg export --int8`` does (the same calibration images, the same float32
modules), and score the validation and test splits with torch fp32, onnxruntime fp32 and INT8,
OpenVINO fp32 and INT8 (reading the .onnx files) and OpenVINO INT8 from its IR (``memseg export
--openvino``). The gate is ``memseg export``'s: validation pixel AUROC and AUPRO of onnxruntime
INT8 (and, separately, of the INT8 IR) against onnxruntime fp32, at ``--margin``.

    nice -n 10 python scripts/export_quality.py --categories carpet bottle --work runs/export_quality \\
        [--checkpoint runs/train] [--margin 0.005] [--json results.json]

Prints one markdown table (and the gate verdicts) for docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from learning_settings import learning_settings  # scripts/learning_settings.py

from memseg.config import MemSegConfig
from memseg.data import synthetic_mvtec
from memseg.evaluation import load_split, predict_maps
from memseg.export.gate import DEFAULT_MARGIN, int8_gate
from memseg.export.onnx_graph import export_onnx
from memseg.export.openvino_runtime import OpenVinoAnomalyModel, save_ir
from memseg.export.quantize import quantize_int8
from memseg.export.release import calibration_images, split_figures
from memseg.export.runtime import ExportedAnomalyModel, OnnxAnomalyModel
from memseg.inference import load_checkpoint, resolve_checkpoint_file
from memseg.metrics import compute_metrics, keys
from memseg.training import fit

GENERATED_CATEGORIES = ("carpet", "bottle")  # the learning test's generated categories
SIZE = 128
METRICS = (keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO)
SPLITS = ("val", "test")
RUNTIMES = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
            ("openvino", "int8"), ("openvino IR", "int8"))


def checkpoint_for(category: str, work: Path, given: Path | None) -> Path:
    """The checkpoint to measure: ``given``, else a finished run in ``work``, else one trained now."""
    if given is not None:
        return resolve_checkpoint_file(given)
    out = work / "runs" / category
    if (out / "metrics.json").is_file():  # written when training has finished
        return out / "best_model.pt"
    data_root = work / "data"
    if not all((data_root / c).is_dir() for c in GENERATED_CATEGORIES):
        # the learning test's call: both categories from one seed, so the images are the test's
        synthetic_mvtec.generate_dataset(data_root, size=SIZE, categories=GENERATED_CATEGORIES, seed=0)
    cfg = MemSegConfig().with_overrides(
        {**learning_settings(), "data.root": str(data_root), "data.category": category, "train.output_dir": str(out)}
    )
    started = time.perf_counter()
    fit(cfg, progress=False)
    print(f"{category}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out / "best_model.pt"


def measure(category: str, work: Path, given: Path | None, margin: float, calibration: int) -> dict[str, object]:
    checkpoint = checkpoint_for(category, work, given)
    model, cfg = load_checkpoint(checkpoint)
    export_dir = work / "export" / category
    fp32_file = export_onnx(model, cfg, export_dir / "model_fp32.onnx", source=str(checkpoint))
    int8_file = quantize_int8(fp32_file, export_dir / "model_int8.onnx", calibration_images(cfg, calibration))
    graphs: dict[tuple[str, str], ExportedAnomalyModel] = {
        ("onnxruntime", "fp32"): OnnxAnomalyModel(fp32_file), ("onnxruntime", "int8"): OnnxAnomalyModel(int8_file),
        ("openvino", "fp32"): OpenVinoAnomalyModel(fp32_file), ("openvino", "int8"): OpenVinoAnomalyModel(int8_file),
        ("openvino IR", "int8"): OpenVinoAnomalyModel(save_ir(int8_file, export_dir / "model_int8.xml")),
    }
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for split in SPLITS:
        data = load_split(cfg, split)
        maps = predict_maps(model, data.images, cfg.eval.batch_size, "cpu")
        torch_figures = compute_metrics(
            maps, data.masks, data.labels, None, top_k=cfg.eval.top_k, fpr_limit=cfg.eval.aupro_fpr_limit
        )
        figures.setdefault("torch fp32", {})[split] = {k: torch_figures[k] for k in METRICS}
        for (runtime, precision), graph in graphs.items():
            measured = split_figures(graph, cfg, split)
            figures.setdefault(f"{runtime} {precision}", {})[split] = {k: measured[k] for k in METRICS}
    ort_fp32, ort_int8 = figures["onnxruntime fp32"], figures["onnxruntime int8"]
    gate = int8_gate(ort_fp32["val"], ort_int8["val"], margin, test_fp32=ort_fp32["test"], test_int8=ort_int8["test"])
    ir_gate = int8_gate(ort_fp32["val"], figures["openvino IR int8"]["val"], margin)
    return {"category": category, "checkpoint": str(checkpoint), "figures": figures, "gate": gate.summary(),
            "gate_passed": gate.passed, "ir_gate": ir_gate.summary(), "ir_gate_passed": ir_gate.passed}


def table(rows: list[dict[str, object]]) -> str:
    heads = " | ".join(f"{split} {name}" for split in SPLITS for name in ("image AUROC", "pixel AUROC", "AUPRO"))
    lines = [f"| category | runtime | {heads} |", "|---|---|" + "---|" * (len(SPLITS) * len(METRICS))]
    for row in rows:
        figures = row["figures"]
        assert isinstance(figures, dict)
        for runtime, precision in RUNTIMES:
            by_split = figures[f"{runtime} {precision}"]
            cells = " | ".join(f"{by_split[split][k]:.4f}" for split in SPLITS for k in METRICS)
            lines.append(f"| {row['category']} | {runtime} {precision} | {cells} |")
    lines.append("")
    lines += [f"- {row['category']}: {row['gate']}; OpenVINO IR: {row['ir_gate']}" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=list(GENERATED_CATEGORIES), choices=GENERATED_CATEGORIES)
    parser.add_argument("--work", type=Path, default=Path("runs/export_quality"), help="data, runs and exports")
    parser.add_argument("--checkpoint", type=Path, help="measure this checkpoint instead (one category)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="the INT8 gate's margin")
    parser.add_argument("--calibration-images", type=int, default=32, help="as memseg export (0 = all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and len(args.categories) != 1:
        parser.error("--checkpoint measures one model: give exactly one --categories")
    rows = [measure(c, args.work, args.checkpoint, args.margin, args.calibration_images) for c in args.categories]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
