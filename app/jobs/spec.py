"""What a file job was asked to do: its kind, columns, labels and parameters, checked once at submission
and stored with the job as JSON, so that a resumed job runs exactly as it was asked."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields

from app.errors import InvalidParameter
from app.gate import GATE_FIELDS, GateParams
from app.params import PUBLIC_FIELDS, SEED_RANGE, GenerationParams, params_from

KINDS = ("augment", "classify")
LABEL_CHECKS = ("auto", "on", "off")
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
# Columns a job adds to its rows; a file that already has one of them is refused (its data would be overwritten).
AUGMENT_COLUMNS = ("source_row", "variant", "similarity", "label_probability")
CLASSIFY_COLUMNS = ("source_row", "predicted_label")
PROBABILITY_PREFIX = "prob_"


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    kind: str
    text_col: str
    label_col: str | None = None
    labels: list[str] | None = None  # augment: the label check's set (default: the label column's values)
    label_check: str = "auto"  # augment with a label column: auto (when it can run), on, off
    multi_label: bool = False  # classify
    threshold: float | None = None  # classify with multi_label
    include_original: bool = True  # augment: each row itself first, as variant 0
    params: dict = field(default_factory=dict)  # the generation fields sent (None: the default)
    quality: dict = field(default_factory=dict)  # the gate fields sent
    engine: str | None = None
    sheet: str | None = None
    chunk_rows: int = 50  # fixed when the job is made: a resumed job cuts the same chunks, with the same seeds

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParameter(f"kind 只能是 {' 或 '.join(KINDS)}（收到 {str(self.kind)[:40]!r}）", field="kind")
        if self.label_check not in LABEL_CHECKS:
            raise InvalidParameter(f"label_check 只能是 {'、'.join(LABEL_CHECKS)}（收到 {str(self.label_check)[:40]!r}）",
                                   field="label_check")
        if self.kind == "classify" and not self.labels:
            raise InvalidParameter("分类任务需要候选标签 labels", field="labels")
        if self.label_check == "on" and self.kind == "augment" and not self.label_col:
            raise InvalidParameter("标签检查需要标签列 label_col", field="label_col")
        self.generation()  # refuses bad generation fields now, naming the field

    def generation(self) -> GenerationParams:
        return params_from(self.params)

    def gate(self, defaults: GateParams) -> GateParams:
        return defaults.with_sent(self.quality)

    def chunk_params(self, chunk: int) -> GenerationParams:
        """Chunk `chunk`'s parameters: a seeded job gives each chunk its own seed drawn from the job's seed and
        the chunk's number, so a chunk samples the same whether the job ran straight through or resumed."""
        params = self.generation()
        if params.seed is None:
            return params
        return params.with_changes(seed=random.Random(f"{params.seed}/{chunk}").randint(*SEED_RANGE))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "JobSpec":
        return cls(**values)


# The job fields a submission names itself; the generation and gate fields go into `params` and `quality`.
OPTION_FIELDS = frozenset(f.name for f in fields(JobSpec)) - {"params", "quality", "chunk_rows"}


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """A submission's flat options (REST form fields, CLI flags) as (job fields, generation fields, gate
    fields), None values left out."""
    generation = {name: options[name] for name in PUBLIC_FIELDS if options.get(name) is not None}
    gate = {name: options[name] for name in GATE_FIELDS if options.get(name) is not None}
    rest = {name: value for name, value in options.items()
            if name not in PUBLIC_FIELDS and name not in GATE_FIELDS and value is not None}
    return rest, generation, gate
