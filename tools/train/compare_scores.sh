#!/usr/bin/env bash
# Held-out bits per byte of a model file, from PyTorch (tools/train/eval.py,
# float64) and from the engine (`luna score`), on the same sequences, and
# their difference (the model card asks for agreement to 1e-4).
#
#   tools/train/compare_scores.sh MODEL [--device auto|gpu|cpu] [--limit BYTES] [--whole]
#
# Default: the test split ($LUNA_DATA/test.txt, or ~/.cache/luna-data/test.txt)
# in blocks of the model's training window, each after bos (`luna score
# --tokens`). --whole scores the file as one sequence (`luna score --text`).
# --limit scores only the first BYTES bytes (the engine's float64 reference
# is slow: about 100-200 bytes/s per core for the shipped model). The blocks
# go to the engine in parts of PART sequences (default 128), so that one
# part fits in a GPU buffer binding.
# Needs target/release/luna (cargo build --release) and the trainer's
# virtualenv (PY, default /root/.venvs/luna-train/bin/python).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=${1:?usage: compare_scores.sh MODEL [--device D] [--limit BYTES] [--whole]}
shift
device=auto limit="" whole=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --whole) whole=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PY:-/root/.venvs/luna-train/bin/python}
LUNA=${LUNA:-$root/target/release/luna}
data=${LUNA_DATA:-$HOME/.cache/luna-data}
text=$data/test.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "$limit" ]; then head -c "$limit" "$text" > "$work/text.txt"; text=$work/text.txt; fi

if [ $whole = 1 ]; then
  torch_line=$("$PY" "$here/eval.py" --model "$model" --text "$text" --whole | head -n 1)
  engine_line=$("$LUNA" score --device "$device" --model "$model" --text "$text" 2>"$work/engine.err")
else
  torch_line=$("$PY" "$here/eval.py" --model "$model" --text "$text" --write-tokens "$work/tokens.safetensors" | tail -n 1)
  # The engine's GPU path holds a whole batch in one buffer binding (128 MiB on
  # many adapters): score the blocks in parts of $PART sequences and add up.
  "$PY" - "$work/tokens.safetensors" "${PART:-128}" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
path, part = sys.argv[1], int(sys.argv[2])
t = load_file(path)["tokens"]
for i in range(0, len(t), part):
    save_file({"tokens": t[i:i + part].contiguous()}, path.replace(".safetensors", f".part{i // part:04d}.safetensors"))
PYEOF
  : > "$work/engine.out"
  for f in "$work"/tokens.part*.safetensors; do
    "$LUNA" score --device "$device" --model "$model" --tokens "$f" >>"$work/engine.out" 2>>"$work/engine.err"
  done
  engine_line=$(python3 - "$work/engine.out" <<'PYEOF'
import sys
bits = count = 0
for line in open(sys.argv[1]):
    w = line.split()  # "B bits per token (N tokens scored, ...)"
    bits += float(w[0]) * int(w[4].lstrip("("))
    count += int(w[4].lstrip("("))
print(f"{bits / count:.6f} bits per byte ({count} bytes scored, {bits:.1f} bits in all; luna score --tokens, in parts)")
PYEOF
)
fi
grep -v XDG_RUNTIME_DIR "$work/engine.err" >&2 || true
echo "pytorch: $torch_line"
echo "engine:  $engine_line"
a=$(echo "$torch_line" | awk '{print $1}')
b=$(echo "$engine_line" | awk '{print $1}')
python3 -c "import sys; a, b = float('$a'), float('$b'); d = abs(a - b); print(f'difference {d:.6f} bits per byte:', 'agree to 1e-4' if d <= 1e-4 else 'DISAGREE'); sys.exit(0 if d <= 1e-4 else 1)"
