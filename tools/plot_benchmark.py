#!/usr/bin/env python
"""Draw a run of ``tools/benchmark.py --json``.

    python tools/benchmark.py --json run.json
    python tools/plot_benchmark.py run.json -o latency.png

One panel per batch size: every configuration's median latency per image
(fastest at the top), the reference row (the PyTorch model eagerly) in its
own colour with a dashed line at its time, each bar labelled with its time
and its ratio to the reference. The title names the model, the image size,
the CPU and the settings; rows that failed are named under their panel.
"""

import argparse
import json
import sys

REQUIRED = ("model", "image_size", "cpu", "batches", "reference")


class BadRecord(ValueError):
    pass


def load(path):
    """The run written by ``benchmark.py --json``; :class:`BadRecord` names
    what is wrong with anything else."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as error:
        raise BadRecord(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise BadRecord(f"{path} is not JSON ({error.msg}, line {error.lineno})") from None
    missing = [key for key in REQUIRED if key not in data] if isinstance(data, dict) else list(REQUIRED)
    if missing:
        raise BadRecord(f"{path} is not a benchmark.py --json file: it has no {', '.join(missing)}")
    if not data["batches"]:
        raise BadRecord(f"{path} holds no batch of results")
    return data


def plot(data):
    """A matplotlib Figure of the run (no pyplot state is touched)."""
    from matplotlib.figure import Figure

    batches = data["batches"]
    heights = [max(1, sum("median_ms" in row for row in b["rows"])) for b in batches]
    fig = Figure(figsize=(8, 1.2 + 0.32 * sum(heights) + 0.5 * len(batches)))
    axes = fig.subplots(len(batches), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, batch in zip(axes, batches):
        timed = sorted((row for row in batch["rows"] if "median_ms" in row), key=lambda r: -r["ms_per_image"])
        names = [row["name"] for row in timed]
        values = [row["ms_per_image"] for row in timed]
        colours = ["tab:orange" if name == data["reference"] else "tab:blue" for name in names]
        ax.barh(range(len(timed)), values, color=colours)
        ax.set_yticks(range(len(timed)), names, fontsize=8)
        for y, row in enumerate(timed):
            ratio = row.get("ratio_to_reference")
            label = f" {row['ms_per_image']:.1f} ms" + (f"  ({ratio:.2f}x)" if ratio else "")
            ax.text(row["ms_per_image"], y, label, va="center", fontsize=7)
        reference = next((row for row in timed if row["name"] == data["reference"]), None)
        if reference is not None:
            ax.axvline(reference["ms_per_image"], color="tab:orange", ls="--", lw=1)
        ax.set_xlim(0, 1.3 * max(values, default=1.0))
        ax.set_xlabel(f"ms per image, batch {batch['batch']} (median)", fontsize=8)
        failed = [row["name"] for row in batch["rows"] if "median_ms" not in row]
        if failed:
            ax.set_title("failed: " + ", ".join(failed), fontsize=7, loc="left", color="tab:red")
    height, width = data["image_size"]
    settings = f"median of {data.get('repeats', '?')} runs"
    if data.get("rounds", 1) > 1:
        settings += f", {data['rounds']} interleaved rounds"
    fig.suptitle(f"{data['model']} at {height}x{width}, {settings}\n{data['cpu']}", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the file benchmark.py --json wrote")
    parser.add_argument("-o", "--output", default="latency.png", help="image to write (.png, .svg, .pdf)")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    try:
        figure = plot(load(args.run))
    except BadRecord as error:
        print(f"plot_benchmark: error: {error}", file=sys.stderr)
        return 2
    figure.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
