#!/usr/bin/env bash
# Debian packages the pipeline needs: WordNet 3.0 data (hashtag canonicalisation); SLURM and
# munge for the launcher's tests, which start a one-node cluster (tests/slurm_cluster.py).
set -euo pipefail
needed=()
[ -f /usr/share/wordnet/index.noun ] || needed+=(wordnet-base)
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null || needed+=(slurm-wlm)
command -v munged >/dev/null || needed+=(munge)
[ ${#needed[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${needed[*]}; run: sudo apt-get install ${needed[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
