#!/usr/bin/env bash
# The figures only a GPU gives, in one run (about 6 minutes on one H100/H200), one table at the end:
#   train_throughput  LLaMA-7B LoRA: sdpa and flash-attention-2, micro-batch 8/16, tokens/s, MFU,
#                     memory; packing off/on on real examples
#   eval_throughput   LLaMA-7B shapes: questions/s at batch 16/32/64 beside lm-eval's HF backend
#                     on the same model object (predictions compared); generated tokens/s at
#                     batch 32 and 64
#   packed_loss       packed rows' loss equal to the examples' one at a time, flash-attention's
#                     varlen path and sdpa, in bf16
#
#   bash bench/gpu_check.sh                    # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run          # the same steps at tiny shapes on CPU (CI: it keeps working)
#   WHEELS=gpu-wheels bash bench/gpu_check.sh  # first install the wheels in gpu-wheels/ (no index)
#
# The benches put the repository on sys.path: nothing needs installing where the image has torch,
# transformers and peft, except rapidfuzz (bioinstruct imports it) and, for the lm-eval rows,
# lm-eval; carry them as wheels (pip download -d gpu-wheels rapidfuzz lm-eval==0.4.13). Without
# lm-eval the comparison rows are left out and the table says so. Each step's full output is in
# ${OUT:-/tmp}/gpu_check/*.log; a failing step is named in the table and the script goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
python=${PYTHON:-python}
logs=${OUT:-/tmp}/gpu_check
mkdir -p "$logs"
export BENCH_FIGURES=$logs/figures.jsonl
: > "$BENCH_FIGURES"
if [[ -n "${WHEELS:-}" ]]; then
    "$python" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl > "$logs/pip.log" 2>&1 \
        || echo "warning: installing $WHEELS failed (see $logs/pip.log)" >&2
fi
with_lm_eval=--with-lm-eval
"$python" -c "import lm_eval" 2> /dev/null || {
    with_lm_eval=
    echo '{"bench": "eval_throughput", "setting": "-", "figure": "lm-eval rows", "value": "left out: lm_eval not installed"}' >> "$BENCH_FIGURES"
}
if (( dry )); then
    steps=("packed_loss|bench/packed_loss.py --attn flash_attention_2,sdpa"
           "train_throughput|bench/train_throughput.py --quick"
           "eval_throughput|bench/eval_throughput.py --gpu-7b --arch tiny --quick $with_lm_eval")
else
    steps=("packed_loss|bench/packed_loss.py --attn flash_attention_2,sdpa"
           "train_throughput|bench/train_throughput.py --model 7b --attn sdpa,flash_attention_2 --micro-batch 8,16 --grad-ckpt on --steps 5 --warmup 2"
           "eval_throughput|bench/eval_throughput.py --gpu-7b --questions 256 $with_lm_eval")
fi
start=$(date +%s)
for step in "${steps[@]}"; do
    name=${step%%|*}
    t0=$(date +%s)
    echo "gpu_check: $name ..." >&2
    # shellcheck disable=SC2086  # the step's arguments are meant to split
    if ! "$python" ${step#*|} > "$logs/$name.log" 2>&1; then
        echo "{\"bench\": \"$name\", \"setting\": \"-\", \"figure\": \"FAILED\", \"value\": \"see $logs/$name.log\"}" >> "$BENCH_FIGURES"
    fi
    echo "gpu_check: $name done in $(( $(date +%s) - t0 )) s" >&2
done
echo "gpu_check: $(( $(date +%s) - start )) s; $("$python" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)")')"
"$python" bench/figures.py "$BENCH_FIGURES"
! grep -q '"FAILED"' "$BENCH_FIGURES"
