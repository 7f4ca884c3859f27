#!/usr/bin/env bash
# Refuse to start the set-up where the venv cannot fit: the registry's CUDA torch makes it
# about 7.2 GB, and pip failing with ENOSPC half-way through leaves a broken venv behind.
# usage: check-disk.sh DIR GIB
set -euo pipefail
dir=$1 need_gib=$2
[ -d "$dir/bin" ] && exit 0  # an existing venv is updated in place, which needs far less
probe=$dir
while [ ! -e "$probe" ]; do probe=$(dirname "$probe"); done
free_kib=$(df -Pk "$probe" | awk 'NR==2 {print $4}')
if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
  echo "not enough disk for the set-up: $((free_kib / 1024 / 1024)) GiB free under $probe, $need_gib GiB needed (the venv with CUDA torch is about 7.2 GB)" >&2
  exit 1
fi
