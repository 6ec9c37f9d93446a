"""``memseg data synth|realistic|download|check``: make, fetch and verify MVTec-layout datasets."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DESCRIPTION = """\
Datasets in the MVTec AD layout (<root>/<category>/train/good, test/<defect>, ground_truth/<defect>).

  synth      generate a synthetic dataset under the 15 MVTec category names (demos, CI, tests)
  realistic  generate the realistic benchmark: real surface photographs with independently drawn defects
  download   fetch the real MVTec AD (or DTD textures): resumable, checksum-verified, unpacked, checked
  check      list every layout problem of a dataset root (missing masks, corrupt PNGs, size mismatches)
"""

SYNTH_EPILOG = """\
Normal images vary like a production line (position, rotation, lighting, sensor noise); test defects
(scratch, hole, stain, color, missing/misplaced parts) are made by other processes than MemSeg's
training-time synthesis. grid, screw and zipper are written as grayscale PNGs like the real ones.

example:
  memseg data synth --out data/synthetic --size 128
  memseg data synth --out data/small --size 64 --categories carpet bottle --n-train 24
"""

REALISTIC_EPILOG = """\
Normal images are crops of CC0/public-domain photographs shipped inside scikit-image's wheel (no
download): brick, grass, gravel (grayscale), wood_table and tissue (colour); normal variation by crop,
scale, small rotation, flips and camera drift. Test defects (crack, scratch, stain, pitting, cut_paste,
warp; four types per category) are drawn by processes independent of MemSeg's training synthesis, and
their masks are the defects' footprints. benchmark.json beside the categories records the photos
(licence, SHA-256), seed, size, counts and a SHA-256 of every category. Needs the bench-data extra:
pip install 'memseg[bench-data]'.

example:
  memseg data realistic --out data/realistic --size 128
  memseg data realistic --out data/realistic_s1 --categories brick gravel --seed 1
"""

DOWNLOAD_EPILOG = """\
The official URLs and SHA-256 sums are built in (memseg/data/download.py). An interrupted download
resumes when run again; the archive is checked, unpacked and (MVTec) every image decoded.

example:
  memseg data download mvtec --to data/mvtec        # ~4.9 GB
  memseg data download dtd --to data/dtd            # then --set data.dtd_root=<printed path>
  memseg data download mvtec --to /tmp/m --url file:///mnt/mvtec_anomaly_detection.tar.xz
"""

CHECK_EPILOG = """\
Exits 1 and prints one line per problem (each naming the file) when the layout is broken; otherwise
prints one summary line per category and exits 0.

example:
  memseg data check --root data/mvtec
  memseg data check --root data/synthetic --categories bottle carpet --no-decode
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="generate, download or check MVTec-layout datasets", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)

    synth = sub.add_parser(
        "synth", help="generate a synthetic MVTec-layout dataset", epilog=SYNTH_EPILOG,
        description="Generate a synthetic dataset in the MVTec AD layout under the 15 official category names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_generator_args(synth, categories="all 15", n_test_defect=12)
    synth.set_defaults(handler=_synth)

    realistic = sub.add_parser(
        "realistic", help="generate the realistic benchmark (surface photos, independent defects)",
        epilog=REALISTIC_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate the realistic benchmark in the MVTec AD layout: crops of real surface photographs "
        "as normal images, defects drawn independently of the training synthesis.",
    )
    _add_generator_args(realistic, categories="all five", n_test_defect=16)
    realistic.set_defaults(handler=_realistic)

    download = sub.add_parser(
        "download", help="download MVTec AD or DTD", epilog=DOWNLOAD_EPILOG,
        description="Download, verify, unpack and check MVTec AD or the DTD textures.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("dataset", choices=("mvtec", "dtd"), help="which dataset")
    download.add_argument("--to", required=True, metavar="DIR", help="folder to unpack into")
    download.add_argument("--url", help="archive URL (http, https or file://); default: the official one")
    download.add_argument(
        "--sha256", help="expected SHA-256 of the archive; default: the official one, or none with a custom --url"
    )
    download.add_argument("--no-checksum", action="store_true", help="skip the checksum")
    download.add_argument(
        "--categories", nargs="+", metavar="NAME",
        help="mvtec: the categories the archive must hold (default: all 15; e.g. a per-category archive)",
    )
    download.add_argument("--keep-archive", action="store_true", help="keep the archive after unpacking")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(handler=_download)

    check = sub.add_parser(
        "check", help="check a dataset's MVTec layout", epilog=CHECK_EPILOG,
        description="Check an MVTec-layout dataset root and list every problem.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--root", required=True, metavar="DIR", help="dataset root")
    check.add_argument("--categories", nargs="+", metavar="NAME", help="categories that must exist "
                       "(default: every folder under --root)")
    check.add_argument("--no-decode", action="store_true", help="only folders and file names, decode no image")
    check.set_defaults(handler=_check)


def _add_generator_args(parser: argparse.ArgumentParser, *, categories: str, n_test_defect: int) -> None:
    """The flags of the dataset generators (`synth`, `realistic`), read by :func:`_generate`."""
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset root to write")
    parser.add_argument("--size", type=int, default=128, metavar="PX", help="square image size (default 128)")
    parser.add_argument("--categories", nargs="+", metavar="NAME", help=f"subset of categories (default: {categories})")
    parser.add_argument("--n-train", type=int, default=40, metavar="N", help="train/good per category (default 40)")
    parser.add_argument("--n-test-good", type=int, default=8, metavar="N", help="test/good per category (default 8)")
    parser.add_argument(
        "--n-test-defect", type=int, default=n_test_defect, metavar="N",
        help=f"defective test images per category, dealt over its defect types (default {n_test_defect})",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files byte for byte (default 0)")


def _synth(args: argparse.Namespace) -> int:
    from memseg.data import synthetic_mvtec

    root, categories, seconds = _generate(synthetic_mvtec.generate_dataset, synthetic_mvtec.CATEGORIES, args)
    print(f"wrote {len(categories)} categories ({args.size} px, seed {args.seed}) to {root} in {seconds:.1f} s")
    return 0


def _realistic(args: argparse.Namespace) -> int:
    from memseg.data import surface_photos

    root, categories, seconds = _generate(surface_photos.generate_dataset, surface_photos.CATEGORIES, args)
    print(f"wrote {len(categories)} realistic categories ({args.size} px, seed {args.seed}) to {root} "
          f"in {seconds:.1f} s; sources, licences and checksums in {root / surface_photos.METADATA_FILE}")
    return 0


def _generate(
    generate: Callable[..., Path], all_categories: Sequence[str], args: argparse.Namespace
) -> tuple[Path, list[str], float]:
    """Run a dataset generator on the flags both `synth` and `realistic` take."""
    categories = args.categories or list(all_categories)
    start = time.perf_counter()
    root = generate(
        args.out, size=args.size, categories=categories, n_train=args.n_train, n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect, seed=args.seed,
    )
    return root, categories, time.perf_counter() - start


def _download(args: argparse.Namespace) -> int:
    from memseg.data import download as dl
    from memseg.data.categories import CATEGORIES

    official_url = dl.MVTEC_URL if args.dataset == "mvtec" else dl.DTD_URL
    official_sha = dl.MVTEC_SHA256 if args.dataset == "mvtec" else dl.DTD_SHA256
    url = args.url or official_url
    if args.no_checksum:
        sha256 = None
    elif args.sha256:
        sha256 = args.sha256
    else:
        sha256 = official_sha if url == official_url else None
    common = {"url": url, "sha256": sha256, "keep_archive": args.keep_archive, "progress": not args.no_progress}
    if args.dataset == "mvtec":
        root = dl.download_mvtec(args.to, categories=args.categories or CATEGORIES, **common)
        print(f"MVTec AD ready at {root} (use --set data.root={root})")
    else:
        root = dl.download_dtd(args.to, **common)
        print(f"DTD ready at {root} (use --set data.dtd_root={root})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from memseg.data.mvtec import check_layout, list_category

    problems = check_layout(args.root, args.categories, decode=not args.no_decode)
    if problems:
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s) in {args.root}")
        return 1
    names = args.categories or sorted(
        p.name for p in Path(args.root).iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    for name in names:
        files = list_category(args.root, name)
        n_good = sum(1 for s in files.test if s.label == 0)
        print(f"{name}: train {len(files.train)}, test good {n_good}, test defect {len(files.test) - n_good} "
              f"({', '.join(files.defect_types) or 'no defect types'})")
    return 0
