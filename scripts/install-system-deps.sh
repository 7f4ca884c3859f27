#!/usr/bin/env bash
# Debian packages: WordNet 3.0 data (hashtag canonicalisation) for the pipeline; for the tests,
# Chromium (report.html opened headless) and SLURM + munge (a one-node cluster started by
# tests/slurm_cluster.py). As root all are installed when missing; otherwise only a missing
# WordNet stops the setup, and the test packages are named for the user to install.
set -euo pipefail
needed=() tests_only=()
[ -f /usr/share/wordnet/index.noun ] || needed+=(wordnet-base)
command -v chromium >/dev/null || tests_only+=(chromium)
{ command -v slurmctld && command -v slurmd && command -v sbatch; } >/dev/null || tests_only+=(slurm-wlm)
command -v munged >/dev/null || tests_only+=(munge)
if [ "$(id -u)" -ne 0 ]; then
  [ ${#tests_only[@]} -eq 0 ] || echo "note: the tests need ${tests_only[*]}: sudo apt-get install ${tests_only[*]}" >&2
  [ ${#needed[@]} -eq 0 ] && exit 0
  echo "missing Debian packages: ${needed[*]}; run: sudo apt-get install ${needed[*]}" >&2
  exit 1
fi
needed+=("${tests_only[@]}")
[ ${#needed[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
