#!/usr/bin/env bash
# GPU readiness in one go: the CUDA tests, then timings on the device of an ECN ResNet-50 AMP run, StarGAN,
# the kNN search and the Market-sized evaluation. Prints ONE JSON line on stdout (progress goes to stderr).
#
#   bash bench/gpu_check.sh            # from the repo root; PY=python3 picks another interpreter
#
# Every part runs under `timeout` and within a total budget (GPU_CHECK_BUDGET_S, default 420 s), so the whole
# check ends within 8 minutes; a failed, timed-out or skipped part is recorded in the JSON and the others
# still run. Exit status: 0 when every part succeeded (or there is no CUDA device), 1 otherwise.
# GPU_CHECK_LOGS=DIR keeps each part's stdout/stderr there (default: a temporary folder, removed).
# Sizes can be overridden for a dry run, e.g. GPU_CHECK_DEVICE=cpu ECN_ARCH=resnet18 ECN_ITERS=2 ...
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
if [[ $PY == .venv/bin/python && ! -x $PY ]]; then
    PY=python3
fi
DEVICE=${GPU_CHECK_DEVICE:-cuda}

# A machine without CUDA has nothing to check: one line, success.
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is not true for $PY); nothing to check"
    exit 0
fi

BUDGET=${GPU_CHECK_BUDGET_S:-420}
MIN_PART_S=20 # a part that cannot get this long is skipped rather than started
ECN_ARCH=${ECN_ARCH:-resnet50}
ECN_HEIGHT=${ECN_HEIGHT:-256}
ECN_WIDTH=${ECN_WIDTH:-128}
ECN_BATCH=${ECN_BATCH:-32}
ECN_EPOCHS=${ECN_EPOCHS:-2}
ECN_ITERS=${ECN_ITERS:-100}
ECN_WORKERS=${ECN_WORKERS:-4}
STARGAN_ITERS=${STARGAN_ITERS:-10}
STARGAN_TRAIN=${STARGAN_TRAIN:-1}
GEN_IMAGES=${GEN_IMAGES:-100}
COLOUR_IMAGES=${COLOUR_IMAGES:-60}
WRITE_IMAGES=${WRITE_IMAGES:-200}
KNN_REPEATS=${KNN_REPEATS:-3}
KNN_SIZES=${KNN_SIZES:-market=12936,msmt17=32621}
EVAL_QUERIES=${EVAL_QUERIES:-3368}
EVAL_GALLERY=${EVAL_GALLERY:-15913}
EVAL_DIM=${EVAL_DIM:-2048}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOGS=${GPU_CHECK_LOGS:-$WORK/logs}
mkdir -p "$LOGS"
rm -f "$LOGS"/*.rc # a kept log folder may hold an earlier run's results
DATA=$WORK/data
RUN=$WORK/ecn
# The bench scripts import the repo's packages; this also serves a checkout that is not pip-installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SECONDS=0

# run_part NAME CAP_S CMD...: run CMD with stdout/stderr in $LOGS/NAME.{out,err}; NAME.rc gets
# "rc start end limit" (rc "skipped" when the budget is spent). Never fails the script.
run_part() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    local limit=$((cap < left ? cap : left))
    if ((limit < MIN_PART_S)); then
        echo "skipped 0 0 $limit" >"$LOGS/$name.rc"
        echo "gpu_check: $name skipped (budget spent)" >&2
        return 0
    fi
    echo "gpu_check: $name (limit ${limit}s) ..." >&2
    local start rc=0
    start=$(date +%s.%N)
    timeout --kill-after=15 "$limit" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" || rc=$?
    echo "$rc $start $(date +%s.%N) $limit" >"$LOGS/$name.rc"
    echo "gpu_check: $name rc=$rc" >&2
}

part_ok() { [[ -f $LOGS/$1.rc ]] && [[ $(cut -d' ' -f1 "$LOGS/$1.rc") == 0 ]]; }

run_part gpu_name 60 "$PY" -c "import torch; d = torch.device('$DEVICE'); print(torch.cuda.get_device_name(d) if d.type == 'cuda' else 'cpu')"

run_part pytest 240 "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider

run_part data 120 "$PY" -c "import sys; from ecnreid.data.synthetic import generate_synthetic; generate_synthetic(sys.argv[1])" "$DATA"

# Camera invariance needs a CamStyle set: the colour method makes one in seconds; without it, train with C off.
CAMERA=--no-camera
if part_ok data; then
    run_part prepare 90 "$PY" -m ecnreid prepare --dataset synthetic --root "$DATA/target" --method colour --workers "$ECN_WORKERS"
    if part_ok prepare; then CAMERA=--camera; fi
    # Neighbourhood invariance from the second epoch, so the timed steps include the kNN of the full method.
    run_part ecn 240 "$PY" -m ecnreid train --source synthetic --source-root "$DATA/source" \
        --target synthetic --target-root "$DATA/target" --arch "$ECN_ARCH" --no-pretrained \
        --height "$ECN_HEIGHT" --width "$ECN_WIDTH" --batch-size "$ECN_BATCH" --epochs "$ECN_EPOCHS" \
        --iters-per-epoch "$ECN_ITERS" --eval-every 0 --neighbour-start 1 "$CAMERA" --amp \
        --workers "$ECN_WORKERS" --device "$DEVICE" --out "$RUN"
fi

STARGAN_FLAGS=(--device "$DEVICE" --iters "$STARGAN_ITERS" --gen-images "$GEN_IMAGES" --colour-images "$COLOUR_IMAGES"
    --write-images "$WRITE_IMAGES")
if [[ $STARGAN_TRAIN != 1 ]]; then STARGAN_FLAGS+=(--no-train); fi
run_part stargan 150 "$PY" bench/camstyle_speed.py "${STARGAN_FLAGS[@]}"

# kNN on the device (bench/knn_speed.py times the CPU only): torch top-k of the logits vs faiss's GPU search.
run_part knn_device 90 "$PY" - "$DEVICE" "$KNN_SIZES" <<'EOF'
import json, statistics, sys, time

import torch
import torch.nn.functional as F

from ecnreid.losses import nearest_slots, nearest_slots_faiss

device = torch.device(sys.argv[1])
sizes = {name: int(n) for name, n in (item.split("=") for item in sys.argv[2].split(","))}
try:
    import faiss
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
except ImportError:
    faiss, gpus = None, 0


def median_ms(fn, repeats=10):
    fn()  # warm-up: allocations, cuBLAS handles, the faiss GPU resources
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


result = {"bench": "knn_device", "device": str(device), "faiss_gpus": gpus, "batch": 128, "dim": 4096, "k": 6}
gen = torch.Generator(device=device).manual_seed(0)
for name, slots in sizes.items():
    memory = F.normalize(torch.randn(slots, 4096, device=device, generator=gen), dim=1)
    features = F.normalize(torch.randn(128, 4096, device=device, generator=gen), dim=1)
    logits = features @ memory.t() / 0.05
    row = {
        "slots": slots,
        "logits_matmul_ms": median_ms(lambda: features @ memory.t()),
        "topk_on_logits_ms": median_ms(lambda: nearest_slots(logits, 6)),
    }
    if faiss is not None and (gpus > 0 or device.type == "cpu"):
        row["faiss_search_ms"] = median_ms(lambda: nearest_slots_faiss(features, memory, 6))
        found = nearest_slots_faiss(features, memory, 6).sort(dim=1).values
        same = (found.to(device) == nearest_slots(logits, 6).sort(dim=1).values).all(dim=1)
        row["same_neighbour_rows"] = round(float(same.float().mean()), 4)
    result[name] = row
print(json.dumps(result))
EOF

# The same problem (eval_speed.make_problem, seed 0) with the features on the device: distances, metrics, re-ranking.
run_part eval_device 180 "$PY" - "$DEVICE" "$EVAL_QUERIES" "$EVAL_GALLERY" "$EVAL_DIM" <<'EOF'
import json, sys, time

import torch

sys.path.insert(0, "bench")
from eval_speed import make_problem  # noqa: E402

from ecnreid.evaluation.distances import iter_distance_blocks  # noqa: E402
from ecnreid.evaluation.metrics import evaluate_blocks, evaluate_ranking  # noqa: E402
from ecnreid.evaluation.reranking import k_reciprocal_rerank  # noqa: E402

device = torch.device(sys.argv[1])
queries, gallery, dim = (int(v) for v in sys.argv[2:5])
problem = make_problem(queries, gallery, dim, 0)
ids = (problem["query_pids"], problem["gallery_pids"], problem["query_camids"], problem["gallery_camids"])
qf, gf = problem["query_features"].to(device), problem["gallery_features"].to(device)


def timed(fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, round(time.perf_counter() - start, 3)


def scores(result):
    return {k: round(v, 6) for k, v in result.as_dict().items() if k != "cmc"}


timed(lambda: evaluate_blocks(iter_distance_blocks(qf[:8], gf), ids[0][:8], ids[1], ids[2][:8], ids[3]))  # warm-up
plain, plain_s = timed(lambda: evaluate_blocks(iter_distance_blocks(qf, gf), *ids))
reranked, rerank_s = timed(lambda: k_reciprocal_rerank(qf, gf))
report = {
    "bench": "eval_device",
    "device": str(device),
    "queries": queries,
    "gallery": gallery,
    "dim": dim,
    "distances_and_metrics_s": plain_s,
    "plain": scores(plain),
    "rerank_s": rerank_s,
    "reranked": scores(evaluate_ranking(reranked, *ids)),
}
if device.type == "cuda":
    report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
print(json.dumps(report))
EOF

# The CPU benches last (the device figures matter more if the budget runs short): faiss and top-k on the host,
# and the metrics with their reference check at Market size (re-ranking was timed above, from device features).
run_part knn 90 "$PY" bench/knn_speed.py --repeats "$KNN_REPEATS"
run_part eval 120 "$PY" bench/eval_speed.py --queries "$EVAL_QUERIES" --gallery "$EVAL_GALLERY" --dim "$EVAL_DIM" --skip-rerank --problem ecn

# One JSON line from the parts' logs (each bench's last JSON line, or the part's error).
GPU_CHECK_TOTAL_S=$SECONDS "$PY" - "$LOGS" "$RUN" "$ECN_ARCH" "$ECN_HEIGHT" "$ECN_WIDTH" "$ECN_EPOCHS" "$ECN_ITERS" "$CAMERA" <<'EOF' || echo '{"bench":"gpu_check","error":"assembling the JSON failed"}'
import json, math, os, re, sys
from pathlib import Path

logs, run = Path(sys.argv[1]), Path(sys.argv[2])
arch, height, width, epochs, iters, camera = sys.argv[3:9]
failed = []


def text(name, kind):
    path = logs / f"{name}.{kind}"
    return path.read_text(errors="replace") if path.is_file() else ""


def status(name):
    """{"seconds": ...} for a part that succeeded, else {"error": ..., "stderr_tail": [...]}."""
    fields = text(name, "rc").split()
    if not fields:
        failed.append(name)
        return {"error": "not run"}
    rc, start, end, limit = fields
    if rc == "skipped":
        failed.append(name)
        return {"error": f"skipped: the time budget was spent ({limit}s left)"}
    seconds = round(float(end) - float(start), 1)
    if rc == "0":
        return {"seconds": seconds}
    failed.append(name)
    reason = f"timed out after {limit}s" if rc in ("124", "137") else f"exit status {rc}"
    tail = [line[:300] for line in text(name, "err").splitlines() if line.strip()][-6:]
    return {"error": reason, "seconds": seconds, "stderr_tail": tail}


def last_json(name):
    for line in reversed(text(name, "out").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def bench(name):
    state = status(name)
    found = last_json(name)
    if found is None:
        if "error" not in state:
            failed.append(name)
            state["error"] = "no JSON line in its output"
        return state
    return {**state, **found}


def pytest_summary():
    state = status("pytest")
    lines = text("pytest", "out").splitlines()
    counts = [line.strip("= ").strip() for line in lines if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    state["result"] = counts[-1] if counts else None
    state["problems"] = [line[:300] for line in lines if line.startswith(("FAILED", "ERROR", "SKIPPED"))][:20]
    return state


def ecn():
    state = {"steps": int(epochs) * int(iters), **status("ecn"), "camera": camera == "--camera"}
    state["setup"] = {"data": status("data"), "prepare_colour": status("prepare")}
    log = run / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if rows:
        train_s = sum(row["seconds"] for row in rows)
        state["train_seconds"] = round(train_s, 1)
        state["steps_per_s"] = round(state["steps"] / train_s, 3) if len(rows) == int(epochs) else None
        # The first epoch includes cuDNN autotuning and worker start-up; the last one is the steady rate.
        state["last_epoch_steps_per_s"] = round(int(iters) / rows[-1]["seconds"], 3)
        state["last_epoch_images_per_s"] = round(rows[-1]["images_per_s"], 1)
        state["losses"] = {k: round(v, 4) for k, v in rows[-1].items() if k.startswith("loss_")}
        state["finite_losses"] = all(math.isfinite(v) for row in rows for k, v in row.items() if k.startswith("loss_"))
    metrics = run / "metrics.json"
    if metrics.is_file():
        summary = json.loads(metrics.read_text())
        final = summary.get("final") or {}
        state["final"] = {k: final.get(k) for k in ("rank1", "mAP")}
        state["knn_backend"] = summary.get("knn_backend")
    return state


gpu = text("gpu_name", "out").strip().splitlines()
report = {
    "bench": "gpu_check",
    "gpu": gpu[-1] if gpu else None,
    "pytest_gpu": pytest_summary(),
    f"ecn_{arch}_{height}x{width}_amp": ecn(),
    "stargan": bench("stargan"),
    "knn": {"device": bench("knn_device"), "cpu_bench": bench("knn")},
    "eval": {"cpu_bench": bench("eval"), "device": bench("eval_device")},
}
cpu_eval, device_eval = report["eval"]["cpu_bench"], report["eval"]["device"]
if "fast" in cpu_eval and "plain" in device_eval:
    # Same problem, same protocol: the device features must give the CPU's metrics.
    report["eval"]["device_matches_cpu"] = all(
        abs(cpu_eval["fast"][k] - device_eval["plain"][k]) < 1e-4 for k in ("rank1", "mAP", "mINP")
    )
report["failed_parts"] = sorted(set(failed))
report["total_s"] = int(os.environ["GPU_CHECK_TOTAL_S"])
print(json.dumps(report))
EOF

# Exit 1 when any part failed, timed out or was skipped (the JSON says which).
for rc_file in "$LOGS"/*.rc; do
    [[ $(cut -d' ' -f1 "$rc_file") == 0 ]] || exit 1
done
