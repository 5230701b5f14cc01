"""Prompt templates, kept in one data file a user may edit, and how each task's prompt is built."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

REQUIRED_TASKS = {"augment": {"text"}}


class TemplatesError(ValueError):
    """The template file is missing, not JSON, or a template is unusable."""


def _placeholders(template: str) -> set[str]:
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain name like {{text}}")
        names.add(name)
    return names


@dataclass(frozen=True)
class Templates:
    source: Path
    templates: dict[str, str]
    fields: dict[str, frozenset[str]]

    def render(self, task: str, **values: str) -> str:
        """Fill the template of `task`; the caller has checked the values."""
        return self.templates[task].format(**{name: values[name] for name in self.fields[task]})


def load_templates(path: Path) -> Templates:
    """Read and check the template file; every problem names the file and the task."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise TemplatesError(f"cannot read prompt templates {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise TemplatesError(f"prompt templates {path} are not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise TemplatesError(f"prompt templates {path} must be one JSON object of task -> template string")
    fields = {}
    for task, template in raw.items():
        try:
            fields[task] = frozenset(_placeholders(template))
        except ValueError as exc:
            raise TemplatesError(f"prompt templates {path}, task {task!r}: {exc}") from exc
    for task, needed in REQUIRED_TASKS.items():
        if task not in raw:
            raise TemplatesError(f"prompt templates {path} lack the task {task!r}")
        if fields[task] != needed:
            raise TemplatesError(
                f"prompt templates {path}, task {task!r}: needs exactly the placeholders "
                f"{sorted(needed)}, has {sorted(fields[task])}"
            )
    return Templates(path, raw, fields)
