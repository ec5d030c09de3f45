#!/usr/bin/env bash
# The speed benchmark (naive / cached / batched, grid projection) on a GPU with the JAX backend: the same
# table as `make bench`. Needs python3 with jax[cuda] + keras and sonotune's pure dependencies that
# sonotune.models.training imports (numpy, pydantic, pyyaml, scikit-learn, tqdm; PIL/scipy optional: phantom
# images, else speckle). Offline: carry their wheels and `pip install --no-index --find-links WHEELS ...` first.
# Run from the repository root:
#   bash benchmarks/gpu_bench.sh            # ResNet50 224 px, 128 images, 5 folds, the paper's 30 epochs
#   bash benchmarks/gpu_bench.sh --precisions float32 mixed_bfloat16   # any bench_cache.py flag overrides
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # let GPU memory grow as needed
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
python3 -c "import pydantic, yaml, sklearn, tqdm" 2>/dev/null || {
  echo "gpu_bench.sh: sonotune needs pydantic, pyyaml, scikit-learn and tqdm next to jax and keras" >&2; exit 2; }
exec python3 benchmarks/bench_cache.py --images 128 --epochs 30 --folds 5 --size 224 \
  --backbones resnet50 --strategies 15 0 "$@"
