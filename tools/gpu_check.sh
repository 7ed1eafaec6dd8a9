#!/usr/bin/env bash
# gpu_check.sh: the one prepared check for a machine with a real GPU.
#
# What it does, each step logged, a failed step reported and the next one run anyway:
#   1. vulkan  when `ldconfig -p` shows no libvulkan: unpack .gl/*.deb into / and run
#              ldconfig, and point VK_DRIVER_FILES / __EGL_VENDOR_LIBRARY_FILENAMES at
#              the NVIDIA ICD files when they exist. Nothing at all where a loader is there.
#   2. build   `cargo build --release --bins --tests`, or, with LUNA_PREBUILT=DIR, the
#              binaries staged in DIR by `--stage` (the GPU machine has no crates.io).
#   3. tests   every test binary with LUNA_REQUIRE_GPU=1 (not browser/demos: they need
#              chromium and npm).
#   4. bench   `luna info`, then `luna bench --op layer|encoder|matmul|decode|lm`, each op
#              on its own with --repeats/--max-seconds and a timeout; CSV/JSON per op,
#              merged into bench.csv / bench.json. Then `--op longest` at d = 128, 2 heads,
#              l = 16: the longest sequence Luna and both baselines hold on the GPU, and one
#              layer at doubling n up to it (the target: a million tokens in one pass).
#   5. gemm    the best matmul GFLOP/s as a share of the GPU's float32 peak:
#              GPU_FP32_TFLOPS, default 67 (H100/H200 SXM, FP32 without tensor cores).
#   6. torch   tools/torch_luna_layer.py: the same Luna layer in PyTorch eager, CUDA,
#              n = 4K..64K (skips, exit 0, without torch or CUDA).
#   7. a summary (summary.txt); exit status non-zero if any step failed.
#
# Output: $LUNA_CHECK_OUT, else $OUT (the device tool's folder), else ./gpu-check-out.
# Under the device tool (output folder = $OUT, which brings back at most 8 files) the
# output folder gets only summary.txt, bench.csv, bench.json, torch_luna_layer.csv,
# luna-info.txt and gpu-check-logs.tar.gz (every log); elsewhere the logs stay in
# OUTDIR/logs and the per-op bench folders in OUTDIR/bench-OP.
#
# Time budget: one deadline, LUNA_CHECK_BUDGET seconds (default 420) after the build,
# with the last 60 s kept for the PyTorch step; each step also has a cap (tests 100 s
# in all, info 15, bench layer 120, encoder 60, matmul 60, decode 45, lm 45, longest 90, torch 60;
# `luna bench` gets --repeats 3 --max-seconds 10). A step cut by its timeout is reported
# (a bench op cut short keeps the rows it printed); one with no time left is "not run".
# With staged binaries the whole check ends within 8 minutes (vulkan setup and
# unpacking take seconds); a build on the machine adds its own time.
#
# How to run it on the GPU machine (no crates.io there: build here, carry the binaries).
#   Here, once, in the repo root (the Vulkan loader debs for the GPU machine, which has none;
#   .gl/ and .gpubin/ are in .gitignore):
#     mkdir -p .gl /tmp/amd64/partial
#     o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#     apt-get $o update; (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#   Here, after every change: build release, pack luna + the test binaries into .gpubin/bins.tar.xz
#     tools/gpu_check.sh --stage            # (--stage DIR for another folder; CARGO_TARGET_DIR is honoured)
#   (LUNA_PREBUILT may also name a plain folder holding luna, tests/NAME and paths.env.)
#   Then one device call, carry [".gl", ".gpubin"], timeout_s 540:
#     LUNA_PREBUILT=.gpubin tools/gpu_check.sh
#   The test binaries have the build's paths compiled in (CARGO_MANIFEST_DIR, the luna
#   binary): paths.env in bins.tar.xz records them, and the script links them to this
#   checkout and to the staged luna where they do not exist (it runs as root there).
#   Without LUNA_PREBUILT it builds with cargo (a machine with crates.io or a vendored registry).
#
# How to run it here (lavapipe, small sizes, every step still run; under a minute after the
# release build, which takes several minutes on 2 cores):
#     export XDG_RUNTIME_DIR=/tmp/xdg; tools/gpu_check.sh --quick      (or LUNA_CHECK_QUICK=1)
#
# Environment: LUNA_PREBUILT=DIR, LUNA_CHECK_QUICK=1, LUNA_CHECK_OUT=DIR,
#   LUNA_CHECK_BUDGET=SECONDS, GPU_FP32_TFLOPS=67, LUNA_ADAPTER (default in the full
#   check: discretegpu, so that a software adapter cannot pass for the GPU; set it empty
#   for the best adapter), LUNA_BENCH_ARGS (extra flags for every `luna bench`),
#   LUNA_CHECK_NICE (nice level of the build and the runs, default 0), PYTHON (default python3).

set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd -P)

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=${LUNA_CHECK_QUICK:-0}
STAGE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --stage) if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then STAGE=$2; shift; else STAGE=.gpubin; fi ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$QUICK" = 1 ] || QUICK=0
PY=${PYTHON:-python3}
NICE=(nice -n "${LUNA_CHECK_NICE:-0}")
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export LUNA_REQUIRE_GPU=1
if [ "$QUICK" = 0 ]; then export LUNA_ADAPTER=${LUNA_ADAPTER-discretegpu}; fi

log() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------- the build
# build_with_cargo LIST LOG: cargo build; writes "name<TAB>path" lines for the test
# binaries and "luna<TAB>path" for the CLI into LIST (from cargo's JSON messages, so
# what did build is listed even when another target failed).
build_with_cargo() {
    local list=$1 buildlog=$2 rc
    command -v cargo >/dev/null || { echo "cargo is not installed" >>"$buildlog"; return 127; }
    "${NICE[@]}" cargo build --release --bins --tests --message-format=json-render-diagnostics \
        2>>"$buildlog" >"$list.json"
    rc=$?
    "$PY" - "$list.json" >"$list" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact":
        t, exe = m["target"], m.get("executable")
        if not exe:
            continue
        if m["profile"]["test"]:
            kind = t["kind"][0]
            print(("%s\t%s" % (t["name"], exe)) if kind == "test" else ("%s-%s\t%s" % (kind, t["name"], exe)))
        elif t["name"] == "luna":
            print("luna\t%s" % exe)
    elif m.get("reason") == "compiler-message":
        sys.stderr.write(m["message"].get("rendered") or "")
EOF
    return $rc
}

if [ -n "$STAGE" ]; then
    # --stage DIR: build here and pack what the GPU machine needs into DIR/bins.tar.xz
    # (luna, tests/NAME, paths.env; stripped and xz-compressed: about 9 MB where the
    # binaries alone are over 100 MB, and the device tool carries 64 MiB in all).
    mkdir -p "$STAGE" || exit 2
    STAGE=$(cd "$STAGE" && pwd -P)
    rm -rf "$STAGE/bins.tar.xz" "$STAGE/pack"
    mkdir -p "$STAGE/pack/tests"
    log "building release (cargo build --release --bins --tests) to stage in $STAGE"
    build_with_cargo "$STAGE/artifacts.tsv" "$STAGE/build.log"
    rc=$?
    tail -n 30 "$STAGE/build.log"
    [ $rc = 0 ] || { log "the build failed (rc $rc); see $STAGE/build.log"; exit 1; }
    luna_exe=$(awk -F'\t' '$1 == "luna" { print $2 }' "$STAGE/artifacts.tsv" | tail -n 1)
    [ -n "$luna_exe" ] || { log "no luna binary in cargo's output"; exit 1; }
    cp "$luna_exe" "$STAGE/pack/luna"
    while IFS=$'\t' read -r name exe; do
        case "$name" in luna | browser | demos) ;; *) cp "$exe" "$STAGE/pack/tests/$name" ;; esac
    done <"$STAGE/artifacts.tsv"
    printf 'BUILD_ROOT=%q\nBUILD_LUNA=%q\n' "$REPO" "$luna_exe" >"$STAGE/pack/paths.env"
    command -v strip >/dev/null && strip "$STAGE/pack/luna" "$STAGE"/pack/tests/*
    log "compressing (xz, about half a minute)"
    tar -cf - -C "$STAGE/pack" . | xz -T0 -6 >"$STAGE/bins.tar.xz" || { log "tar/xz failed"; exit 1; }
    rm -rf "$STAGE/pack" "$STAGE/artifacts.tsv.json"
    log "staged: $(ls -l "$STAGE/bins.tar.xz"); carry the folder ($(du -sh "$STAGE" | cut -f1)) with .gl"
    exit 0
fi

# ---------------------------------------------------------------- output folders
OUTDIR=${LUNA_CHECK_OUT:-${OUT:-$REPO/gpu-check-out}}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd -P)
PACK=0
if [ -n "${OUT:-}" ] && [ "$OUTDIR" = "$(cd "$OUT" 2>/dev/null && pwd -P)" ]; then
    PACK=1 # the device tool brings back at most 8 files: keep the details elsewhere, tar them
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
else
    WORK=$OUTDIR
    rm -rf "$WORK/logs" "$WORK"/bench-* "$OUTDIR"/bench.csv "$OUTDIR"/bench.json "$OUTDIR"/torch_luna_layer.csv
fi
LOGS=$WORK/logs
mkdir -p "$LOGS"
exec > >(tee -a "$LOGS/gpu_check.log") 2>&1
TEE_PID=$!

# ---------------------------------------------------------------- step bookkeeping
STEPS=() # "name|status|seconds|detail"
FAILED=0
record() { # record NAME STATUS START DETAIL
    STEPS+=("$1|$2|$((SECONDS - $3))|$4")
    [ "$2" = ok ] || [ "$2" = skipped ] || FAILED=1
    log "step $1: $2${4:+ ($4)}"
}
DEADLINE=0 # set after the build
RESERVE=0  # seconds kept back for the steps after this one
# run_capped LOGFILE CAP CMD...: CMD under a timeout of min(CAP, time left), output to
# LOGFILE and to the console. Returns CMD's status; 124 on a timeout; 125 when no time is left.
run_capped() {
    local file=$1 cap=$2 left t
    shift 2
    left=$((DEADLINE - SECONDS - RESERVE))
    t=$((cap < left ? cap : left))
    if [ "$t" -lt 5 ]; then
        echo "not run: the time budget (LUNA_CHECK_BUDGET) is spent" >>"$file"
        return 125
    fi
    "${NICE[@]}" timeout -k 10 "$t" "$@" 2>&1 | tee -a "$file"
    return "${PIPESTATUS[0]}"
}
status_of() { # status_of RC -> ok | timeout | not run | failed (rc N)
    case $1 in 0) echo ok ;; 124 | 137) echo timeout ;; 125) echo "not run" ;; *) echo "failed (rc $1)" ;; esac
}

log "gpu_check: $([ "$QUICK" = 1 ] && echo quick || echo full) check of $REPO; output $OUTDIR; $(uname -srm); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$LOGS/nvidia-smi.txt"

# ---------------------------------------------------------------- 1. vulkan
t0=$SECONDS
vkwhy=""
{
    if ldconfig -p 2>/dev/null | grep -q libvulkan; then
        echo "a Vulkan loader is installed: nothing to set up"
        vk=ok
    else
        vk=ok
        debs=(.gl/*.deb)
        if [ -e "${debs[0]}" ]; then
            for f in "${debs[@]}"; do
                echo "dpkg -x $f /"
                dpkg -x "$f" / || vk=failed vkwhy="dpkg -x $f"
            done
            ldconfig || vk=failed vkwhy="ldconfig"
        else
            vk=failed vkwhy="no libvulkan and no .gl/*.deb to unpack: carry .gl, see the header"
        fi
        icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
        egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
        if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
            export VK_DRIVER_FILES=$icd
            echo "VK_DRIVER_FILES=$icd"
        fi
        if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$egl" ]; then
            export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
            echo "__EGL_VENDOR_LIBRARY_FILENAMES=$egl"
        fi
        [ "$vk" != ok ] || ldconfig -p | grep -q libvulkan || vk=failed vkwhy="still no libvulkan after unpacking .gl"
    fi
    ldconfig -p 2>/dev/null | grep libvulkan
} >"$LOGS/vulkan.log" 2>&1 # not in a subshell: the exports must stay
cat "$LOGS/vulkan.log"
record vulkan "$vk" $t0 "$vkwhy${VK_DRIVER_FILES:+ VK_DRIVER_FILES=$VK_DRIVER_FILES}"

# ---------------------------------------------------------------- 2. build
t0=$SECONDS
LUNA=""
TESTLIST=$WORK/test-binaries.tsv
: >"$TESTLIST"
if [ -n "${LUNA_PREBUILT:-}" ]; then
    pre=$(cd "$LUNA_PREBUILT" 2>/dev/null && pwd -P)
    detail="staged binaries from $LUNA_PREBUILT"
    st=ok
    if [ -n "$pre" ] && [ -f "$pre/bins.tar.xz" ]; then # packed by --stage: unpack (tar, else Python)
        unpacked=$(mktemp -d "${TMPDIR:-/tmp}/luna-prebuilt.XXXXXX")
        tar -xJf "$pre/bins.tar.xz" -C "$unpacked" 2>/dev/null ||
            "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$pre/bins.tar.xz" "$unpacked"
        pre=$unpacked
        detail="$detail (bins.tar.xz unpacked in $pre)"
    fi
    if [ -z "$pre" ] || [ ! -x "$pre/luna" ]; then
        st=failed detail="no executable $LUNA_PREBUILT/luna: run tools/gpu_check.sh --stage here and carry it"
    else
        LUNA=$pre/luna
        for f in "$pre"/tests/*; do [ -x "$f" ] && printf '%s\t%s\n' "$(basename "$f")" "$f" >>"$TESTLIST"; done
        # Paths compiled into the test binaries: link them here when they are missing.
        if [ -f "$pre/paths.env" ]; then
            BUILD_ROOT="" BUILD_LUNA=""
            . "$pre/paths.env"
            if [ -n "$BUILD_ROOT" ] && [ ! -e "$BUILD_ROOT" ]; then
                mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$REPO" "$BUILD_ROOT" && echo "linked $BUILD_ROOT -> $REPO"
            elif [ -n "$BUILD_ROOT" ] && [ "$(cd "$BUILD_ROOT" && pwd -P)" != "$REPO" ]; then
                echo "warning: the tests read files under $BUILD_ROOT (their build's checkout), not $REPO"
            fi
            if [ -n "$BUILD_LUNA" ] && [ ! -e "$BUILD_LUNA" ]; then
                mkdir -p "$(dirname "$BUILD_LUNA")" && ln -s "$LUNA" "$BUILD_LUNA" && echo "linked $BUILD_LUNA -> $LUNA"
            fi
            [ -e "$BUILD_ROOT" ] && [ -e "$BUILD_LUNA" ] || st=failed detail="cannot recreate the build's paths $BUILD_ROOT, $BUILD_LUNA"
        else
            echo "warning: no $LUNA_PREBUILT/paths.env: tests that read fixtures or run luna may fail"
        fi
    fi
    log "build: $detail"
    record build "$st" $t0 "$detail; $(wc -l <"$TESTLIST") test binaries"
else
    log "build: cargo build --release --bins --tests (output in $LOGS/build.log)"
    build_with_cargo "$WORK/artifacts.tsv" "$LOGS/build.log"
    rc=$?
    tail -n 20 "$LOGS/build.log"
    LUNA=$(awk -F'\t' '$1 == "luna" { print $2 }' "$WORK/artifacts.tsv" | tail -n 1)
    awk -F'\t' '$1 != "luna"' "$WORK/artifacts.tsv" >"$TESTLIST"
    rm -f "$WORK/artifacts.tsv.json"
    record build "$(status_of $rc)" $t0 "$(wc -l <"$TESTLIST") test binaries built"
fi
[ -n "$LUNA" ] && [ -x "$LUNA" ] || LUNA=""

BUDGET=${LUNA_CHECK_BUDGET:-$([ "$QUICK" = 1 ] && echo 1500 || echo 420)}
DEADLINE=$((SECONDS + BUDGET))
log "time budget from here: $BUDGET s"

# ---------------------------------------------------------------- 3. tests
t0=$SECONDS
TEST_CAP=$([ "$QUICK" = 1 ] && echo 1200 || echo 100)
test_end=$((SECONDS + TEST_CAP))
passed=0 failed_bins=()
mkdir -p "$LOGS/tests"
while IFS=$'\t' read -r name exe; do
    case "$name" in browser | demos) log "tests: $name skipped (needs chromium / npm)"; continue ;; esac
    f=$LOGS/tests/$name.log
    run_capped "$f" $((test_end - SECONDS)) "$exe" </dev/null >/dev/null # the log file only
    rc=$?
    result=$(grep -E '^test result:' "$f" | tail -n 1)
    log "tests: $name: $(status_of $rc) ${result#test result: }"
    if [ $rc = 0 ]; then
        k=$(echo "$result" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p')
        passed=$((passed + ${k:-0}))
    else
        failed_bins+=("$name")
        grep -E '^(test .* FAILED|---- |thread .* panicked)' "$f" | head -n 20
        tail -n 15 "$f"
    fi
done < <(sort "$TESTLIST")
if [ ! -s "$TESTLIST" ]; then
    record tests "not run" $t0 "no test binaries"
elif [ ${#failed_bins[@]} = 0 ]; then
    record tests ok $t0 "$passed tests passed"
else
    record tests failed $t0 "$passed passed; failing or cut short: ${failed_bins[*]}"
fi

# ---------------------------------------------------------------- 4. luna info and luna bench
if [ "$QUICK" = 1 ]; then
    BENCH_FLAGS=(--min-n 256 --max-n 512 --d 64 --heads 2 --projection-length 16 --layers 2 --repeats 1 --max-seconds 20)
    CAPS=(layer:240 encoder:240 matmul:300 decode:180 lm:300)
    LONGEST_FLAGS=(--d 64 --heads 2 --projection-length 16 --min-n 4096 --max-seconds 5)
    LONGEST_CAP=120
    TORCH_FLAGS=(--n 256,512 --projection-length 16 --d 64 --heads 2 --warmup 1 --repeats 1)
    TORCH_CAP=120
else
    # The defaults are hardware sizes: n = 1024..65536, l = 16,128,256, d = 256, 4 heads, 4 layers.
    BENCH_FLAGS=(--repeats 3 --max-seconds 10)
    CAPS=(layer:120 encoder:60 matmul:60 decode:45 lm:45)
    LONGEST_FLAGS=(--d 128 --heads 2 --projection-length 16 --min-n 65536 --max-seconds 20)
    LONGEST_CAP=90
    TORCH_FLAGS=(--n 4096,8192,16384,32768,65536 --warmup 2 --repeats 5 --max-seconds 10)
    TORCH_CAP=60
fi
read -r -a EXTRA <<<"${LUNA_BENCH_ARGS:-}"

adapter_line() { # the chosen adapter, from `luna info`'s report
    sed -n '/^chosen:/,$s/^\(adapter\|backend\|device type\|driver\): *//p' "$LOGS/luna-info.txt" 2>/dev/null | paste -sd '|' | sed 's/|/, /g'
}
RESERVE=$TORCH_CAP # the PyTorch step runs last: keep its time
t0=$SECONDS
if [ -z "$LUNA" ]; then
    record info "not run" $t0 "no luna binary"
else
    run_capped "$LOGS/luna-info.txt" 15 "$LUNA" info
    rc=$?
    record info "$(status_of $rc)" $t0 "$(adapter_line)"
fi

for cap_op in "${CAPS[@]}"; do
    op=${cap_op%%:*} cap=${cap_op#*:}
    t0=$SECONDS
    if [ -z "$LUNA" ]; then
        record "bench-$op" "not run" $t0 "no luna binary"
        continue
    fi
    log "luna bench --op $op ${BENCH_FLAGS[*]} ${EXTRA[*]}"
    run_capped "$LOGS/bench-$op.log" "$cap" "$LUNA" bench --op "$op" "${BENCH_FLAGS[@]}" "${EXTRA[@]}" --out-dir "$WORK/bench-$op"
    rc=$?
    n_points=$(($(wc -l <"$WORK/bench-$op/bench.csv" 2>/dev/null || echo 1) - 1))
    record "bench-$op" "$(status_of $rc)" $t0 "$n_points points"
done

# The longest sequence each method holds (its own flags: d = 128 is the target's width).
t0=$SECONDS
if [ -z "$LUNA" ]; then
    record bench-longest "not run" $t0 "no luna binary"
else
    log "luna bench --op longest ${LONGEST_FLAGS[*]}"
    # Quick (lavapipe): a 256 MiB device, so the longest n stays a few seconds' work.
    limit=${LUNA_MEMORY_LIMIT:-}
    if [ "$QUICK" = 1 ]; then limit=${limit:-256M}; fi
    run_capped "$LOGS/bench-longest.log" "$LONGEST_CAP" env ${limit:+LUNA_MEMORY_LIMIT=$limit} "$LUNA" bench --op longest "${LONGEST_FLAGS[@]}" --out-dir "$WORK/bench-longest"
    rc=$?
    held=$(grep -o '^luna-16 d=[0-9]*: the longest sequence this adapter holds is [0-9]* tokens' "$LOGS/bench-longest.log" 2>/dev/null | grep -o '[0-9]* tokens$')
    record bench-longest "$(status_of $rc)" $t0 "luna-16 holds ${held:-? (see the log)}"
fi

# Merge the per-op files, then 5. the GEMM against the float32 peak.
t0=$SECONDS
PEAK=${GPU_FP32_TFLOPS:-67}
"$PY" - "$WORK" "$OUTDIR" "$PEAK" "${GPU_FP32_TFLOPS:+set}" >"$LOGS/gemm.txt" 2>&1 <<'EOF'
import glob, json, os, re, sys
work, out, peak, given = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "set"
HEADER = "op,method,n,l,d,heads,batch,layers,m,gemm_n,k,median_s,min_s,max_s,tokens_per_s,gflops,peak_bytes,timer,skipped"
UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
ROW = re.compile(r"^(\w+)\s+(\S+)\s+(?:(\d+)x(\d+)x(\d+)|n=(\d+) l=(\d+) d=(\d+) h=(\d+) B=(\d+) L=(\d+))\s+"
                 r"([\d.]+) (s|ms|us) \[.*?\]\s+([\d.]+) tok/s\s+(\S+) GFLOP/s")

def from_log(path):
    """Points of an op that was cut short, from the table rows `luna bench` printed."""
    pts = []
    for line in open(path, errors="replace"):
        m = ROW.match(line.strip())
        if not m:
            continue
        g = m.groups()
        shape = [int(v) for v in g[2:5]] if g[2] else None
        n, l, d, h, bsz, layers = (int(v) for v in g[5:11]) if g[5] else (0,) * 6
        gf = float("nan") if g[14] == "-" else float(g[14])
        pts.append({"op": g[0], "method": g[1], "n": n, "l": l, "d": d, "heads": h, "batch": bsz, "layers": layers,
                    "shape": shape, "median_s": float(g[11]) * UNIT[g[12]], "min_s": None, "max_s": None,
                    "tokens_per_s": float(g[13]), "gflops": None if gf != gf else gf, "peak_bytes": None,
                    "timer": "from-log (op cut short)", "skipped": None})
    return pts

def csv_row(p):
    m, gn, k = p["shape"] or ("", "", "")
    f = lambda v: "NaN" if v is None else v
    return ",".join(str(v) for v in [p["op"], p["method"], p["n"], p["l"], p["d"], p["heads"], p["batch"], p["layers"], m, gn, k,
                                     f(p["median_s"]), f(p["min_s"]), f(p["max_s"]), f(p["tokens_per_s"]), f(p["gflops"]),
                                     f(p["peak_bytes"]), p["timer"], '"%s"' % (p["skipped"] or "").replace('"', " ").replace(",", " ")])

rows, points, adapter = [], [], None
names = {os.path.basename(x) for x in glob.glob(os.path.join(work, "bench-*"))}
names |= {os.path.basename(x)[:-4] for x in glob.glob(os.path.join(work, "logs", "bench-*.log"))}
for name in sorted(names):
    try:
        lines = open(os.path.join(work, name, "bench.csv")).read().splitlines()
        j = json.load(open(os.path.join(work, name, "bench.json")))
        rows += lines[1:]
        points += j["points"]
        adapter = adapter or j.get("adapter")
    except (OSError, ValueError):  # the op was cut short: what its log shows
        log = os.path.join(work, "logs", name + ".log")
        pts = from_log(log) if os.path.exists(log) else []
        points += pts
        rows += [csv_row(p) for p in pts]
if points:
    open(os.path.join(out, "bench.csv"), "w").write("\n".join([HEADER] + rows) + "\n")
    json.dump({"adapter": adapter, "points": points}, open(os.path.join(out, "bench.json"), "w"), indent=1)
mm = [p for p in points if p["op"] == "matmul" and not p.get("skipped") and p.get("gflops") is not None]
note = ("GPU_FP32_TFLOPS" if given else
        "default: 67 TFLOP/s, the H100/H200 SXM float32 peak without tensor cores; set GPU_FP32_TFLOPS for another GPU")
if not mm:
    print("GEMM: no measured matmul point")
    sys.exit(1)
print(f"GEMM on {adapter}, against a float32 peak of {peak:g} TFLOP/s ({note}):")
for p in mm:
    m, n, k = p["shape"]
    print(f"  {m:>6} x {n:>6} x {k:>6}  {p['method']:<24} {p['median_s'] * 1e3:10.3f} ms  {p['gflops']:10.1f} GFLOP/s  {100 * p['gflops'] / (peak * 1e3):6.2f}%")
best = max(mm, key=lambda p: p["gflops"])
m, n, k = best["shape"]
print(f"GEMM best: {best['gflops']:.1f} GFLOP/s at {m}x{n}x{k} ({best['method']}) = "
      f"{100 * best['gflops'] / (peak * 1e3):.2f}% of {peak:g} TFLOP/s FP32 peak (the goal: 40% on large squares)")
EOF
rc=$?
cat "$LOGS/gemm.txt"
record gemm "$(status_of $rc)" $t0 "$(tail -n 1 "$LOGS/gemm.txt" | sed 's/^GEMM best: //; s/ FP32 peak.*//')"

# ---------------------------------------------------------------- 6. PyTorch eager, the same layer
RESERVE=0
t0=$SECONDS
TORCH_CSV=$WORK/torch_luna_layer.csv
rm -f "$TORCH_CSV"
log "$PY tools/torch_luna_layer.py ${TORCH_FLAGS[*]}"
run_capped "$LOGS/torch.log" "$TORCH_CAP" "$PY" tools/torch_luna_layer.py "${TORCH_FLAGS[@]}" --out "$TORCH_CSV"
rc=$?
if [ $rc = 0 ] && grep -q 'torch_luna_layer: skipped' "$LOGS/torch.log"; then
    record torch skipped $t0 "$(grep -o 'skipped: .*' "$LOGS/torch.log" | head -n 1)"
else
    record torch "$(status_of $rc)" $t0 "$(($(wc -l <"$TORCH_CSV" 2>/dev/null || echo 1) - 1)) points"
fi
[ "$WORK" = "$OUTDIR" ] || cp -f "$TORCH_CSV" "$OUTDIR/" 2>/dev/null

# ---------------------------------------------------------------- 7. summary
{
    echo "== gpu_check summary ($([ "$QUICK" = 1 ] && echo quick || echo full), $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS} s) =="
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (uncommitted changes)')"
    echo "adapter: $(adapter_line)"
    [ -f "$LOGS/nvidia-smi.txt" ] && sed -n 2p "$LOGS/nvidia-smi.txt" | sed 's/^/nvidia-smi: /'
    printf '%-14s %-14s %7s  %s\n' step status seconds detail
    for s in "${STEPS[@]}"; do
        IFS='|' read -r name st secs detail <<<"$s"
        printf '%-14s %-14s %7s  %s\n' "$name" "$st" "$secs" "$detail"
    done
    grep -E '^GEMM best' "$LOGS/gemm.txt" 2>/dev/null
    # Luna through wgpu against PyTorch eager, same layer, where both measured (n, l).
    "$PY" - "$OUTDIR/bench.csv" "$TORCH_CSV" <<'EOF' 2>/dev/null
import csv, sys
try:
    luna = {(int(r["n"]), int(r["l"])): float(r["median_s"]) * 1e3 for r in csv.DictReader(open(sys.argv[1]))
            if r["op"] == "layer" and r["method"].startswith("luna-") and r["median_s"] not in ("", "NaN")}
    torch = {(int(r["n"]), int(r["l"])): (float(r["ms"]), r["peak_mib"]) for r in csv.DictReader(open(sys.argv[2])) if r["ms"]}
except OSError:
    sys.exit(0)
both = sorted(set(luna) & set(torch))
if both:
    print("one Luna layer, median ms: wgpu (luna bench) | PyTorch eager | torch/wgpu (above 1: wgpu faster)")
    for n, l in both:
        t, mib = torch[(n, l)]
        print(f"  n={n:>6} l={l:>4}  {luna[(n, l)]:10.3f} | {t:10.3f} | {t / luna[(n, l)]:6.2f}x   (torch peak {mib} MiB)")
EOF
    echo "result: $([ $FAILED = 0 ] && echo 'every step ok' || echo 'SOME STEPS FAILED')"
    echo "files: $OUTDIR"
} >"$LOGS/summary.txt"
cp "$LOGS/summary.txt" "$OUTDIR/summary.txt"
cp "$LOGS/luna-info.txt" "$OUTDIR/" 2>/dev/null
echo
cat "$OUTDIR/summary.txt"
exec >&- 2>&- # let tee finish the log
wait "$TEE_PID" 2>/dev/null
if [ $PACK = 1 ]; then
    tar -czf "$OUTDIR/gpu-check-logs.tar.gz" -C "$WORK" . 2>/dev/null
fi
exit $FAILED
