#!/usr/bin/env bash
# Duke -> Market-1501 at 6,000 steps on a CPU (docs/budget_curve.md): does ECN's gain over source only grow
# with budget? The CPU recipe for 60 epochs of 100 iterations, configs/d2m_budget_<run>.toml plus the data and
# weights locations (experiments/env.sh). Market query/gallery is evaluated every 10 epochs for watching only;
# a run's number is its last epoch. Two runs side by side with one thread each take about 90 s per epoch on
# 2 cores; a run that is stopped resumes on the same command. Then the figure:
#
#   ECNREID_DATA=/datasets ECNREID_WEIGHTS=/weights/mobilenet_v2_imagenet_features.pth \
#       bash experiments/duke2market_budget.sh source-only ECN spcl
#   python experiments/budget_curve.py --baseline "source only=runs/budget/source_only" \
#       --run "+E+C+N (colour)=runs/budget/ECN" --run "SpCL=runs/budget/spcl" --out docs/budget_curve.png
set -euo pipefail
source "$(dirname "$0")/env.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ $# -gt 0 ] || stop "name the runs: source-only ECN EC EN ECN-capture spcl"
train() {  # config name, run folder, extra options
  local config=$1 out=$2
  shift 2
  "$ECNREID" train --config "$CONFIGS/$config.toml" "${domains[@]}" --out "$ECNREID_RUNS/budget/$out" --resume "$@"
}
for run in "$@"; do
  case "$run" in
    source-only) train d2m_budget_source_only source_only ;;
    ECN) make_colour_set
         train d2m_budget_ECN ECN --camstyle-dir "$colour_set" ;;
    EC)  make_colour_set  # the neighbourhood ablation: +E+C
         train d2m_budget_EC EC --camstyle-dir "$colour_set" ;;
    EN)  train d2m_budget_EN EN ;;  # the camera ablation: +E+N, no CamStyle set
    ECN-capture) make_capture_set  # +E+C+N with the capture set instead of colour (docs/camstyle_methods.md)
         train d2m_budget_ECN_capture ECN_capture --camstyle-dir "$capture_set" ;;
    spcl) train d2m_budget_spcl spcl ;;  # SpCL (--method spcl), no CamStyle set
    *) stop "unknown run $run (source-only ECN EC EN ECN-capture spcl)" ;;
  esac
done
