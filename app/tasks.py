"""Prompt templates, kept in one data file a user may edit, and how each task's prompt is built.

The file is one JSON object, task name -> either a template string or an object with `template`,
an optional `title` (shown in the page and in GET /tasks) and optional `labels`. A task with
`labels` is scored: its answer is the label the model finds most probable, never free text.
`augment` and `classification` serve their own routes; every other task is served by /generate,
so a task added to the file is served without touching code.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

# Tasks the routes rely on, with exactly these placeholders.
REQUIRED_TASKS = {"augment": ("text",), "classification": ("labels", "text")}
OWN_ROUTES = frozenset(REQUIRED_TASKS)


class TemplatesError(ValueError):
    """The template file is missing, not JSON, or a template is unusable."""


def _placeholders(template: str) -> tuple[str, ...]:
    """Placeholder names in order of first appearance."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain name like {{text}}")
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    fields: tuple[str, ...]
    title: str
    labels: tuple[str, ...] = ()  # non-empty: answered by scoring these labels

    @property
    def scored(self) -> bool:
        return bool(self.labels)

    def describe(self) -> dict:
        """The task as GET /tasks lists it."""
        return {"name": self.name, "title": self.title, "fields": list(self.fields),
                "scored": self.scored, "labels": list(self.labels) or None, "template": self.template}


@dataclass(frozen=True)
class Templates:
    source: Path
    tasks: dict[str, Task]

    def render(self, task: str, **values: str) -> str:
        """Fill the template of `task`; the caller has checked the values."""
        spec = self.tasks[task]
        return spec.template.format(**{name: values[name] for name in spec.fields})

    def generation_tasks(self) -> list[Task]:
        """The tasks /generate serves, in file order."""
        return [task for name, task in self.tasks.items() if name not in OWN_ROUTES]


def _task(name: str, entry: object) -> Task:
    if isinstance(entry, str):
        entry = {"template": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("template"), str):
        raise ValueError("must be a template string or an object with a \"template\" string")
    unknown = set(entry) - {"template", "title", "labels"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (allowed: template, title, labels)")
    title = entry.get("title", name)
    if not isinstance(title, str) or not title.strip():
        raise ValueError("\"title\" must be a non-empty string")
    labels = entry.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
        raise ValueError("\"labels\" must be a list of non-empty strings")
    labels = [label.strip() for label in labels]
    if labels and (len(labels) < 2 or len(set(labels)) != len(labels)):
        raise ValueError("\"labels\" needs at least two different labels")
    fields = _placeholders(entry["template"])
    if not fields:
        raise ValueError("the template has no placeholder such as {text}")
    return Task(name, entry["template"], fields, title.strip(), tuple(labels))


def load_templates(path: Path) -> Templates:
    """Read and check the template file; every problem names the file and the task."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise TemplatesError(f"cannot read prompt templates {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise TemplatesError(f"prompt templates {path} are not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise TemplatesError(f"prompt templates {path} must be one JSON object of task -> template")
    tasks = {}
    for name, entry in raw.items():
        if not name.isidentifier():
            raise TemplatesError(f"prompt templates {path}: task name {name!r} must be a plain name like title")
        try:
            tasks[name] = _task(name, entry)
        except ValueError as exc:
            raise TemplatesError(f"prompt templates {path}, task {name!r}: {exc}") from exc
    for name, needed in REQUIRED_TASKS.items():
        if name not in tasks:
            raise TemplatesError(f"prompt templates {path} lack the task {name!r}")
        if set(tasks[name].fields) != set(needed) or tasks[name].labels:
            raise TemplatesError(
                f"prompt templates {path}, task {name!r}: needs exactly the placeholders "
                f"{sorted(needed)} and no labels, has {sorted(tasks[name].fields)}"
            )
    return Templates(path, tasks)
