#!/usr/bin/env bash
# Installs Debian's SLURM (slurmctld, slurmd, slurmdbd), munge and MariaDB when missing, and
# chromium (tests/test_report.py opens report.html in it, headless), without letting apt start
# any daemon (a temporary policy-rc.d that exits 101).
set -euo pipefail
pkgs=(slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} ..." >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created=1
fi
trap '[ $created -eq 1 ] && $SUDO rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
