#!/usr/bin/env bash
# Duke → Market-1501 on a 2-core CPU: MobileNetV2 with the offline ImageNet weights, 128x64 input,
# batch 32 source + 32 target, 10 epochs of 100 iterations (1,000 steps; about 15 minutes for an ECN run,
# 5 to 7 for source-only), learning-rate step at epoch 8, neighbourhood invariance from the 4th epoch (0-based 3)
# so that it runs for most of training as in the published 5-of-60, evaluation once at the end.
# Learning rate 0.01 (not the published 0.1): on MobileNetV2 features with a small batch, 0.1 blows up the
# 4096-d classifier in the first epoch (source CE 15.7, then stuck at ln 702; Market rank-1 0.1 at epoch 4),
# while 0.01 learns (CE 5.96 -> 4.43, Market rank-1 15.1 / mAP 5.7 after 200 source-only steps of 64).
# The ECN ablation rows train the backbone at the full --lr (--backbone-lr-mult 1, not the published 0.1):
# the test feature is pool5, so the target terms help only through the backbone, and 1,000 steps at 0.001
# barely move it (+E+C+N 27.3 / 11.3 R1 / mAP against source-only 27.9 / 11.2 at 0.1; 33.2 / 14.3 against
# 26.9 / 11.1 at 1). The domain-generalisation rows were measured at ECN's published 0.1, against their own
# baseline `dg-baseline`.
# Every run resumes if killed (same command again).
#
#   DATA=../shared/data WEIGHTS=../shared/weights/mobilenet_v2_imagenet_features.pth OUT=runs \
#       bash experiments/duke2market_cpu.sh source-only E EN ECN-colour dg-baseline mixstyle snr rsc ECN-snr
set -euo pipefail
DATA=${DATA:-../shared/data}
WEIGHTS=${WEIGHTS:-../shared/weights/mobilenet_v2_imagenet_features.pth}
OUT=${OUT:-runs}
ECNREID=${ECNREID:-ecnreid}
common=(--source dukemtmc --source-root "$DATA/dukemtmc" --target market1501 --target-root "$DATA/market1501"
        --arch mobilenet_v2 --weights "$WEIGHTS" --height 128 --width 64 --batch-size 32
        --epochs 10 --iters-per-epoch 100 --lr 0.01 --lr-steps 8 --neighbour-start 3 --eval-every 0
        --seed 0 --resume)
# The ECN ablation rows (see above) ran two at a time with OMP_NUM_THREADS=1 and one loader worker each; the
# worker count changes which augmentation draws each image gets, so keep it to reproduce the numbers exactly.
ecn=("${common[@]}" --backbone-lr-mult 1 --workers 1)
dg=("${common[@]}" --backbone-lr-mult 0.1 --workers 2)  # the domain-generalisation rows
camstyle_colour="$OUT/camstyle_market_colour"
camstyle_stargan="$OUT/camstyle_market_stargan"
colour_set() {
  [ -d "$camstyle_colour" ] ||
    "$ECNREID" prepare --dataset market1501 --root "$DATA/market1501" --method colour --out "$camstyle_colour"
}
# Each paper's own setting: MixStyle after the first two stages (its re-ID setting); SNR after all four stages
# with the paper's loss weights (the --snr-weight default: 0.1 after layer1/layer2, 0.5 after layer3/layer4);
# RSC with its default fractions (--rsc-spatial 1/3, --rsc-channel 1/3.2, --rsc-batch 1/3).
declare -A module_flags=([mixstyle]="--mixstyle layer1,layer2" [snr]="--snr layer1,layer2,layer3,layer4" [rsc]="--rsc")

for setting in "$@"; do
  case "$setting" in
    # ECN ablation (training issue)
    source-only) "$ECNREID" train "${ecn[@]}" --out "$OUT/d2m_source_only" --source-only ;;
    E)           "$ECNREID" train "${ecn[@]}" --out "$OUT/d2m_E" --no-camera --no-neighbour ;;
    EN)          "$ECNREID" train "${ecn[@]}" --out "$OUT/d2m_EN" --no-camera ;;
    ECN-colour)  colour_set
                 "$ECNREID" train "${ecn[@]}" --out "$OUT/d2m_ECN_colour" --camstyle-dir "$camstyle_colour" ;;
    # camera invariance from a StarGAN set made by `ecnreid prepare` into $OUT/camstyle_market_stargan; the
    # CPU recipe of the README: prepare --dataset market1501 --root "$DATA/market1501" --image-size 128x64
    #   --conv-dim 32 --residual-generator --camera-norm --n-critic 1 --lr 5e-4 --lambda-rec 0.5 --iters 660
    #   --workers 2 --out "$OUT/camstyle_market_stargan"
    ECN-stargan) "$ECNREID" train "${ecn[@]}" --out "$OUT/d2m_ECN_stargan" --camstyle-dir "$camstyle_stargan" ;;
    # domain generalisation without target images (DG issue); --no-target trains exactly like --source-only
    dg-baseline) "$ECNREID" train "${dg[@]}" --out "$OUT/dg_baseline" --no-target ;;
    mixstyle|snr|rsc)
      # shellcheck disable=SC2086  # the flags are meant to split into words
      "$ECNREID" train "${dg[@]}" --out "$OUT/dg_$setting" --no-target ${module_flags[$setting]} ;;
    ECN-mixstyle|ECN-snr|ECN-rsc)
      module=${setting#ECN-}
      colour_set
      # shellcheck disable=SC2086
      "$ECNREID" train "${dg[@]}" --out "$OUT/d2m_ECN_colour_$module" --camstyle-dir "$camstyle_colour" \
        ${module_flags[$module]} ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac
done
