#!/usr/bin/env bash
# Debian packages: WordNet 3.0 data (hashtag canonicalisation) for the pipeline; for the tests,
# Chromium (report.html opened headless) and SLURM + munge (a one-node cluster started by
# tests/slurm_cluster.py). As root all are installed when missing; otherwise only a missing
# WordNet stops the setup, and the test packages are named for the user to install.
# Another apt at work (unattended upgrades on a fresh machine, a colleague's install) is
# waited for, up to WSL_APT_WAIT_S seconds (default 600), not a reason to fail.
set -euo pipefail
declare -A why=(
  [wordnet-base]="WordNet 3.0, to canonicalise hashtags"
  [chromium]="tests: report.html opened headless"
  [slurm-wlm]="tests: a one-node SLURM cluster"
  [munge]="tests: SLURM's authentication"
)
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
wait_s=${WSL_APT_WAIT_S:-600}

# apt-get ARGS..., again every 5 s while another apt holds a lock it needs (apt's own
# DPkg::Lock::Timeout covers only dpkg's lock, not `apt-get update`'s lists lock). What
# apt said is left in $apt_out.
apt_get() {
  local start=$SECONDS said=""
  until apt_out=$(apt-get "$@" 2>&1); do
    grep -q "Could not get lock" <<<"$apt_out" || return 1
    if (( SECONDS - start >= wait_s )); then
      echo "$apt_out" >&2
      echo "another apt still holds its lock after ${wait_s} s; run make setup again when it is done" >&2
      exit 1
    fi
    if [ -z "$said" ]; then
      echo "waiting for another apt to finish (up to ${wait_s} s): $(grep -m1 -o 'held by process.*' <<<"$apt_out" || true)" >&2
      said=1
    fi
    sleep 5
  done
}

echo "installing Debian packages:" >&2
for package in "${needed[@]}"; do
  echo "  $package (${why[$package]})" >&2
done
# Package lists that are there and current need no download; missing (a fresh image) or
# stale ones (an install that cannot fetch) are updated, then the install is tried again.
install=(install -y -qq --no-install-recommends "${needed[@]}")
if ! apt_get "${install[@]}"; then
  echo "updating the package lists, then trying again" >&2
  apt_get update -qq || { echo "$apt_out" >&2; exit 1; }
  apt_get "${install[@]}" || { echo "$apt_out" >&2; exit 1; }
fi
