#!/usr/bin/env bash
# GPU validation kit, step 2 of 2 -- run on a (bare, offline) CUDA machine from the repository root, after
# benchmarks/gpu/prepare.sh filled benchmarks/gpu/wheels on a CPU machine.
# Installs the wheels without network (pip --no-index --no-deps --target + PYTHONPATH, so the machine's own
# torch stays), then: doctor, the gpu/trt-marked tests, the kit's benchmark suites (rows that need TensorRT or
# ONNX Runtime CUDA report "unavailable" with the reason) and an end-to-end infer of a 40000x32000 px synthetic
# slide (torch CUDA backend, fp32/bf16, compile off/on). Every part runs under its own `timeout`, so a slow part
# cannot eat the rest; the budgets add up to 470 s (< 8 minutes). Results: OUT/summary.{json,md}, one JSON +
# Markdown per part, logs/ per part.
#   benchmarks/gpu/run.sh [--dry-run] [--out DIR] [--wheels DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."

DRY_RUN=0
OUT_DIR=${OUT:+$OUT/gpu-kit}
OUT_DIR=${OUT_DIR:-runs/gpu-kit}
WHEELS=benchmarks/gpu/wheels
PYTHON=${PYTHON:-python3}
while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT_DIR=$2; shift ;;
        --wheels) WHEELS=$2; shift ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
SITE=${SITE:-$OUT_DIR/site}

# name | budget in seconds | command (run with bash -c under timeout; output in logs/<name>.log)
STEPS=(
    "install|30|cd '$WHEELS' && sha256sum -c --quiet SHA256SUMS && cd - >/dev/null && if $PYTHON -m pip --version >/dev/null; then $PYTHON -m pip install --no-index --no-deps --no-warn-script-location --target '$SITE' '$WHEELS'/*.whl; else echo 'no pip: unzipping the wheels'; $PYTHON -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' '$SITE' '$WHEELS'/*.whl; fi"
    "doctor|15|$PYTHON -m sammil_deploy doctor --json > '$OUT_DIR/doctor.json'"
    "gpu-tests|80|$PYTHON -m pytest -v -p no:cacheprovider -m 'gpu or trt' -o addopts='-ra --strict-markers' --junitxml='$OUT_DIR/gpu-tests.xml' tests/"
    "bench-models|80|$PYTHON -m sammil_deploy benchmark --suite benchmarks/gpu/kit-models.toml --out '$OUT_DIR/bench-models.json' --markdown '$OUT_DIR/bench-models.md'"
    "bench-maskgen|55|$PYTHON -m sammil_deploy benchmark --suite benchmarks/gpu/kit-maskgen.toml --out '$OUT_DIR/bench-maskgen.json' --markdown '$OUT_DIR/bench-maskgen.md'"
    "e2e-infer|200|$PYTHON benchmarks/gpu/e2e.py --out '$OUT_DIR/e2e' --width-px 40000 --height-px 32000 --deadline-s 185"
    "report|10|$PYTHON benchmarks/gpu/report.py '$OUT_DIR'"
)

total_s=0
for step in "${STEPS[@]}"; do total_s=$((total_s + $(cut -d'|' -f2 <<<"$step"))); done

if ((DRY_RUN)); then
    echo "GPU validation kit: ${#STEPS[@]} steps, ${total_s} s of budgets in all; output folder $OUT_DIR"
    echo "PYTHONPATH=$SITE (wheels from $WHEELS)"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name budget command <<<"$step"
        printf '%-14s budget %4s s  %s\n' "$name" "$budget" "$command"
    done
    exit 0
fi

mkdir -p "$OUT_DIR/logs"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
printf 'step\tbudget_s\tseconds\trc\tstatus\n' >"$OUT_DIR/steps.tsv"
{ timeout 10 nvidia-smi || echo "nvidia-smi: not available"; } >"$OUT_DIR/nvidia-smi.txt" 2>&1
git rev-parse HEAD >"$OUT_DIR/commit.txt" 2>/dev/null || echo "unknown" >"$OUT_DIR/commit.txt"
failed=0
for step in "${STEPS[@]}"; do
    IFS='|' read -r name budget command <<<"$step"
    echo "== $name (budget ${budget} s)"
    start=$SECONDS
    timeout --kill-after=5 "$budget" bash -c "$command" >"$OUT_DIR/logs/$name.log" 2>&1
    rc=$?
    seconds=$((SECONDS - start))
    if ((rc == 124 || rc == 137)); then
        status=timeout
    elif ((rc != 0)); then
        status=failed
    else
        status=ok
    fi
    [[ $status == ok ]] || failed=1
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$budget" "$seconds" "$rc" "$status" >>"$OUT_DIR/steps.tsv"
    echo "   $status in ${seconds} s (exit $rc); last lines of logs/$name.log:"
    tail -n 4 "$OUT_DIR/logs/$name.log" | sed 's/^/   | /'
done
echo "results in $OUT_DIR (summary.md, summary.json)"
exit "$failed"
