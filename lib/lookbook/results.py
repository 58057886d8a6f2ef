"""What a step hands back: a summary to print, and what the tracking store records."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelToLog:
    """A saved classifier for the tracking store: raw RGB images -> class probabilities."""
    path: Path  # the Keras file
    labels: list[str]  # the outputs, in order
    name: str = "classifier"


@dataclass
class StepResult:
    summary: str  # one line: what the step did
    details: str = ""  # printed under the summary: tables, paths
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)  # per epoch, from 1
    outputs: dict[str, int] = field(default_factory=dict)  # table -> version written
    artefacts: list[Path] = field(default_factory=list)  # files and folders
    model: ModelToLog | None = None
