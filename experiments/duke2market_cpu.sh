#!/usr/bin/env bash
# Duke -> Market-1501 on a CPU: the README's results rows at 1,000 steps, one setting per argument, each the
# config file configs/d2m_cpu_<setting>.toml plus the data and weights locations (experiments/env.sh).
# The recipe: MobileNetV2 from ImageNet weights, 128x64, batch 32 + 32, 10 epochs of 100 iterations, lr 0.01
# with a step at epoch 8, neighbourhood invariance from the 4th epoch, one evaluation at the end, seed 0.
# The ECN rows train the backbone at the full lr; the domain-generalisation rows at ECN's published 0.1 x lr,
# against their own baseline (dg-baseline). A run that is stopped resumes on the same command.
#
#   ECNREID_DATA=/datasets ECNREID_WEIGHTS=/weights/mobilenet_v2_imagenet_features.pth \
#       bash experiments/duke2market_cpu.sh source-only E EN ECN-colour dg-baseline mixstyle snr rsc
#
# ECN-stargan trains +E+C+N on the StarGAN set of configs/market_stargan_cpu.toml (made first when missing;
# about 2 hours on 2 cores).
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -gt 0 ] || stop "name the settings to run: source-only E EN ECN-colour ECN-stargan dg-baseline mixstyle snr rsc"
stargan_set="$ECNREID_RUNS/camstyle_market_stargan"
make_stargan_set() {
  [ -f "$stargan_set/prepare.json" ] ||
    "$ECNREID" prepare --config "$CONFIGS/market_stargan_cpu.toml" --root "$ECNREID_DATA/market1501" \
      --out "$stargan_set" --work-dir "$ECNREID_RUNS/stargan_market" --resume
}
train() {  # config name, run folder, extra options
  local config=$1 out=$2
  shift 2
  "$ECNREID" train --config "$CONFIGS/$config.toml" "${domains[@]}" --out "$ECNREID_RUNS/$out" --resume "$@"
}

for setting in "$@"; do
  case "$setting" in
    source-only) train d2m_cpu_source_only d2m_source_only ;;
    E)           train d2m_cpu_E d2m_E ;;
    EN)          train d2m_cpu_EN d2m_EN ;;
    ECN-colour)  make_colour_set
                 train d2m_cpu_ECN d2m_ECN_colour --camstyle-dir "$colour_set" ;;
    ECN-stargan) make_stargan_set
                 train d2m_cpu_ECN d2m_ECN_stargan --camstyle-dir "$stargan_set" ;;
    dg-baseline) train d2m_cpu_dg_baseline dg_baseline ;;
    mixstyle|snr|rsc) train "d2m_cpu_$setting" "dg_$setting" ;;
    *) stop "unknown setting $setting (source-only E EN ECN-colour ECN-stargan dg-baseline mixstyle snr rsc)" ;;
  esac
done
