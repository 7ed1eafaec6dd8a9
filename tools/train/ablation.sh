#!/usr/bin/env bash
# The local-context ablation of models/README.md ("Local context: the
# ablation"): the phase-3 model (BASE) continued for the same budget, 300
# steps (3.1 M bytes), under the authors' form and under each candidate, then
# each result scored on the held-out split in blocks of 128 bytes (printed by
# train.py at its end) and in one pass (eval.py --whole, float32).
#
#   tools/train/ablation.sh BASE.safetensors OUT_DIR [VARIANT ...]
#
# BASE is the model after phases 1-3 (git show 55fc399:models/luna-pydoc-bytes.safetensors
# is the one used). VARIANTs default to all rows of the table. A variant
# already done (OUT_DIR/NAME.done) is skipped, so the script resumes.
# Needs the trainer's virtualenv (PY, default /root/.venvs/luna-train/bin/python)
# and the corpus (prepare_corpus.py). About 6 minutes a variant on 2 idle cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${1:?usage: ablation.sh BASE.safetensors OUT_DIR [VARIANT ...]}
out=${2:?usage: ablation.sh BASE.safetensors OUT_DIR [VARIANT ...]}
shift 2
PY=${PY:-/root/.venvs/luna-train/bin/python}
mkdir -p "$out"
F="--embed-dim 192 --ffn-dim 768 --layers 4 --heads 4 --projection-length 32 --seq-len 128 --batch 32
   --init-from $base --steps 300 --lr 1e-3 --warmup 20 --min-lr-ratio 0.1 --long-len 16384
   --eval-every 100 --eval-long 16384"
D3="--decay 0.875,0.984375,0.998046875,1"
D4="--decay 0.875,0.984375,0.998046875,0.999755859375"
flags() {
  case $1 in
    authors) echo "" ;;
    decay) echo "$D3" ;;
    conv) echo "--conv-width 4" ;;
    window) echo "--local-window 32" ;;
    decay_conv) echo "$D3 --conv-width 4" ;;
    decay_conv_nopos) echo "$D3 --conv-width 4 --no-positions" ;;
    decay4_conv_nopos) echo "$D4 --conv-width 4 --no-positions" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(authors decay conv window decay_conv decay_conv_nopos decay4_conv_nopos)
for v in "${variants[@]}"; do
  [ -f "$out/$v.done" ] && continue
  # shellcheck disable=SC2046
  "$PY" "$here/train.py" $F $(flags "$v") --out "$out/$v.safetensors" > "$out/$v.log" 2>&1
  "$PY" "$here/eval.py" --model "$out/$v.safetensors" --whole --profile --dtype f32 > "$out/$v.whole"
  touch "$out/$v.done"
  blocks=$(grep "all)" "$out/$v.log" | tail -n 1 | sed 's/.*test \([0-9.]*\) bpb.*/\1/')
  echo "$v: blocks of 128: $blocks; one pass: $(head -n 1 "$out/$v.whole" | cut -d' ' -f1); $(tail -n 1 "$out/$v.whole")"
done
