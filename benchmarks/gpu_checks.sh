#!/usr/bin/env bash
# The GPU checks in one run, for a machine with CUDA (CI has none), most wanted first:
# the waits for the device per pass (gpu_waits.py), the GPU tests (core, torchray, and
# the planned passes of captum and cnnvis), the whole perturbation benchmark on cuda,
# then every other benchmark's --quick variant on cuda. Results go to
# ${OUT:-benchmarks/results} as *_cuda*.json; the log is printed. Needs the packages of
# `nox -s tests` (pip install -e ".[test]" plugins/*[test]). PYTHON names the
# interpreter (python); PERTURBATION_SECONDS caps the perturbation benchmark (its JSON
# keeps the rows finished when it is cut short).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
py=${PYTHON:-python}
mkdir -p "$out"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')" || exit 1
status=0
"$py" benchmarks/gpu_waits.py --device cuda --out "$out/waits_cuda.json" || status=1
"$py" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider || status=1
for plugin in torchray:test_rise_targets captum:test_cuda_passes cnnvis:test_cuda_passes; do
  (cd "plugins/esegeta_${plugin%%:*}" && "$py" -m pytest "tests/${plugin#*:}.py" -q -rs \
    -p no:cacheprovider) || status=1
done
PYTHONUNBUFFERED=1 timeout "${PERTURBATION_SECONDS:-3600}" "$py" benchmarks/bench_perturbation.py \
  --device cuda --out "$out/perturbation_cuda.json" || status=1
for bench in cnnvis_cams cnnvis_gradients runtime metrics; do
  "$py" "benchmarks/bench_$bench.py" --device cuda --quick \
    --out "$out/${bench}_cuda_quick.json" || status=1
done
exit $status
