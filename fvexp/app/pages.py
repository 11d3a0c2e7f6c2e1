"""The gallery's and the atlas's HTML pages, from the jinja2 templates in `fvexp/app/templates`.

Each page is one self-contained file, its images inline as data URIs, so it opens from the run
folder and from MLflow's artifact view alike. Every value is escaped (autoescape): a layer, class or
file name with `<`, `&` or quotes in it shows as written. The escaping is Python's `html.escape`
rather than markupsafe's, which spells quotes differently (&#39; for &#x27;): the pages keep the bytes
they had when they were written with f-strings.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image


def write_page(path: Path, template: str, **context: Any) -> Path:
    """Render `templates/<template>` with `context` into `path`."""
    from jinja2 import Environment, PackageLoader, StrictUndefined  # 40 ms: imported where a page is written

    environment = Environment(loader=PackageLoader("fvexp.app"), autoescape=True, undefined=StrictUndefined,
                              keep_trailing_newline=True, finalize=escaped)
    path.write_text(environment.get_template(template).render(**context), encoding="utf-8")
    return path


def escaped(value: Any) -> Any:
    """A value as `html.escape` writes it, marked safe so that autoescape leaves it as it is."""
    from markupsafe import Markup

    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


def uri(image: Image.Image) -> str:
    """The image as a WEBP data URI, small enough for a page of hundreds of them."""
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=88)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()
