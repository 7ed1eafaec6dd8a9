#!/usr/bin/env bash
# The main job on a fresh machine: make a random-weight Luna encoder, make a
# padded batch of random token sequences, and time a forward pass on the best
# GPU adapter. Usage: tools/quickstart.sh [CONFIG.json] [LENGTHS]
#   CONFIG   default models/configs/small.json (base.json is a 6-layer d=512 model for real GPUs)
#   LENGTHS  comma-separated sequence lengths, default 3000,1000
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-models/configs/small.json}
lengths=${2:-3000,1000}
out=${TMPDIR:-/tmp}/luna-quickstart
mkdir -p "$out"
cargo build --release --quiet
luna=target/release/luna
$luna init-random --config "$config" --out "$out/model.safetensors" --seed 1
$luna random-tokens --model "$out/model.safetensors" --lengths "$lengths" --out "$out/tokens.safetensors" --seed 2
$luna forward --model "$out/model.safetensors" --input "$out/tokens.safetensors" --output "$out/out.safetensors" --repeat 3
