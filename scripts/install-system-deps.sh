#!/usr/bin/env bash
# Debian packages the pipeline needs: WordNet 3.0 data (hashtag canonicalisation), and
# Chromium, in which the tests open `wsl data dedup`'s report.html headless.
set -euo pipefail
needed=()
[ -f /usr/share/wordnet/index.noun ] || needed+=(wordnet-base)
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    needed+=(chromium)
  else  # only a test needs it: warn, do not stop a user's setup
    echo "note: chromium is not installed, so the report screenshot test will be skipped;" \
         "run: sudo apt-get install chromium" >&2
  fi
fi
[ ${#needed[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${needed[*]}; run: sudo apt-get install ${needed[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
