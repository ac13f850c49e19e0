#!/usr/bin/env bash
# The checks that need CUDA, in one run of under 8 minutes on one GPU machine:
#   1. pytest -m gpu: a bf16 training step with flex attention, flex attention's losses and
#      gradients against SDPA's, the whole model compiled with flex, NCCL DDP/FSDP (2 GPUs only);
#   2. benchmarks/train_step.py --quick on CUDA (bf16; eager and the whole model compiled).
# Outputs go under $OUT (default benchmarks/results/gpu_check): pytest.log, pytest.xml,
# train_step.json, train_step.log, nvidia-smi.txt. Uses .venv/bin/python (or $PYTHON); without
# either it creates .venv with `pip install -e .[dev]`.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-benchmarks/results}/gpu_check"
mkdir -p "$out"
python="${PYTHON:-.venv/bin/python}"
if [ ! -x "$python" ]; then
    python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" || exit 1
    python=.venv/bin/python
fi
export HF_HUB_OFFLINE=1

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; \
print('torch', torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count(), 'GPU(s)')" \
    || exit 1

# Each step has its own limit, so one that hangs still leaves the others their time.
timeout 240 "$python" -m pytest -m gpu -v -rs -p no:cacheprovider --junitxml="$out/pytest.xml" \
    2>&1 | tee "$out/pytest.log"
tests=${PIPESTATUS[0]}

timeout 180 "$python" benchmarks/train_step.py --device cuda --quick --precisions bf16 \
    --compile-budget 100 --timeout 150 --out "$out/train_step.json" 2>&1 | tee "$out/train_step.log"
bench=${PIPESTATUS[0]}

echo "gpu_check: pytest exit $tests, train_step exit $bench (outputs in $out)"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
