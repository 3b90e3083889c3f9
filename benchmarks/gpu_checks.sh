#!/usr/bin/env bash
# The GPU checks in one short run, for a machine with CUDA (CI has none): the GPU tests,
# the waits for the device per pass (gpu_waits.py), then every benchmark's --quick
# variant on cuda. Results go to ${OUT:-benchmarks/results}
# as *_cuda_quick.json; the log is printed. Needs the packages of `nox -s tests`
# (pip install -e ".[test]" plugins/*[test]).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')" || exit 1
status=0
python -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider || status=1
(cd plugins/esegeta_torchray && python -m pytest tests/test_rise_targets.py -q -rs \
  -p no:cacheprovider) || status=1
python benchmarks/gpu_waits.py --device cuda --out "$out/waits_cuda.json" || status=1
python benchmarks/bench_perturbation.py --device cuda --quick \
  --out "$out/perturbation_cuda_quick.json" || status=1
python benchmarks/bench_cnnvis_gradients.py --device cuda --quick \
  --out "$out/cnnvis_gradients_cuda_quick.json" || status=1
python benchmarks/bench_cnnvis_cams.py --device cuda --quick \
  --out "$out/cnnvis_cams_cuda_quick.json" || status=1
python benchmarks/bench_runtime.py --device cuda --quick \
  --out "$out/runtime_cuda_quick.json" || status=1
python benchmarks/bench_metrics.py --device cuda --quick \
  --out "$out/metrics_cuda_quick.json" || status=1
exit $status
