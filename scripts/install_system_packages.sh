#!/usr/bin/env bash
# System packages the workflow needs beyond Python: a CJK font to render the demo's Chinese
# screenshots. Installs from Debian's packages when run as root; otherwise says what to run.
set -euo pipefail
if fc-list 2>/dev/null | grep -qiE "wqy|noto.*cjk|source han"; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei
else
  echo "No CJK font found. Install one, e.g.: sudo apt-get install -y fonts-wqy-microhei" >&2
  echo "(or point VLMFLOW_CJK_FONT at any .ttf/.ttc font with Chinese glyphs)" >&2
  exit 1
fi
