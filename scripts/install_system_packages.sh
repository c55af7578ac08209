#!/usr/bin/env bash
# System packages beyond Python, by what needs them:
#   font      a CJK font to render the demo's Chinese screenshots (make install, so make demo: always);
#   slurm     SLURM with munge for the one-node cluster tests/test_slurm.py starts (scripts/start_slurm.sh);
#   chromium  Chromium with its matching driver to look at the report and the MLflow UI
#             (tests/test_results_pages.py, make screenshots).
# make test asks for all three, make screenshots for chromium. Installs from Debian's packages when run
# as root; otherwise says what to run. Without the font nothing works, so its absence fails; without
# SLURM or Chromium only their tests skip.
#
#     bash scripts/install_system_packages.sh [font] [slurm] [chromium]     # default: font
set -euo pipefail
wanted=" ${*:-font} "
missing=()
has_font=yes
if ! fc-list 2>/dev/null | grep -qiE "wqy|noto.*cjk|source han"; then
  has_font=no
  missing+=(fonts-wqy-microhei)
fi
if [[ $wanted == *" slurm "* ]] && { ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; }; then
  missing+=(slurm-wlm munge)
fi
if [[ $wanted == *" chromium "* ]] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  missing+=(chromium chromium-driver)
fi
if [ ${#missing[@]} = 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
elif [ "$has_font" = no ]; then
  echo "No CJK font found. Install one, e.g.: sudo apt-get install -y fonts-wqy-microhei" >&2
  echo "(or point VLMFLOW_CJK_FONT at any .ttf/.ttc font with Chinese glyphs)" >&2
  exit 1
else
  echo "Not installed: ${missing[*]}; their tests will skip. To run them: sudo apt-get install -y ${missing[*]}" >&2
fi
