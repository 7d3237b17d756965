#!/usr/bin/env bash
# Which CIFAR-10 a `make` target trains on, printed as resdepth overrides (the reason goes to stderr):
#   1. DATA, when given (cifar10 | cifar10_jpeg | cifar100 | fashion_mnist | synthetic | ...);
#   2. CIFAR-10 in data/ or $RESDEPTH_DATA (cifar-10-batches-py/ or cifar-10-python.tar.gz);
#   3. CIFAR-10 downloaded by torchvision into that folder (163 MB), when the network reaches it;
#   4. the JPEG copy of CIFAR-10 (19.4 MB): CIFAR10_JPEG, by default ../shared/data/cifar10-jpeg.tar.gz;
#   else one message that says how to get either, and exit status 1.
# Usage: scripts/dataset.sh DATA CIFAR10_JPEG PYTHON
set -u
data=$1 jpeg=$2 python=${3:-python3}
root=${RESDEPTH_DATA:-data}  # data.root: where resdepth looks for CIFAR-10 and torchvision downloads it
default_jpeg=../shared/data/cifar10-jpeg.tar.gz  # conf/data/cifar10_jpeg.yaml's data.path
jpeg_args="data=cifar10_jpeg"
[ "$jpeg" = "$default_jpeg" ] || jpeg_args="$jpeg_args data.path=$jpeg"  # (data.path names the run directories)
url=https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
if [ -n "$data" ]; then
  echo "dataset: $data (DATA=$data)" >&2
  if [ "$data" = cifar10_jpeg ]; then echo "$jpeg_args"; else echo "data=$data"; fi
elif [ -f "$root/cifar-10-batches-py/data_batch_1" ] || [ -f "$root/cifar-10-python.tar.gz" ]; then
  echo "dataset: cifar10 (found in $root/)" >&2
  echo "data=cifar10"
elif "$python" -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='HEAD'), timeout=10)" \
    "$url" 2> /dev/null; then
  echo "dataset: cifar10 (torchvision downloads it into $root/: 163 MB)" >&2
  echo "data=cifar10"
elif [ -f "$jpeg" ]; then
  echo "dataset: cifar10_jpeg (no network to download CIFAR-10; the JPEG copy $jpeg)" >&2
  echo "$jpeg_args"
else
  echo "resdepth: no CIFAR-10 here and no network to download it. Either put cifar-10-python.tar.gz (163 MB," \
    "$url) into data/, or the JPEG copy of CIFAR-10 at $jpeg (or name it: CIFAR10_JPEG=path/cifar10-jpeg.tar.gz);" \
    "DATA=synthetic tries the software without images." >&2
  exit 1
fi
