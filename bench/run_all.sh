#!/usr/bin/env bash
# Every bench in one go, then one table of the targets met and missed (bench/targets.py on the result files).
#
#   bench/run_all.sh --quick [--out DIR]    # the --quick size of every bench (an hour or more on 2 CPU cores)
#   bench/run_all.sh --tiny [--out DIR]     # the smoke-test sizes: checks that everything runs, times mean nothing
#   bench/run_all.sh [--out DIR]            # full size (many hours on a CPU)
#
# The result files go to DIR (default bench/results/<size>/, so the recorded results in bench/results/ stay as
# they are), which must hold none yet: the table judges this run's files only. Each bench interleaves its own
# variants; the benches run one after another, and one that fails does not stop the others (they are listed at
# the end, and the exit status is 1). PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."

size=full
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick | --tiny) size=${1#--} ;;
        --out) out=${2:?--out needs a folder}; shift ;;
        *) echo "usage: bench/run_all.sh [--quick | --tiny] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-bench/results/$size}
python=${PYTHON:-python}
size_flag=()
[ "$size" = full ] || size_flag=("--$size")
if compgen -G "$out/*.json" >/dev/null; then
    echo "$out holds result files of an earlier run: pass another --out, or move them away" >&2
    exit 2
fi
mkdir -p "$out"

failed=()
run() {
    local name=$1
    shift
    echo "=== $name: $*"
    "$@" || failed+=("$name")
}

run training_speed "$python" bench/training_speed.py "${size_flag[@]}" --out "$out"
run predict "$python" bench/predict.py "${size_flag[@]}" --out "$out/predict.json"
run data "$python" bench/data.py "${size_flag[@]}" --out "$out"
run precision "$python" bench/precision.py "${size_flag[@]}" --out "$out"
run adaptation_cost "$python" bench/adaptation_cost.py "${size_flag[@]}" --out "$out"
run head_sweep "$python" bench/head_sweep.py "${size_flag[@]}" --out "$out"
run prefix_cache "$python" bench/prefix_cache.py "${size_flag[@]}" --out "$out"
run head_bank "$python" bench/head_bank.py "${size_flag[@]}" --out "$out"
run resume_exact "$python" -m bench.resume_exact "${size_flag[@]}" --out "$out"

echo
"$python" bench/targets.py --results "$out"
if [ ${#failed[@]} -gt 0 ]; then
    echo "benches that failed (no result file in $out): ${failed[*]}" >&2
    exit 1
fi
