"""Config files of the lab servers: tests/lab/templates/*, filled in by string.Template."""

from __future__ import annotations

import string
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def render(template: str, dest: Path, **values: object) -> Path:
    """Write templates/<template> to dest with every $name replaced; a missing value is an error."""
    text = string.Template((TEMPLATES / template).read_text()).substitute(
        {key: str(value) for key, value in values.items()}
    )
    dest.write_text(text)
    return dest
