#!/usr/bin/env bash
# Runs a command as if the CPU had AVX2 only (no AVX-512, VNNI, AMX): for measuring the AVX2 code paths of the
# numeric libraries and the app's own choice on an Intel machine that has more. Not the AVX2-only AMD machine: the
# cores, clocks and caches stay this CPU's.
#   bench/avx2_only/run.sh python bench/engines.py --model B --limit 25 --models trained
# The libraries read cpuid (hidden by hide_avx512.c, preloaded); the app reads /proc/cpuinfo (a copy without those
# flags, bind-mounted in a private mount namespace: needs root, util-linux's unshare, gcc, and a CPU with
# cpuid_fault).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${TMPDIR:-/tmp}/rag-augment-avx2-only"
mkdir -p "$work"
grep -qw cpuid_fault /proc/cpuinfo || { echo "avx2_only: this CPU has no cpuid_fault flag" >&2; exit 2; }
if [[ ! -f "$work/hide_avx512.so" || "$here/hide_avx512.c" -nt "$work/hide_avx512.so" ]]; then
  gcc -O2 -shared -fPIC "$here/hide_avx512.c" -o "$work/hide_avx512.so"
fi
sed -E 's/ (avx512[a-z0-9_]*|amx_[a-z0-9_]*|avx_vnni[a-z0-9_]*)//g' /proc/cpuinfo > "$work/cpuinfo"
exec unshare -m bash -c 'mount --bind "$0/cpuinfo" /proc/cpuinfo && LD_PRELOAD="$0/hide_avx512.so" exec "$@"' "$work" "$@"
