"""The markdown tables of bench/README.md, from the result files (so the README shows what the JSON says).

    python bench/tables.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.targets import rows_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def spread(s: dict, digits: int = 1) -> str:
    if len(s["values"]) == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def size_flag(size: dict) -> str:
    """The command-line flag of a bench size: none for the full size."""
    return "" if size["name"] == "full" else f" --{size['name']}"


def data_flag(data: dict) -> str:
    """The --data-root of a run on other data than the default Fruits-360 subset."""
    root = Path(data.get("data_root", "fruits360-10"))
    return "" if root.name == "fruits360-10" else f" --data-root .../{root.name}"


def machine(data: dict) -> str:
    """The machine as the file records it, with the 1-minute load average taken when the bench finished."""
    m = data["machine"]
    load = m.get("load_average_1min")
    return (f"{m['cpus']} CPUs ({m['cpu_model']}, {m.get('cpu_capability', '?')}), torch {m['torch']}, "
            f"{m['date']}, " + (f"load average {load} at the end" if load is not None else "load not recorded"))


def verdicts(name: str, data: dict) -> str:
    """The file's targets as bench/targets.py judges them."""
    judged = [f"{target}: {result}" for _, _, target, _, result, *_ in rows_of(name, data) if result != "-"]
    return "; ".join(judged) or "none set for this size"


def samples(data: dict) -> str:
    counts = data["num_samples"]
    if not isinstance(counts, dict):
        return str(counts)
    return " / ".join(f"{count} {split}" for split, count in counts.items()) + " images"


def train_table(data: dict) -> str:
    names = {"hf": "HF Trainer (tutorial: map up front, 0 workers)",
             "hf_tuned": "HF Trainer, tuned (with_transform, 2 workers)",
             "bare": "bare timm loop", "vitcls": "vitcls `train.py`",
             "vitcls_compile": "vitcls, `model.compile=true`"}
    size, work, stats = data["size"], data["same_work"], data["stats"]
    lines = [
        f"`python bench/training_speed.py{size_flag(size)}{' --compile' if 'vitcls_compile' in stats else ''}`: "
        f"{data['rounds']} interleaved rounds, median (min-max); every variant: {work['params']:,} parameters, "
        f"{work['train_measured_images']} training images timed after {size['warmup_steps']} warm-up steps, "
        f"{work['eval_measured_images']} evaluation images timed after the first batch, batch {work['batch_size']}, "
        f"{work['precision']}, {work['img_size']} px. {machine(data)}.",
        "",
        "| variant | train img/s | eval img/s | peak memory, whole run (PSS) | peak memory, training phase |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in stats.items():
        lines.append(f"| {names.get(name, name)} | {spread(s['train_ips'])} | {spread(s['eval_ips'])} | "
                     f"{s['peak_mem_mb']['median']:.0f} MB | {s['train_peak_mem_mb']['median']:.0f} MB |")
    lines += [
        "",
        f"On the medians: vitcls / HF tutorial **{data['vitcls_vs_hf']:.2f}x**, vitcls / HF tuned "
        f"**{data['vitcls_vs_hf_tuned']:.2f}x**, vitcls / bare loop **{data['vitcls_vs_bare']:.2f}x**; evaluation "
        f"vitcls / HF tutorial {data['vitcls_eval_vs_hf']:.2f}x, / HF tuned {data['vitcls_eval_vs_hf_tuned']:.2f}x, "
        f"/ bare {data['vitcls_eval_vs_bare']:.2f}x. HF's preprocessing pass (tutorial row): "
        f"{data['hf_preprocess_s']:.1f} s, {data['hf_preprocess_peak_mem_mb']:.0f} MB peak, "
        f"{data['hf_preprocess_cache_mb']:.0f} MB Arrow cache. Matmul peak {data['matmul_peak_gflops']:.0f} GFLOP/s; "
        f"FLOP utilisation vitcls {data['vitcls_flops_utilisation']:.0%}, bare {data['bare_flops_utilisation']:.0%}.",
    ]
    if "vitcls_compile_ips" in data:
        lines[-1] += (f" Compiled: training {data['vitcls_compile_vs_vitcls']:.2f}x eager vitcls, evaluation "
                      f"{data['vitcls_compile_eval_vs_vitcls']:.2f}x.")
    return "\n".join(lines)


def precision_table(data: dict) -> str:
    train, predict = data["train"], data["predict"]
    lines = [
        f"`python bench/precision.py{size_flag(data['size'])}`: {machine(data)}. Preset here: "
        f"**{data['preset']}** ({data['preset_reason']}); Predictor `dtype=\"auto\"`: {data['predictor_auto_dtype']}.",
        "",
        "| measurement | fp32 | bf16 | bf16 / fp32 |",
        "| --- | ---: | ---: | ---: |",
        f"| {data['matmul_n']}² matmul, GFLOP/s | {data['matmul_fp32_gflops']:.1f} | {data['matmul_bf16_gflops']:.1f} | "
        f"{data['matmul_bf16_gflops'] / data['matmul_fp32_gflops']:.2f}x |",
        f"| vitcls training, img/s (224 px, batch 16) | {spread(train['vitcls_fp32'])} | {spread(train['vitcls_bf16'])} | "
        f"{data['train_bf16_ips'] / data['train_fp32_ips']:.2f}x |",
        f"| bare loop training, img/s | {spread(train['bare_fp32'])} | | |",
        f"| Predictor, img/s (224 px, batch {data['size']['predict_batch_size']}) | {spread(predict['fp32'])} | "
        f"{spread(predict['bf16'])} | {data['predict_bf16_ips'] / data['predict_fp32_ips']:.2f}x |",
        f"| test acc, train.py ({data['size']['quality_img_size']} px, {data['size']['quality_epochs']} epochs, "
        f"same seed) | {data['acc_fp32']:.4f} | {data['acc_bf16']:.4f} | {data['acc_bf16'] - data['acc_fp32']:+.4f} |",
        "",
        f"Top-1 agreement of the fp32-trained model's Predictor in bfloat16 and float32: "
        f"**{data['top1_agreement']:.4f}** on {data['num_images']} test images. Targets: "
        + ", ".join(f"{k} {data['measured'][k]:.3f} ({'met' if data['met'][k] else 'not met'})" for k in data["met"])
        + f". {data['note']}",
    ]
    return "\n".join(lines)


def prefix_table(data: dict) -> str:
    size, wall = data["size"], data["wall_s"]
    lines = [
        f"`python bench/prefix_cache.py{size_flag(size)}{data_flag(data)}`: ViT-Tiny/16 at {size['img_size']} px, "
        f"`model.train_blocks={size['train_blocks']}`, {size['epochs']} epochs, {samples(data)}; "
        f"{machine(data)}.",
        "",
        "| run | wall s, median (min-max) | speed-up |",
        "| --- | ---: | ---: |",
        f"| uncached | {spread(wall['uncached'])} | 1.00x |",
        f"| cached, filling the cache (first job) | {spread(wall['cold'])} | {data['speedup_including_fill']:.2f}x |",
        f"| cached (every later job) | {spread(wall['warm'])} | **{data['speedup']:.2f}x** |",
        "",
        f"Tokens on disk: {data['disk_mb']:.1f} MB ({data['disk_mb_per_image'] * 1024:.0f} KB per image, bfloat16). "
        + test_differences(data)
        + f" Targets: {verdicts('prefix_cache', data)}.",
        "",
        "| step (mean s per run) | uncached | cached, filling | cached |",
        "| --- | ---: | ---: | ---: |",
    ]
    phases = data["phases_mean_s"]
    for step in sorted(phases["uncached"], key=lambda k: -phases["uncached"][k]):
        lines.append(f"| {step} | " + " | ".join(f"{phases[k].get(step, 0.0):.2f}" for k in ("uncached", "cold", "warm"))
                     + " |")
    return "\n".join(lines)


def test_differences(data: dict) -> str:
    """The test metrics of the uncached run and how far the cached runs (and repeated uncached runs) are from them."""
    differences = data.get("test_metric_differences")
    if differences is None:  # written before the per-metric differences
        return f"Largest test-metric difference cached vs uncached: {data['max_test_metric_difference']:.2g}."

    def listed(values: dict) -> str:
        return ", ".join(f"{metric} {values[metric]:.2g}" for metric in ("acc", "f1_macro", "loss") if metric in values)

    return (f"On `{Path(data['data_root']).name}`, test metrics of the uncached run: "
            f"{listed(data['test']['uncached'][0])}; largest difference of a cached run: "
            f"{listed(differences['cached_vs_uncached'])}; of a repeated uncached run: "
            f"{listed(differences['uncached_repeats']) or 'none (one round)'}.")


def head_sweep_table(data: dict) -> str:
    size = data["size"]
    lines = [
        f"`python bench/head_sweep.py{size_flag(size)}`: {size['runs']} heads x {size['epochs']} epochs, "
        f"{samples(data)}, decode-check memo on both sides; {machine(data)}.",
        "",
        "| sweep | wall s | speed-up |",
        "| --- | ---: | ---: |",
        f"| uncached | {data['uncached_s']:.1f} | 1.0x |",
        f"| feature cache (from empty) | {data['cached_s']:.1f} | **{data['speedup']:.1f}x** |",
        "",
        "| step (mean s per run) | uncached | cached, first run | cached, later runs |",
        "| --- | ---: | ---: | ---: |",
    ]
    phases = data["phases_mean_s"]
    for step in sorted(phases["uncached"], key=lambda k: -phases["uncached"][k]):
        lines.append(f"| {step} | " + " | ".join(f"{phases[k].get(step, 0.0):.2f}" for k in phases) + " |")
    return "\n".join(lines)


TABLES = {"train": train_table, "precision": precision_table, "prefix_cache": prefix_table,
          "head_sweep": head_sweep_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for name, table in TABLES.items():
        path = args.results / f"{name}.json"
        if path.is_file():
            try:
                print(f"### {name} ({path.name})\n\n{table(json.loads(path.read_text()))}\n")
            except KeyError as missing:
                print(f"### {name} ({path.name})\n\nwritten by an older version of the bench (no {missing}): rerun it\n")


if __name__ == "__main__":
    main()
