"""A prompt variant: one object that holds its switches and answers what it needs.

The switches and their defaults are the schema's (``variants`` in workflow/schemas/config.schema.yaml):
the workflow validates config.yaml against it, which fills every switch in, and a variant is made from
that validated entry only. The workflow's rules (common.smk), the prompt builders and the scorer all ask
the variant the same questions: does it read OCR text, the teacher's reasons or descriptions, does it
generate a reason before its label.

Standard library only: common.smk imports it when Snakemake starts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PromptVariant:
    name: str
    label_descriptions: bool
    ocr: bool
    ocr_max_chars: int
    reason: bool
    reason_order: str  # reason_first or label_first: label first gave label/reason inconsistencies in the recipe
    reason_max_chars: int
    describe: bool  # describe-then-classify: the image's description comes before the label list
    describe_max_chars: int
    system_prompt: str | None
    cot: bool  # the reason is a step-by-step analysis (chain of thought) before the label

    def __post_init__(self) -> None:
        if self.cot and not (self.reason and self.reason_first):
            raise ValueError(f"variant {self.name}: cot needs reason: true and reason_order: reason_first")

    @classmethod
    def from_config(cls, entry: dict) -> PromptVariant:
        """The variant of a validated config entry (every switch present; a missing one is a bug upstream)."""
        missing = [field.name for field in fields(cls) if field.name not in entry]
        if missing:
            raise ValueError(f"variant {entry.get('name')!r} lacks {missing}: validate the config against the schema")
        return cls(**{field.name: entry[field.name] for field in fields(cls)})

    @property
    def reason_first(self) -> bool:
        return self.reason_order == "reason_first"

    @property
    def generates_reason(self) -> bool:
        """Scoring writes the reason greedily before it scores the label slot."""
        return self.reason and self.reason_first

    def reads_ocr(self, teacher: bool) -> bool:
        """OCR text goes into the prompt, or into the template's reasons (a teacher's reason falls back to the
        template for labels the teacher never saw), or into the template's description when no teacher writes it."""
        return self.ocr or self.reason or (self.describe and not teacher)

    def reads_teacher_reasons(self, teacher: bool) -> bool:
        return self.reason and teacher

    def reads_teacher_descriptions(self, teacher: bool) -> bool:
        return self.describe and teacher
