"""Where a CJK font is found: the demo draws Chinese text and the plots label Chinese classes."""

from __future__ import annotations

import os
from pathlib import Path

FONT_ENV_VAR = "VLMFLOW_CJK_FONT"
KNOWN_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
)


def find_cjk_font(font_path: str | Path | None = None) -> Path:
    """The argument, else $VLMFLOW_CJK_FONT, else the first known system CJK font."""
    candidates = [font_path] if font_path else [os.environ.get(FONT_ENV_VAR) or None, *KNOWN_FONT_PATHS]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        f"no CJK font found (tried {[str(c) for c in candidates if c]}); install one with "
        f"`apt-get install -y fonts-wqy-microhei` or point {FONT_ENV_VAR} at a .ttf/.ttc file"
    )
