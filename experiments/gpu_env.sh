# Sourced by the gpu_*session.sh scripts (run by the device tool from the repository root, .whl/ and .carry/
# carried): $OUT, and a work folder $W with pack() to put it into $OUT/results.tgz; Hydra from the carried
# wheels; resdepth importable; the JPEG CIFAR-10 where data=cifar10_jpeg looks; $RD to call resdepth; and
# gpu_env_report FILE to record the machine.
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/resdepth-out}; mkdir -p "$OUT"  # what the device tool brings back
W=$(mktemp -d); pack() { tar czf "$OUT/results.tgz" -C "$W" .; }  # work folder, packed into one file (<= 8 come back)
PY=${PY:-python3}
if ! $PY -c "import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # joblib's worker processes import resdepth from here too
if [ -f .carry/cifar10-jpeg.tar.gz ] && [ ! -f ../shared/data/cifar10-jpeg.tar.gz ]; then
  mkdir -p ../shared/data && cp .carry/cifar10-jpeg.tar.gz ../shared/data/  # the path data=cifar10_jpeg expects
fi
RD="$PY -m resdepth.cli"
gpu_env_report() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc; lscpu | grep 'Model name';
    $PY -c "import torch, pytorch_lightning as pl, hydra, sys; print(sys.version.split()[0], torch.__version__, pl.__version__, hydra.__version__)"; } > "$1"
  cat "$1"
}
