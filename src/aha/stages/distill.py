"""`aha distill`: distillation as in R1 §2.4 — sample verified reasoning from a teacher (`aha sample`) and
fine-tune a student on it (`aha sft`), in one command. No logits are matched: the teacher hands the student
text (`samples.jsonl`), which the student's own tokenizer and template re-encode, so teacher and student
may have different tokenizers and chat templates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from aha.config import check
from aha.io import atomic_write_text
from aha.runs import newest_model
from aha.stages import sample as sample_stage
from aha.stages import sft as sft_stage
from aha.stages.sample import SampleConfig
from aha.stages.sft import SFTConfig


@dataclass
class DistillConfig:
    teacher: str = "smollm2-135m-instruct"
    """The model sampled from: registry name, .gguf, HF folder or run folder (its newest checkpoint). Sets sample.model."""
    student: str = "smollm2-135m-instruct"
    """The model fine-tuned on the teacher's verified samples. Sets sft.model."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Rejection sampling from the teacher (task, group_size, filters, ...); its model and out_dir are set here."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Fine-tuning of the student; its model, input and out_dir are set here."""
    out_dir: str = "runs/distill"
    """Output folder: sample/ (the teacher's samples and report), sft/ (the student's run), summary.json."""


def run(cfg: DistillConfig) -> Path:
    """Teacher -> sample -> sft on the student; returns out_dir (the student is the newest checkpoint of sft/)."""
    check(cfg)
    out = Path(cfg.out_dir)
    samples = sample_stage.run(dataclasses.replace(cfg.sample, model=cfg.teacher, out_dir=str(out / "sample")))
    student_run = sft_stage.run(dataclasses.replace(cfg.sft, model=cfg.student, input=str(samples / "samples.jsonl"),
                                                    out_dir=str(out / "sft")))
    report = json.loads((samples / "report.json").read_text())
    summary = {"teacher": cfg.teacher, "student": cfg.student, "samples": report["kept"],
               "generated": report["generated"], "model": str(newest_model(student_run))}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return out
