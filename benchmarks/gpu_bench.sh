#!/usr/bin/env bash
# The cache benchmark on a GPU with the JAX backend. Needs only python3 with jax[cuda] + keras (+ numpy);
# PIL/scipy are optional (phantom images, else speckle). Run from the repository root:
#   bash benchmarks/gpu_bench.sh            # paper-like size: ResNet50 224 px, 128 images, 10 epochs, 5 folds
#   bash benchmarks/gpu_bench.sh --images 256 --epochs 30   # any bench_cache.py flag overrides
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # let RSS/GPU memory grow as needed, as on CPU
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
exec python3 benchmarks/bench_cache.py --images 128 --epochs 10 --folds 5 --size 224 \
  --backbones resnet50 --strategies 15 0 --sweep-size 224 --sweep-images 64 "$@"
