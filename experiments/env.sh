# Sourced by the experiment scripts: the documented locations (README, "Real data"), each checked once.
#   ECNREID_DATA     folder holding dukemtmc/ and market1501/ (default: data)
#   ECNREID_WEIGHTS  MobileNetV2 ImageNet state_dict file for --weights (required)
#   ECNREID_RUNS     where runs and CamStyle sets go (default: runs)
#   ECNREID          the ecnreid command (default: ecnreid)
ECNREID_DATA=${ECNREID_DATA:-data}
ECNREID_RUNS=${ECNREID_RUNS:-runs}
ECNREID=${ECNREID:-ecnreid}
CONFIGS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/configs"

stop() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

[ -n "${ECNREID_WEIGHTS:-}" ] ||
  stop "set ECNREID_WEIGHTS to the MobileNetV2 ImageNet state_dict file (README, \"Real data\", says how to make one)"
[ -f "$ECNREID_WEIGHTS" ] || stop "ECNREID_WEIGHTS=$ECNREID_WEIGHTS: no such file"
for dataset in dukemtmc market1501; do
  [ -d "$ECNREID_DATA/$dataset" ] ||
    stop "ECNREID_DATA=$ECNREID_DATA has no $dataset/ folder; set ECNREID_DATA to the folder holding dukemtmc/ and market1501/"
done
domains=(--source-root "$ECNREID_DATA/dukemtmc" --target-root "$ECNREID_DATA/market1501" --weights "$ECNREID_WEIGHTS")

# The colour CamStyle set of Market-1501 (about 90 s on 2 cores), made once.
colour_set="$ECNREID_RUNS/camstyle_market_colour"
make_colour_set() {
  [ -d "$colour_set" ] ||
    "$ECNREID" prepare --dataset market1501 --root "$ECNREID_DATA/market1501" --method colour --out "$colour_set"
}

# The capture CamStyle set of Market-1501 (docs/camstyle_methods.md), made once.
capture_set="$ECNREID_RUNS/camstyle_market_capture"
make_capture_set() {
  [ -d "$capture_set" ] ||
    "$ECNREID" prepare --dataset market1501 --root "$ECNREID_DATA/market1501" --method capture --out "$capture_set"
}
